"""Every benchmark in scripts/ runs in its --smoke mode, so a benchmark that no longer runs fails the suite.

Each smoke run exercises every step of its benchmark (baselines included where installed), checks its own
results and exits non-zero when something is off; here we also check the printed report names the baseline.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest

from tests.services import PulseAudio, Xvfb, require

ROOT = Path(__file__).resolve().parents[1]


def smoke(script: str, *binaries: str, timeout: float = 120) -> str:
    """Run ``scripts/SCRIPT --smoke`` with this tree's overdrive first on the path; its stdout if it exits 0."""
    for name in binaries:
        if shutil.which(name) is None:
            require(name, "binary not found on PATH")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / script), "--smoke"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, f"{script} --smoke exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.slow
def test_bench_stream_smoke() -> None:
    out = smoke("bench_stream.py", Xvfb.binary)
    assert "| overdrive h264 | 30 | 1 |" in out
    for system, module in (("imagezmq jpeg", "imagezmq"), ("netgear jpeg", "vidgear")):
        if find_spec(module) is None:
            require(module, "the bench extra is not installed")
        assert f"| {system} | 30 | 1 |" in out
        assert f"less bandwidth than {system}" in out  # the ratio against this baseline


@pytest.mark.slow
def test_bench_transfer_smoke() -> None:
    out = smoke("bench_transfer.py", "nc")
    for row in ("socket.sendfile → recv_into", "nc (netcat-openbsd)", "overdrive --insecure", "overdrive (CURVE)"):
        assert f"| 32 MiB | {row} | 1 |" in out


@pytest.mark.slow
def test_bench_index_smoke() -> None:
    out = smoke("bench_index.py")
    assert "new master syncing 20,000 entries" in out
    assert "baseline: one row per INSERT+COMMIT (the original design) |" in out
    assert "x as fast)" in out


@pytest.mark.slow
def test_bench_audio_smoke() -> None:
    out = smoke("bench_audio.py", Xvfb.binary, PulseAudio.binary, "pactl")
    assert "glass-to-ear latency p50" in out
    assert "x the baseline)" in out


def test_bench_stream_signing_smoke() -> None:
    out = smoke("bench_stream_signing.py")
    assert "| h264 p-frame |" in out and "streamer µs unsigned / signed (ratio)" in out


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_bench_floods_smoke() -> None:
    """Every flood against the tree before the hardening and this one; the script checks this tree survives each."""
    before = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", "370ad0f^{commit}"], check=False)
    if before.returncode != 0:
        require("git history", "the commit before the hardening is not in this checkout")
    out = smoke("bench_floods.py", "git", "tar", timeout=400)
    assert "| 6 40 identities holding the slots | share | after |" in out
    assert "| 3 rows from 10,001 made-up origins | master | before |" in out


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bench_web_smoke() -> None:
    if not Path("/usr/bin/chromium").exists():
        require("chromium", "Debian's chromium is not installed (scripts/provision)")
    out = smoke("bench_web.py")
    for row in ("| video alone |", "| video + Opus test tone |", "| 1 |", "| 2 |"):
        assert row in out
    assert "web/native p50" in out  # the ratio against the native viewer of the same run
