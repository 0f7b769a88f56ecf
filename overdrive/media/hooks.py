"""How audio, recording and playback attach to a streamer or a viewer, without those modules knowing each other.

* A **listener** is called with every message a streamer publishes or a viewer accepts (``payload`` is the encoded
  bytes, ``b""`` for ``StreamInfo``), in the stream's thread: it must be fast and hand heavy work to a queue.
* A **producer** is an extra source of published messages (e.g. an audio capture): the streamer calls
  ``start(emit)`` once its socket is bound and ``stop()`` before it closes; ``emit`` may be called from any thread.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from overdrive.media.protocol import AudioTrackInfo, StreamMessage

Listener = Callable[[StreamMessage, bytes], None]
Emit = Callable[[StreamMessage, bytes], None]


class Producer(Protocol):
    """An extra source of published messages (e.g. an audio capture)."""

    def start(self, emit: Emit) -> None: ...

    def stop(self) -> None: ...


class Listenable(Protocol):
    """A streamer or a viewer: something that passes its messages to listeners."""

    def add_listener(self, listener: Listener) -> None: ...


class ProducerHost(Protocol):
    """A streamer, as audio capture sees it: an id and start time to stamp with, tracks to announce."""

    @property
    def stream_id(self) -> str: ...

    @property
    def started_ns(self) -> int: ...

    def add_audio_track(self, track: AudioTrackInfo) -> None: ...

    def add_producer(self, producer: Producer) -> None: ...
