"""Recording a stream to the backup folder, at the streamer and at every viewer.

:class:`Recorder` is a listener for :class:`~overdrive.media.streamer.Streamer` and
:class:`~overdrive.media.viewer.Viewer` (``add_listener(recorder)``): it queues each message and its
:class:`~overdrive.bus.service.Worker` thread writes it, so the stream thread never waits on a disk or an AAC
encoder. One recording per stream:

* it opens at the first keyframe after the stream info (a late joiner records from its first keyframe);
* it is written as ``BACKUP/.<stream-name>-<UTC start>.mp4.part`` (hidden, so the share watcher ignores it) and
  renamed to ``<stream-name>-<UTC start>.mp4`` when it closes; a new ``stream_id`` (streamer restart) closes it
  and starts the next one;
* ``wav=True`` also writes each audio track as ``<stream-name>-<UTC start>-<source>.wav`` through soundfile, with
  exactly the samples (silence included) that went into the MP4.

The stream name comes from the wire, so it is reduced to safe characters before it becomes a file name.
If the worker falls behind by more than :data:`MAX_QUEUE` messages, messages are dropped and video resumes at
the next keyframe (the gap is held/silent in the file, like a network gap).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from overdrive.bus.service import Worker
from overdrive.errors import MediaError
from overdrive.media.codecs.base import SAMPLE_RATE, Samples
from overdrive.media.hooks import Listenable
from overdrive.media.mux import Mp4Writer
from overdrive.media.protocol import AudioChunk, StreamInfo, StreamMessage, VideoFrame

log = logging.getLogger(__name__)

MAX_QUEUE = 3000


def safe_name(name: str) -> str:
    """A stream or track name from the wire, as a harmless file-name part."""
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_")[:64]
    return cleaned or "stream"


def utc_stamp(ns: int) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(ns / 1e9))


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordConfig:
    """Where and what to record."""

    backup_dir: Path
    wav: bool = False


@dataclass
class Finished:
    """A closed recording."""

    path: Path
    frames: int
    audio_chunks: int
    wavs: list[Path] = field(default_factory=list)


class _Recording:
    def __init__(self, config: RecordConfig, info: StreamInfo, t0_ns: int) -> None:
        config.backup_dir.mkdir(parents=True, exist_ok=True)
        self.base = self._reserve(config.backup_dir, f"{safe_name(info.name)}-{utc_stamp(t0_ns)}")
        self.final = config.backup_dir / f"{self.base}.mp4"
        self.part = config.backup_dir / f".{self.base}.mp4.part"
        self._wavs: dict[int, tuple[Any, Path, Path]] = {}
        if config.wav:
            import soundfile as sf

            for track in info.audio:
                name = f"{self.base}-{safe_name(track.source)}{track.track if len(info.audio) > 1 else ''}.wav"
                final = config.backup_dir / name
                part = config.backup_dir / f".{name}.part"
                channels = 1 if track.channels == 1 else 2
                handle = sf.SoundFile(
                    part, "w", samplerate=SAMPLE_RATE, channels=channels, subtype="PCM_16", format="WAV"
                )
                self._wavs[track.track] = (handle, part, final)
        try:
            self.writer = Mp4Writer(self.part, info, t0_ns, self._on_pcm)
        except BaseException:
            self._close_wavs(rename=False)
            self.part.unlink(missing_ok=True)
            raise
        log.info("recording to %s", self.final)

    @staticmethod
    def _reserve(folder: Path, base: str) -> str:
        """A base name whose .part and final files do not exist yet (the part is created exclusively)."""
        for n in range(1, 1000):
            candidate = base if n == 1 else f"{base}-{n}"
            if (folder / f"{candidate}.mp4").exists():
                continue
            try:
                fd = os.open(folder / f".{candidate}.mp4.part", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                continue
            os.close(fd)
            return candidate
        raise MediaError(f"cannot find a free recording name for {base} in {folder}")

    def _on_pcm(self, track: int, pcm: Samples) -> None:
        entry = self._wavs.get(track)
        if entry is not None:
            entry[0].write(pcm)

    def _close_wavs(self, rename: bool) -> list[Path]:
        done = []
        for handle, part, final in self._wavs.values():
            handle.close()
            if rename:
                os.replace(part, final)
                done.append(final)
        self._wavs.clear()
        return done

    def close(self) -> Finished:
        try:
            self.writer.close()
        finally:
            wavs = self._close_wavs(rename=True)
        final = self.final
        if final.exists():  # someone took the name meanwhile: never overwrite
            final = final.with_name(f"{self.base}-{time.time_ns()}.mp4")
        os.replace(self.part, final)
        log.info("recording closed: %s (%d frames)", final, self.writer.frames)
        return Finished(final, self.writer.frames, self.writer.audio_chunks, wavs)


class Recorder(Worker):
    """Queue stream messages and write recordings in a worker thread; ``close()`` finishes the current file."""

    name = "overdrive-recorder"
    error_type = MediaError

    def __init__(self, config: RecordConfig) -> None:
        super().__init__()
        self.config = config
        self.finished: list[Finished] = []
        self.dropped = 0
        self.errors = 0
        self._lock = threading.Condition()
        self._queue: deque[tuple[StreamMessage, bytes, bool]] = deque()
        self._gap = False
        self._info: StreamInfo | None = None
        self._recording: _Recording | None = None
        self._wait_key = False
        self._failed: str | None = None  # a stream whose recording broke is not retried (no file per second)

    # -- listener (stream thread) ----------------------------------------------------------------------------
    def __call__(self, message: StreamMessage, payload: bytes) -> None:
        with self._lock:
            if self.stopping.is_set():
                return
            if len(self._queue) >= MAX_QUEUE:
                self.dropped += 1
                self._gap = True
                return
            self._queue.append((message, payload, self._gap))
            self._gap = False
            self._lock.notify()

    def close(self) -> list[Finished]:
        """Write what is queued, close the recording (rename it into place), stop the worker."""
        self._svc_stop(None)
        return self.finished

    @property
    def current(self) -> Path | None:
        rec = self._recording
        return rec.part if rec is not None else None

    # -- worker ----------------------------------------------------------------------------------------------
    def wake(self) -> None:
        with self._lock:
            self._lock.notify()

    def loop(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self.stopping.is_set():
                    self._lock.wait()
                if not self._queue:
                    break
                message, payload, after_gap = self._queue.popleft()
            try:
                self._handle(message, payload, after_gap)
            except Exception:  # a broken recording must not stop the stream: keep what was written
                self.errors += 1
                log.exception("recording failed")
                self._finish()
                if self._info is not None:
                    self._failed = self._info.stream_id

    def teardown(self) -> None:
        self._finish()

    def _handle(self, message: StreamMessage, payload: bytes, after_gap: bool) -> None:
        if after_gap:
            self._wait_key = True
        if isinstance(message, StreamInfo):
            if self._info is not None and message.stream_id != self._info.stream_id:
                self._finish()
            self._info = message
            return
        info = self._info
        if info is None or message.stream_id != info.stream_id or info.stream_id == self._failed:
            return
        if isinstance(message, VideoFrame):
            if self._wait_key and not message.keyframe:
                return
            self._wait_key = False
            if self._recording is None:
                if not message.keyframe or message.codec != info.video.codec:
                    return
                self._recording = _Recording(self.config, info, message.pts_ns)
            self._recording.writer.video(message, payload)
        elif isinstance(message, AudioChunk) and self._recording is not None:
            self._recording.writer.audio(message.track, message.pts_ns, payload)

    def _finish(self) -> None:
        rec, self._recording = self._recording, None
        if rec is None:
            return
        try:
            self.finished.append(rec.close())
        except Exception:
            self.errors += 1
            log.exception("cannot finish %s (partial file kept)", rec.part)


def attach_recorder(target: Listenable, backup_dir: Path, *, wav: bool = False) -> Recorder:
    """Record everything a Streamer publishes or a Viewer accepts; call ``close()`` when it stops."""
    recorder = Recorder(RecordConfig(backup_dir=backup_dir, wav=wav))
    recorder.start()
    target.add_listener(recorder)
    return recorder
