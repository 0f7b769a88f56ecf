"""The index commands as a user meets them: clear one-line errors, help text, doctor's database check."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from overdrive.bus.ready import parse_ready
from overdrive.index.stores import open_store
from tests.conftest import TestNetwork

Run = Callable[..., subprocess.CompletedProcess[str]]


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in lines if line.startswith("overdrive: error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_unreachable_database_is_one_clear_line(run_cli: Run, network: TestNetwork, tmp_path: Path) -> None:
    result = run_cli(
        "master",
        "--bind",
        "tcp://127.0.0.1:0",
        "--db",
        "mysql://me:hunter2@127.0.0.1:1/idx",
        env=network.env(tmp_path / "home"),
    )
    assert result.returncode == 1
    line = one_line_error(result)
    assert "cannot reach MySQL at 127.0.0.1:1" in line and "hunter2" not in result.stderr


def test_bad_database_url_is_a_usage_error(run_cli: Run, network: TestNetwork, tmp_path: Path) -> None:
    result = run_cli("master", "--db", "postgres://x/y", env=network.env(tmp_path / "home"))
    assert result.returncode == 2
    assert "sqlite, mysql or firestore" in one_line_error(result)


def test_ls_without_a_live_master_fails_cleanly(run_cli: Run, network: TestNetwork, tmp_path: Path) -> None:
    result = run_cli("ls", "--master", "127.0.0.1:9", "--timeout", "1", env=network.env(tmp_path / "home"))
    assert result.returncode == 1
    assert "no index master answered" in one_line_error(result)


def test_a_timeout_that_is_no_number_of_seconds_is_a_usage_error(
    run_cli: Run, network: TestNetwork, tmp_path: Path
) -> None:
    """'ls --timeout inf' (wait forever?) or 'nan' passed the 'positive' check and ended in a traceback
    (OverflowError / ValueError converting it to milliseconds)."""
    for value in ("inf", "nan"):
        result = run_cli("ls", "--master", "127.0.0.1:9", "--timeout", value, env=network.env(tmp_path / "home"))
        assert result.returncode == 2 and "--timeout" in one_line_error(result), result.stderr


def test_share_of_a_missing_folder_is_a_usage_error(run_cli: Run, network: TestNetwork, tmp_path: Path) -> None:
    result = run_cli("share", str(tmp_path / "nope"), env=network.env(tmp_path / "home"))
    assert result.returncode == 2
    assert "is not a folder" in one_line_error(result)


def test_share_of_a_folder_under_a_user_that_does_not_exist_is_a_usage_error(
    run_cli: Run, network: TestNetwork, tmp_path: Path
) -> None:
    # '~no-such-user/x' (quoted, or from a config file) ended in a traceback from expanduser()
    result = run_cli("share", "~no-such-user-7f3e/music", env=network.env(tmp_path / "home"))
    assert result.returncode == 2
    assert "no home folder for its '~'" in one_line_error(result)


def test_help_and_doctor_database_check(run_cli: Run, network: TestNetwork, tmp_path: Path) -> None:
    for command in ("master", "share", "ls"):
        result = run_cli(command, "--help")
        assert result.returncode == 0 and "--master" in result.stdout + ("--master" if command == "master" else "")
    db = tmp_path / "doctor.db"
    result = run_cli("doctor", "--json", "--db", f"sqlite://{db}", env=network.env(tmp_path / "home"))
    checks = {c["name"]: c for c in json.loads(result.stdout)}
    assert checks["database"]["ok"], checks["database"]
    assert "not made yet" in checks["database"]["detail"] and not db.exists()  # doctor only looks
    open_store(f"sqlite://{db}").close()
    result = run_cli("doctor", "--json", "--db", f"sqlite://{db}", env=network.env(tmp_path / "home"))
    checks = {c["name"]: c for c in json.loads(result.stdout)}
    assert checks["database"]["ok"], checks["database"]
    assert "0 record(s)" in checks["database"]["detail"]


def test_share_with_the_wrong_password_is_refused_clearly(run_cli: Run, network: TestNetwork, tmp_path: Path) -> None:
    master = subprocess.Popen(
        [sys.executable, "-m", "overdrive", "master", "--bind", "tcp://127.0.0.1:0", "--stats", "0"],
        env=network.env(tmp_path / "m"),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert master.stdout is not None
        address = parse_ready(master.stdout.readline()).endpoint.display
        folder = tmp_path / "shared"
        folder.mkdir()
        env = network.env(tmp_path / "node")
        env["OVERDRIVE_PASSWORD"] = "not the password"
        result = run_cli("share", str(folder), "--master", address, "--bind", "tcp://127.0.0.1:0", env=env)
        assert result.returncode == 1
        assert "authentication failed" in one_line_error(result)
        listed = run_cli("ls", "--master", address, env=env)
        assert listed.returncode == 1 and "authentication failed" in one_line_error(listed)
    finally:
        master.terminate()
        master.wait(10)


@pytest.mark.parametrize("host", ["127.0.0.1", "*"])
def test_share_on_a_port_in_use_says_so_before_scanning(
    run_cli: Run, network: TestNetwork, tmp_path: Path, host: str
) -> None:
    """The file server binds after the first scan: a port another program held was said only once a folder had
    been hashed (an hour, for a large one). '*' is every IPv4 address, as ZeroMQ binds it (the check tried ::1)."""
    import socket

    folder = tmp_path / "shared"
    folder.mkdir()
    (folder / "a.txt").write_text("a")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(
            "share",
            str(folder),
            "--master",
            "127.0.0.1:9",
            "--bind",
            f"tcp://{host}:{port}",
            env=network.env(tmp_path / "home"),
        )
    assert result.returncode == 2 and "already in use" in one_line_error(result), result.stderr
    assert "scanned" not in result.stdout + result.stderr


def test_masters_need_a_mesh_key_for_the_network_to_join_each_other(
    run_cli: Run, network: TestNetwork, tmp_path: Path
) -> None:
    env = network.env(tmp_path / "home")
    key = tmp_path / "mesh.key"
    made = run_cli("keygen", "--mesh", str(key), env=env)
    assert made.returncode == 0, made.stderr
    assert json.loads(key.read_text())["kind"] == "overdrive-mesh-key" and key.stat().st_mode & 0o777 == 0o600
    assert "fingerprint" in made.stdout + made.stderr and "network key" not in made.stdout + made.stderr
    alone = run_cli("master", "--bind", "tcp://127.0.0.1:0", "--peers", "127.0.0.1:9", env=env)
    assert alone.returncode == 2
    assert "overdrive keygen --mesh FILE" in one_line_error(alone) and "--mesh-key FILE" in one_line_error(alone)
    other = tmp_path / "other.key"
    assert run_cli("--network", "another", "keygen", "--mesh", str(other), env=env).returncode == 0
    wrong = run_cli("master", "--bind", "tcp://127.0.0.1:0", "--mesh-key", str(other), env=env)
    assert wrong.returncode == 2 and "'another'" in one_line_error(wrong)
