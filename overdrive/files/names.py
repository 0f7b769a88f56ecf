"""The one name policy: checking untrusted file names, opening them inside a shared folder, placing them in a
destination.

Every name that comes from the wire or the index is hostile until :func:`check_name` accepts it: a relative POSIX
path of plain components (no ``..``, no ``.``, no empty component, no absolute path, no NUL or control
characters, no backslash, no drive letter, bounded length). On top of that, both sides check the filesystem:

* :func:`open_shared` (server) resolves the name inside the shared folder, refuses anything whose real path
  leaves it (symlinks out), then walks the resolved path one component at a time with ``O_NOFOLLOW`` relative to
  the folder's descriptor, so a symlink swapped in after the check cannot redirect the open. The final open uses
  ``O_NONBLOCK`` (a FIFO cannot block us) and ``fstat`` must say "regular file" (no devices, FIFOs, sockets).
* :func:`destination` (fetcher) places a checked name under the destination folder and refuses a path whose
  real parent is outside it (a symlinked sub-folder); it creates sub-folders only when asked (just before the
  first write), and :func:`free_name` picks ``name (1).ext`` when a
  different file already has the name.

:func:`check_wire_name` is the looser part of the same policy that index records enforce on every name they carry
(a relative POSIX path, no ``.``/``..``/empty components, no NUL or backslash, at most :data:`MAX_NAME_BYTES`); it
raises ValueError so msgspec turns it into a validation error while decoding. Everything :func:`check_name` accepts
passes it, so a scanner checks only :func:`check_name`.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from overdrive.errors import TransferError, UnsafePathError

MAX_NAME_BYTES = 4096
MAX_COMPONENT_BYTES = 255
MAX_DEPTH = 32


def check_name(name: str) -> tuple[str, ...]:
    """The components of a safe relative name, or UnsafePathError saying what is wrong with it."""
    if not isinstance(name, str) or not name:
        raise UnsafePathError("empty file name")
    shown = repr(name[:80])
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError:
        raise UnsafePathError(f"file name {shown} is not valid UTF-8") from None
    if len(raw) > MAX_NAME_BYTES:
        raise UnsafePathError(f"file name {shown}... is longer than {MAX_NAME_BYTES} bytes")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise UnsafePathError(f"file name {shown} contains NUL or control characters")
    if "\\" in name:
        raise UnsafePathError(f"file name {shown} contains a backslash")
    if name.startswith("/"):
        raise UnsafePathError(f"file name {shown} is an absolute path")
    if len(name) >= 2 and name[1] == ":" and name[0].isalpha():
        raise UnsafePathError(f"file name {shown} starts with a drive letter")
    parts = tuple(name.split("/"))
    if len(parts) > MAX_DEPTH:
        raise UnsafePathError(f"file name {shown} is nested more than {MAX_DEPTH} folders deep")
    for part in parts:
        if part in ("", ".", ".."):
            what = f"a {part!r}" if part else "an empty"  # 'a/', 'a//b' or '/': an empty component
            raise UnsafePathError(f"file name {shown} has {what} component")
        if len(part.encode()) > MAX_COMPONENT_BYTES:
            raise UnsafePathError(f"file name {shown} has a component longer than {MAX_COMPONENT_BYTES} bytes")
    return parts


def check_wire_name(name: str) -> str:
    """Return ``name`` if an index record may carry it (a safe relative POSIX path), else raise ValueError."""
    if not name:
        raise ValueError("file name is empty")
    if len(name) > MAX_NAME_BYTES // 4 or not name.isascii():
        try:
            size = len(name.encode("utf-8"))
        except UnicodeEncodeError:
            raise ValueError(f"file name {name!r} is not valid UTF-8") from None
        if size > MAX_NAME_BYTES:
            raise ValueError(f"file name is longer than {MAX_NAME_BYTES} bytes")
    if "\x00" in name:
        raise ValueError("file name contains NUL")
    if name[0] == "/" or "\\" in name:
        raise ValueError(f"file name {name!r} is not a relative POSIX path")
    parts = name.split("/")
    if "" in parts or "." in parts or ".." in parts:
        raise ValueError(f"file name {name!r} has an empty, '.' or '..' component")
    return name


def _inside(root: Path, path: Path) -> bool:
    return path == root or root in path.parents


def open_shared(folder: Path, name: str) -> tuple[int, os.stat_result]:
    """Open ``name`` read-only inside ``folder``; return (fd, fstat). Raise UnsafePathError or TransferError.

    UnsafePathError: the name is malformed or leads out of the folder. TransferError: missing, not a regular file,
    or unreadable (the message says which).
    """
    parts = check_name(name)
    root = Path(os.path.realpath(folder))
    real = Path(os.path.realpath(root.joinpath(*parts)))
    if not _inside(root, real) or real == root:
        raise UnsafePathError(f"{name!r} leads outside the shared folder")
    rel = real.relative_to(root).parts
    dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in rel[:-1]:
            try:
                next_fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            except OSError as exc:
                raise _open_error(name, exc) from exc
            os.close(dir_fd)
            dir_fd = next_fd
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0)
        try:
            fd = os.open(rel[-1], flags, dir_fd=dir_fd)
        except OSError as exc:
            raise _open_error(name, exc) from exc
    finally:
        os.close(dir_fd)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise TransferError(f"{name!r} is not a regular file")
    return fd, st


def _open_error(name: str, exc: OSError) -> Exception:
    import errno

    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return UnsafePathError(f"{name!r} goes through a symlink that changed while opening it")
    if exc.errno == errno.ENOENT:
        return TransferError(f"{name!r} does not exist")
    return TransferError(f"cannot open {name!r}: {exc.strerror}")


def destination(dest_dir: Path, name: str, *, create: bool = True) -> Path:
    """Where ``name`` lands under ``dest_dir``; refuse anything that would leave it. ``create``: make its
    sub-folders (``dest_dir`` itself must exist); else only check the ones that exist (a fetch checks before it
    knows it will write, and creates just before writing)."""
    parts = check_name(name)
    root = Path(os.path.realpath(dest_dir))
    target = root.joinpath(*parts)
    parent = target.parent
    # walk the sub-folders one by one, refusing symlinks on the way
    current = root
    for part in parts[:-1]:
        current = current / part
        if current.is_symlink():
            raise UnsafePathError(f"{name!r}: {current} is a symlink; refusing to write through it")
        if create:
            current.mkdir(exist_ok=True, mode=0o755)
        elif not current.exists():
            break  # nothing below it exists yet
    real_parent = Path(os.path.realpath(parent))
    if not _inside(root, real_parent):
        raise UnsafePathError(f"{name!r} would be written outside {root}")
    return real_parent / parts[-1]


def copies(path: Path) -> list[Path]:
    """``path`` and the ``stem (N).ext`` copies :func:`free_name` may have made beside it, those that exist, by N.

    A fetch looks through these for one with the wanted content before keeping another copy.
    """
    stem, suffix = path.stem, path.suffix
    pattern = re.compile(r"(.*) \(([1-9][0-9]{0,3})\)" + re.escape(suffix), re.DOTALL)
    numbered: list[tuple[int, Path]] = []
    try:
        with os.scandir(path.parent) as entries:
            for entry in entries:
                match = pattern.fullmatch(entry.name)
                if match and match.group(1) == _numbered_stem(stem, match.group(2), suffix):
                    numbered.append((int(match.group(2)), path.with_name(entry.name)))
    except OSError:
        return []
    found = [path] if os.path.lexists(path) else []
    return found + [p for _, p in sorted(numbered)]


NAME_MAX = 255
"""Bytes in one file name on the file systems overdrive writes to (ext4, XFS, btrfs, tmpfs)."""


def fit_name(name: str, room: int = NAME_MAX) -> str:
    """``name`` cut to at most ``room`` bytes of UTF-8 (never inside a character)."""
    return name.encode("utf-8", "surrogateescape")[:room].decode("utf-8", "ignore")


def _numbered_stem(stem: str, n: str, suffix: str) -> str:
    """The stem of copy ``n``: cut so that ``stem (n).ext`` fits in :data:`NAME_MAX` bytes."""
    return fit_name(stem, NAME_MAX - len(f" ({n}){suffix}".encode("utf-8", "surrogateescape")))


def free_name(path: Path) -> Path:
    """``path`` if nothing is there, else the first free ``stem (N).ext`` beside it (the stem cut when the name
    would not fit in :data:`NAME_MAX` bytes)."""
    if not os.path.lexists(path):
        return path
    stem, suffix = path.stem, path.suffix
    for n in range(1, 10_000):
        candidate = path.with_name(f"{_numbered_stem(stem, str(n), suffix)} ({n}){suffix}")
        if not os.path.lexists(candidate):
            return candidate
    raise TransferError(f"no free name beside {path}")
