"""The browser gateway: a stream's H.264 (and Opus) passed through as fragmented MP4 to web pages over WebSocket.

A feature like :mod:`overdrive.media`, which it never imports: it takes its own small input types
(:class:`~overdrive.web.fmp4.VideoConfig`, :class:`~overdrive.web.gateway.VideoSample`, ...) and the composition
(:mod:`overdrive.app.web`) converts a stream's messages into them.
"""
