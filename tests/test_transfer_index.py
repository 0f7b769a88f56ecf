"""``overdrive fetch NAME`` through the index: a real master, a real ``overdrive share`` node, the fetch CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import blake3
import pytest

from overdrive.index.client import IndexClient
from tests.conftest import Children, TestNetwork
from tests.test_transfer_live import BIG, _write_file, scratch  # noqa: F401 - fixture re-used


def _wait_for(client: IndexClient, name: str, holders: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        entries = [e for e in client.lookup(name) if e.online and not e.deleted]
        if len(entries) >= holders:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"index never showed {holders} online holder(s) of {name}: {entries}")
        time.sleep(0.1)


def test_fetch_through_the_index(network: TestNetwork, children: Children, scratch: Path, tmp_path: Path) -> None:  # noqa: F811
    folder = scratch / "shared"
    folder.mkdir()
    digest = _write_file(folder / "big.bin", BIG)
    master = children.master()
    share = children.start("node", "share", str(folder), "--master", master.display, "--bind", "tcp://127.0.0.1:0")
    with IndexClient(network.bus(), [master]) as client:
        _wait_for(client, "big.bin", 1)
        out = scratch / "out"
        env = network.env(tmp_path / "fetcher")

        def fetch(*args: str) -> subprocess.CompletedProcess[str]:
            cmd = [sys.executable, "-m", "overdrive", "fetch", *args, "--master", master.display, "--json"]
            return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=False)

        done = fetch("big.bin", "--out", str(out), "--advertise", "127.0.0.1:9")
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert result["hash"] == digest and result["sources"] == [share.display] and result["registered"] is True
        assert blake3.blake3((out / "big.bin").read_bytes()).hexdigest() == digest
        copies = {e.address for e in client.lookup("big.bin", content_hash=digest)}
        assert copies == {share.display, "127.0.0.1:9"}  # the fetcher registered its copy
        # without --advertise, nothing serves at the address it would guess: no holder nobody can fetch from
        unserved = fetch("big.bin", "--out", str(scratch / "out2"))
        assert unserved.returncode == 0 and json.loads(unserved.stdout)["registered"] is False, unserved.stderr
        assert "not registered as a holder: no 'overdrive share' answers at" in unserved.stderr
        assert {e.address for e in client.lookup("big.bin", content_hash=digest)} == copies

        missing = fetch("nothing-here.bin", "--out", str(out))
        assert missing.returncode == 1 and "not found in the index" in missing.stderr, missing.stderr
        wrong_version = fetch("big.bin", "--hash", "0" * 64, "--out", str(out))
        assert wrong_version.returncode == 1 and "not found" in wrong_version.stderr
        bad_hash = fetch("big.bin", "--hash", "xyz", "--out", str(out))
        assert bad_hash.returncode == 2 and "--hash" in bad_hash.stderr
        # the 12 characters 'overdrive ls' shows pick the version (it refused them: 'must be 64 hex characters')
        short = fetch("big.bin", "--hash", digest[:12].upper(), "--out", str(scratch / "out3"))
        assert short.returncode == 0 and json.loads(short.stdout)["hash"] == digest, short.stderr
        unknown = fetch("big.bin", "--hash", "0" * 12, "--out", str(scratch / "out3"))
        assert unknown.returncode == 1 and "not found in the index" in unknown.stderr, unknown.stderr
        cmd = [sys.executable, "-m", "overdrive", "fetch", "big.bin", "--from", share.display, "--hash", digest[:12]]
        direct = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=False)
        assert direct.returncode == 2 and "all 64" in direct.stderr, direct.stderr


def test_no_holder_online(network: TestNetwork, children: Children, scratch: Path, tmp_path: Path) -> None:  # noqa: F811
    folder = scratch / "shared"
    folder.mkdir()
    _write_file(folder / "a.bin", 1_000_000)
    master = children.master("--timeout", "1")
    node, _ = children.spawn("node", "share", str(folder), "--master", master.display, "--bind", "tcp://127.0.0.1:0")
    with IndexClient(network.bus(), [master]) as client:
        _wait_for(client, "a.bin", 1)
        node.kill()
        node.communicate(timeout=10)
        deadline = time.monotonic() + 30
        while any(e.online for e in client.lookup("a.bin")):
            assert time.monotonic() < deadline, "holder never went offline"
            time.sleep(0.1)
    cmd = [sys.executable, "-m", "overdrive", "fetch", "a.bin", "--master", master.display, "--out", str(scratch)]
    proc = subprocess.run(cmd, env=network.env(tmp_path / "f"), capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1 and "no holder of 'a.bin' is online" in proc.stderr, proc.stderr


def test_a_name_with_glob_characters_is_fetched_by_its_name(
    network: TestNetwork,
    children: Children,
    scratch: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """'[1080p] movie.mkv', 'what?.txt': names as 'overdrive ls' shows them were refused as patterns ('fetch takes
    one exact name, not a pattern'), so such a file could only be fetched with --from. A pattern that names no file
    still says fetch wants one name."""
    folder = scratch / "shared"
    folder.mkdir()
    names = ["[1080p] movie.txt", "what?.txt", "star*.txt"]
    for name in names:
        (folder / name).write_text(name)
    (folder / "1 movie.txt").write_text("another file the bracket pattern would match")
    master = children.master()
    children.start("node", "share", str(folder), "--master", master.display, "--bind", "tcp://127.0.0.1:0")
    with IndexClient(network.bus(), [master]) as client:
        _wait_for(client, "what?.txt", 1)
    env = network.env(tmp_path / "fetcher")
    out = scratch / "out"

    def fetch(name: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "overdrive", "fetch", name, "--master", master.display, "--out", str(out)]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=False)

    for name in names:
        done = fetch(name)
        assert done.returncode == 0, done.stderr
        assert (out / name).read_text() == name
    pattern = fetch("*.mp4")
    assert pattern.returncode == 1 and "not a pattern" in pattern.stderr, pattern.stderr
