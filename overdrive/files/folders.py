"""Several folders shared as one node (``overdrive share F1 F2 ...``): one catalogue, names kept apart.

Names: a folder shared alone keeps its names relative to it (as before). Folders shared together each put their
files under their own base name as the first component: sharing ``~/lectures`` and ``/media/usb/papers`` lists
``lectures/week1.mp4`` and ``papers/notes.pdf``. Two folders with the same base name would mix their names, and a
folder inside another would share its files twice: both are refused with one line (:func:`check_folders`).

A fetch of ``papers/notes.pdf`` is served from the folder whose base name is ``papers``, and only inside it
(:func:`locate`, then :func:`~overdrive.files.names.open_shared` in that folder).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from overdrive.errors import ConfigError, UnsafePathError
from overdrive.files.model import FileInfo
from overdrive.files.names import check_name
from overdrive.files.scanner import FolderScanner


def check_folders(folders: Sequence[Path]) -> list[Path]:
    """The folders resolved, checked to be shareable together; ConfigError (one line) when two would clash."""
    resolved = [Path(f).resolve() for f in folders]
    if len(resolved) < 2:
        return resolved
    seen: dict[str, Path] = {}
    for given, folder in zip(folders, resolved, strict=True):
        name = folder.name
        try:
            check_name(name)
        except UnsafePathError:
            raise ConfigError(
                f"{given} cannot be shared with other folders: its name {name!r} cannot be a prefix"
            ) from None
        if name in seen:
            raise ConfigError(
                f"{seen[name]} and {folder} have the same name {name!r}, which would mix their files in the index; "
                "share them from two nodes, or rename one"
            )
        seen[name] = folder
    for folder in resolved:
        for other in resolved:
            if other != folder and other.is_relative_to(folder):
                raise ConfigError(f"{other} is inside {folder}: share {folder} alone, or the folders side by side")
    return resolved


def locate(roots: Mapping[str, Path], name: str) -> tuple[Path, str] | None:
    """The folder serving ``name`` and the name inside it, or None when no folder has its prefix. ``roots`` maps
    each prefix to its folder; one folder shared alone has the prefix ""."""
    if "" in roots:
        return roots[""], name
    prefix, sep, rest = name.partition("/")
    folder = roots.get(prefix)
    if folder is None or not sep or not rest:
        return None
    return folder, rest


class FolderSet:
    """The catalogue of several folders' scanners, each under its own prefix (thread-safe reads)."""

    def __init__(self, folders: Sequence[Path]) -> None:
        resolved = check_folders(folders)
        alone = len(resolved) == 1
        self.scanners = [FolderScanner(f, prefix="" if alone else f.name) for f in resolved]
        self._by_prefix = {s.prefix: s for s in self.scanners}

    @property
    def roots(self) -> dict[str, Path]:
        return {s.prefix: s.folder for s in self.scanners}

    @property
    def folders(self) -> list[Path]:
        return [s.folder for s in self.scanners]

    def get(self, name: str) -> FileInfo | None:
        scanner = self._by_prefix.get("") or self._by_prefix.get(name.partition("/")[0])
        return scanner.get(name) if scanner is not None else None

    def files(self) -> list[FileInfo]:
        return [f for s in self.scanners for f in s.files()]

    def __len__(self) -> int:
        return sum(len(s) for s in self.scanners)

    def scan(self, progress: Callable[[FolderScanner], None] | None = None) -> None:
        """Scan every folder (``progress`` is called as :attr:`FolderScanner.progress` is)."""
        for scanner in self.scanners:
            scanner.progress = progress
            try:
                scanner.scan()
            finally:
                scanner.progress = None

    def save_cache(self) -> None:
        for scanner in self.scanners:
            scanner.save_cache()

    @property
    def hashed(self) -> int:
        return sum(s.hashed for s in self.scanners)

    @property
    def skipped(self) -> int:
        return sum(s.skipped for s in self.scanners)
