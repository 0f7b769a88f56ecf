"""Ctrl-C in the phases of a fetch that run outside its socket loops: connecting, and the long file reads
(re-checking a partial file, hashing a copy already there)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from overdrive.transfer.partial import PartialFile, hash_path
from overdrive.transfer.protocol import MIN_CHUNK, chunk_checksum
from overdrive.transfer.session import Plan
from tests.conftest import TestNetwork
from tests.test_transfer_builds import reap


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
        hash_path(path, _Interrupt(after=2))


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
