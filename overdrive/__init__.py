"""overdrive: LAN screen streaming, recording and peer file sharing on ZeroMQ."""

__version__ = "0.1.0"
