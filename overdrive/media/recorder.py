"""Recording a stream to the backup folder, at the streamer and at every viewer.

:class:`Recorder` is a listener for :class:`~overdrive.media.streamer.Streamer` and
:class:`~overdrive.media.viewer.Viewer` (``add_listener(recorder)``): it queues each message and its
:class:`~overdrive.bus.service.Worker` thread writes it, so the stream thread never waits on a disk or an AAC
encoder. One recording per stream:

* it opens at the first keyframe after the stream info (a late joiner records from its first keyframe);
* it is written as ``BACKUP/.<stream-name>-<UTC start>.mp4.part`` (hidden, so the share watcher ignores it) and
  renamed to ``<stream-name>-<UTC start>.mp4`` when it closes; a new ``stream_id`` (streamer restart) or a
  :class:`~overdrive.media.protocol.StreamEnd` closes it, and the next keyframe of a stream starts the next one;
* the ``.part`` is locked while written (:func:`~overdrive.media.salvage.hold`), so a part left by a killed
  process is told apart from a live one and finished at the next start (:func:`~overdrive.media.salvage.recover`);
* a full disk stops recording with one :class:`NoSpace` event: the file so far is cut after its last complete
  fragment and renamed into place (no space needed for that); at most every :data:`RETRY_SECONDS`, once
  :data:`MIN_FREE` bytes are free again, the next keyframe starts a new file (:class:`Resumed`);
* ``wav=True`` also writes each audio track as ``<stream-name>-<UTC start>-<source>.wav`` through soundfile, with
  exactly the samples (silence included) that went into the MP4.

The stream name comes from the wire, so :func:`safe_name` makes it one safe file-name component (Unicode letters
kept) before it becomes a file name.
If the worker falls behind by more than :data:`MAX_QUEUE` messages, messages are dropped and video resumes at
the next keyframe (the gap is held/silent in the file, like a network gap).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import unicodedata
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from overdrive.bus.service import Worker
from overdrive.errors import ConfigError, MediaError, UnsafePathError
from overdrive.files.names import check_name, fit_name
from overdrive.media.chat_record import ChatSidecars, move_sidecars
from overdrive.media.codecs.base import SAMPLE_RATE, Samples
from overdrive.media.hooks import Listenable
from overdrive.media.mux import Mp4Writer
from overdrive.media.protocol import AudioChunk, ChatLine, StreamEnd, StreamInfo, StreamMessage, VideoFrame
from overdrive.media.salvage import salvage

log = logging.getLogger(__name__)

MAX_QUEUE = 3000
RETRY_SECONDS = 5.0
"""After a full disk, free space is looked at no more often than this."""
MIN_FREE = 16 << 20
"""Free bytes needed before recording resumes after a full disk (about 30 s of a 1080p stream; half of a
smaller disk)."""
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


MAX_NAME_BYTES = 120
"""UTF-8 bytes kept of a stream or track name in a file name (the rest of the name and ``.part`` fit in 255)."""
_REFUSED = re.compile(r'[/\\<>:"|?*]')  # path separators and what Windows file systems refuse
_KEPT_FORMAT = {"\u200d"}  # zero-width joiner: part of emoji sequences, harmless in a name
_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"{p}{n}" for p in ("COM", "LPT") for n in range(1, 10))}
_EDGES = " ._"  # never at either end: no hidden or relative name, no trailing dot or space (Windows drops them)


def _unsafe(char: str) -> bool:
    """Control, format (bidi overrides), surrogate, private, unassigned or line-separator characters."""
    category = unicodedata.category(char)
    return (category[0] == "C" and char not in _KEPT_FORMAT) or category in ("Zl", "Zp")


def safe_name(name: str, room: int = MAX_NAME_BYTES) -> str:
    """A stream or track name from the wire as one harmless file-name component.

    Letters and digits of every script are kept (NFC, as typed on most systems); path separators, characters
    Windows refuses, control and format characters become ``_``; whitespace runs become one space; leading and
    trailing dots, spaces and ``_`` go; the result is cut to ``room`` bytes of UTF-8 on a character boundary, a
    Windows device name gets a ``_``, and nothing empty or unsafe is ever returned (``stream`` instead)."""
    text = unicodedata.normalize("NFC", name)
    text = "".join("_" if _unsafe(c) or _REFUSED.match(c) else (" " if c.isspace() else c) for c in text)
    text = re.sub(r" {2,}", " ", re.sub(r"_{2,}", "_", text)).strip(_EDGES)
    text = fit_name(text, room).rstrip(_EDGES)
    if text.split(".")[0].rstrip(" ").upper() in _RESERVED:
        text += "_"
    try:
        parts = check_name(text)
    except UnsafePathError:
        return "stream"
    return text if len(parts) == 1 and text[0] != "." else "stream"


def utc_stamp(ns: int) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(ns / 1e9))


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordConfig:
    """Where and what to record."""

    backup_dir: Path
    wav: bool = False


def check_backup(folder: Path) -> None:
    """Make sure recordings can be written into ``folder`` (created if missing): ConfigError in one line if not."""
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"cannot record into {folder}: it is a file, not a folder (choose a folder with --backup)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(
            f"cannot record into {folder}: {reason} (choose a folder with --backup, or --no-record)"
        ) from exc


@dataclass
class Finished:
    """A closed recording."""

    path: Path
    frames: int
    audio_chunks: int
    wavs: list[Path] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class NoSpace:
    """Recording stopped for lack of space; ``kept`` is the playable file with what was written (None if none)."""

    folder: Path
    kept: Path | None


@dataclass(frozen=True, slots=True)
class Resumed:
    """Recording goes on after a full disk, into ``path``."""

    path: Path


RecordEvent = Finished | NoSpace | Resumed


def no_space(exc: BaseException, folder: Path) -> bool:
    """Whether a write failed because the disk (or quota) is full: by errno anywhere in the chain, or for
    writers that give none (libsndfile), by the free space left."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _NO_SPACE:
            return True
        seen = seen.__cause__ or seen.__context__
    try:
        return shutil.disk_usage(folder).free < (1 << 20)
    except OSError:
        return False


class _Recording:
    def __init__(self, config: RecordConfig, info: StreamInfo, t0_ns: int) -> None:
        config.backup_dir.mkdir(parents=True, exist_ok=True)
        self.base, self._lock = self._reserve(config.backup_dir, f"{safe_name(info.name)}-{utc_stamp(t0_ns)}")
        self.final = config.backup_dir / f"{self.base}.mp4"
        self.part = config.backup_dir / f".{self.base}.mp4.part"
        self._wavs: dict[int, tuple[Any, Path, Path]] = {}
        self.chat: ChatSidecars | None = None
        try:
            self._open(config, info, t0_ns)
        except BaseException:
            self._lock.close()
            raise
        self._t0_ns = t0_ns
        self._chat_failed = not info.chat_port
        log.info("recording to %s", self.final)

    def _open(self, config: RecordConfig, info: StreamInfo, t0_ns: int) -> None:
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

    @staticmethod
    def _reserve(folder: Path, base: str) -> tuple[str, BinaryIO]:
        """A base name whose .part and final files do not exist yet; the part is created exclusively and locked
        at once, so no recovery running next door takes it for a dead one before it is written."""
        for n in range(1, 1000):
            candidate = base if n == 1 else f"{base}-{n}"
            if (folder / f"{candidate}.mp4").exists():
                continue
            part = folder / f".{candidate}.mp4.part"
            try:
                fd = os.open(part, os.O_CREAT | os.O_EXCL | os.O_RDONLY, 0o644)
            except FileExistsError:
                continue
            handle = os.fdopen(fd, "rb")
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # new and ours alone: cannot be taken
            return candidate, handle
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

    def chat_line(self, line: ChatLine) -> None:
        """Record one chat line (the sidecars are made at the first: a recording nobody chatted in has none)."""
        if self.chat is None and not self._chat_failed:
            try:
                self.chat = ChatSidecars(self.final.parent, self.base, self._t0_ns)
            except OSError as exc:  # the video goes on without its chat beside it
                self._chat_failed = True
                log.warning("cannot record the chat beside %s: %s", self.final, exc)
        if self.chat is not None:
            self.chat.add(line)

    def _finish_chat(self) -> None:
        if self.chat is not None:
            end = self.writer.end_ns
            self.writer.subtitles(self.chat.finish(None if end is None else (end - self.writer.t0_ns) // 1_000_000))

    def close(self) -> Finished:
        try:
            try:
                self._finish_chat()
                self.writer.close()
            finally:
                wavs = self._close_wavs(rename=True)
                if self.chat is not None:
                    self.chat.abort()
            final = self.final
            if final.exists():  # someone took the name meanwhile: never overwrite
                final = final.with_name(f"{self.base}-{time.time_ns()}.mp4")
            os.replace(self.part, final)
            move_sidecars(self.final.parent, self.base, final)
        finally:
            self._lock.close()
        log.info("recording closed: %s (%d frames)", final, self.writer.frames)
        return Finished(final, self.writer.frames, self.writer.audio_chunks, wavs)

    def abandon(self) -> Path | None:
        """Stop writing after a failed write (a full disk): keep what plays, without writing anything more."""
        try:
            self.writer.abort()
            for handle, part, final in self._wavs.values():
                try:
                    handle.close()
                except (OSError, RuntimeError):
                    pass  # the header could not be updated: the samples are there all the same
                os.replace(part, final)
            self._wavs.clear()
            if self.chat is not None:
                self.chat.abort()
            kept = salvage(self.part)
        finally:
            self._lock.close()
        return kept.path


class Recorder(Worker):
    """Queue stream messages and write recordings in a worker thread; ``close()`` finishes the current file."""

    name = "overdrive-recorder"
    error_type = MediaError

    def __init__(self, config: RecordConfig, on_event: Callable[[RecordEvent], None] | None = None) -> None:
        super().__init__()
        self.config = config
        self.on_event = on_event
        """Called in the worker thread for every closed recording, stop for lack of space and resumption."""
        self.finished: list[Finished] = []
        self.dropped = 0
        self.errors = 0
        self.no_space = 0
        """Times recording stopped because the disk was full."""
        self._retry_at: float | None = None  # while the disk is full: when to look at the free space again
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
            except Exception as exc:  # a broken recording must not stop the stream: keep what was written
                if no_space(exc, self.config.backup_dir):
                    self._out_of_space()
                    continue
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
        if isinstance(message, StreamEnd):
            self._finish()
            self._info = None  # the same stream coming back (after a silence) starts a new file
            return
        if isinstance(message, VideoFrame):
            if self._wait_key and not message.keyframe:
                return
            self._wait_key = False
            if self._recording is None:
                if not message.keyframe or message.codec != info.video.codec or not self._space_again():
                    return
                resumed = self._retry_at is not None
                self._retry_at = None
                self._recording = _Recording(self.config, info, message.pts_ns)
                if resumed:
                    self._emit(Resumed(self._recording.final))
            self._recording.writer.video(message, payload)
        elif isinstance(message, AudioChunk) and self._recording is not None:
            self._recording.writer.audio(message.track, message.pts_ns, payload)
        elif isinstance(message, ChatLine) and self._recording is not None:
            self._recording.chat_line(message)

    def _finish(self) -> None:
        rec, self._recording = self._recording, None
        if rec is None:
            return
        try:
            done = rec.close()
        except Exception as exc:
            if no_space(exc, self.config.backup_dir):
                self._recording = rec
                self._out_of_space()
                return
            self.errors += 1
            log.exception("cannot finish %s (partial file kept)", rec.part)
            return
        self.finished.append(done)
        self._emit(done)

    def _out_of_space(self) -> None:
        """A write failed for want of space: keep what plays, wait for space (no retry per message)."""
        rec, self._recording = self._recording, None
        kept = None
        if rec is not None:
            try:
                kept = rec.abandon()
            except OSError as exc:
                log.warning("cannot finish %s: %s", rec.part, exc)
        self.no_space += 1
        self._retry_at = time.monotonic() + RETRY_SECONDS
        self._emit(NoSpace(self.config.backup_dir, kept))

    def _space_again(self) -> bool:
        """False while the disk is full; looks at the free space at most every RETRY_SECONDS."""
        if self._retry_at is None:
            return True
        now = time.monotonic()
        if now < self._retry_at:
            return False
        self._retry_at = now + RETRY_SECONDS
        try:
            usage = shutil.disk_usage(self.config.backup_dir)
        except OSError:
            return False
        # on a disk smaller than twice the margin, half of it free is enough (else it would never resume)
        return usage.free >= min(MIN_FREE, usage.total // 2)

    def _emit(self, event: RecordEvent) -> None:
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:
                log.exception("recording event handler failed")


def attach_recorder(
    target: Listenable,
    backup_dir: Path,
    *,
    wav: bool = False,
    on_event: Callable[[RecordEvent], None] | None = None,
) -> Recorder:
    """Record everything a Streamer publishes or a Viewer accepts; call ``close()`` when it stops.

    ``backup_dir`` is checked first (ConfigError if recordings cannot be written there)."""
    check_backup(backup_dir)
    recorder = Recorder(RecordConfig(backup_dir=backup_dir, wav=wav), on_event)
    recorder.start()
    target.add_listener(recorder)
    return recorder
