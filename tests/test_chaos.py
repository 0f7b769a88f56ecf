"""Chaos, short profile: masters killed -9 and SIGSTOPped during file churn from two nodes must converge to listings
identical to the disks; viewers recording must live through a streamer's kill -9 and leave valid MP4s.

The seed is printed (and named in a failure); OVERDRIVE_CHAOS_SEED replays one. The long profile is scripts/chaos,
whose --smoke run is checked here too.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from tests.chaos_stream import StreamChaos, StreamProfile
from tests.chaoslib import MeshChaos, MeshProfile, Report

ROOT = Path(__file__).resolve().parents[1]


def seed() -> int:
    value = os.environ.get("OVERDRIVE_CHAOS_SEED")
    chosen = int(value) if value else random.SystemRandom().randrange(1 << 32)
    print(f"chaos seed {chosen} (replay: OVERDRIVE_CHAOS_SEED={chosen})")
    return chosen


def passed(report: Report) -> None:
    print(report.summary())
    if report.problems:
        pytest.fail(f"chaos seed {report.seed} failed:\n{report.summary()}", pytrace=False)


def test_masters_killed_and_stopped_during_churn_converge_to_the_disks(tmp_path: Path) -> None:
    profile = MeshProfile(masters=3, nodes=2, duration=24, rounds=2, kills=6, stops=1, stop_seconds=5, churn_rate=8)
    report = MeshChaos(profile, seed(), tmp_path).run()
    passed(report)
    assert (report.kills, report.stops) == (6, 1)
    assert len(report.converge_seconds) == 2
    assert report.listings_checked == 2 * 3 + 3  # every master after each heal, and `ls --json` at the end


def test_viewers_record_through_a_streamer_kill9(tmp_path: Path) -> None:
    report = Report(seed())
    StreamChaos(StreamProfile(viewers=2, restarts=1, up_seconds=4), tmp_path, report).run()
    passed(report)
    assert report.stream_restarts == 1
    assert len(report.recordings) >= 2  # at least one file per viewer


def test_chaos_script_smoke() -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "chaos"), "--smoke"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert run.returncode == 0, (
        f"scripts/chaos --smoke exited {run.returncode}:\n{run.stdout[-3000:]}{run.stderr[-3000:]}"
    )
    assert "chaos seed" in run.stdout and "problems: 0" in run.stdout
    assert "master listings compared with the disks" in run.stdout and "recordings checked" in run.stdout
