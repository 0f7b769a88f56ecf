"""Audio for streams: capture and devices at the streamer, a jitter buffer and playback at the viewer."""
