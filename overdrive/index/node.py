"""A sharing node: keeps its folder's entries current in the index through any live master.

:class:`NodeSession` is the protocol logic without sockets: what to send next (a full registration after
connecting, then changes, heartbeats when idle), and when the current master has gone quiet for ``failover``
seconds, to move to the next one and register everything again. Every report carries the node's clock, which
follows the masters' (each Ack carries the master's clock; a new connection starts with a heartbeat to learn it), so
a report a stalled master handles late loses to what the node reported since through another. :class:`Node` is the
thread around it: one DEALER to the current master, a folder watch feeding changed paths, and the folder scanner
(both from :mod:`overdrive.files`).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import msgspec
import zmq

from overdrive.bus.address import Endpoint
from overdrive.bus.codec import Message
from overdrive.bus.service import ZmqService
from overdrive.bus.sockets import Bus
from overdrive.errors import ConfigError, ProtocolError
from overdrive.files.folders import FolderSet
from overdrive.files.model import FileInfo
from overdrive.files.scanner import FolderScanner
from overdrive.files.watch import FolderWatch, folder_identity
from overdrive.index.protocol import CODEC, Ack, Announce, NodeBeat, size_batches

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfig:
    """How a node talks to the masters."""

    masters: tuple[Endpoint, ...]
    address: str
    """``host:port`` where this node serves files (goes into its records)."""
    heartbeat: float = 0.5
    failover: float = 1.5
    """Seconds without any reply before moving to the next master."""
    settle: float = 0.2
    """Seconds a path must be quiet before it is re-examined (files being written)."""
    retry: float = 10.0
    """Seconds after a master refused a registration (its database is full, say) before registering again."""
    recheck: float = 1.0
    """Seconds between checks that the shared folder is still the one being watched (deleted, moved away,
    replaced or back again)."""
    poll: float = 10.0
    """Seconds between full rescans of a folder that cannot be watched (the system's inotify instances or watches
    used up by other programs)."""

    def __post_init__(self) -> None:
        if not self.masters:
            raise ConfigError("a node needs at least one master (--master HOST:PORT)")
        if (
            self.heartbeat <= 0
            or self.failover <= self.heartbeat
            or self.settle < 0
            or min(self.recheck, self.poll) <= 0
        ):
            raise ConfigError("need 0 < heartbeat < failover, settle >= 0, recheck > 0 and poll > 0")


def _name(f: FileInfo) -> str:
    return f.name


@dataclass
class NodeSession:
    """Sans-IO: decides the node's next message and which master to use."""

    node_id: str
    config: NodeConfig
    master_index: int = 0
    full_needed: bool = True
    changed: dict[str, FileInfo] = field(default_factory=dict)
    removed: set[str] = field(default_factory=set)
    failovers: int = 0
    answers: int = 0
    """Replies to our requests taken so far (from any master)."""
    _refs: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _queue: list[Announce] = field(default_factory=list)
    _in_flight: Message | None = None
    _sent_at: float = 0.0
    _last_beat: float = float("-inf")
    _heard: float = 0.0
    _retry_at: float | None = None
    clock: int = 0
    """The stamp of our last report, or the newest master clock heard if larger: a counter following the masters'
    clocks, not our wall clock, so a node with a wrong clock still stamps close to the masters'."""
    _synced: bool = False
    """Heard the current master's clock since connecting (reports wait for it)."""
    _listed: set[str] = field(default_factory=set)
    """Names we reported present whose removal no master has acknowledged: some master may still hold (or be
    about to handle) such a listing, so a full registration also removes those no longer shared by name."""

    @property
    def master(self) -> Endpoint:
        return self.config.masters[self.master_index]

    @property
    def idle(self) -> bool:
        """Nothing waiting to be registered or acknowledged."""
        waiting = self._queue or self.changed or self.removed or self.full_needed or self._retry_at is not None
        return not waiting and not isinstance(self._in_flight, Announce)

    def files_changed(self, changed: Sequence[FileInfo], removed: Sequence[str]) -> None:
        for f in changed:
            self.changed[f.name] = f
            self.removed.discard(f.name)
        for name in removed:
            self.changed.pop(name, None)
            self.removed.add(name)

    def connected(self, now: float) -> None:
        """A (new) connection to :attr:`master`: everything must be registered again."""
        self.full_needed = True
        self._queue.clear()
        self._in_flight = None
        self._retry_at = None
        self._heard = now
        self._synced = False

    def next_message(self, now: float, files: Sequence[FileInfo]) -> Message | None:
        """The message to send now, if any (one request in flight at a time)."""
        if self._in_flight is not None:
            return None
        if not self._synced:  # the master's clock first: a report stamped behind it would be refused
            return self._send(NodeBeat(ref=next(self._refs)), now)
        if self._retry_at is not None and now >= self._retry_at:
            self._retry_at = None
            self.full_needed = True
        if self.full_needed:
            self.full_needed = False
            self.changed.clear()
            self.removed.clear()
            sync = next(self._refs)
            chunks = size_batches(list(files), _name) or [[]]
            self._queue = [
                Announce(
                    ref=next(self._refs),
                    holder=self.node_id,
                    address=self.config.address,
                    files=chunk,
                    full=True,
                    sync=sync,
                    final=i == len(chunks) - 1,
                )
                for i, chunk in enumerate(chunks)
            ]
            self._listed.update(f.name for f in files)
            stale = self._listed.difference(f.name for f in files)
            for chunk in size_batches(sorted(stale), str):
                self._queue.append(
                    Announce(ref=next(self._refs), holder=self.node_id, address=self.config.address, removed=chunk)
                )
        elif not self._queue and (self.changed or self.removed):
            infos = size_batches(list(self.changed.values()), _name)
            self._listed.update(self.changed)
            gone = size_batches(sorted(self.removed), str)
            self.changed.clear()
            self.removed.clear()
            for i in range(max(len(infos), len(gone))):
                self._queue.append(
                    Announce(
                        ref=next(self._refs),
                        holder=self.node_id,
                        address=self.config.address,
                        files=infos[i] if i < len(infos) else [],
                        removed=gone[i] if i < len(gone) else [],
                    )
                )
        if self._queue:
            self.clock += 1  # stamped when sent, so a long registration stays close to the master's clock
            return self._send(msgspec.structs.replace(self._queue.pop(0), clock=self.clock), now)
        if now - self._last_beat >= self.config.heartbeat:
            return self._send(NodeBeat(ref=next(self._refs)), now)
        return None

    def _send(self, message: Message, now: float) -> Message:
        if isinstance(message, NodeBeat):
            self._last_beat = now
        self._in_flight = message
        self._sent_at = now
        return message

    def on_reply(self, reply: Message, now: float) -> None:
        if not isinstance(reply, Ack) or self._in_flight is None or reply.ref != getattr(self._in_flight, "ref", -1):
            return
        self._heard = now
        self.answers += 1
        self.clock = max(self.clock, reply.clock)
        self._synced = True
        if reply.ok and isinstance(self._in_flight, Announce):
            self._listed.difference_update(self._in_flight.removed)
        if not reply.ok:
            log.error(
                "master %s refused our registration: %s; registering again in %g s",
                self.master.display,
                reply.error,
                self.config.retry,
            )
            self._queue.clear()  # the rest of a refused registration would be half of one
            self._retry_at = now + self.config.retry
        self._in_flight = None

    def failed(self, now: float) -> bool:
        """True when the current master has not answered for ``failover`` s: move on to the next master."""
        if self._in_flight is None or now - self._sent_at < self.config.failover:
            return False
        self.master_index = (self.master_index + 1) % len(self.config.masters)
        self.failovers += 1
        self.connected(now)
        return True


@dataclass(slots=True)
class _Followed:
    """One shared folder as the node follows it: its scanner, its watch, and which folder is at its path."""

    scanner: FolderScanner
    watch: FolderWatch
    folder_id: tuple[int, int] | None
    next_check: float = 0.0


class Node(ZmqService):
    """Registers a folder (or several, as one :class:`~overdrive.files.folders.FolderSet`) with the index and keeps
    it current (a background thread); every folder has its own watch."""

    name = "overdrive-node"

    def __init__(self, bus: Bus, scanner: FolderScanner | FolderSet, config: NodeConfig, *, watch: bool = True) -> None:
        super().__init__(bus)
        self.scanner = scanner
        self.config = config
        self.session = NodeSession(bus.node_id, config)
        self.watch = watch
        self._sock: zmq.Socket | None = None  # type: ignore[type-arg]
        scanners = scanner.scanners if isinstance(scanner, FolderSet) else [scanner]
        self._followed = [_Followed(s, FolderWatch(s.folder, config.poll), folder_identity(s.folder)) for s in scanners]
        self._catch_up = False
        """Set once the watch is armed at start: what changed between the first scan and the watch has no event."""
        self._outage: tuple[float, int] | None = None
        """(answers, failovers) when the masters stopped answering; None while one answers."""
        self._silent: set[Endpoint] = set()
        """Masters said to have stopped answering in this outage: only they 'answer again'."""
        self.registered = threading.Event()
        """Set once the first full registration has been acknowledged."""

    @property
    def master(self) -> Endpoint:
        return self.session.master

    def setup(self) -> None:
        if self.watch:
            for followed in self._followed:
                self._watched_or_poll(followed, followed.watch.start())
            self._catch_up = True  # in the loop, not here: a rescan of a large folder can outlast the start timeout
        self._open(time.monotonic())

    def _watched_or_poll(self, followed: _Followed, armed: bool) -> None:
        if not armed:
            followed.next_check = time.monotonic() + self.config.poll

    def check_folder(self, now: float) -> None:
        """Notice a shared folder deleted, moved away, replaced, or back, and follow it: files of a folder that is
        gone are withdrawn from the index (nothing can serve them), and a folder at the path again is watched and
        registered afresh. Without this the watch died with the first folder and the index froze until a restart."""
        for followed in self._followed:
            self._check(followed, now)

    def _check(self, followed: _Followed, now: float) -> None:
        watch, scanner = followed.watch, followed.scanner
        if now < followed.next_check and not watch.changes.root_changed.is_set():
            return
        followed.next_check = now + self.config.recheck  # or poll, when rearming fails below
        current = folder_identity(scanner.folder)
        lost = watch.lost()
        if current == followed.folder_id and not lost and (current is None or watch.armed):
            return
        folder = scanner.folder
        watch.disarm()
        if current is not None:
            self._watched_or_poll(followed, watch.rearm())
        previous, followed.folder_id = followed.folder_id, current
        changed, removed = scanner.resync()
        self.session.files_changed(changed, removed)
        if current is None:
            if previous is not None:
                log.warning(
                    "shared folder %s is gone (deleted or moved away): %d file(s) withdrawn from the index; "
                    "waiting for a folder at that path",
                    folder,
                    len(removed),
                )
        elif previous is None:
            log.warning("shared folder %s is back: sharing its %d file(s) again", folder, len(scanner))
        elif previous != current or lost:
            log.warning("shared folder %s was replaced: watching the new one, %d file(s)", folder, len(scanner))

    def _failed_over(self) -> None:
        """Say once that the master stopped answering, and once that no master does, not at every failover: with
        every master down a node warned every 1.5 s for as long as the outage lasted."""
        masters = self.config.masters
        if self._outage is None:
            self._outage = (self.session.answers, self.session.failovers)
            previous = masters[(self.session.master_index - 1) % len(masters)]
            self._silent = {previous}
            log.warning(
                "node: master %s %s; trying %s",
                previous.display,
                "stopped answering" if self.session.answers else "does not answer",
                "it again" if len(masters) == 1 else self.session.master.display,
            )
        elif self.session.failovers - self._outage[1] == len(masters):
            self._silent = set(masters)
            log.warning("node: no master answers (%s); will keep trying", ", ".join(m.display for m in masters))
        else:
            log.debug("node: failing over to %s", self.session.master.display)

    def teardown(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None
        for followed in self._followed:
            followed.watch.stop()
        self.scanner.save_cache()

    def _open(self, now: float) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
        self._sock = self.bus.client(zmq.DEALER, hwm=1000)
        self.bus.connect(self._sock, self.session.master, verify=False)
        self.session.connected(now)
        log.info("node %s: using master %s", self.bus.node_id, self.session.master.display)

    def loop(self, control: zmq.Socket) -> None:  # type: ignore[type-arg]
        while True:
            sock = self._sock
            assert sock is not None
            poller = zmq.Poller()
            poller.register(control, zmq.POLLIN)
            poller.register(sock, zmq.POLLIN)
            events = dict(poller.poll(100))
            if control in events:
                return
            now = time.monotonic()
            if sock in events:
                while True:
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    try:
                        reply, _ = CODEC.decode(frames)
                    except ProtocolError as exc:
                        log.debug("node: dropped a malformed reply: %s", exc)
                        continue
                    self.session.on_reply(reply, time.monotonic())
                if self._outage is not None and self.session.answers > self._outage[0]:
                    master = self.session.master
                    log.warning("node: master %s answers%s", master.display, " again" if master in self._silent else "")
                    self._outage = None
                if self.session.idle and not self.registered.is_set():
                    self.registered.set()
            if self.watch:
                self.check_folder(now)
            catch_up, self._catch_up = self._catch_up, False  # a long first scan: what changed after it passed
            for followed in self._followed:
                if catch_up:
                    self.session.files_changed(*followed.scanner.resync())
                settled = followed.watch.take_settled(self.config.settle)
                if settled:
                    changed, removed = followed.scanner.refresh(settled)
                    if changed or removed:
                        log.info("node: %d changed, %d removed", len(changed), len(removed))
                        self.session.files_changed(changed, removed)
            if self.session.failed(now):
                self._failed_over()
                self._open(now)
            message = self.session.next_message(now, self.scanner.files())
            if message is not None:
                try:
                    self._sock.send_multipart(CODEC.encode(message), zmq.NOBLOCK)  # type: ignore[union-attr]
                except zmq.Again:
                    pass  # counted as unanswered; failover handles it
