"""Chunk tables built off the file server's loop, and Opens the fetcher gives up (``Cancel``).

In memory: :class:`ServeCore` hands out :class:`TableBuild` objects and answers the Opens waiting for them when they
are given back. Live: a file server whose table build for one file is held at a gate (so "while it is building" is
a state the test controls, not a race), with fetchers run as ``python -m overdrive fetch`` child processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import blake3
import pytest

from overdrive.bus.address import Endpoint
from overdrive.files.model import FileInfo
from overdrive.files.scanner import FolderScanner
from overdrive.transfer import tables
from overdrive.transfer.protocol import CODEC, MIN_CHUNK, Cancel, Open, Opened, Read, Refused, Working
from overdrive.transfer.server import FileServer
from overdrive.transfer.serving import ServeCore, ServerConfig
from tests.conftest import TestNetwork

CHUNK = MIN_CHUNK
MB = 1_000_000


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "shared"
    root.mkdir()
    (root / "data.bin").write_bytes(os.urandom(10 * CHUNK + 5))
    (root / "other.bin").write_bytes(os.urandom(3 * CHUNK))
    return root


def _core(folder: Path, **config: int) -> tuple[ServeCore, dict[str, FileInfo]]:
    catalogue = FolderScanner(folder).scan()
    return ServeCore(folder, catalogue, ServerConfig(chunk_size=CHUNK, **config)), catalogue  # type: ignore[arg-type]


def _send(core: ServeCore, peer: str, msg: object, origin: object = None) -> list[object]:
    return [CODEC.decode(r.frames)[0] for r in core.replies(peer, CODEC.encode(msg), 0.0, origin)]  # type: ignore[arg-type]


def _open(rid: int, name: str = "data.bin") -> Open:
    return Open(rid=rid, name=name, content_hash="")


def test_an_open_waits_for_its_build_and_opens_of_one_version_share_it(folder: Path) -> None:
    core, _ = _core(folder, working_notice=CHUNK)
    assert _send(core, "a", _open(1), origin=b"ra") == [Working(rid=1, size=10 * CHUNK + 5)]
    assert _send(core, "b", _open(2), origin=b"rb") == [Working(rid=2, size=10 * CHUNK + 5)]
    (build,) = core.take_builds()  # one build for both
    assert core.take_builds() == [] and core.waiting_opens == 2 and core.open_transfers == 0
    build.run()
    answers = core.built(build, 0.0)
    assert [answer.origin for answer in answers] == [b"ra", b"rb"]
    assert all(isinstance(CODEC.decode(answer.frames)[0], Opened) for answer in answers)
    assert core.waiting_opens == 0 and core.open_transfers == 2 and core.stats.tables_built == 1
    (cached,) = _send(core, "c", _open(3))  # cached now: answered at once, no notice, no build
    assert isinstance(cached, Opened) and core.take_builds() == []


def test_cancel_drops_a_waiting_open_and_stops_a_build_nobody_waits_for(folder: Path) -> None:
    core, _ = _core(folder)
    _send(core, "a", _open(1))
    _send(core, "b", _open(1))  # same rid from another peer: not cancelled by a's Cancel
    (build,) = core.take_builds()
    _send(core, "a", Cancel(rid=1))
    assert core.waiting_opens == 1 and core.stats.cancelled == 1 and not build.cancelled
    _send(core, "b", Cancel(rid=1))
    assert core.waiting_opens == 0 and core.stats.cancelled == 2 and build.cancelled
    build.run()  # stops at once
    assert build.table is None and core.built(build, 0.0) == []
    assert core.open_transfers == 0 and core.stats.tables_built == 0
    # the peer's slots are free again, and the version can still be opened (a new build)
    (reply,) = core.handle("a", CODEC.encode(_open(2)), 0.0)
    assert isinstance(CODEC.decode(reply)[0], Opened)


def test_cancel_closes_an_open_already_answered(folder: Path) -> None:
    core, _ = _core(folder)
    (reply,) = core.handle("a", CODEC.encode(_open(5)), 0.0)
    opened = CODEC.decode(reply)[0]
    assert isinstance(opened, Opened) and core.open_transfers == 1
    _send(core, "b", Cancel(rid=5))  # another peer's: nothing happens
    assert core.open_transfers == 1
    _send(core, "a", Cancel(rid=5))
    assert core.open_transfers == 0 and core.stats.cancelled == 1
    (failed,) = _send(core, "a", Read(tid=opened.tid, index=0))
    assert failed.reason == "unknown-transfer"  # type: ignore[attr-defined]


def test_waiting_opens_count_against_the_per_peer_limit(folder: Path) -> None:
    core, _ = _core(folder, max_transfers_per_peer=2)
    _send(core, "a", _open(1))
    _send(core, "a", _open(2, "other.bin"))
    (busy,) = _send(core, "a", _open(3))
    assert isinstance(busy, Refused) and busy.reason == "busy"
    assert len(core.take_builds()) == 2
    core.close()  # closes the waiting Opens' descriptors and the builds'
    assert core.waiting_opens == 0


def test_a_file_changed_during_its_build_is_refused_to_every_waiter(folder: Path) -> None:
    core, _ = _core(folder)
    _send(core, "a", _open(1), origin=1)
    _send(core, "b", _open(2), origin=2)
    (build,) = core.take_builds()
    with (folder / "data.bin").open("ab") as fh:
        fh.write(b"more")
    build.run()
    answers = [CODEC.decode(answer.frames)[0] for answer in core.built(build, 0.0)]
    assert [type(a) for a in answers] == [Refused, Refused]
    assert all(a.reason == "changed" for a in answers)  # type: ignore[attr-defined]
    assert core.open_transfers == 0 and core.waiting_opens == 0


# -- live ---------------------------------------------------------------------------------------------------------


class Gate:
    """Holds the table build of files of one size until :meth:`release` (other files build as usual)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.reached = threading.Event()
        self.opened = threading.Event()
        self._real = tables.build_table

    def build_table(self, fd: int, size: int, *args: object, **kwargs: object) -> tables.ChunkTable:
        if size == self.size:
            self.reached.set()
            self.opened.wait(120)
        return self._real(fd, size, *args, **kwargs)  # type: ignore[arg-type]

    def release(self) -> None:
        self.opened.set()


@pytest.fixture
def gated(
    network: TestNetwork, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[FileServer, Gate, dict[str, str]]]:
    """A file server sharing big.bin (its table build held at a gate) and small.bin; yields the hashes too."""
    folder = tmp_path / "shared"
    folder.mkdir()
    hashes = {}
    for name, size in (("big.bin", 8 * MB), ("small.bin", 2 * MB)):
        data = os.urandom(size)
        (folder / name).write_bytes(data)
        hashes[name] = blake3.blake3(data).hexdigest()
    gate = Gate(8 * MB)
    monkeypatch.setattr(tables, "build_table", gate.build_table)
    server = FileServer(network.bus(), folder, Endpoint("127.0.0.1", 0), FolderScanner(folder).scan())
    server.start()
    try:
        yield server, gate, hashes
    finally:
        gate.release()
        server.stop()


def _fetcher(network: TestNetwork, home: Path, server: FileServer, name: str, *args: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "overdrive", "fetch", name, "--from", server.endpoint.display, *args, "--json"]
    return subprocess.Popen(cmd, env=network.env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _poll(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not reached in {timeout:g} s: {what}")
        time.sleep(0.01)


def reap(proc: subprocess.Popen[str]) -> None:
    """Kill ``proc`` if it still runs, and collect it."""
    if proc.poll() is None:
        proc.kill()
    proc.communicate()


def test_other_peers_fetch_while_a_big_table_is_built(
    network: TestNetwork, tmp_path: Path, gated: tuple[FileServer, Gate, dict[str, str]]
) -> None:
    """Peer A's first open of big.bin holds a table build; peer B's fetch of small.bin completes meanwhile (the
    server's loop is not the one reading big.bin), then A's completes too."""
    server, gate, hashes = gated
    # A waits as long as the test needs (its table is held at the gate; the default --timeout would give up)
    first = _fetcher(network, tmp_path / "a", server, "big.bin", "--out", str(tmp_path / "out-a"), "--timeout", "600")
    second: subprocess.Popen[str] | None = None
    try:
        _poll(gate.reached.is_set, "the build of big.bin started")
        second = _fetcher(network, tmp_path / "b", server, "small.bin", "--out", str(tmp_path / "out-b"))
        _, err = second.communicate(timeout=120)
        assert second.returncode == 0, err
        assert not gate.opened.is_set() and first.poll() is None  # A is still waiting for its table
        assert blake3.blake3((tmp_path / "out-b" / "small.bin").read_bytes()).hexdigest() == hashes["small.bin"]
        gate.release()
        _, err = first.communicate(timeout=120)
        assert first.returncode == 0, err
        assert blake3.blake3((tmp_path / "out-a" / "big.bin").read_bytes()).hexdigest() == hashes["big.bin"]
    finally:
        reap(first)
        if second is not None:
            reap(second)
    assert server.stats.tables_built == 2


@pytest.mark.parametrize("how", ["timeout", "ctrl-c"])
def test_an_open_given_up_is_withdrawn_from_the_holder(
    network: TestNetwork, tmp_path: Path, gated: tuple[FileServer, Gate, dict[str, str]], how: str
) -> None:
    """A fetcher that stops waiting for its Open (--timeout, or Ctrl-C while the holder builds the table) cancels
    it: the holder frees the slot at once (not after its 120 s idle timeout) and drops the build nobody waits for."""
    server, gate, _ = gated
    args = ("--timeout", "1") if how == "timeout" else ("--timeout", "600")  # Ctrl-C, not the timeout, ends it
    proc = _fetcher(network, tmp_path / "a", server, "big.bin", "--out", str(tmp_path / "out"), *args)
    try:
        _poll(gate.reached.is_set, "the build of big.bin started")
        if how == "ctrl-c":
            _poll(lambda: server.core.waiting_opens == 1, "the open waits for its table")
            proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        reap(proc)
    if how == "timeout":
        assert proc.returncode == 1 and "no answer to open within 1 s" in err, err
    else:
        assert proc.returncode == 130, err
    _poll(lambda: server.stats.cancelled == 1, "the holder dropped the open")
    assert server.core.waiting_opens == 0 and server.core.open_transfers == 0 and not gate.opened.is_set()
    gate.release()
    _poll(lambda: server.core.unfinished_builds == 0, "the cancelled build ended")
    assert server.core.open_transfers == 0 and server.stats.tables_built == 0
