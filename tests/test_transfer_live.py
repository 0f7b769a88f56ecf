"""Fetching over real CURVE sockets on loopback: the CLI against real file servers, with failures injected.

Holders are :class:`FileServer` objects in this process (so their stats can be read) or stand-alone servers in
child processes (so they can be killed with -9); fetchers run as ``python -m overdrive fetch`` child processes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import blake3
import pytest
import zmq

from overdrive.bus.address import Endpoint
from overdrive.bus.ready import parse_ready
from overdrive.bus.sockets import Bus
from overdrive.errors import ConfigError, IntegrityError, TransferError
from overdrive.files.model import FileInfo
from overdrive.files.scanner import FolderScanner
from overdrive.transfer import proof
from overdrive.transfer.fetcher import CONNECTIONS, FetchRequest, fetch
from overdrive.transfer.protocol import (
    CODEC,
    DEFAULT_CHUNK,
    MAX_CHUNK,
    MAX_CHUNKS,
    Chunk,
    Open,
    Opened,
    Read,
    Refused,
    Working,
    chunk_checksum,
)
from overdrive.transfer.server import FileServer
from overdrive.transfer.session import DEFAULT_WINDOW, FetchConfig
from overdrive.transfer.tables import build_table
from tests.conftest import TestNetwork

MB = 1_000_000
BIG = 200 * MB
LOOPBACK = Endpoint("127.0.0.1", 0)


def _write_file(path: Path, size: int, seed: int = 0) -> str:
    """A file of distinct 1 MiB blocks (fast to make); returns its BLAKE3 hex."""
    block = bytearray(os.urandom(1 << 20))
    hasher = blake3.blake3()
    with path.open("wb") as fh:
        written = 0
        n = 0
        while written < size:
            block[:16] = n.to_bytes(8, "little") + seed.to_bytes(8, "little")
            part = memoryview(block)[: min(len(block), size - written)]
            fh.write(part)
            hasher.update(part)
            written += len(part)
            n += 1
    return hasher.hexdigest()


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    """A folder on tmpfs when there is one (big files are cheaper there), else under tmp_path."""
    base = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else tmp_path
    folder = Path(tempfile.mkdtemp(prefix="overdrive-test-", dir=base))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def shared(scratch: Path) -> tuple[Path, str]:
    """A shared folder holding big.bin (200 MB); returns (folder, its hash)."""
    folder = scratch / "shared"
    folder.mkdir()
    return folder, _write_file(folder / "big.bin", BIG)


class Holder:
    """A FileServer in this process over a scanned folder."""

    def __init__(self, bus: Bus, folder: Path) -> None:
        self.folder = folder
        self.catalogue = FolderScanner(folder).scan()
        self.server = FileServer(bus, folder, LOOPBACK, self.catalogue)
        self.endpoint = self.server.start()

    @property
    def address(self) -> str:
        return self.endpoint.display


@pytest.fixture
def holders(network: TestNetwork) -> Iterator[Callable[[Path], Holder]]:
    made: list[Holder] = []

    def make(folder: Path) -> Holder:
        holder = Holder(network.bus(), folder)
        made.append(holder)
        return holder

    yield make
    for holder in made:
        holder.server.stop()


def _fetch_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "overdrive", "fetch", *args, "--json"]


def _spawn(network: TestNetwork, home: Path, *args: str, **popen: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        _fetch_cmd(*args),
        env=network.env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,  # type: ignore[call-overload]
    )


def _finish(proc: subprocess.Popen[str], timeout: float = 120) -> tuple[int, dict[str, object], str]:
    out, err = proc.communicate(timeout=timeout)
    result = json.loads(out) if proc.returncode == 0 and out.strip() else {}
    return proc.returncode, result, err


def _wait_until(check: Callable[[], bool], proc: subprocess.Popen[str] | None = None, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"fetcher ended early ({proc.returncode}): {proc.stderr.read() if proc.stderr else ''}")
        if time.monotonic() > deadline:
            pytest.fail("condition not reached in time")
        time.sleep(0.005)


def test_fetch_200mb_with_from(network: TestNetwork, holders: Callable[[Path], Holder], shared, scratch, tmp_path):
    folder, digest = shared
    holder = holders(folder)
    out = scratch / "out"
    code, result, err = _finish(
        _spawn(network, tmp_path / "home", "big.bin", "--from", holder.address, "--out", str(out))
    )
    assert code == 0, err
    assert result["hash"] == digest and result["bytes"] == BIG and result["sources"] == [holder.address]
    assert blake3.blake3((out / "big.bin").read_bytes()).hexdigest() == digest
    assert sorted(p.name for p in out.iterdir()) == ["big.bin"]  # no .part or state left behind
    assert holder.server.stats.bytes_sent == BIG and holder.server.stats.opened == CONNECTIONS
    # the same file again: nothing to do
    code, again, err = _finish(
        _spawn(network, tmp_path / "home", "big.bin", "--from", holder.address, "--out", str(out))
    )
    assert code == 0 and again["already_present"] is True, err
    assert holder.server.stats.bytes_sent == BIG


def test_existing_different_file_is_kept(network: TestNetwork, holders, scratch, tmp_path):
    folder = scratch / "shared"
    folder.mkdir()
    digest = _write_file(folder / "talk.mp4", 3 * MB)
    holder = holders(folder)
    out = scratch / "out"
    out.mkdir()
    (out / "talk.mp4").write_bytes(b"my own notes")
    code, result, err = _finish(
        _spawn(network, tmp_path / "h", "talk.mp4", "--from", holder.address, "--out", str(out))
    )
    assert code == 0, err
    assert (out / "talk.mp4").read_bytes() == b"my own notes"
    assert result["path"] == str((out / "talk (1).mp4").resolve())
    assert blake3.blake3((out / "talk (1).mp4").read_bytes()).hexdigest() == digest


def test_the_result_line_is_one_line_in_a_pipe(run_cli, network: TestNetwork, holders, scratch, tmp_path) -> None:
    """Without --json (and not on a terminal) each outcome is one line, however long: grep and logs see it whole."""
    folder = scratch / "shared"
    folder.mkdir()
    (folder / ("a-rather-long-file-name-" * 4 + ".bin")).write_bytes(b"x" * 1000)
    holder = holders(folder)
    name = "a-rather-long-file-name-" * 4 + ".bin"
    args = ("fetch", name, "--from", holder.address, "--out", str(scratch / "out"))
    fetched = run_cli(*args, env=network.env(tmp_path / "home"))
    again = run_cli(*args, env=network.env(tmp_path / "home"))
    assert fetched.returncode == 0 and again.returncode == 0, fetched.stderr + again.stderr
    (line,) = fetched.stderr.splitlines()
    assert line.startswith("fetched ") and line.endswith(" verified"), line
    (line,) = again.stderr.splitlines()
    assert line.endswith("nothing to do"), line


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
def test_resume_after_interruption_resends_at_most_one_window(
    network: TestNetwork, holders, shared, scratch, tmp_path, sig: signal.Signals
) -> None:
    folder, digest = shared
    holder = holders(folder)
    stats = holder.server.stats
    out = scratch / "out"
    args = ("big.bin", "--from", holder.address, "--out", str(out))
    proc = _spawn(network, tmp_path / "home", *args, "--limit-rate", "80")
    _wait_until(lambda: stats.bytes_sent >= BIG // 2, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == (-signal.SIGKILL if sig == signal.SIGKILL else 130), err
    if sig != signal.SIGKILL:  # the user is told what was kept and how to go on
        assert "big.bin.part keeps" in err and "run the same command again to resume" in err, err
    sent_before = stats.bytes_sent
    assert sent_before < BIG
    assert (out / "big.bin.part").exists() and (out / "big.bin.part.state").exists()
    code, result, err = _finish(_spawn(network, tmp_path / "home", *args))
    assert code == 0, err
    assert result["hash"] == digest and int(result["resumed_chunks"]) > 0  # type: ignore[call-overload]
    assert blake3.blake3((out / "big.bin").read_bytes()).hexdigest() == digest
    resent = stats.bytes_sent - BIG
    assert 0 <= resent <= DEFAULT_WINDOW * DEFAULT_CHUNK, f"re-sent {resent} bytes"


def test_sole_holder_gone_then_resume_from_another(network: TestNetwork, holders, shared, scratch, tmp_path) -> None:
    folder, digest = shared
    victim, victim_ep = _standalone_holder(network, folder, tmp_path / "victim")
    out = scratch / "out"
    try:
        proc = _spawn(network, tmp_path / "home", "big.bin", "--from", victim_ep.display, "--out", str(out),
                      "--limit-rate", "100")  # fmt: skip
        _wait_until(lambda: _recorded_chunks(out / "big.bin.part.state") > 0, proc)
        victim.kill()
        victim.wait(10)
        code, _, err = _finish(proc)
    finally:
        _reap(victim)
    assert code == 1 and "no holder left" in err and "run the same command again" in err, err
    assert (out / "big.bin.part").exists() and not (out / "big.bin").exists()
    other = holders(folder)
    code, result, err = _finish(
        _spawn(network, tmp_path / "home", "big.bin", "--from", other.address, "--out", str(out))
    )
    assert code == 0, err
    assert result["hash"] == digest and int(result["resumed_chunks"]) > 0  # type: ignore[call-overload]
    assert other.server.stats.bytes_sent < BIG


def _recorded_chunks(state: Path) -> int:
    """Chunks the state file beside a partial file records as done (0 while there is none)."""
    try:
        ranges = json.loads(state.read_bytes())["done"]
    except (OSError, ValueError):
        return 0
    return sum(end - start for start, end in ranges)


def _reap(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream:
            stream.close()


def _standalone_holder(network: TestNetwork, folder: Path, home: Path) -> tuple[subprocess.Popen[str], Endpoint]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "overdrive.transfer.folder", str(folder)],
        env=network.env(home),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("overdrive: holder ready on "), proc.stderr.read() if proc.stderr else line
    return proc, parse_ready(line).endpoint


def test_two_holders_one_killed_midway(network: TestNetwork, holders, shared, scratch, tmp_path) -> None:
    folder, digest = shared
    survivor = holders(folder)
    victim, victim_ep = _standalone_holder(network, folder, tmp_path / "victim")
    try:
        out = scratch / "out"
        proc = _spawn(
            network, tmp_path / "home", "big.bin", "--from", f"{victim_ep.display},{survivor.address}",
            "--out", str(out), "--limit-rate", "100",
        )  # fmt: skip
        _wait_until(lambda: survivor.server.stats.bytes_sent >= BIG // 5, proc)
        victim.kill()
        victim.wait(10)
        code, result, err = _finish(proc)
    finally:
        _reap(victim)
    assert code == 0, err
    assert result["hash"] == digest and set(result["sources"]) == {victim_ep.display, survivor.address}  # type: ignore[arg-type]
    assert blake3.blake3((out / "big.bin").read_bytes()).hexdigest() == digest
    assert BIG // 2 < survivor.server.stats.bytes_sent < BIG  # the survivor took over the victim's share


@pytest.mark.parametrize("keep_mtime", [False, True], ids=["mtime-changes", "mtime-restored"])
def test_file_modified_during_transfer(
    network: TestNetwork, holders, shared, scratch, tmp_path, keep_mtime: bool
) -> None:
    folder, _ = shared
    holder = holders(folder)
    out = scratch / "out"
    proc = _spawn(
        network, tmp_path / "h", "big.bin", "--from", holder.address, "--out", str(out), "--limit-rate", "100"
    )
    _wait_until(lambda: holder.server.stats.bytes_sent >= BIG // 5, proc)
    path = folder / "big.bin"
    before = path.stat()
    with path.open("r+b") as fh:  # overwrite a region the fetcher has not reached yet
        fh.seek(BIG * 9 // 10)
        fh.write(b"\x00tampered\x00" * 1000)
    if keep_mtime:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    code, _, err = _finish(proc)
    assert code == 1
    assert "changed" in err and "Traceback" not in err and err.count("\n") == 1, err
    assert not (out / "big.bin").exists()  # never a wrong file in place
    if not keep_mtime:
        assert holder.server.stats.changed >= 1
        assert f"'big.bin' changed on its holder {holder.address} while it was being fetched;" in err, err
        assert err.count("changed") == 1, err
    else:  # caught by the chunk checksums
        assert f"fetching 'big.bin': holder {holder.address} sent chunk" in err, err


def test_wrong_password_is_refused(network: TestNetwork, holders, scratch, tmp_path) -> None:
    folder = scratch / "shared"
    folder.mkdir()
    _write_file(folder / "a.bin", MB)
    holder = holders(folder)
    env = {**network.env(tmp_path / "h"), "OVERDRIVE_PASSWORD": "not the password"}
    started = time.monotonic()
    proc = subprocess.run(
        _fetch_cmd("a.bin", "--from", holder.address, "--out", str(scratch / "out")),
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "authentication failed" in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert time.monotonic() - started < 30
    assert holder.server.stats.opened == 0 and not (scratch / "out" / "a.bin").exists()


def test_full_disk_keeps_the_partial_file(network: TestNetwork, holders, scratch, tmp_path) -> None:
    folder = scratch / "shared"
    folder.mkdir()
    digest = _write_file(folder / "a.bin", 48 * MB)
    holder = holders(folder)
    out = scratch / "out"
    args = ("a.bin", "--from", holder.address, "--out", str(out))
    limit = 20 * MB

    # RLIMIT_FSIZE set inside the child (no preexec_fn: this process has threads); Python ignores SIGXFSZ, so a
    # write past the limit fails with EFBIG like a full disk would with ENOSPC.
    limited = [
        sys.executable,
        "-c",
        f"import resource, runpy, sys; resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
        "sys.argv = ['overdrive', *sys.argv[1:]]; runpy.run_module('overdrive', run_name='__main__')",
        "fetch", *args, "--json",
    ]  # fmt: skip
    child = subprocess.Popen(
        limited, env=network.env(tmp_path / "h"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    code, _, err = _finish(child)
    assert code == 1
    assert "too large" in err and "partial file is kept" in err and "Traceback" not in err, err
    part = out / "a.bin.part"
    assert part.exists() and 0 < part.stat().st_size <= limit
    assert (out / "a.bin.part.state").exists() and not (out / "a.bin").exists()
    code, result, err = _finish(_spawn(network, tmp_path / "h", *args))  # space freed: resume
    assert code == 0, err
    assert result["hash"] == digest and int(result["resumed_chunks"]) > 0  # type: ignore[call-overload]


HOSTILE_NAMES = [
    "../secret.txt",
    "../../etc/passwd",
    "/etc/passwd",
    "sub/../../secret.txt",
    "link_out",
    "dir_out/x.txt",
    "abs_link",
    "fifo",
    "devnull",
    "sub",
    "a\x00b",
    "..\\secret.txt",
    "x" * 5000,
    "./ok.txt",
]


def test_traversal_and_special_files_refused_over_the_wire(network: TestNetwork, scratch: Path) -> None:
    folder = scratch / "shared"
    (folder / "sub").mkdir(parents=True)
    (folder / "ok.txt").write_text("fine")
    secret = scratch / "secret.txt"
    secret.write_text("SECRET")
    (scratch / "outdir").mkdir()
    (scratch / "outdir" / "x.txt").write_text("SECRET")
    (folder / "link_out").symlink_to(secret)
    (folder / "dir_out").symlink_to(scratch / "outdir")
    (folder / "abs_link").symlink_to("/etc/passwd")
    (folder / "devnull").symlink_to("/dev/null")
    os.mkfifo(folder / "fifo")
    catalogue = FolderScanner(folder).scan()
    secret_hash = blake3.blake3(b"SECRET").hexdigest()
    for name in HOSTILE_NAMES:  # a catalogue that (wrongly) lists them must not matter
        catalogue[name] = FileInfo(name="secret.txt", size=6, content_hash=secret_hash, mtime_ns=0)
    server = FileServer(network.bus(), folder, LOOPBACK, catalogue)
    endpoint = server.start()
    client = network.bus()
    sock = client.client(zmq.DEALER)
    try:
        client.connect(sock, endpoint)
        for rid, name in enumerate(HOSTILE_NAMES):
            if len(name.encode()) > 4096:
                frames = CODEC._encoder.encode((1, {"t": "open.v2", "rid": rid, "name": name, "content_hash": ""}))
                sock.send_multipart([frames])
                continue
            sock.send_multipart(CODEC.encode(Open(rid=rid, name=name, content_hash="")))
            assert sock.poll(10_000)
            reply, _ = CODEC.decode(sock.recv_multipart())
            assert isinstance(reply, Refused), (name, reply)
        sock.send_multipart(CODEC.encode(Open(rid=99, name="ok.txt", content_hash="")))  # still serving
        assert sock.poll(10_000)
        reply, _ = CODEC.decode(sock.recv_multipart())
        assert isinstance(reply, Opened)
    finally:
        sock.close(linger=0)
        server.stop()
    assert server.stats.bytes_sent == 0 and server.stats.chunks_sent == 0
    assert sum(server.stats.refused.values()) == len(HOSTILE_NAMES) - 1 and server.stats.malformed == 1


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/../../b", "a\x01b", "x" * 300])
def test_fetch_refuses_unsafe_names_before_connecting(run_cli, network: TestNetwork, tmp_path, name) -> None:
    out = tmp_path / "dest" / "inner"
    proc = run_cli("fetch", name, "--from", "127.0.0.1:1", "--out", str(out), env=network.env(tmp_path / "h"))
    assert proc.returncode == 1 and "overdrive: error:" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "dest").exists() and not (tmp_path / "x").exists()


def test_malformed_requests_to_a_live_server(network: TestNetwork, holders, scratch) -> None:
    folder = scratch / "shared"
    folder.mkdir()
    _write_file(folder / "a.bin", MB)
    holder = holders(folder)
    client = network.bus()
    sock = client.client(zmq.DEALER)
    try:
        client.connect(sock, holder.endpoint)
        junk = [
            [b""],
            [b"\x00" * 100],
            [b"\x92\x01\xc0"],
            CODEC.encode(Chunk(tid=1, index=0), b"x"),
            [b"a", b"b", b"c"],
        ]
        for frames in junk:
            sock.send_multipart(frames)
        sock.send_multipart(CODEC.encode(Read(tid=12345, index=0)))
        assert sock.poll(10_000)
        reply, _ = CODEC.decode(sock.recv_multipart())
        assert reply.reason == "unknown-transfer"  # type: ignore[union-attr]
    finally:
        sock.close(linger=0)
    assert holder.server.stats.malformed == len(junk)
    result = fetch(client, FetchRequest(name="a.bin", sources=(holder.endpoint,), dest_dir=scratch / "out"))
    assert result.bytes == MB


class HostileHolder:
    """A fake holder: answers Open honestly, but surrounds each chunk with junk and wrong-transfer replies."""

    def __init__(self, bus: Bus, path: Path, *, corrupt: bool = False, claim: str = "", opening: str = "") -> None:
        """``corrupt``: send zeros instead of each chunk; ``claim``: announce this content hash for ``path``'s
        bytes and checksum table (a holder lying consistently: every chunk passes its checksum); ``opening``:
        "silent" never answers Open, "malformed" answers it with junk, "slow" says Working (claiming 1 GiB) and
        answers 2 s later."""
        self.bus, self.path, self.corrupt, self.claim, self.opening = bus, path, corrupt, claim, opening
        self.sock = bus.server(zmq.ROUTER)
        self.endpoint = bus.bind(self.sock, LOOPBACK)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="hostile-holder")
        self.thread.start()

    def _run(self) -> None:
        data = self.path.read_bytes()
        fd = os.open(self.path, os.O_RDONLY)
        table = build_table(fd, len(data), DEFAULT_CHUNK)
        os.close(fd)
        while not self._stop.is_set():
            if not self.sock.poll(50):
                continue
            routing, *frames = self.sock.recv_multipart()
            msg, _ = CODEC.decode(frames)
            if isinstance(msg, Open) and self.opening == "silent":
                continue
            if isinstance(msg, Open) and self.opening == "malformed":
                self.sock.send_multipart([routing, b"\x92\x01\x81\xa1t\xa6opened"])
                continue
            if isinstance(msg, Open) and self.opening == "huge":  # 16 TiB in 16 MiB chunks, every one alike
                block = bytes(MAX_CHUNK)
                key, made = proof.answer(self.bus.security.identity, msg)
                opened = Opened(rid=msg.rid, tid=7, size=MAX_CHUNKS * MAX_CHUNK, chunk_size=MAX_CHUNK, mtime_ns=1,
                                content_hash="ab" * 32, holder_key=key, proof=made)  # fmt: skip
                self.sock.send_multipart([routing, *CODEC.encode(opened, chunk_checksum(block) * MAX_CHUNKS)])
                continue
            if isinstance(msg, Open) and self.opening == "oversized":  # a part bigger than any chunk
                self.sock.send_multipart([routing, bytes(MAX_CHUNK + (1 << 20))])
                continue
            if isinstance(msg, Open) and self.opening == "slow":
                self.sock.send_multipart([routing, *CODEC.encode(Working(rid=msg.rid, size=1 << 30))])
                self._stop.wait(2.0)
            if isinstance(msg, Open):
                key, made = proof.answer(self.bus.security.identity, msg)  # it is the holder it claims to be
                opened = Opened(rid=msg.rid, tid=7, size=len(data), chunk_size=DEFAULT_CHUNK, mtime_ns=1,
                                content_hash=self.claim or table.content_hash, holder_key=key, proof=made)  # fmt: skip
                self.sock.send_multipart([routing, *CODEC.encode(opened, table.digests)])
            elif isinstance(msg, Read):
                start = msg.index * DEFAULT_CHUNK
                chunk = data[start : start + DEFAULT_CHUNK]
                junk = [
                    [b"\xff\x00"],  # not msgpack
                    CODEC.encode(Chunk(tid=8, index=msg.index), chunk),  # another transfer
                    CODEC.encode(Chunk(tid=7, index=10**5), b"zz"),  # beyond the file
                    [b"\x92\x01\x81\xa1t\xa5chunk"],  # a chunk without fields
                ]
                for frames in junk:
                    self.sock.send_multipart([routing, *frames])
                if self.corrupt:
                    chunk = bytes(len(chunk))
                self.sock.send_multipart([routing, *CODEC.encode(Chunk(tid=7, index=msg.index), chunk)])

    def close(self) -> None:
        self._stop.set()
        self.thread.join(10)
        self.sock.close(linger=0)


@pytest.mark.parametrize("corrupt", [False, True], ids=["junk-replies", "bad-chunks"])
def test_malformed_and_wrong_replies_are_dropped(network: TestNetwork, scratch: Path, corrupt: bool) -> None:
    source = scratch / "src.bin"
    digest = _write_file(source, 5 * MB)
    holder = HostileHolder(network.bus(), source, corrupt=corrupt)
    try:
        request = FetchRequest(name="src.bin", sources=(holder.endpoint,), dest_dir=scratch / "out",
                               config=FetchConfig(window=2))  # fmt: skip
        if corrupt:
            with pytest.raises(TransferError, match="does not match"):
                fetch(network.bus(), request)
            assert not (scratch / "out" / "src.bin").exists()
        else:
            result = fetch(network.bus(), request)
            assert result.hash == digest and result.stats.unexpected >= 3 * 5
            assert blake3.blake3((scratch / "out" / "src.bin").read_bytes()).hexdigest() == digest
    finally:
        holder.close()


def test_consistent_lie_is_caught_by_the_whole_file_hash(network: TestNetwork, scratch: Path) -> None:
    """Chunks that all match the holder's checksum table still cannot put a wrong file in place."""
    wanted = _write_file(scratch / "real.bin", 3 * MB, seed=1)
    source = scratch / "src.bin"
    _write_file(source, 3 * MB, seed=2)
    holder = HostileHolder(network.bus(), source, claim=wanted)
    out = scratch / "out"
    try:
        request = FetchRequest(name="src.bin", sources=(holder.endpoint,), dest_dir=out, content_hash=wanted)
        with pytest.raises(IntegrityError, match="not this file"):
            fetch(network.bus(), request)
    finally:
        holder.close()
    assert sorted(p.name for p in out.iterdir()) == []


@pytest.mark.parametrize("connections", [1, 3])
def test_connections_per_holder(network: TestNetwork, holders, scratch: Path, connections: int) -> None:
    """Each connection opens its own transfer on the holder; the result names the holder once."""
    folder = scratch / "shared"
    folder.mkdir()
    digest = _write_file(folder / "a.bin", 12 * MB)
    holder = holders(folder)
    request = FetchRequest(name="a.bin", sources=(holder.endpoint,), dest_dir=scratch / "out", connections=connections)
    result = fetch(network.bus(), request)
    assert result.hash == digest and result.sources == [holder.address]
    assert holder.server.stats.opened == connections and holder.server.stats.bytes_sent == 12 * MB
    with pytest.raises(ConfigError, match="connections"):
        FetchRequest(name="a.bin", sources=(holder.endpoint,), dest_dir=scratch / "out", connections=0)


def test_fetching_again_after_keep_both_finds_the_copy(network: TestNetwork, holders, scratch: Path) -> None:
    """A second run of the same fetch, after a "keep both" put the file at 'name (1).ext', finds that copy (same
    hash) and does nothing, instead of making 'name (2).ext'."""
    folder = scratch / "shared"
    (folder / "Лекции").mkdir(parents=True)
    (folder / "Лекции" / "неделя 1.txt").write_bytes(b"the lecture notes\n" * 1000)
    holder = holders(folder)
    out = scratch / "out"
    (out / "Лекции").mkdir(parents=True)
    (out / "Лекции" / "неделя 1.txt").write_bytes(b"mine\n")
    request = FetchRequest(name="Лекции/неделя 1.txt", sources=(holder.endpoint,), dest_dir=out)
    first = fetch(network.bus(), request)
    assert Path(first.path).name == "неделя 1 (1).txt" and not first.already_present
    again = fetch(network.bus(), request)
    assert again.already_present and again.path == first.path
    assert sorted(p.name for p in (out / "Лекции").iterdir()) == ["неделя 1 (1).txt", "неделя 1.txt"]
    assert (out / "Лекции" / "неделя 1.txt").read_bytes() == b"mine\n"


def test_open_is_bounded_by_the_timeout_and_a_bad_answer_ends_it_at_once(network: TestNetwork, scratch: Path) -> None:
    """--timeout covers opening: a holder that never answers Open is given up after it (not a fixed 60 s), and
    one that answers with junk is given up at once with that reason (not "no answer" after the full wait)."""
    source = scratch / "src.bin"
    _write_file(source, MB)
    silent = HostileHolder(network.bus(), source, opening="silent")
    malformed = HostileHolder(network.bus(), source, opening="malformed")
    try:
        quick = FetchRequest(name="src.bin", sources=(silent.endpoint,), dest_dir=scratch / "out",
                             config=FetchConfig(request_timeout=1))  # fmt: skip
        with pytest.raises(TransferError, match="no answer to open within 1 s"):
            fetch(network.bus(), quick)
        patient = replace(quick, sources=(malformed.endpoint,), config=FetchConfig(request_timeout=300))
        with pytest.raises(TransferError, match="malformed reply") as caught:
            fetch(network.bus(), patient)
        assert "no answer" not in str(caught.value)
    finally:
        silent.close()
        malformed.close()
    assert not (scratch / "out" / "src.bin").exists()


def test_a_holder_building_its_chunk_table_says_so_and_is_waited_for(network: TestNetwork, scratch: Path) -> None:
    """The first open of a big file reads all of it on the holder: its Working notice buys time past --timeout."""
    source = scratch / "src.bin"
    digest = _write_file(source, 3 * MB)
    slow = HostileHolder(network.bus(), source, opening="slow")
    try:
        request = FetchRequest(name="src.bin", sources=(slow.endpoint,), dest_dir=scratch / "out",
                               config=FetchConfig(request_timeout=1))  # fmt: skip
        result = fetch(network.bus(), request)
    finally:
        slow.close()
    assert result.hash == digest


def test_a_failed_fetch_leaves_no_empty_folders(network: TestNetwork, holders, scratch: Path) -> None:
    """Folders of the destination are made only when there is something to write: a name the holder does not
    have leaves neither its sub-folders nor a new --out folder behind."""
    folder = scratch / "shared"
    folder.mkdir()
    (folder / "a.txt").write_text("a")
    holder = holders(folder)
    out = scratch / "out"
    request = FetchRequest(name="etc-link/deeper/passwd", sources=(holder.endpoint,), dest_dir=out)
    with pytest.raises(TransferError, match="not found"):
        fetch(network.bus(), request)
    assert not out.exists()
    out.mkdir()
    with pytest.raises(TransferError, match="not found"):
        fetch(network.bus(), request)
    assert list(out.iterdir()) == []
    result = fetch(network.bus(), replace(request, name="a.txt", dest_dir=out / "new" / "inner"))
    assert Path(result.path) == (out / "new" / "inner" / "a.txt").resolve()


def test_a_holder_claiming_a_huge_file_is_refused_before_anything_is_written(
    network: TestNetwork, scratch: Path, tmp_path: Path
) -> None:
    """A holder's Open reply claiming 16 TiB: the fetcher checks the free space first and says so in one line,
    with nothing created; a message part bigger than any chunk gets the holder disconnected by libzmq, unread."""
    source = scratch / "src.bin"
    _write_file(source, MB)
    huge = HostileHolder(network.bus(), source, opening="huge")
    oversized = HostileHolder(network.bus(), source, opening="oversized")
    out = tmp_path / "out"  # on disk, not tmpfs: 16 TiB fits on neither
    try:
        request = FetchRequest(name="src.bin", sources=(huge.endpoint,), dest_dir=out)
        with pytest.raises(TransferError, match=r"not enough free space for 'src.bin' in .*: it needs 17.6 TB, "):
            fetch(network.bus(), request)
        assert not out.exists()
        quick = replace(request, sources=(oversized.endpoint,), config=FetchConfig(request_timeout=1))
        with pytest.raises(TransferError, match="no answer to open"):
            fetch(network.bus(), quick)
    finally:
        huge.close()
        oversized.close()
    assert not out.exists()


def test_a_holder_that_refuses_the_connection_is_skipped_at_once(network: TestNetwork, holders, scratch) -> None:
    # The index can still list a holder that just died (until its heartbeat times out); the fetcher used to wait
    # out the whole connect timeout on it before asking the live one.
    folder = scratch / "shared"
    folder.mkdir()
    digest = _write_file(folder / "a.bin", MB)
    holder = holders(folder)
    refusing = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # bound, never listening: refused, port kept
    refusing.bind(("127.0.0.1", 0))
    dead = Endpoint("127.0.0.1", refusing.getsockname()[1])
    request = FetchRequest(name="a.bin", sources=(dead, holder.endpoint), dest_dir=scratch / "out", connect_timeout=120)
    try:
        began = time.monotonic()
        result = fetch(network.bus(), request)
        assert time.monotonic() - began < 60, "waited out the refusing holder's connect timeout"
    finally:
        refusing.close()
    assert result.hash == digest and [str(s) for s in result.sources] == [holder.address]


def test_an_empty_file_names_the_holder_it_came_from(network: TestNetwork, holders, scratch: Path) -> None:
    """An empty file has no chunks, so no holder 'sent' any: the result had no sources, and the CLI said it was
    fetched 'from the partial file' (there was none)."""
    folder = scratch / "shared"
    folder.mkdir()
    (folder / "empty.txt").write_bytes(b"")
    holder = holders(folder)
    result = fetch(network.bus(), FetchRequest(name="empty.txt", sources=(holder.endpoint,), dest_dir=scratch / "out"))
    assert result.sources == [holder.address] and (scratch / "out" / "empty.txt").read_bytes() == b""
