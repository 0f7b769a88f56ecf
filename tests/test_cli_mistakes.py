"""Mistakes a new user makes, through the real CLI in a subprocess: each is one line on stderr (no traceback) and
a documented exit code, found before any work starts; reports go to stdout."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from subprocess import CompletedProcess

import pytest

from overdrive.index.client import IndexClient
from tests.conftest import Children, TestNetwork
from tests.test_stream_cli import _Lines

Run = Callable[..., CompletedProcess[str]]


def error_lines(result: CompletedProcess[str], code: int, count: int, *needles: str) -> list[str]:
    """The ``count`` stderr lines of a failed run, checked: exit ``code``, no traceback, every needle in the last
    (the error; those before it say what the run was doing, such as waiting for a database)."""
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == count, result.stderr
    for needle in needles:
        assert needle in lines[-1], lines[-1]
    return lines


def one_error(result: CompletedProcess[str], code: int, *needles: str) -> str:
    """The single stderr line of a failed run, checked: exit ``code``, no traceback, every needle in it."""
    return error_lines(result, code, 1, *needles)[0]


def _user_config(home: Path, text: str) -> Path:
    path = home / "config" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize(("text", "where"), [("[stream]\nfsp = 30\n", "'fsp' in [stream]"), ("fps = \n", "line 1")])
def test_a_broken_user_config_names_its_file_and_never_blocks_help_or_doctor(
    overdrive_home: Path, run_cli: Run, text: str, where: str
) -> None:
    path = _user_config(overdrive_home, text)
    for command in ("stream", "view", "master", "fetch"):
        helped = run_cli(command, "--help")
        assert helped.returncode == 0 and "Usage" in helped.stdout, helped.stderr
    one_error(run_cli("stream", "--source", "testpattern"), 2, f"config file {path}", where)
    doctor = run_cli("--password", "pw", "doctor")
    assert doctor.returncode == 1, doctor.stderr
    finding = [line for line in doctor.stdout.splitlines() if "config file" in line]
    assert finding and finding[0].startswith("MISSING") and str(path) in finding[0] and where in finding[0]


def test_a_wrong_value_in_the_user_config_names_the_file(overdrive_home: Path, run_cli: Run) -> None:
    path = _user_config(overdrive_home, '[stream]\nfps = "fast"\n')
    one_error(run_cli("--password", "pw", "stream"), 2, "'--fps'", f"set in config file {path}")
    typed = run_cli("--password", "pw", "stream", "--fps", "slow")  # the command line's own mistake: no file named
    assert "config file" not in one_error(typed, 2, "'--fps'")


@pytest.mark.parametrize("key", ["insecure", "discovery"])
def test_a_quoted_boolean_in_the_user_config_is_refused(overdrive_home: Path, run_cli: Run, key: str) -> None:
    # "false" in quotes is a non-empty string, which Python takes as true: it must never turn encryption off.
    path = _user_config(overdrive_home, f'{key} = "false"\n')
    one_error(run_cli("--password", "pw", "ls"), 2, f"'{key}' must be true or false", str(path))


def test_doctor_reports_on_stdout_exits_1_when_something_is_missing_and_creates_nothing(
    overdrive_home: Path, run_cli: Run
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}  # no display: at least one check is MISSING
    result = run_cli("--password", "pw", "doctor", env=env)
    assert result.returncode == 1, result.stderr
    assert result.stderr == "", result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("MISSING display") for line in lines), result.stdout
    assert all(line.startswith(("OK ", "MISSING ")) for line in lines), result.stdout
    assert "Error:" not in result.stdout and "Error(" not in result.stdout  # reasons, not exception reprs
    assert not overdrive_home.exists() or not any(overdrive_home.rglob("*")), list(overdrive_home.rglob("*"))


def test_devices_reports_on_stdout(run_cli: Run) -> None:
    result = run_cli("devices")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() and result.stderr == "", (result.stdout, result.stderr)


def test_keygen_onto_a_folder_or_into_an_unwritable_place_is_one_line(tmp_path: Path, run_cli: Run) -> None:
    one_error(run_cli("keygen", str(tmp_path)), 2, "is a folder")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    one_error(run_cli("keygen", str(blocker / "net.key")), 2, "cannot write the key file", str(blocker))


@pytest.mark.parametrize(
    "args",
    [
        ["stream", "--source", "testpattern", "--bind", "tcp://127.0.0.1:0", "--duration", "1", "--no-record"],
        ["share", ".", "--master", "127.0.0.1:9", "--bind", "tcp://127.0.0.1:0"],
    ],
    ids=["stream", "share"],
)
def test_an_unwritable_home_is_one_line(tmp_path: Path, run_cli: Run, network: TestNetwork, args: list[str]) -> None:
    home = Path("/proc/overdrive-home")  # no folder can be made there, even by root; reading finds nothing
    result = run_cli(*args, env=network.env(home), timeout=60)
    one_error(result, 2, str(home), "is OVERDRIVE_HOME writable?")


def test_stats_json_into_an_unwritable_place_is_refused_before_viewing(
    tmp_path: Path, run_cli: Run, network: TestNetwork
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    env = network.env(tmp_path / "home")
    # nothing listens on the address: the mistake must be found before the viewer tries it
    for target, reason in ((blocker / "stats.json", "cannot write there"), (tmp_path, "is a folder")):
        result = run_cli("view", "127.0.0.1:9", "--headless", "--stats-json", str(target), env=env, timeout=30)
        one_error(result, 2, "--stats-json", reason)


@pytest.mark.parametrize(
    ("content", "reason"),
    [(None, "No such file"), ('{"a": 1}', "not a service account key"), ("nojson", "not a service account key")],
)
def test_a_bad_firestore_credentials_file_is_one_line(
    tmp_path: Path, run_cli: Run, network: TestNetwork, content: str | None, reason: str
) -> None:
    creds = tmp_path / "creds.json"
    if content is not None:
        creds.write_text(content)
    env = {k: v for k, v in network.env(tmp_path / "home").items() if k != "FIRESTORE_EMULATOR_HOST"}
    result = run_cli("master", "--bind", "tcp://127.0.0.1:0", "--db", f"firestore://p?credentials={creds}", env=env)
    one_error(result, 2, f"Firestore credentials file {creds}", reason)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A TCP port that accepts connections (the kernel completes them from the backlog) and never says a word."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


def test_a_mysql_port_that_never_answers_is_one_line_not_a_hang(
    tmp_path: Path, run_cli: Run, network: TestNetwork, silent_port: int
) -> None:
    url = f"mysql://u:p@127.0.0.1:{silent_port}/db"
    result = run_cli("master", "--bind", "tcp://127.0.0.1:0", "--db", url, env=network.env(tmp_path / "m"), timeout=60)
    waited, _ = error_lines(result, 1, 2, f"MySQL at 127.0.0.1:{silent_port} did not answer")
    assert f"waiting for the MySQL server at 127.0.0.1:{silent_port} (up to 5 s)" in waited, waited


def test_sigterm_while_the_database_does_not_answer_stops_the_master_cleanly(
    tmp_path: Path, network: TestNetwork, silent_port: int
) -> None:
    url = f"mysql://u:p@127.0.0.1:{silent_port}/db"
    argv = [sys.executable, "-m", "overdrive", "--log-level", "debug", "master", "--bind", "tcp://127.0.0.1:0"]
    with subprocess.Popen(
        [*argv, "--db", url], env=network.env(tmp_path / "m"), stderr=subprocess.PIPE, text=True
    ) as proc:
        said = _Lines(proc)
        deadline = time.monotonic() + 30  # the debug log says when the store is being opened
        while not any("opening store" in line for line in said.lines) and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.terminate()  # without that line too: a master that hangs silently must still stop cleanly
        code, stderr = said.finish(timeout=30)
    assert code == 0, stderr
    assert "Traceback" not in stderr and "master stopped while opening its store" in stderr, stderr


@pytest.mark.parametrize("command", ["master", "doctor"])
def test_an_unreachable_firestore_emulator_is_one_line_not_a_hang(
    tmp_path: Path, run_cli: Run, network: TestNetwork, silent_port: int, command: str
) -> None:
    env = network.env(tmp_path / "home", FIRESTORE_EMULATOR_HOST=f"127.0.0.1:{silent_port}")
    if command == "master":
        result = run_cli("master", "--bind", "tcp://127.0.0.1:0", "--db", "firestore://p", env=env, timeout=60)
        waited, _ = error_lines(result, 1, 2, "Firestore project p", "did not answer")
        assert f"waiting for Firestore project p (emulator 127.0.0.1:{silent_port}) (up to 5 s)" in waited, waited
        return
    result = run_cli("doctor", "--db", "firestore://p", env=env, timeout=60)
    assert "waiting for Firestore project p" in result.stderr, result.stderr
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    database = [line for line in result.stdout.splitlines() if " database " in line]
    assert database and database[0].startswith("MISSING") and "did not answer" in database[0], result.stdout


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["--region", "10,10"], 2, "--region must be X,Y,W,H"),
        (["--region", "0,0,0,0"], 2, "--region 0,0,0,0: need"),
        (["--source", "testpatern"], 2, "--source must be"),
        (["--source", "testpattern", "--pip", "webcam:/no/such/video.mp4"], 2, "no such device or file"),
        (["--source", "testpattern", "--pip", "lecture.mp4"], 2, "--pip must be webcam"),  # a file without webcam:
        (["--source", "webcam:/dev/no-such-camera-overdrive"], 2, "no such device or file"),
        ([], 1, "cannot open the screen"),  # no DISPLAY
    ],
)
def test_stream_option_mistakes_are_one_line_before_it_starts(
    tmp_path: Path, run_cli: Run, network: TestNetwork, args: list[str], code: int, needle: str
) -> None:
    env = {k: v for k, v in network.env(tmp_path / "home").items() if k != "DISPLAY"}
    result = run_cli("stream", "--bind", "tcp://127.0.0.1:0", "--audio", "none", *args, env=env, timeout=60)
    assert result.stdout == "", result.stdout  # no ready line: nothing started
    one_error(result, code, needle)


def test_a_missing_camera_is_one_line_without_opencv_warnings(
    tmp_path: Path, run_cli: Run, network: TestNetwork
) -> None:
    if Path("/dev/video0").exists():
        pytest.skip("this machine has a camera")
    env = network.env(tmp_path / "home")
    result = run_cli("stream", "--bind", "tcp://127.0.0.1:0", "--audio", "none", "--source", "webcam", env=env)
    assert result.stdout == "", result.stdout
    one_error(result, 1, "cannot open webcam 0")


@pytest.mark.parametrize(
    ("args", "needle"), [(["--monitor", "3"], "--monitor 3 does not exist"), (["--region", "0,0,5000,10"], "outside")]
)
def test_stream_screen_mistakes_are_one_line_before_it_starts(
    xvfb: object, tmp_path: Path, run_cli: Run, network: TestNetwork, args: list[str], needle: str
) -> None:
    env = network.env(tmp_path / "home")
    result = run_cli("stream", "--bind", "tcp://127.0.0.1:0", "--audio", "none", *args, env=env, timeout=60)
    assert result.stdout == "", result.stdout
    one_error(result, 2, needle)


def test_fetching_a_file_only_this_node_holds_says_so_and_where_it_is(
    network: TestNetwork, children: Children, tmp_path: Path, run_cli: Run
) -> None:
    folder = tmp_path / "shared"
    folder.mkdir()
    (folder / "own.txt").write_text("mine")
    master = children.master()
    children.spawn("node", "share", str(folder), "--master", master.display, "--bind", "tcp://127.0.0.1:0")
    with IndexClient(network.bus(), [master]) as client:
        for _ in range(200):  # registered within seconds; the bound only ends a broken run
            if any(e.name == "own.txt" for e in client.lookup("own.txt")):
                break
            time.sleep(0.05)
    result = run_cli("fetch", "own.txt", "--master", master.display, env=network.env(tmp_path / "node"))
    one_error(result, 1, "this node's own file", str(folder.resolve() / "own.txt"))


def test_a_client_pointed_at_the_wrong_kind_of_service_says_which_kind_it_found(
    network: TestNetwork, children: Children, tmp_path: Path, run_cli: Run
) -> None:
    folder = tmp_path / "shared"
    folder.mkdir()
    master = children.master().display
    share = children.start("node", "share", str(folder), "--master", master, "--bind", "tcp://127.0.0.1:0").display
    stream = children.start(
        "streamer", "stream", "--source", "testpattern", "--audio", "none", "--no-record", "--bind", "tcp://127.0.0.1:0"
    ).display
    env = network.env(tmp_path / "client")
    mesh_key = network.mesh_key_file(tmp_path)
    for args, needle in (
        (["view", master, "--headless"], f"{master} is an overdrive master or share, not a stream"),
        (["view", share, "--headless"], f"{share} is an overdrive master or share, not a stream"),
        (["ls", "--master", stream], f"{stream} is an overdrive stream, not a master or share"),
        (["fetch", "x.txt", "--from", stream], f"{stream} is an overdrive stream, not a master or share"),
        (["fetch", "x.txt", "--master", stream], f"{stream} is an overdrive stream, not a master or share"),
        # a master and a share are both ROUTERs: they say which they are when asked in the other's protocol
        (["ls", "--master", share], f"{share} is an overdrive share, not a master (fetch from it with"),
        (["fetch", "x.txt", "--master", share], f"{share} is an overdrive share, not a master"),
        (["fetch", "x.txt", "--from", master], f"{master} is an overdrive master, not a share (use it with"),
        (["share", str(folder), "--master", share, "--bind", "tcp://127.0.0.1:0"], f"{share} is an overdrive share"),
        (
            ["master", "--bind", "tcp://127.0.0.1:0", "--peers", share, "--mesh-key", str(mesh_key)],
            f"{share} is an overdrive share, not a master",
        ),
    ):
        one_error(run_cli(*args, env=env, timeout=30), 1, needle)
    wrong = {**env, "OVERDRIVE_PASSWORD": "not-the-password"}  # a wrong password is still said as such
    one_error(run_cli("view", stream, "--headless", env=wrong, timeout=30), 1, "authentication failed")
    one_error(run_cli("ls", "--master", master, env=wrong, timeout=30), 1, "authentication failed")


def test_a_host_name_that_does_not_resolve_is_a_dns_error(network: TestNetwork, tmp_path: Path, run_cli: Run) -> None:
    env = network.env(tmp_path / "client")
    for args in (["view", "nosuchhost.invalid", "--headless"], ["ls", "--master", "nosuchhost.invalid"]):
        one_error(run_cli(*args, env=env, timeout=30), 1, "cannot find 'nosuchhost.invalid': DNS lookup failed")
