"""ZeroMQ plumbing shared by every part of overdrive: messages, codec, security, sockets, heartbeats."""
