"""The CLI shell: help everywhere, version, keygen, doctor, config files, and one-line errors."""

from __future__ import annotations

import json
import stat
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import pytest
import typer
from typer.testing import CliRunner

from overdrive import __version__, config
from overdrive.cli.root import _Group, app

runner = CliRunner()


def _commands() -> list[str]:
    import typer.main

    group: Any = typer.main.get_command(app)
    return sorted(group.commands)


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"overdrive {__version__}"


@pytest.mark.parametrize("command", [None, *_commands()])
def test_every_command_has_help(command: str | None) -> None:
    args = ["--help"] if command is None else [command, "--help"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_keygen_writes_private_file_and_refuses_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "net.key"
    result = runner.invoke(app, ["--network", "lab", "keygen", str(out)])
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert json.loads(out.read_text())["network"] == "lab"
    again = runner.invoke(app, ["keygen", str(out)])
    assert again.exit_code == 2
    assert "exists" in again.output


def test_doctor_json_reports_every_feature() -> None:
    result = runner.invoke(app, ["--password", "pw", "doctor", "--json"])
    checks = {c["name"]: c for c in json.loads(result.stdout)}
    assert result.exit_code == (0 if all(c["ok"] for c in checks.values()) else 1), result.output
    assert {"zeromq", "network key", "display", "audio", "codecs", "database", "backup folder"} <= set(checks)
    assert checks["zeromq"]["ok"] is True
    assert checks["network key"]["ok"] is True
    assert checks["codecs"]["ok"] is True, checks["codecs"]


def test_doctor_reports_missing_password_as_a_line() -> None:
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 1
    assert "no network password" in result.output


def test_config_file_supplies_defaults(tmp_path: Path) -> None:
    key = tmp_path / "net.key"
    config = tmp_path / "config.toml"
    config.write_text('network = "from-config"\n')
    result = runner.invoke(app, ["--config", str(config), "keygen", str(key)])
    assert result.exit_code == 0, result.output
    assert json.loads(key.read_text())["network"] == "from-config"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("netwrk = 'x'\n", "unknown option 'netwrk'"),
        ("[keygen]\nforse = true\n", "unknown option 'forse' in [keygen]"),
        ("[nosuch]\nx = 1\n", "no 'nosuch' command"),
        ("network = \n", "not valid TOML"),
    ],
)
def test_config_file_mistakes_are_one_line_errors(tmp_path: Path, text: str, message: str, run_cli: Any) -> None:
    config = tmp_path / "config.toml"
    config.write_text(text)
    result = run_cli("--config", str(config), "keygen", str(tmp_path / "k"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("overdrive: error:")
    assert message in lines[0]
    assert "Traceback" not in result.stderr


def test_missing_config_file_is_an_error(tmp_path: Path, run_cli: Any) -> None:
    result = run_cli("--config", str(tmp_path / "nope.toml"), "keygen", str(tmp_path / "k"))
    assert result.returncode == 2
    assert "does not exist" in result.stderr


def test_bad_log_level_is_rejected(run_cli: Any) -> None:
    result = run_cli("--log-level", "loud", "doctor")
    assert result.returncode == 2
    assert "--log-level must be one of" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["fetch", "--frm", "x"], "No such option: --frm"),
        (["fetch"], "Missing argument 'NAME'"),
        (["fetch", "x", "--window", "many"], "Invalid value for '--window'"),
        (["nosuch"], "No such command 'nosuch'"),
        (["view"], "Missing argument 'HOST[:PORT]'"),
    ],
)
def test_usage_mistakes_are_one_line_errors(args: list[str], message: str, run_cli: Any) -> None:
    # typer draws these in a multi-line box by default; a user mistake gets one line, like every other error
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("overdrive: error:") and message in lines[0], lines[0]
    assert f"(see 'overdrive {args[0]} --help')" in lines[0] or args[0] == "nosuch"


def test_help_and_no_arguments_keep_their_exit_codes(run_cli: Any) -> None:
    assert run_cli("fetch", "--help").returncode == 0
    assert run_cli("--version").returncode == 0
    bare = run_cli()
    assert bare.returncode == 2 and "Usage" in bare.stdout + bare.stderr


def test_error_lines_escape_what_they_quote(tmp_path: Path, run_cli: Any) -> None:
    # error text can quote a peer's words or a file name; it must not drive the terminal
    config = str(tmp_path / "a\x1b]0;pwned\x07b.toml")
    result = run_cli("--config", config, "keygen", str(tmp_path / "k"))
    assert result.returncode == 2
    assert "\x1b" not in result.stderr and "\\x1b]0;pwned\\x07b.toml" in result.stderr, result.stderr
    doctor = run_cli("--config", config, "doctor")  # doctor reports the same mistake on stdout
    assert doctor.returncode == 1
    assert "\x1b" not in doctor.stdout and "\\x1b]0;pwned\\x07b.toml" in doctor.stdout, doctor.stdout


def _end_of_input(value: str) -> str:
    if value:  # click calls it for the default too
        raise EOFError
    return value


abortive = typer.Typer(cls=_Group)


@abortive.callback()
def _abortive_root(stop: Annotated[str, typer.Option(callback=_end_of_input)] = "") -> None:
    """An option's callback runs while the arguments are parsed, before any command."""


@abortive.command()
def give_up() -> None:
    raise typer.Abort


@pytest.mark.parametrize("args", [["give-up"], ["--stop", "x", "give-up"]], ids=["abort", "end-of-input"])
def test_an_abort_is_one_line(args: list[str]) -> None:
    # typer's Abort is an Exception too: it printed a traceback before the handler meant for it was reached
    result = runner.invoke(abortive, args)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    assert result.stderr.strip().splitlines() == ["overdrive: aborted"]


def test_the_background_password_stretch_caches_where_its_caller_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the stretch starts in a thread while the command starts up; it must use the cache folder of the options it
    # was started for, not whatever the environment says when the thread gets to run
    def cache_dir() -> Path:
        return tmp_path / ("caller" if threading.current_thread() is threading.main_thread() else "later")

    monkeypatch.setattr(config.paths, "cache_dir", cache_dir)
    opts = config.GlobalOptions(password="a stretch of its own", network="prefetch-test")
    opts.prefetch_key()
    assert opts.network_key() is not None
    assert list((tmp_path / "caller" / "keys").iterdir()) and not (tmp_path / "later").exists()


def test_a_command_that_ends_early_still_lets_the_password_stretch_finish(monkeypatch: pytest.MonkeyPatch) -> None:
    # A command that fails right after the root callback started the stretch used to let the interpreter exit
    # under the running daemon thread; CPython 3.11 ends such a thread with pthread_exit when it wakes during
    # finalisation, and `overdrive master` with an unreachable database died with SIGSEGV after its error line
    # (about 1 exit in 200 under load, caught by CI). The console script now waits for the stretch first.
    from overdrive import __main__ as entry
    from overdrive.cli import root as cli

    class SlowKey:
        @staticmethod
        def from_password(password: str, network: str, cache: Path) -> str:
            time.sleep(0.5)
            return "key"

    started: list[threading.Thread] = []

    def failing_command() -> None:
        started.append(config._derivation("ends early", "x"))
        raise SystemExit(2)

    monkeypatch.setattr(config, "_derivations", {})
    monkeypatch.setattr(config, "NetworkKey", SlowKey)
    monkeypatch.setattr(cli, "main", failing_command)
    with pytest.raises(SystemExit):
        entry.run()
    assert started and not started[0].is_alive(), "the stretch was still running when the CLI returned"
