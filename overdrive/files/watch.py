"""Following a shared folder's changes with watchdog: changed paths as they settle, and the folder itself going,
coming back or being replaced.

:class:`FolderWatch` owns the observer and the one watch on the folder; its owner (a sharing node) asks it which
paths settled (:meth:`FolderWatch.take_settled`) and whether the watch still reports (:meth:`FolderWatch.lost`),
and re-arms it on a folder that is back. A folder that cannot be watched (inotify instances or watches used up by
other programs) is said once; the owner rescans it instead.
"""

from __future__ import annotations

import contextlib
import logging
import stat
import threading
import time
import warnings
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import ObservedWatch

log = logging.getLogger(__name__)


class Changes(FileSystemEventHandler):
    """Collects changed paths (relative to the folder) with the time of their last event."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.lock = threading.Lock()
        self.paths: dict[str, float] = {}
        self.root_changed = threading.Event()
        """Set when an event names the folder itself as deleted or moved: the watch on it is gone."""

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        now = time.monotonic()
        for raw in (event.src_path, getattr(event, "dest_path", "")):
            if not raw:
                continue
            text = raw.decode(errors="surrogateescape") if isinstance(raw, bytes) else raw
            try:
                rel = Path(text).relative_to(self.folder).as_posix()
            except ValueError:
                continue
            if rel and rel != ".":
                with self.lock:
                    self.paths[rel] = now
            elif event.event_type in ("deleted", "moved"):
                self.root_changed.set()

    def take_settled(self, settle: float) -> list[str]:
        """The paths quiet for ``settle`` seconds, forgotten once taken."""
        now = time.monotonic()
        with self.lock:
            ready = [p for p, t in self.paths.items() if now - t >= settle]
            for p in ready:
                del self.paths[p]
        return ready


def folder_identity(folder: Path) -> tuple[int, int] | None:
    """(device, inode) of the folder at ``folder``, or None when there is no folder there."""
    try:
        st = folder.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None


class FolderWatch:
    """One recursive watchdog watch on ``folder``, re-armed by its owner when the folder is replaced or back."""

    def __init__(self, folder: Path, poll: float) -> None:
        self.folder = folder
        self.poll = poll
        """Seconds between the owner's rescans while the folder cannot be watched (only said in the warning)."""
        self.changes = Changes(folder)
        self._observer: Observer | None = None  # type: ignore[valid-type]
        self._watched: ObservedWatch | None = None
        self._arm_failed = False

    @property
    def armed(self) -> bool:
        return self._watched is not None

    def start(self) -> bool:
        """Start the observer and watch the folder; False when it must be polled instead (see :meth:`rearm`)."""
        # watchdog warns when a folder made in one go ('mkdir -p a/b/c') is watched twice, by its walk of the
        # new folder and by the subfolders' own events: harmless (the same callback), but several KB per line
        warnings.filterwarnings("ignore", "Callback with id", RuntimeWarning, "watchdog")
        observer = Observer()
        observer.daemon = True
        observer.start()
        self._observer = observer
        return self.rearm()

    def rearm(self) -> bool:
        """Watch the folder now at the path (a new one when it was replaced); when it cannot be watched, say so
        once and return False: the owner rescans it every ``poll`` seconds instead."""
        assert self._observer is not None
        try:
            self.changes.root_changed.clear()
            self._watched = self._observer.schedule(self.changes, str(self.folder), recursive=True)
        except FileNotFoundError:  # the folder went again already: the next check sees it
            return True
        except OSError as exc:  # inotify instances or watches used up by other programs
            if not self._arm_failed:
                log.warning(
                    "cannot watch the shared folder %s for changes (%s); rescanning it every %g s instead",
                    self.folder,
                    exc.strerror or exc,
                    self.poll,
                )
            self._arm_failed = True
            return False
        if self._arm_failed:
            log.warning("watching the shared folder %s for changes again", self.folder)
        self._arm_failed = False
        return True

    def disarm(self) -> None:
        if self._observer is not None and self._watched is not None:
            with contextlib.suppress(KeyError, OSError):
                self._observer.unschedule(self._watched)
        self._watched = None

    def lost(self) -> bool:
        """True when the watch armed on the folder no longer reports (the folder was deleted: its emitter ended)."""
        if self._watched is None or self._observer is None:
            return False
        if self.changes.root_changed.is_set():
            return True
        return not any(e.watch == self._watched and e.is_alive() for e in self._observer.emitters)

    def take_settled(self, settle: float) -> list[str]:
        return self.changes.take_settled(settle)

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(5)
            self._observer = None
            self._watched = None
