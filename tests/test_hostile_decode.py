"""A password holder sends one deeply nested message: every process stays up and keeps serving honest peers, and
every client facing such a server prints one line, never a traceback. Real sockets on loopback."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq

from overdrive.bus.address import Endpoint
from overdrive.bus.codec import PROTOCOL_VERSION
from overdrive.files.model import FileInfo
from overdrive.files.scanner import FolderScanner
from overdrive.index.client import IndexClient
from overdrive.index.master import Master, MasterConfig
from overdrive.index.stores.memory import MemoryStore
from overdrive.media.protocol import TOPIC_INFO
from overdrive.transfer.fetcher import FetchRequest, fetch
from overdrive.transfer.server import FileServer
from tests.conftest import TestNetwork

DEEP = b"\x92" + bytes([PROTOCOL_VERSION]) + b"\x91" * 2_000 + b"\xc0"
"""A ~2 KB message header whose body is nested 2,000 levels deep."""
LIFETIME = 30.0
"""A hostile server stops by itself after this long, whatever the test does."""

Cli = Callable[..., "subprocess.CompletedProcess[str]"]


class Hostile:
    """A server with the password that answers every request (ROUTER) or keeps publishing (PUB) ``DEEP``."""

    def __init__(self, network: TestNetwork, kind: int) -> None:
        self.kind = kind
        self.sock = network.bus().server(kind)
        self.endpoint = network.bus().bind(self.sock, Endpoint("127.0.0.1", 0))
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="hostile", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        until = time.monotonic() + LIFETIME
        while not self._stop.is_set() and time.monotonic() < until:
            if self.kind == zmq.PUB:
                self.sock.send_multipart([TOPIC_INFO, DEEP, b"x"])
                time.sleep(0.02)
            elif self.sock.poll(50):
                routing, *_ = self.sock.recv_multipart()
                self.sock.send_multipart([routing, DEEP])

    def close(self) -> None:
        self._stop.set()
        self.thread.join(10)
        self.sock.close(linger=0)


@pytest.fixture
def hostile_router(network: TestNetwork) -> Iterator[Hostile]:
    server = Hostile(network, zmq.ROUTER)
    yield server
    server.close()


def one_line_failure(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr and "RecursionError" not in result.stderr, result.stderr
    assert result.returncode != 0, result.stdout
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_ls_facing_a_hostile_master_prints_one_line(
    network: TestNetwork, hostile_router: Hostile, run_cli: Cli, tmp_path: Path
) -> None:
    address = hostile_router.endpoint.display
    one_line_failure(run_cli("ls", "--master", address, "--timeout", "2", env=network.env(tmp_path / "home")))


def test_fetch_facing_a_hostile_holder_prints_one_line(
    network: TestNetwork, hostile_router: Hostile, run_cli: Cli, tmp_path: Path
) -> None:
    address = hostile_router.endpoint.display
    out = str(tmp_path / "out")
    result = run_cli("fetch", "f.bin", "--from", address, "--out", out, env=network.env(tmp_path / "home"))
    one_line_failure(result)


def test_view_facing_a_hostile_streamer_drops_what_it_cannot_decode(
    network: TestNetwork, run_cli: Cli, tmp_path: Path
) -> None:
    streamer = Hostile(network, zmq.PUB)
    try:
        result = run_cli("view", streamer.endpoint.display, "--headless", "--duration", "2", "--no-record",
                         env=network.env(tmp_path / "home"))  # fmt: skip
    finally:
        streamer.close()
    assert "Traceback" not in result.stderr and "RecursionError" not in result.stderr, result.stderr


def test_a_master_and_a_share_keep_serving_after_a_deeply_nested_message(network: TestNetwork, tmp_path: Path) -> None:
    folder = tmp_path / "shared"
    folder.mkdir()
    (folder / "f.bin").write_bytes(os.urandom(100_000))
    master = Master(network.bus(), MemoryStore(), MasterConfig(bind=Endpoint("127.0.0.1", 0), heartbeat=0.2))
    share = FileServer(network.bus(), folder, Endpoint("127.0.0.1", 0), FolderScanner(folder).scan())
    master.start()
    share.start()
    attacker = network.bus()  # a password holder
    try:
        assert master.endpoint is not None
        for endpoint in (master.endpoint, share.endpoint):
            sock = attacker.client(zmq.DEALER)
            attacker.connect(sock, endpoint)
            for _ in range(3):
                sock.send_multipart([DEEP])
            sock.close(linger=1000)
        deadline = time.monotonic() + 10
        while (master.dropped < 3 or share.stats.malformed < 3) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert master.dropped >= 3 and share.stats.malformed >= 3
        assert master.running and share.running
        info = FileInfo(name="f.bin", size=100_000, content_hash="ab" * 32, mtime_ns=1)
        with IndexClient(network.bus(), [master.endpoint], timeout=5) as client:
            client.register([info], share.endpoint.display)
            assert [e.name for e in client.lookup("f.bin")] == ["f.bin"]
        request = FetchRequest(name="f.bin", sources=(share.endpoint,), dest_dir=tmp_path / "out")
        fetch(network.bus(), request)
        assert (tmp_path / "out" / "f.bin").read_bytes() == (folder / "f.bin").read_bytes()
    finally:
        share.stop()
        master.stop()
