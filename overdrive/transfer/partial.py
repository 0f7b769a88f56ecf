"""The fetcher's side on disk: ``NAME.part``, its state file, resuming, and the atomic move into place.

``NAME.part`` is written chunk by chunk at the chunk's offset (sparse until complete). ``NAME.part.state`` (JSON)
records which version it belongs to and which chunks are done; it is rewritten at most every
``STATE_INTERVAL`` seconds and when the fetch stops for any reason. On resume every chunk the state claims, and
every other chunk range that holds data, is re-checked against the checksum table, so a state file that lags
behind (kill -9) loses nothing that reached the disk.

Finishing: fsync, check the whole file's BLAKE3 (fed in chunk order as chunks land, resumed ones read back) against
the content hash, then ``link`` it to a free name (never overwriting: ``name (1).ext`` when a different file is
there) and remove the ``.part``. That one hash over every byte is the authoritative check: whatever passed the
per-chunk checksums (a lying holder can craft chunks that do, a bad state file can claim them), a file whose
BLAKE3 is not the content hash is deleted, never put in place.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import queue
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import blake3
import msgspec

from overdrive.bus.service import Worker
from overdrive.errors import IntegrityError, TransferError
from overdrive.files.model import never
from overdrive.files.names import NAME_MAX, fit_name, free_name
from overdrive.transfer.protocol import valid_chunk_size
from overdrive.transfer.session import Plan

log = logging.getLogger(__name__)

STATE_VERSION = 1
STATE_INTERVAL = 0.25
MAX_HELD = 8 << 20
"""Bytes of out-of-order chunks kept in memory for the running whole-file hash (beyond that: read back)."""
WRITE_QUEUE_BYTES = 16 << 20
"""Bytes of chunks waiting for the writer thread (16 chunks of 1 MiB; 1 of a 16 MiB chunking)."""
_LONGEST_SUFFIX = ".part.state.tmp"


def part_path(dest: Path) -> Path:
    """``NAME.part`` beside ``dest``. A name too long for ``.part.state.tmp`` to fit in :data:`NAME_MAX` bytes (a
    250-byte name: 83 CJK characters) is cut, with a digest of the whole name to keep it apart from others."""
    raw = os.fsencode(dest.name)
    if len(raw) + len(_LONGEST_SUFFIX) <= NAME_MAX:
        return dest.with_name(dest.name + ".part")
    tag = "~" + hashlib.blake2b(raw, digest_size=8).hexdigest()
    return dest.with_name(fit_name(dest.name, NAME_MAX - len(_LONGEST_SUFFIX) - len(tag)) + tag + ".part")


class ResumeState(msgspec.Struct, frozen=True, kw_only=True):
    """What ``NAME.part.state`` holds."""

    version: int
    name: str
    content_hash: str
    size: int
    chunk_size: int
    done: list[tuple[int, int]]
    """Half-open ranges of finished chunk indices."""


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def disk_error(path: Path, exc: OSError) -> TransferError:
    """A clear message for a failed write; the partial file stays for a later resume."""
    if exc.errno in _DISK_FULL:
        what = "file too large for this filesystem or limit" if exc.errno == errno.EFBIG else "disk full"
        return TransferError(f"{what} while writing {path}; the partial file is kept: free space and run again")
    return TransferError(f"cannot write {path}: {exc.strerror}")


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while view.nbytes:
        written = os.pwrite(fd, view, offset)
        if written <= 0:
            raise OSError(errno.ENOSPC, "short write")
        view = view[written:]
        offset += written


class _Writer(Worker):
    """Writes chunks in a helper thread (``os.pwrite`` releases the GIL), so disk writes overlap receiving.

    At most ``depth`` chunks wait in its queue (memory stays bounded); :meth:`take_done` hands back the indices
    that reached the file, and the first write error is raised by the next :meth:`put` or :meth:`check`.
    Stopping writes everything already queued first.
    """

    name = "overdrive-part-writer"

    def __init__(self, fd: int, path: Path, depth: int = 16) -> None:
        super().__init__()
        self._fd, self._path = fd, path
        self._queue: queue.Queue[tuple[int, int, memoryview] | None] = queue.Queue(maxsize=depth)
        self._done: deque[int] = deque()
        self._error: TransferError | None = None
        self.pending = 0

    def loop(self) -> None:
        while (item := self._queue.get()) is not None:
            index, offset, view = item
            if self._error is None:
                try:
                    _pwrite_all(self._fd, view, offset)
                    self._done.append(index)
                except OSError as exc:
                    self._error = disk_error(self._path, exc)
            self._queue.task_done()
        self._queue.task_done()

    def wake(self) -> None:
        self._queue.put(None)  # after every chunk already queued: they are written before the loop ends

    def check(self) -> None:
        if self._error is not None:
            raise self._error

    def put(self, index: int, offset: int, view: memoryview) -> None:
        self.check()
        self.pending += 1
        self._queue.put((index, offset, view))

    def take_done(self) -> list[int]:
        done = []
        while self._done:
            done.append(self._done.popleft())
        self.pending -= len(done)
        self.check()
        return done

    def flush(self) -> None:
        """Wait until every queued chunk is written (or failed)."""
        self._queue.join()
        self.check()

    def close(self) -> None:
        """Write what is queued, then end the thread (however long the disk takes)."""
        if self.running:
            self._svc_stop(None)


class PartialFile:
    """``dest.part`` plus its state file, for one plan.

    ``check`` is called now and then during the long steps that run outside the fetch loop (re-checking a partial
    file on resume, reading chunks back for the whole-file hash), so a Ctrl-C recorded by
    :func:`overdrive.interrupts.deferred` stops them there.
    """

    def __init__(self, dest: Path, name: str, check: Callable[[], None] = never) -> None:
        self.dest = dest
        self.name = name
        self.check = check
        self.part = part_path(dest)
        self.state_path = self.part.with_name(self.part.name + ".state")
        self._fd = -1
        self._plan: Plan | None = None
        self._last_save = 0.0
        # whole-file hash fed in chunk order as chunks land; out-of-order chunks wait in memory (bounded) or on disk
        self._whole = blake3.blake3()
        self._cursor = 0
        self._waiting: dict[int, memoryview | None] = {}
        self._held = 0
        self._writer: _Writer | None = None

    def saved_state(self) -> ResumeState | None:
        """The state left by an earlier run, if readable."""
        try:
            state = msgspec.json.decode(self.state_path.read_bytes(), type=ResumeState)
        except (OSError, msgspec.DecodeError, msgspec.ValidationError):
            return None
        if state.version != STATE_VERSION or not valid_chunk_size(state.chunk_size) or state.size < 0:
            return None  # damaged or not ours: start afresh (nothing on disk is trusted unchecked anyway)
        return state

    def open(self, plan: Plan) -> list[int]:
        """Open (or create) the partial file for ``plan``; return the chunk indices already present and verified."""
        self._plan = plan
        state = self.saved_state()
        resumable = (
            state is not None
            and state.content_hash == plan.content_hash
            and state.size == plan.size
            and self.part.is_file()
            and not self.part.is_symlink()
        )
        for attempt in range(3):  # bounded: a file system whose stat and fstat disagree must not hang a fetch
            try:
                self._fd = os.open(self.part, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise disk_error(self.part, exc) from exc
            try:  # one fetch per partial file: a second one into the same folder would write (or truncate) it too
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.close()
                raise TransferError(
                    f"another fetch is writing {self.part} now; let it finish (then this one finds the file there), "
                    "or fetch into another --out"
                ) from None
            if _still_at(self._fd, self.part) or attempt == 2:
                break
            self.close()  # the fetch that held it put it in place between our open and our lock: open it again
        if not resumable:
            try:
                os.ftruncate(self._fd, 0)
            except OSError as exc:
                raise disk_error(self.part, exc) from exc
            # a state file from the start: if the disk fills up before the first periodic save, the chunks that
            # did reach NAME.part are still found (and re-checked) by the next run instead of truncated
            self.save_state([], force=True)
            return []
        assert state is not None
        good = self._verify(plan, _claimed(state, plan))
        for index in good:
            self._waiting[index] = None
        self._advance()
        return good

    def _verify(self, plan: Plan, claimed: bytearray) -> list[int]:
        size = os.fstat(self._fd).st_size
        good: list[int] = []
        for index in range(plan.chunks):
            if index % 16 == 0:
                self.check()
            offset, length = plan.chunk_range(index)
            if offset + length > size:
                break
            if not claimed[index] and not self._has_data(offset, length):
                continue
            if plan.matches(index, os.pread(self._fd, length, offset)):
                good.append(index)
        log.info("resume: %d chunks on disk verified (%d claimed by the state file)", len(good), claimed.count(1))
        return good

    def _has_data(self, offset: int, length: int) -> bool:
        try:
            return os.lseek(self._fd, offset, os.SEEK_DATA) < offset + length
        except OSError as exc:
            return exc.errno != errno.ENXIO  # ENXIO: only a hole after offset; anything else: check the bytes

    def write(self, index: int, data: memoryview | bytes) -> None:
        """Queue a verified chunk for writing at its offset (see :meth:`take_written`); TransferError on a full
        disk or size limit (raised by this or a later call)."""
        assert self._plan is not None
        if self._writer is None:
            self._writer = _Writer(self._fd, self.part, depth=max(1, WRITE_QUEUE_BYTES // self._plan.chunk_size))
            self._writer.start()
        self._writer.put(index, index * self._plan.chunk_size, memoryview(data))
        if index == self._cursor:
            self._whole.update(data)
            self._cursor += 1
            self._advance()
        elif self._held + len(data) <= MAX_HELD:
            self._waiting[index] = memoryview(data)
            self._held += len(data)
        else:
            self._waiting[index] = None

    def take_written(self) -> list[int]:
        """Indices of chunks that have reached the file since the last call."""
        return self._writer.take_done() if self._writer is not None else []

    @property
    def unwritten(self) -> int:
        """Chunks queued but not yet reported by :meth:`take_written`."""
        return self._writer.pending if self._writer is not None else 0

    def _advance(self) -> None:
        """Feed every waiting chunk that is next in order to the whole-file hash."""
        assert self._plan is not None
        while self._cursor in self._waiting:
            if self._waiting[self._cursor] is None:
                self.check()  # a read back: a long run of them can follow a filled gap
            held = self._waiting.pop(self._cursor)
            if held is None:
                if self._writer is not None:
                    self._writer.flush()  # the chunk must be on disk before reading it back
                offset, length = self._plan.chunk_range(self._cursor)
                self._whole.update(os.pread(self._fd, length, offset))
            else:
                self._whole.update(held)
                self._held -= held.nbytes
            self._cursor += 1

    def state_due(self, now: float) -> bool:
        """True when the state file is older than STATE_INTERVAL."""
        return now - self._last_save >= STATE_INTERVAL

    def save_state(self, done: list[tuple[int, int]], now: float | None = None, *, force: bool = False) -> None:
        """Record finished chunks, as half-open index ranges (throttled to every STATE_INTERVAL s unless
        ``force``)."""
        if self._plan is None:
            return
        now = time.monotonic() if now is None else now
        if not force and now - self._last_save < STATE_INTERVAL:
            return
        self._last_save = now
        state = ResumeState(
            version=STATE_VERSION,
            name=self.name,
            content_hash=self._plan.content_hash,
            size=self._plan.size,
            chunk_size=self._plan.chunk_size,
            done=done,
        )
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        try:
            tmp.write_bytes(msgspec.json.encode(state))
            os.replace(tmp, self.state_path)
        except OSError as exc:
            # the earlier state (if any) stays, and resume re-checks every chunk range that holds data anyway
            tmp.unlink(missing_ok=True)
            if exc.errno in _DISK_FULL:  # the chunk writes fail the same way: the fetch reports it, once
                log.debug("cannot save resume state %s: %s", self.state_path, exc.strerror)
            else:
                log.warning("cannot save resume state %s: %s", self.state_path, exc.strerror)

    def finish(self) -> Path:
        """fsync, check the whole-file hash, move into place without overwriting; return the final path."""
        assert self._plan is not None
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None
        try:
            os.fsync(self._fd)
        except OSError as exc:
            raise disk_error(self.part, exc) from exc
        if self._cursor != self._plan.chunks:
            raise TransferError(f"{self.name}: finished with chunk {self._cursor} of {self._plan.chunks} missing")
        # NAME.part stays open (its lock held) until it is in place or gone: a fetch starting meanwhile must not
        # take it over (it would truncate the finished file, the same inode once linked)
        actual = self._whole.hexdigest()
        if actual != self._plan.content_hash:
            self.discard()
            raise IntegrityError(
                f"{self.name}: whole-file hash {actual[:16]}… does not match {self._plan.content_hash[:16]}…; "
                "a holder sent bytes that are not this file, nothing was kept"
            )
        while True:
            final = free_name(self.dest)
            try:
                os.link(self.part, final)
                break
            except FileExistsError:
                continue
            except OSError as exc:
                raise disk_error(final, exc) from exc
        self.part.unlink()
        self.state_path.unlink(missing_ok=True)
        self.close()
        _fsync_dir(final.parent)
        return final

    def discard(self) -> None:
        self.part.unlink(missing_ok=True)  # before close(): the lock is held until the file is gone
        self.state_path.unlink(missing_ok=True)
        self.close()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _still_at(fd: int, path: Path) -> bool:
    """True when ``path`` still names the file open at ``fd``."""
    try:
        named = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def _claimed(state: ResumeState, plan: Plan) -> bytearray:
    """One flag per chunk of ``plan``: set where the state file says the bytes are on disk. The same version
    (hash and size) may come chunked differently (another holder, another --chunk-size): the bytes are where they
    were, so a chunk counts when the done ranges cover all of it."""
    claimed = bytearray(plan.chunks)
    old, new = state.chunk_size, plan.chunk_size
    if old <= 0:
        return claimed
    for first, stop in state.done:
        begin, end = max(first, 0) * old, min(stop * old, plan.size)  # bytes
        start = -(-begin // new)  # the first chunk that starts inside
        last = plan.chunks if end >= plan.size else end // new  # chunks before it end inside
        if start < last:
            claimed[start:last] = b"\x01" * (last - start)
    return claimed


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
