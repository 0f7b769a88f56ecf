"""The parts of a fetch outside its socket loops: Ctrl-C while connecting and during the long file reads
(re-checking a partial file, hashing a copy already there), and the user mistakes said before any holder is asked
(a destination that is no folder, a --from host that does not resolve)."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import blake3
import pytest

from overdrive.bus.address import Endpoint
from overdrive.errors import ConfigError
from overdrive.files.model import hash_file
from overdrive.files.scanner import FolderScanner
from overdrive.transfer.fetcher import FetchRequest, fetch
from overdrive.transfer.partial import PartialFile
from overdrive.transfer.protocol import MIN_CHUNK, chunk_checksum
from overdrive.transfer.server import FileServer
from overdrive.transfer.session import Plan
from tests.conftest import TestNetwork
from tests.test_transfer_builds import reap

RunCli = Callable[..., subprocess.CompletedProcess[str]]


def test_ctrl_c_while_connecting_stops_the_fetch(network: TestNetwork, tmp_path: Path) -> None:
    """A holder whose port accepts the TCP connection but never answers the handshake: Ctrl-C during that wait
    (up to the connect timeout per holder) stops the fetch at once with 130, not with the timeout's error."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(60)
        port = listener.getsockname()[1]
        holder = f"127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "overdrive", "fetch", "f.bin", "--from", holder, "--out", str(tmp_path)]
        proc = subprocess.Popen(cmd, env=network.env(tmp_path / "home"), stderr=subprocess.PIPE, text=True)
        try:
            conn, _ = listener.accept()  # the fetcher is now waiting for the handshake
            with conn:
                proc.send_signal(signal.SIGINT)
                _, err = proc.communicate(timeout=60)
        finally:
            reap(proc)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err


class _Interrupt:
    """A ``check`` that raises KeyboardInterrupt from its ``after``-th call on."""

    def __init__(self, after: int) -> None:
        self.calls, self.after = 0, after

    def __call__(self) -> None:
        self.calls += 1
        if self.calls >= self.after:
            raise KeyboardInterrupt


def test_hashing_a_copy_already_there_can_be_interrupted(tmp_path: Path) -> None:
    path = tmp_path / "copy.bin"
    path.write_bytes(os.urandom(40 << 20))
    with pytest.raises(KeyboardInterrupt):
        hash_file(path, _Interrupt(after=2))


def test_rechecking_a_partial_file_on_resume_can_be_interrupted(tmp_path: Path) -> None:
    data = os.urandom(64 * MIN_CHUNK)
    digests = b"".join(chunk_checksum(data[i : i + MIN_CHUNK]) for i in range(0, len(data), MIN_CHUNK))
    plan = Plan(len(data), MIN_CHUNK, "ab" * 32, digests)
    first = PartialFile(tmp_path / "f.bin", "f.bin")
    assert first.open(plan) == []
    first.close()
    (tmp_path / "f.bin.part").write_bytes(data)  # every chunk on disk: resume re-checks all 64
    interrupted = PartialFile(tmp_path / "f.bin", "f.bin", _Interrupt(after=2))
    with pytest.raises(KeyboardInterrupt):
        interrupted.open(plan)
    interrupted.close()
    again = PartialFile(tmp_path / "f.bin", "f.bin")
    assert len(again.open(plan)) == 64  # nothing was lost by the interruption
    again.close()


@pytest.mark.parametrize(
    ("where", "says"),
    [
        ("file", "is not a folder"),
        ("file/sub", "is not a folder"),
        ("/proc/overdrive-test", "cannot create the folder"),  # not 'not enough free space ... 0 bytes'
    ],
)
def test_a_destination_that_cannot_be_a_folder_is_said_before_connecting(
    run_cli: RunCli, network: TestNetwork, tmp_path: Path, where: str, says: str
) -> None:
    """A real holder of f.bin: the 'not a folder' errors come before it is asked; for /proc, making the folder
    fails, instead of a free-space error about a filesystem that is no disk ('0 bytes is free')."""
    (tmp_path / "file").write_bytes(b"")
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "f.bin").write_bytes(os.urandom(1000))
    server = FileServer(network.bus(), shared, Endpoint("127.0.0.1", 0), FolderScanner(shared).scan())
    out = where if where.startswith("/") else str(tmp_path / where)
    try:
        holder = server.start().display
        proc = run_cli("fetch", "f.bin", "--from", holder, "--out", out, env=network.env(tmp_path / "home"))
    finally:
        server.stop()
    assert proc.returncode != 0 and says in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert server.stats.opened == (1 if where.startswith("/") else 0)


@pytest.mark.parametrize("host", ["nosuchhost.invalid", "a..b", "x" * 70 + ".example"])
def test_a_from_host_that_does_not_resolve_is_said_at_once(
    run_cli: RunCli, network: TestNetwork, tmp_path: Path, host: str
) -> None:
    # 'a..b' and a label over 63 characters: Python's IDNA codec refuses them before any lookup (a traceback once)
    proc = run_cli("fetch", "f.bin", "--from", f"{host}:7772", env=network.env(tmp_path))
    assert proc.returncode == 2 and f"cannot find {host!r}" in proc.stderr, proc.stderr


def test_a_destination_that_cannot_be_looked_into_is_one_error(
    network: TestNetwork, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--out under a folder the user may not enter (EACCES; faked, as tests may run as root): a ConfigError
    (one line, exit 2), not a PermissionError traceback, and before any holder is asked."""
    locked = tmp_path / "locked"
    (locked / "inner").mkdir(parents=True)
    real_stat = Path.stat

    def stat(self: Path, *args: Any, **kwargs: Any) -> os.stat_result:
        if self.is_relative_to(locked / "inner"):
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_stat(self, *args, **kwargs)

    monkeypatch.setattr(Path, "stat", stat)
    request = FetchRequest(name="f.bin", sources=(Endpoint("127.0.0.1", 9),), dest_dir=locked / "inner" / "out")
    with pytest.raises(ConfigError, match=r"cannot put files in .*Permission denied"):
        fetch(network.bus(), request)


def _open_descriptors_of(path: Path) -> list[str]:
    fds = Path("/proc/self/fd")
    found = []
    for fd in fds.iterdir():
        try:
            if os.readlink(fd) == str(path):
                found.append(fd.name)
        except OSError:
            continue  # closed meanwhile (the listing's own descriptor)
    return found


def test_a_fetch_stopped_while_rechecking_its_partial_file_closes_it(
    network: TestNetwork, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while the partial file is re-checked on resume (or any error before the transfer loop) must not leave
    NAME.part open in the process (fetch() is a library call too)."""
    shared = tmp_path / "shared"
    shared.mkdir()
    data = os.urandom(8 * MIN_CHUNK)
    (shared / "f.bin").write_bytes(data)
    out = tmp_path / "out"
    out.mkdir()
    (out / "f.bin.part").write_bytes(data[: 4 * MIN_CHUNK])
    state = PartialFile(out / "f.bin", "f.bin")
    real_verify = PartialFile._verify

    def verify_then_stop(self: PartialFile, plan: Plan, claimed: bytearray) -> list[int]:
        real_verify(self, plan, claimed)
        raise KeyboardInterrupt

    server = FileServer(network.bus(), shared, Endpoint("127.0.0.1", 0), FolderScanner(shared).scan())
    try:
        holder = server.start()
        request = FetchRequest(name="f.bin", sources=(holder,), dest_dir=out, chunk_size=MIN_CHUNK)
        state._plan = Plan(len(data), MIN_CHUNK, blake3.blake3(data).hexdigest(), b"")
        state.save_state([(0, 4)], force=True)  # a state file that makes the next run resume
        monkeypatch.setattr(PartialFile, "_verify", verify_then_stop)
        with pytest.raises(KeyboardInterrupt):
            fetch(network.bus(), request)
    finally:
        server.stop()
    assert (out / "f.bin.part").exists()
    assert _open_descriptors_of(out / "f.bin.part") == []


def test_an_out_folder_with_a_tilde_is_under_home(run_cli: RunCli, network: TestNetwork, tmp_path: Path) -> None:
    """--out '~/dl' (quoted, or 'out = "~/Downloads"' in the config file, as README writes key-file) made a
    folder named '~' in the current one; 'share' expands its FOLDER the same way."""
    shared, home = tmp_path / "shared", tmp_path / "user"
    shared.mkdir()
    home.mkdir()
    (shared / "f.bin").write_bytes(os.urandom(1000))
    server = FileServer(network.bus(), shared, Endpoint("127.0.0.1", 0), FolderScanner(shared).scan())
    try:
        holder = server.start().display
        env = network.env(tmp_path / "home", HOME=str(home))
        proc = run_cli("fetch", "f.bin", "--from", holder, "--out", "~/dl", env=env)
    finally:
        server.stop()
    assert proc.returncode == 0, proc.stderr
    assert (home / "dl" / "f.bin").read_bytes() == (shared / "f.bin").read_bytes()
    assert not (tmp_path / "~").exists()


@pytest.mark.parametrize(
    ("option", "value"),
    [("--timeout", "inf"), ("--timeout", "nan"), ("--limit-rate", "nan"), ("--out", "~no-such-user-7f3e/dl")],
)
def test_an_option_value_that_cannot_be_used_is_a_usage_error(
    run_cli: RunCli, network: TestNetwork, tmp_path: Path, option: str, value: str
) -> None:
    """'--timeout inf' or 'nan' passed the 'positive' check and ended in a traceback converting it to milliseconds;
    '--limit-rate nan' passed and the fetch then waited forever without asking for a chunk. An --out of a user that
    does not exist ('~nobody/dl') ended in a traceback expanding it."""
    proc = run_cli("fetch", "f.bin", "--from", "127.0.0.1:9", option, value, env=network.env(tmp_path), timeout=60)
    assert proc.returncode == 2 and option in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
