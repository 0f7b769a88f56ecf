"""The smaller points of a new user's session: help text, demo output, range and choice errors, the master's
status line, a node's recovery message and libasound's underrun lines."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from overdrive.bus.address import Endpoint
from overdrive.files.scanner import FolderScanner
from overdrive.index.master import Master, MasterConfig
from overdrive.index.node import Node, NodeConfig
from overdrive.index.stores.memory import MemoryStore
from tests.conftest import Children, TestNetwork
from tests.services import free_port

RunCli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def env(network: TestNetwork, tmp_path: Path) -> dict[str, str]:
    return network.env(tmp_path / "home")


def one_error(result: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code and len(lines) == 1 and text in lines[0], (result.returncode, result.stderr)


@pytest.mark.parametrize(
    ("command", "usage"),
    [
        ("keygen", "Usage: overdrive keygen [OPTIONS] FILE"),
        ("view", "Usage: overdrive view [OPTIONS] [HOST[:PORT]]"),
        ("share", "Usage: overdrive share [OPTIONS] [FOLDER]"),
    ],
)
def test_help_shows_no_bool_placeholder_nor_braces(
    run_cli: RunCli, env: dict[str, str], command: str, usage: str
) -> None:
    help_text = run_cli(command, "--help", env={**env, "COLUMNS": "160"}).stdout
    assert usage in help_text, help_text
    assert "<bool>" not in help_text and "{" not in help_text, help_text
    assert "--help" in help_text and "<path>" in help_text  # typed options keep their type
    top = run_cli("--help", env={**env, "COLUMNS": "160"}).stdout
    assert "--insecure" in top and "<bool>" not in top, top


def test_demo_seconds_zero_is_refused_at_once(run_cli: RunCli, env: dict[str, str]) -> None:
    began = time.monotonic()
    one_error(run_cli("demo", "--seconds", "0", env=env, timeout=20), 2, "--seconds must be 1..3600, not 0")
    assert time.monotonic() - began < 15  # one refusal, not a 20 s run first


def test_demo_reports_on_stdout_unwrapped_and_keeps_its_home(
    run_cli: RunCli, env: dict[str, str], tmp_path: Path
) -> None:
    deep = tmp_path / ("a-long-folder-name-" * 5)  # the 'demo home' line is longer than 80 columns
    deep.mkdir()
    result = run_cli("demo", "--seconds", "1", "--keep", env={**env, "TMPDIR": str(deep)}, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    home_line = next(line for line in lines if line.startswith("demo home "))
    assert str(deep) in home_line  # whole, on one line, although a pipe is 80 columns wide
    kept = [line.removeprefix("kept the demo home: ") for line in lines if line.startswith("kept the demo home: ")]
    assert len(kept) == 1 and Path(kept[0]).parent == deep and Path(kept[0]).is_dir(), lines
    assert any("OK" in line and "secure_echo" in line for line in lines), lines


def test_window_and_connections_errors_name_the_option(run_cli: RunCli, env: dict[str, str]) -> None:
    one_error(run_cli("fetch", "x", "--window", "0", env=env), 2, "--window must be 1..32, not 0")
    from overdrive.transfer.fetcher import MAX_CONNECTIONS, FetchRequest
    from overdrive.transfer.session import FetchConfig

    with pytest.raises(Exception, match=f"^--connections must be 1..{MAX_CONNECTIONS}, not 0$"):
        FetchRequest(
            name="x", sources=(Endpoint("127.0.0.1", 1),), dest_dir=Path("."), config=FetchConfig(), connections=0
        )


def test_connections_are_checked_before_any_master_is_asked(run_cli: RunCli, env: dict[str, str]) -> None:
    # Nothing listens on port 1: a check made after asking the master would report the master instead.
    from overdrive.transfer.fetcher import MAX_CONNECTIONS

    result = run_cli("fetch", "x", "--connections", "0", "--master", "127.0.0.1:1", env=env)
    one_error(result, 2, f"--connections must be 1..{MAX_CONNECTIONS}, not 0")


def test_choices_take_any_case(run_cli: RunCli, env: dict[str, str]) -> None:
    result = run_cli(
        "stream",
        *("--source", "TestPattern", "--codec", "H264", "--audio", "NONE", "--audio-codec", "PCM"),
        *("--duration", "1", "--no-record", "--bind", f"tcp://127.0.0.1:{free_port()}"),
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "codec h264" in result.stdout


def test_master_status_line_says_what_it_counts(children: Children, run_cli: RunCli) -> None:
    proc, _ = children.spawn("master", "master", "--bind", "tcp://127.0.0.1:0", "--stats", "0.3")
    time.sleep(1.5)
    proc.terminate()
    _, err = proc.communicate(timeout=30)
    status = [line for line in err.splitlines() if line.startswith("entries ")]
    assert status, err
    assert "peers online 0 of 0" in status[0] and "dropped messages 0 (malformed or unproven)" in status[0], status
    help_text = run_cli("master", "--help").stdout
    assert "peers online" in help_text and "dropped" in help_text


def test_a_master_that_never_failed_does_not_answer_again(
    network: TestNetwork, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A node whose first master is down fails over to the second: that one answers, it does not answer 'again'."""
    caplog.set_level(logging.WARNING, logger="overdrive.index.node")
    folder = tmp_path / "shared"
    folder.mkdir()
    (folder / "a.txt").write_text("a")
    scanner = FolderScanner(folder, cache_file=tmp_path / "cache.msgpack")
    scanner.scan()
    master = Master(network.bus(), MemoryStore(), MasterConfig(bind=Endpoint("127.0.0.1", 0)))
    master.start()
    assert master.endpoint is not None
    dead = Endpoint("127.0.0.1", free_port())
    config = NodeConfig(masters=(dead, master.endpoint), address="127.0.0.1:9", heartbeat=0.1, failover=1.0)
    node = Node(network.bus(), scanner, config, watch=False)
    node.start()
    try:
        assert node.registered.wait(60)
    finally:
        node.stop()
        master.stop()
    said = [r.getMessage() for r in caplog.records if r.name == "overdrive.index.node"]
    assert said == [
        f"node: master {dead.display} does not answer; trying {master.endpoint.display}",
        f"node: master {master.endpoint.display} answers",
    ], said


ALSA_ERROR = """
import ctypes, sys
from overdrive.media.audio import alsa
if sys.argv[1] == "quiet":
    assert alsa.quiet_alsa()
lib = ctypes.CDLL("libasound.so.2")
handle = ctypes.c_void_p()
assert lib.snd_pcm_open(ctypes.byref(handle), b"no-such-pcm", 0, 0) < 0
print(dict(alsa.messages))
"""


@pytest.mark.parametrize("mode", ["quiet", "loud"])
def test_libasound_messages_are_counted_not_printed(mode: str) -> None:
    """libasound's own error lines (an underrun under load: 'ALSA lib pcm.c:...:(snd_pcm_recover) underrun
    occurred') went straight to stderr over the viewer; here a real libasound error stands in for one."""
    if sys.platform != "linux":
        pytest.skip("libasound is Linux only")
    result = subprocess.run(
        [sys.executable, "-c", ALSA_ERROR, mode], check=False, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    if mode == "loud":  # the baseline: without the handler libasound prints
        assert "ALSA lib" in result.stderr
    else:
        assert result.stderr == "" and "snd_pcm_open_noupdate" in result.stdout, result
