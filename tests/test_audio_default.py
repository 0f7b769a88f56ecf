"""The default ``--audio auto``: system audio where it can be captured, otherwise a warning and video only.

An explicit ``--audio system`` on a machine that cannot capture it is a clear one-line error instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.conftest import TestNetwork


def _no_sound_env(network: TestNetwork, home: Path) -> dict[str, str]:
    env = network.env(home, PULSE_SERVER="unix:/nonexistent/pulse/native")
    env.pop("PULSE_SINK", None)
    env.pop("PULSE_SOURCE", None)
    return env


def test_auto_streams_video_only_when_no_system_audio(network: TestNetwork, overdrive_home: Path, run_cli: Any) -> None:
    args = ["stream", "--source", "testpattern", "--scale", "320x180", "--bind", "tcp://127.0.0.1:0"]
    result = run_cli(*args, "--duration", "1", "--no-record", env=_no_sound_env(network, overdrive_home))
    assert result.returncode == 0, result.stderr
    assert "streaming without sound" in result.stderr
    assert "sent" in result.stderr


def test_explicit_system_audio_fails_clearly(network: TestNetwork, overdrive_home: Path, run_cli: Any) -> None:
    args = ["stream", "--source", "testpattern", "--audio", "system", "--bind", "tcp://127.0.0.1:0"]
    result = run_cli(*args, "--duration", "1", "--no-record", env=_no_sound_env(network, overdrive_home))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("overdrive: error: cannot capture system audio"), result.stderr
    assert "--audio none" in lines[-1]
    assert "Traceback" not in result.stderr
