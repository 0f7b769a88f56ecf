"""Fair sharing of a file server between peers with the password (docs/security.md, "Shares").

In memory against :class:`ServeCore`: transfer slots and bytes in flight per identity, per address and in total,
idle slots given to a new fetcher, Reads that wait instead of being buffered. Live: a share in a child process,
hostile clients on other loopback addresses that hold slots or never read, and an honest fetch that completes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
import zmq

from overdrive.bus.address import Endpoint
from overdrive.bus.codec import Message
from overdrive.bus.security import NodeIdentity
from overdrive.bus.sockets import Bus, Security
from overdrive.files.scanner import FolderScanner
from overdrive.transfer.fetcher import FetchRequest, fetch
from overdrive.transfer.protocol import CODEC, MIN_CHUNK, Chunk, Failed, Open, Opened, Read, Refused
from overdrive.transfer.server import FileServer
from overdrive.transfer.serving import Reply, ServeCore, ServerConfig
from overdrive.transfer.session import FetchConfig
from tests.conftest import TestNetwork

CHUNK = MIN_CHUNK
BIG_CHUNK = 4 << 20


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "shared"
    root.mkdir()
    (root / "data.bin").write_bytes(os.urandom(10 * CHUNK))
    (root / "big.bin").write_bytes(os.urandom(4 * BIG_CHUNK))
    return root


def _core(folder: Path, **config: int | float) -> ServeCore:
    return ServeCore(folder, FolderScanner(folder).scan(), ServerConfig(chunk_size=CHUNK, **config))  # type: ignore[arg-type]


def _answers(replies: list[Reply]) -> list[Message]:
    return [CODEC.decode(r.frames)[0] for r in replies]


def _open(core: ServeCore, identity: str, address: str, now: float, rid: int = 1, chunk: int = 0) -> Message:
    (answer,) = core.handle(identity, CODEC.encode(Open(rid=rid, name=_name(chunk), content_hash="", chunk_size=chunk)),
                            now, address=address)  # fmt: skip
    return CODEC.decode(answer)[0]


def _name(chunk: int) -> str:
    return "big.bin" if chunk == BIG_CHUNK else "data.bin"


def _read(core: ServeCore, identity: str, address: str, tid: int, now: float, index: int = 0) -> list[Reply]:
    return core.replies(identity, CODEC.encode(Read(tid=tid, index=index)), now, origin=identity, address=address)


# -- slots ----------------------------------------------------------------------------------------------------------


def test_many_identities_from_one_address_share_its_slots(folder: Path) -> None:
    core = _core(folder, max_transfers_per_peer=2, max_transfers_per_address=4, max_transfers=64)
    answers = [_open(core, f"id{i}", "10.0.0.66", 0.0, rid) for i in range(10) for rid in (1, 2)]
    assert sum(isinstance(a, Opened) for a in answers) == 4
    assert all(a.reason == "busy" for a in answers if isinstance(a, Refused))
    assert core.slots_of("10.0.0.66") == 4
    assert isinstance(_open(core, "honest", "10.0.0.7", 0.0), Opened)


@pytest.mark.parametrize("addresses", [1, 40], ids=["one-address", "40-addresses"])
@pytest.mark.parametrize("later", [1.0, 60.0], ids=["all-reading", "one-read-a-minute"])
def test_forty_identities_cannot_lock_a_share(folder: Path, addresses: int, later: float) -> None:
    """The issue's attack 6: 40 identities each opening 8 transfers; an honest fetcher still gets one, whether
    they keep reading (the address holding the most gives one up) or not (an idle one is closed)."""
    core = _core(folder)
    for i in range(40):
        for rid in range(8):
            _open(core, f"mallory{i}", f"10.0.1.{i % addresses}", 0.0, rid)
    assert core.open_transfers == min(256, 40 * 8 if addresses == 40 else 16)
    assert isinstance(_open(core, "honest", "10.0.0.7", later), Opened)


def test_an_idle_transfer_gives_its_slot_to_a_new_fetcher(folder: Path) -> None:
    core = _core(folder, max_transfers=4, max_transfers_per_peer=1, reclaim_after=5.0)
    tids = {}
    for i in range(4):
        opened = _open(core, f"p{i}", f"10.0.0.{i}", 0.0)
        assert isinstance(opened, Opened)
        tids[i] = opened.tid
    for i in range(1, 4):
        (chunk,) = _answers(_read(core, f"p{i}", f"10.0.0.{i}", tids[i], 4.0))
        assert isinstance(chunk, Chunk)
    busy = _open(core, "new", "10.0.0.9", 4.0)  # nobody idle long enough, nobody holds two more than the newcomer
    assert isinstance(busy, Refused) and busy.reason == "busy"
    assert isinstance(_open(core, "new", "10.0.0.9", 6.0), Opened)  # p0 has been idle for 6 s
    assert core.stats.evicted == 1
    (failed,) = _answers(_read(core, "p0", "10.0.0.0", tids[0], 6.0))
    assert isinstance(failed, Failed) and failed.reason == "unknown-transfer"


def test_an_identity_at_its_limit_gives_up_its_own_idle_transfer(folder: Path) -> None:
    core = _core(folder, max_transfers_per_peer=2)
    assert isinstance(_open(core, "p", "10.0.0.1", 0.0, 1), Opened)
    assert isinstance(_open(core, "p", "10.0.0.1", 0.0, 2), Opened)
    assert isinstance(_open(core, "p", "10.0.0.1", 1.0, 3), Refused)
    assert isinstance(_open(core, "p", "10.0.0.1", 10.0, 4), Opened)
    assert core.open_transfers == 2 and core.stats.evicted == 1


def test_when_every_slot_is_used_the_address_holding_most_gives_one_up(folder: Path) -> None:
    core = _core(folder, max_transfers=8, max_transfers_per_peer=8, max_transfers_per_address=8)
    for rid in range(8):
        assert isinstance(_open(core, "greedy", "10.0.0.1", 0.0, rid), Opened)
    assert isinstance(_open(core, "honest", "10.0.0.2", 0.0), Opened)
    assert core.slots_of("10.0.0.1") == 7 and core.slots_of("10.0.0.2") == 1
    again = _open(core, "greedy", "10.0.0.1", 0.0, 99)  # it cannot take the slot back: it holds the most
    assert isinstance(again, Refused) and again.reason == "busy"


# -- bytes in flight -----------------------------------------------------------------------------------------------


def test_reads_wait_for_the_bytes_in_flight_and_are_answered_in_order(folder: Path) -> None:
    limit = 2 * CHUNK + 1024  # two chunks with their headers
    core = _core(folder, max_inflight_per_peer=limit, max_inflight_per_address=limit)
    opened = _open(core, "p", "10.0.0.1", 0.0)
    assert isinstance(opened, Opened)
    first = [r for index in range(6) for r in _read(core, "p", "10.0.0.1", opened.tid, 0.0, index)]
    assert [a.index for a in _answers(first)] == [0, 1]  # type: ignore[attr-defined]
    assert core.deferred_reads == 4 and core.inflight_bytes <= limit
    later = core.sent(first[0], 0.1)
    assert [a.index for a in _answers(later)] == [2]  # type: ignore[attr-defined]
    for reply in [first[1], *later]:
        later = core.sent(reply, 0.2)
    assert [a.index for a in _answers(later)] == [4]  # type: ignore[attr-defined]
    assert core.deferred_reads == 1


def test_peers_that_never_read_hold_a_bounded_amount(folder: Path) -> None:
    """The issue's attack 7: six identities of one address asking for 4 MiB chunks and never reading, then four
    more addresses sending 600 reads each: what they hold stays within the limits, and a new fetcher is served."""
    config = ServerConfig()
    core = _core(folder, max_chunk_size=BIG_CHUNK)
    held = 0
    for i in range(10):
        address = "10.0.2.1" if i < 6 else f"10.0.2.{i}"
        opened = _open(core, f"mallory{i}", address, 0.0, chunk=BIG_CHUNK)
        assert isinstance(opened, Opened) and opened.chunk_size == BIG_CHUNK
        for n in range(600):
            held += sum(r.size for r in _read(core, f"mallory{i}", address, opened.tid, 0.0, n % 4))
    assert held == core.inflight_bytes
    assert held <= config.max_inflight + 4 * (BIG_CHUNK + 1024)  # one address's first chunk may pass the total
    assert core.deferred_reads <= 10 * config.max_deferred_reads_per_peer
    assert core.stats.reads_dropped >= 10 * (600 - config.max_deferred_reads_per_peer) - 100
    opened = _open(core, "honest", "10.0.0.7", 0.0, chunk=BIG_CHUNK)
    assert isinstance(opened, Opened)
    (chunk,) = _answers(_read(core, "honest", "10.0.0.7", opened.tid, 0.0))
    assert isinstance(chunk, Chunk)


def test_deferred_reads_are_bounded_in_total(folder: Path) -> None:
    core = _core(folder, max_inflight_per_peer=CHUNK, max_deferred_reads_per_peer=8, max_deferred_reads=20)
    for i in range(5):
        opened = _open(core, f"p{i}", f"10.0.0.{i}", 0.0)
        assert isinstance(opened, Opened)
        for _ in range(10):
            _read(core, f"p{i}", f"10.0.0.{i}", opened.tid, 0.0)
    assert core.deferred_reads == 20


# -- live -----------------------------------------------------------------------------------------------------------

SHARE = """
import sys
from pathlib import Path
from overdrive.bus.address import Endpoint
from overdrive.bus.security import NetworkKey, NodeIdentity
from overdrive.bus.sockets import Bus, Security
from overdrive.files.scanner import FolderScanner
from overdrive.transfer.server import FileServer
folder, network, secret = Path(sys.argv[1]), sys.argv[2], sys.argv[3].encode()
bus = Bus(Security(NodeIdentity.generate(), NetworkKey.from_secret(network, secret)))
server = FileServer(bus, folder, Endpoint("127.0.0.1", 0), FolderScanner(folder).scan())
print(server.start().port, flush=True)
sys.stdin.readline()
server.stop()
bus.close()
"""


class Share:
    """A file server in a child process (so its memory is its own), stopped when its stdin closes."""

    def __init__(self, network: TestNetwork, folder: Path) -> None:
        args = [sys.executable, "-c", SHARE, str(folder), network.name, network.key.server_secret.decode()]
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.endpoint = Endpoint("127.0.0.1", int(self.proc.stdout.readline()))
        self.memory = psutil.Process(self.proc.pid)
        self.peak = self.rss = self.memory.memory_info().rss
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, name="rss", daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.memory.memory_info().rss)

    def close(self) -> None:
        self._stop.set()
        self._sampler.join(5)
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def share(network: TestNetwork, tmp_path: Path) -> Iterator[tuple[Share, Path]]:
    folder = tmp_path / "shared"
    folder.mkdir()
    (folder / "big.bin").write_bytes(os.urandom(4 * BIG_CHUNK))
    (folder / "wanted.bin").write_bytes(os.urandom(8 << 20))
    server = Share(network, folder)
    yield server, folder
    server.close()


class Hostile:
    """Identities with the password, connecting from another loopback address, that open and never read."""

    def __init__(self, network: TestNetwork, context: zmq.Context, source: str, endpoint: Endpoint) -> None:  # type: ignore[type-arg]
        self.bus = Bus(Security(NodeIdentity.generate(), network.key), context)
        self.sock = self.bus.client(zmq.DEALER, hwm=1)
        self.sock.setsockopt(zmq.RCVBUF, 4096)
        self.sock.connect(f"tcp://{source}:0;{endpoint.host}:{endpoint.port}")
        self.answers: list[Message] = []

    def send(self, message: Message) -> None:
        self.sock.send_multipart(CODEC.encode(message))

    def take(self) -> None:
        while self.sock.poll(0):
            self.answers.append(CODEC.decode(self.sock.recv_multipart(copy=False))[0])


def _until(check: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.05)


def _fetch_wanted(network: TestNetwork, share: Share, folder: Path, out: Path) -> None:
    request = FetchRequest(name="wanted.bin", sources=(share.endpoint,), dest_dir=out,
                           config=FetchConfig(request_timeout=20))  # fmt: skip
    fetch(network.bus(), request)
    assert (out / "wanted.bin").read_bytes() == (folder / "wanted.bin").read_bytes()


def test_forty_identities_holding_every_slot_do_not_lock_out_an_honest_fetch(
    network: TestNetwork, share: tuple[Share, Path], tmp_path: Path
) -> None:
    """Attack 6 on a live share: 40 identities from 20 other addresses ask for 320 transfers (there are 256)."""
    server, folder = share
    context: zmq.Context = zmq.Context()  # type: ignore[type-arg]
    try:
        hostile = [Hostile(network, context, f"127.0.0.{2 + i % 20}", server.endpoint) for i in range(40)]
        for client in hostile:
            for rid in range(8):
                client.send(Open(rid=rid, name="wanted.bin", content_hash=""))

        def answered() -> bool:
            for client in hostile:
                client.take()
            return sum(len(c.answers) for c in hostile) == 320

        _until(answered)
        assert sum(isinstance(a, Opened) for c in hostile for a in c.answers) >= 256  # every slot is taken
        _fetch_wanted(network, server, folder, tmp_path / "out")
    finally:
        context.destroy(linger=0)


def test_identities_that_never_read_do_not_grow_a_share(
    network: TestNetwork, share: tuple[Share, Path], tmp_path: Path
) -> None:
    """Attack 7 on a live share: six identities of one address ask for 4 MiB chunks 40 times each and never read;
    the share's memory stays within its in-flight limits, and an honest fetch completes meanwhile."""
    server, folder = share
    context: zmq.Context = zmq.Context()  # type: ignore[type-arg]
    try:
        hostile = [Hostile(network, context, "127.0.0.2", server.endpoint) for _ in range(6)]
        for client in hostile:
            client.send(Open(rid=1, name="big.bin", content_hash="", chunk_size=BIG_CHUNK))
        for client in hostile:
            _until(lambda c=client: bool(c.take() or c.answers))  # type: ignore[misc]
            (opened,) = client.answers
            assert isinstance(opened, Opened) and opened.chunk_size == BIG_CHUNK
            for n in range(40):
                client.send(Read(tid=opened.tid, index=n % 4))
        time.sleep(2)  # the share has read what they asked for, or decided not to
        _fetch_wanted(network, server, folder, tmp_path / "out")
        growth = server.peak - server.rss
        assert growth < 200 << 20, f"the share grew by {growth >> 20} MiB"
    finally:
        context.destroy(linger=0)


@pytest.mark.parametrize(("identities", "addresses", "reads"), [(6, 1, 40), (4, 4, 600)], ids=["few", "many"])
def test_identities_that_leave_with_reads_waiting_hold_only_what_is_in_flight(
    network: TestNetwork, tmp_path: Path, identities: int, addresses: int, reads: int
) -> None:
    """Attack 7 (six identities of one address, or four of four addresses sending 600 Reads each, all asking for
    4 MiB chunks and never reading), then the hostile leaves: its Reads that waited for room are answered into
    replies the socket cannot route, each one read from the file. The chunks held at once (every allocation
    traced, in this process) stay within the in-flight limits, not one chunk per waiting Read."""
    folder = tmp_path / "shared"
    folder.mkdir()
    (folder / "big.bin").write_bytes(os.urandom(4 * BIG_CHUNK))
    server = FileServer(network.bus(), folder, Endpoint("127.0.0.1", 0), FolderScanner(folder).scan())
    context: zmq.Context = zmq.Context()  # type: ignore[type-arg]
    tracemalloc.start()
    try:
        server.start()
        core = server.core
        hostile = [
            Hostile(network, context, f"127.0.0.{2 + i % addresses}", server.endpoint) for i in range(identities)
        ]
        for client in hostile:
            client.send(Open(rid=1, name="big.bin", content_hash="", chunk_size=BIG_CHUNK))
        for client in hostile:
            _until(lambda c=client: bool(c.take() or c.answers))  # type: ignore[misc]
            (opened,) = client.answers
            assert isinstance(opened, Opened)
            for n in range(reads):
                client.send(Read(tid=opened.tid, index=n % 4))
        _until(lambda: core.stats.chunks_sent + core.deferred_reads + core.stats.reads_dropped >= identities * reads)
        assert core.deferred_reads > 100
        context.destroy(linger=0)
        _until(lambda: core.deferred_reads == 0 and core.inflight_bytes == 0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        server.stop()
        context.destroy(linger=0)
    config = ServerConfig()
    per_address = config.max_inflight_per_address if addresses == 1 else config.max_inflight_per_peer
    bound = min(addresses * per_address, config.max_inflight) + addresses * BIG_CHUNK  # each may pass by a chunk
    assert peak < 2 * bound, f"{peak >> 20} MiB held at once; {bound >> 20} MiB may be in flight"


def test_an_oversized_request_drops_its_connection(network: TestNetwork, share: tuple[Share, Path]) -> None:
    server, _ = share
    context: zmq.Context = zmq.Context()  # type: ignore[type-arg]
    try:
        big = Hostile(network, context, "127.0.0.2", server.endpoint)
        dropped = big.sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        big.sock.send(b"x" * (100 << 10))
        assert dropped.poll(10_000), "the share kept a connection that sent a 100 KiB request"
        honest = Hostile(network, context, "127.0.0.2", server.endpoint)
        honest.send(Open(rid=1, name="wanted.bin", content_hash=""))
        _until(lambda: bool(honest.take() or honest.answers))
        assert isinstance(honest.answers[0], Opened)
        big.sock.disable_monitor()
        dropped.close(linger=0)
    finally:
        context.destroy(linger=0)
