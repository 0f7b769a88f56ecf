"""The file server a sharing node runs: a CURVE ROUTER in a background thread around :class:`ServeCore`.

Usage (this is what ``overdrive share`` does)::

    server = FileServer(bus, folder, Endpoint("0.0.0.0", 7772), catalogue)
    server.start()              # binds (port 0 = ephemeral), waits until ready; raises ConfigError if it cannot
    print(server.endpoint)      # the endpoint actually bound
    ...
    server.stop()               # tells the thread over inproc, joins it, closes every socket and file
    server.stats                # ServerStats: opened, refused, chunks_sent, bytes_sent, malformed, ...

The ROUTER has ``ROUTER_MANDATORY`` set and sends without blocking, so a reply to a peer that has gone (or whose
queue is full) is counted in ``stats.unroutable`` instead of being dropped silently or stalling other peers.
A chunk is read with one ``os.pread`` and sent zero-copy (``copy=False``): libzmq sends from the ``bytes``
object itself and pyzmq's garbage-collector thread releases it once libzmq is done. Every reply is sent tracked,
and once libzmq is done with it (written to the connection, or dropped) the core hears of it
(:meth:`~overdrive.transfer.serving.ServeCore.sent`): that is what its bytes-in-flight limits count, so a peer that
does not read holds a bounded amount of the server's memory. Every request is attributed to the authenticated node
id of its connection (``bus.peer_id``) and to the address it came from (``bus.peer_address``), which is what the
per-identity and per-address limits count.

The server's sockets live in a context of their own with :data:`IO_THREADS` libzmq I/O threads (and its own ZAP
handler, same security as the ``bus`` given): libzmq encrypts each CURVE connection in one I/O thread, so a
fetcher's several connections (:mod:`~overdrive.transfer.fetcher`) are encrypted on several cores.

Chunk tables (a read of the whole file the first time it is opened: seconds for GiBs) are built by up to
``ServerConfig.table_workers`` worker threads, never on the loop, so other peers' transfers keep flowing meanwhile;
a finished build is handed back through a queue, and a pipe in the loop's poller wakes it.
"""

from __future__ import annotations

import logging
import os
import queue
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import zmq

from overdrive.bus.address import Endpoint
from overdrive.bus.service import START_TIMEOUT, ZmqService
from overdrive.bus.sockets import Bus
from overdrive.errors import BusError, TransferError
from overdrive.files.model import Catalogue
from overdrive.transfer import allocator
from overdrive.transfer.server_config import ServerConfig, ServerStats
from overdrive.transfer.serving import Reply, ServeCore
from overdrive.transfer.session import MAX_WINDOW
from overdrive.transfer.tables import TableBuild

log = logging.getLogger(__name__)

SEND_QUEUE = 4 * MAX_WINDOW
"""High-water mark per connection, each way, in whole messages (libzmq counts a multipart message once, however
many parts it has): a peer that does not read gets at most 128 replies queued (then they are dropped and counted in
``stats.unroutable``; the bytes they may hold are bounded apart, by the core's in-flight limits); a fetcher that
keeps to its window (at most 32 requests) never comes near it."""
MAX_REQUEST = 64 << 10
"""Largest message part a fetcher may send (an Open with the longest name is about 4 KiB): a bigger one drops its
connection before it is buffered."""
_RELEASE_POLL_MS = 10
"""Longest wait in one poll while Reads wait for bytes in flight to go out (libzmq says nothing when it is done
with a message: the trackers are looked at on every wake-up)."""
_BATCH = 256
"""Most requests handled per poll wake-up before checking the control socket again."""
IO_THREADS = 2


class FileServer(ZmqService):
    """Serve ``folder`` (or several: a mapping of name prefixes to folders, see :mod:`overdrive.files.folders`; only
    names ``catalogue`` holds) on ``endpoint`` until :meth:`stop`."""

    name = "overdrive-fileserver"

    def __init__(
        self,
        bus: Bus,
        folder: Path | Mapping[str, Path],
        endpoint: Endpoint,
        catalogue: Catalogue,
        config: ServerConfig | None = None,
    ) -> None:
        super().__init__(bus)
        self._shared_bus = bus
        self._context: zmq.Context | None = None  # type: ignore[type-arg]
        self.folders = [Path(folder)] if isinstance(folder, (str, Path)) else list(folder.values())
        self.requested = endpoint
        self.core = ServeCore(folder, catalogue, config, bus.security.identity)
        self._endpoint: Endpoint | None = None
        self._router: zmq.Socket | None = None  # type: ignore[type-arg]
        self._workers: ThreadPoolExecutor | None = None
        self._built: queue.SimpleQueue[TableBuild] = queue.SimpleQueue()
        self._tracked: list[tuple[zmq.MessageTracker, Reply]] = []
        """Replies libzmq may still hold, with what tells when it no longer does."""
        self._unsent: list[Reply] = []
        """Replies the socket refused (peer gone or its queue full), not yet given back to the core."""
        self._wake_r = self._wake_w = -1

    @property
    def stats(self) -> ServerStats:
        return self.core.stats

    @property
    def endpoint(self) -> Endpoint:
        """The endpoint actually bound (valid after :meth:`start`)."""
        if self._endpoint is None:
            raise RuntimeError("FileServer not started")
        return self._endpoint

    def start(self, timeout: float = START_TIMEOUT) -> Endpoint:  # type: ignore[override]
        """Start the server thread; return the bound endpoint once it is serving, or raise its start error."""
        for folder in self.folders:
            if not folder.is_dir():
                raise TransferError(f"shared folder {folder} does not exist")
        if self._context is None:
            self._context = zmq.Context(io_threads=IO_THREADS)
            self.bus = Bus(self._shared_bus.security, self._context)
        super().start(timeout)
        return self.endpoint

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server thread, then its ZAP handler and context; idempotent."""
        super().stop(timeout)
        if self._context is not None and not self.running:  # never close sockets under a thread still using them
            self.bus.close()
            self._context.destroy(linger=0)
            self._context = None
            self.bus = self._shared_bus

    def __enter__(self) -> FileServer:
        self.start()
        return self

    def setup(self) -> None:
        allocator.tune()
        router = self._router = self.bus.server(zmq.ROUTER, hwm=SEND_QUEUE, max_message=MAX_REQUEST)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._endpoint = self.bus.bind(router, self.requested)
        self._wake_r, self._wake_w = os.pipe()  # not inherited by child processes (PEP 446)
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        self._workers = ThreadPoolExecutor(self.core.config.table_workers, thread_name_prefix="overdrive-table")
        log.info("serving %s on %s", ", ".join(map(str, self.folders)), self._endpoint.display)

    def loop(self, control: zmq.Socket) -> None:  # type: ignore[type-arg]
        assert self._router is not None
        self._loop(self._router, control)

    def teardown(self) -> None:
        self.core.cancel_builds()  # each stops at its next chunk
        if self._workers is not None:
            self._workers.shutdown(wait=True)
            self._workers = None
        self.core.close()
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1
        if self._router is not None:
            self._router.close(linger=0)
            self._router = None
        self._tracked.clear()
        self._unsent.clear()

    def _start_builds(self) -> None:
        assert self._workers is not None
        for build in self.core.take_builds():
            self._workers.submit(self._build, build)

    def _build(self, build: TableBuild) -> None:
        """Worker thread: build a table, hand it back, wake the loop."""
        build.run()
        self._built.put(build)
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):
            pass  # the pipe is full (the loop will wake anyway) or closed (stopping)

    def _send(self, router: zmq.Socket, reply: Reply) -> None:  # type: ignore[type-arg]
        assert isinstance(reply.origin, bytes)
        try:
            tracker = router.send_multipart([reply.origin, *reply.frames], zmq.NOBLOCK, copy=False, track=True)
        except zmq.ZMQError as exc:
            if exc.errno not in (zmq.EHOSTUNREACH, zmq.EAGAIN):
                raise
            self.core.stats.unroutable += 1
            reply.frames.clear()
            self._unsent.append(reply)  # given back by the next _release, never from here (see _release)
            return
        assert tracker is not None  # always one with track=True
        self._tracked.append((tracker, reply))

    def _release(self, router: zmq.Socket) -> None:  # type: ignore[type-arg]
        """Tell the core libzmq is done with the replies it could not take and with every tracked reply it has
        finished; send the Reads that were waiting for room, until nothing more is given back.

        A loop, not a recursion from :meth:`_send`, and each reply's frames are dropped before the core hears of
        it: its bytes stop counting in flight there, so they must stop being held here too. Otherwise every Read
        answered into the room of an unroutable reply (a peer that does not read has a full queue) held its chunk
        one call deeper while the next was read: flood 7 (six identities asking for 4 MiB chunks they never read)
        had 681 MiB allocated at once with 60 MiB counted in flight."""
        now = time.monotonic()
        while True:
            done, self._unsent = self._unsent, []
            still = []
            for tracker, reply in self._tracked:
                if tracker.done:
                    reply.frames.clear()
                    done.append(reply)
                else:
                    still.append((tracker, reply))
            self._tracked = still
            if not done:
                return
            for reply in done:
                for more in self.core.sent(reply, now):
                    self._send(router, more)

    def _loop(self, router: zmq.Socket, control: zmq.Socket) -> None:  # type: ignore[type-arg]
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(control, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        core = self.core
        last_expiry = time.monotonic()
        while True:
            events = dict(poller.poll(_RELEASE_POLL_MS if core.deferred_reads or self._unsent else 1000))
            if control in events:
                return
            self._release(router)
            now = time.monotonic()
            if router in events:
                for _ in range(_BATCH):
                    try:
                        frames = router.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    if len(frames) < 2:
                        core.stats.malformed += 1
                        continue
                    routing = frames[0].bytes
                    try:
                        peer = self.bus.peer_id(frames[1])
                    except BusError:
                        core.stats.malformed += 1
                        continue
                    address = self.bus.peer_address(frames[1])
                    for reply in core.replies(peer, frames[1:], now, origin=routing, address=address):
                        self._send(router, reply)
                self._start_builds()
            if self._wake_r in events:
                try:
                    while os.read(self._wake_r, 4096):
                        pass
                except BlockingIOError:
                    pass
                while not self._built.empty():
                    for reply in core.built(self._built.get(), now):
                        self._send(router, reply)
            if now - last_expiry > 5.0:
                core.expire(now)
                last_expiry = now
