"""A shared folder's files: the scanner with a persistent hash cache, usable as a Catalogue.

Only regular files count; symlinks (to files or folders, inside or out) are never followed or shared, nor are
the transfer's partial files (``*.part``, ``*.part.state`` and its ``.tmp``), nor overdrive's own secrets
(:func:`private_paths`) when the folder holds them. Names are relative POSIX paths; a
file whose name the index cannot carry or a fetcher would refuse (not UTF-8, a backslash, a control character,
over 4096 bytes, more than 32 folders deep) is skipped with a warning.

Hashing is the slow part, so hashes are cached by (name, size, mtime_ns) in the cache folder: rescanning an
unchanged folder only stats files.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import msgspec

from overdrive import paths
from overdrive.errors import UnsafePathError
from overdrive.files.model import FileInfo, check_hash, hash_file
from overdrive.files.names import check_name

log = logging.getLogger(__name__)

SKIP_SUFFIXES = (".part", ".part.state", ".part.state.tmp")
SAVE_EVERY = 30.0
"""Seconds of hashing between saves of the hash cache, so a first scan of a large folder that is interrupted (Ctrl-C,
a crash, a reboot) keeps most of what it hashed."""
PROGRESS_EVERY = 5.0
"""Seconds between calls of :attr:`FolderScanner.progress` while hashing."""
_CacheEntry = tuple[int, int, str]


def _valid_hash(digest: str) -> bool:
    """False for a damaged cache entry's digest: the file is hashed again rather than described wrongly."""
    try:
        check_hash(digest)
    except ValueError:
        return False
    return True


def private_paths() -> list[Path]:
    """overdrive's own secrets, never shared even when the shared folder holds them ('overdrive share ~'): the node's
    identity key (whoever has it can speak for the node), the derived network keys, and the config folder (a
    config file may hold a database password)."""
    return [paths.data_dir() / "identity.key", paths.cache_dir() / "keys", paths.config_dir()]


def cache_file_for(folder: Path) -> Path:
    digest = hashlib.blake2b(str(folder).encode(errors="surrogateescape"), digest_size=8).hexdigest()
    return paths.cache_dir() / "hashes" / f"{digest}.msgpack"


class FolderScanner:
    """The files under one folder, kept current by :meth:`scan` and :meth:`refresh` (thread-safe reads).

    With a ``prefix`` (one of several folders shared together, :mod:`.folders`) every name is ``PREFIX/relative``;
    :meth:`refresh` still takes paths relative to the folder (as its watch reports them), and the hash cache is
    keyed by them, so a folder shared alone or with others hashes nothing again."""

    def __init__(self, folder: Path, cache_file: Path | None = None, *, prefix: str = "") -> None:
        self.folder = Path(folder).resolve()
        self.prefix = prefix
        self._lead = f"{prefix}/" if prefix else ""
        self.cache_file = cache_file or cache_file_for(self.folder)
        self._files: dict[str, FileInfo] = {}
        self._lock = threading.Lock()
        self._cache: dict[str, _CacheEntry] = self._load_cache()
        self._cache_dirty = False
        self.hashed = 0
        self.skipped = 0
        self._warned: set[str] = set()
        self._saved_at = time.monotonic()
        self.hashed_bytes = 0
        self.progress: Callable[[FolderScanner], None] | None = None
        """Called with the scanner at most every :data:`PROGRESS_EVERY` s while it hashes (``hashed``,
        ``hashed_bytes``): a first scan of a large folder can take many minutes."""
        self._progress_at = time.monotonic()
        self._private = {p for p in (q.resolve() for q in private_paths()) if p.is_relative_to(self.folder)}

    # -- Catalogue -------------------------------------------------------------------------------------------

    def get(self, name: str) -> FileInfo | None:
        with self._lock:
            return self._files.get(name)

    def files(self) -> list[FileInfo]:
        with self._lock:
            return list(self._files.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._files)

    @property
    def roots(self) -> dict[str, Path]:
        """Where names are served from: the folder, under its prefix (see :func:`.folders.locate`)."""
        return {self.prefix: self.folder}

    # -- scanning --------------------------------------------------------------------------------------------

    def scan(self) -> dict[str, FileInfo]:
        """Rescan everything; return the current files by name."""
        found: dict[str, FileInfo] = {}
        try:
            self._walk(self.folder, found)
        except BaseException:  # Ctrl-C in a long first scan: keep the hashes made so far for the next run
            self.save_cache()
            raise
        with self._lock:
            self._files = found
        self._cache = {n: c for n, c in self._cache.items() if self._lead + n in found}
        self.save_cache()
        return dict(found)

    def resync(self) -> tuple[list[FileInfo], list[str]]:
        """Rescan everything after the folder itself went away, came back or was replaced; return (added or changed
        files, removed names) against what was held before. A folder that is not there holds no files (no warning:
        the caller says so once), and its hash cache is kept for when it comes back (a remounted drive)."""
        found: dict[str, FileInfo] = {}
        if self.folder.is_dir():
            self._walk(self.folder, found)
        with self._lock:
            before, self._files = self._files, found
        self.save_cache()
        changed = [f for name, f in found.items() if before.get(name) != f]
        return changed, [name for name in before if name not in found]

    def refresh(self, names: Iterable[str]) -> tuple[list[FileInfo], list[str]]:
        """Re-examine changed relative paths (files or folders); return (added or changed files, removed names)."""
        changed: list[FileInfo] = []
        removed: list[str] = []
        for name in sorted(set(names)):
            path = self.folder / name
            try:
                st = path.lstat()
            except OSError:
                st = None
            if st is not None and stat.S_ISDIR(st.st_mode):
                found: dict[str, FileInfo] = {}
                self._walk(path, found)
                prefix = f"{self._lead}{name}/"
                with self._lock:
                    old = {n for n in self._files if n.startswith(prefix)}
                    for gone in old - found.keys():
                        del self._files[gone]
                        removed.append(gone)
                    for entry in found.values():
                        if self._files.get(entry.name) != entry:
                            self._files[entry.name] = entry
                            changed.append(entry)
                continue
            current = self._describe(name, path, st) if st is not None and stat.S_ISREG(st.st_mode) else None
            full = self._lead + name
            with self._lock:
                if current is None:
                    prefix = full + "/"
                    for gone in [n for n in self._files if n == full or n.startswith(prefix)]:
                        del self._files[gone]
                        removed.append(gone)
                elif self._files.get(full) != current:
                    self._files[full] = current
                    changed.append(current)
        self.save_cache()
        return changed, removed

    def _walk(self, top: Path, found: dict[str, FileInfo]) -> None:
        stack = [top]
        while stack:
            current = stack.pop()
            try:
                with os.scandir(current) as it:
                    entries = list(it)
            except OSError as exc:
                self._warn_once(f"cannot read folder {current}: {exc.strerror}")
                continue
            for entry in entries:
                if self._private and Path(entry.path) in self._private:
                    continue
                try:
                    if entry.is_symlink():
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
                        continue
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                path = Path(entry.path)
                name = path.relative_to(self.folder).as_posix()
                described = self._describe(name, path, st)
                if described is not None:
                    found[described.name] = described

    def _describe(self, name: str, path: Path, st: os.stat_result) -> FileInfo | None:
        if name.endswith(SKIP_SUFFIXES):
            return None
        if self._private and any(p == path or p in path.parents for p in self._private):
            return None  # reached by a watch event (a walk skips them)
        try:  # the rules every fetcher applies, which include those of the index records
            check_name(self._lead + name)
        except UnsafePathError as exc:
            self.skipped += 1
            self._warn_once(f"not sharing {name!r}: {exc}")
            return None
        cached = self._cache.get(name)
        if cached is not None and cached[0] == st.st_size and cached[1] == st.st_mtime_ns and _valid_hash(cached[2]):
            digest = cached[2]
        else:
            try:
                digest = hash_file(path)
            except OSError as exc:
                self._warn_once(f"cannot read {path}: {exc.strerror}")
                return None
            self.hashed += 1
            self.hashed_bytes += st.st_size
            self._cache[name] = (st.st_size, st.st_mtime_ns, digest)
            self._cache_dirty = True
            now = time.monotonic()
            if now - self._saved_at >= SAVE_EVERY:
                self.save_cache()
            if self.progress is not None and now - self._progress_at >= PROGRESS_EVERY:
                self._progress_at = now
                self.progress(self)
        return FileInfo(name=self._lead + name, size=st.st_size, content_hash=digest, mtime_ns=st.st_mtime_ns)

    def _warn_once(self, message: str) -> None:
        """A problem with one path is a warning the first time only: a folder that is rescanned (polled, or back
        after it went away) would repeat every skipped name at each rescan."""
        if message in self._warned:
            log.debug("%s", message)
            return
        self._warned.add(message)
        log.warning("%s", message)

    # -- the hash cache --------------------------------------------------------------------------------------

    def _load_cache(self) -> dict[str, _CacheEntry]:
        try:
            data = self.cache_file.read_bytes()
        except OSError:
            return {}
        try:
            return msgspec.msgpack.decode(data, type=dict[str, tuple[int, int, str]])
        except msgspec.DecodeError:
            log.warning("ignoring a damaged hash cache %s", self.cache_file)
            return {}

    def save_cache(self) -> None:
        """Write the hash cache if it changed (atomically, mode 0600)."""
        if not self._cache_dirty:
            return
        self._saved_at = time.monotonic()
        try:
            paths.write_private(self.cache_file, msgspec.msgpack.encode(self._cache))
            self._cache_dirty = False
        except OSError as exc:
            log.warning("cannot save the hash cache %s: %s", self.cache_file, exc.strerror)
