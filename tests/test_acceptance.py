"""Acceptance: the sharing commands as a new user (and a hostile peer with the password) meets them.

Each test here reproduces something found by running the installed CLI by hand: names in several scripts and
normalisations, names that look like terminal markup or carry control characters, and usage mistakes that must be
one clear line, never a traceback.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import threading
import time
import unicodedata
from collections.abc import Callable
from pathlib import Path

import blake3
import pytest

from overdrive.bus.address import Endpoint
from overdrive.files import names
from overdrive.files.model import FileInfo
from overdrive.files.scanner import FolderScanner
from overdrive.index.client import IndexClient
from tests.conftest import Children, TestNetwork

Run = Callable[..., subprocess.CompletedProcess[str]]
HASH = "ab" * 32


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("overdrive: error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def _register(network: TestNetwork, master: Endpoint, *file_names: str) -> None:
    """A peer with the password registers these names (as its own files) through the master."""
    with IndexClient(network.bus(), [master]) as client:
        files = [FileInfo(name=n, size=10, content_hash=HASH, mtime_ns=1) for n in file_names]
        assert client.register(files, "127.0.0.1:9") == len(files)


def test_ls_shows_names_with_brackets_and_control_characters_literally(
    run_cli: Run, network: TestNetwork, children: Children, tmp_path: Path
) -> None:
    """A name that looks like rich markup ('x[/b]y.txt' is a folder 'x[' and a file 'b]y.txt') crashed 'overdrive
    ls' for everyone with a MarkupError traceback; '[draft] notes.txt' was shown as ' notes.txt'; an ESC in a
    name reached the terminal."""
    master = children.master()
    _register(network, master, "x[/b]y.txt", "[draft] notes.txt", "esc\x1b[2Jclear.txt", "[bold red]red.txt")
    result = run_cli("ls", "--master", master.display, env=network.env(tmp_path / "lister"))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    table = "".join(result.stdout.split())  # the table folds long names over lines
    for shown in ("x[/b]y.txt", "[draft]notes.txt", "[boldred]red.txt", "esc\\x1b[2Jclear.txt"):
        assert shown in table, result.stdout
    assert "\x1b" not in result.stdout
    as_json = run_cli("ls", "--json", "--master", master.display, env=network.env(tmp_path / "lister"))
    assert "esc\x1b[2Jclear.txt" in {f["name"] for f in json.loads(as_json.stdout)}  # JSON keeps the real name


@pytest.mark.parametrize("command", [["ls"], ["fetch", "a.txt"], ["share", "."]])
def test_an_empty_master_list_is_a_usage_error(
    run_cli: Run, network: TestNetwork, tmp_path: Path, command: list[str]
) -> None:
    result = run_cli(*command, "--master", " , ", env=network.env(tmp_path / "home"))
    assert result.returncode == 2, result.stderr
    assert "--master" in one_line_error(result)


@pytest.mark.parametrize(
    ("option", "value", "mentions"),
    [("--chunk-size", "3", "--chunk-size"), ("--timeout", "-1", "--timeout"), ("--limit-rate", "-5", "--limit-rate")],
)
def test_bad_fetch_options_are_one_line_naming_the_option(
    run_cli: Run, network: TestNetwork, tmp_path: Path, option: str, value: str, mentions: str
) -> None:
    result = run_cli(
        "fetch", "a.txt", "--from", "127.0.0.1:1", option, value, "--out", str(tmp_path / "out"),
        env=network.env(tmp_path / "home"),
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert mentions in one_line_error(result)


def test_ls_timeout_must_be_positive(run_cli: Run, network: TestNetwork, tmp_path: Path) -> None:
    result = run_cli("ls", "--master", "127.0.0.1:1", "--timeout", "-3", env=network.env(tmp_path / "home"))
    assert result.returncode == 2 and "--timeout" in one_line_error(result)


def test_the_scanner_shares_only_names_a_fetcher_accepts(tmp_path: Path) -> None:
    """A file whose name has a control character, or that sits deeper than a fetcher accepts, was listed in the
    index but every fetch of it failed ('contains NUL or control characters', 'nested more than 32 deep')."""
    folder = tmp_path / "shared"
    deep = folder.joinpath(*[f"d{i}" for i in range(names.MAX_DEPTH + 3)])
    deep.mkdir(parents=True)
    (deep / "deep.txt").write_text("deep")
    (folder / "tab\there.txt").write_text("tab")
    (folder / "new\nline.txt").write_text("newline")
    (folder / "fine.txt").write_text("fine")
    scanner = FolderScanner(folder, cache_file=tmp_path / "cache.msgpack")
    found = scanner.scan()
    assert set(found) == {"fine.txt"}
    assert scanner.skipped == 3
    changed, _ = scanner.refresh(["tab\there.txt", "fine.txt", deep.relative_to(folder).as_posix()])
    assert [f.name for f in changed] == []
    for name in found:
        names.check_name(name)


def test_names_match_whatever_the_unicode_normalisation(
    run_cli: Run, network: TestNetwork, children: Children, tmp_path: Path
) -> None:
    """A file saved with a decomposed name (NFD, as macOS writes them) could not be found by the name a user
    types (NFC): 'overdrive ls résumé' listed nothing and 'overdrive fetch' said 'not found in the index'."""
    nfd = unicodedata.normalize("NFD", "cours/résumé été.txt")
    nfc = unicodedata.normalize("NFC", nfd)
    assert nfd != nfc
    folder = tmp_path / "shared"
    (folder / "cours").mkdir(parents=True)
    data = b"notes " * 1000
    (folder / nfd).write_bytes(data)
    master = children.master()
    share = children.start(
        "node", "share", str(folder), "--master", master.display, "--bind", "tcp://127.0.0.1:0", "--no-watch"
    )
    env = network.env(tmp_path / "user")
    with IndexClient(network.bus(), [master]) as client:
        deadline = time.monotonic() + 60
        while not client.lookup(nfd):
            assert time.monotonic() < deadline, "the node never registered its file"
            time.sleep(0.1)
        assert [e.name for e in client.lookup(nfc)] == [nfd]
        assert [e.name for e in client.lookup("*" + unicodedata.normalize("NFC", "é") + "*")] == [nfd]

    listed = run_cli("ls", "résumé", "--json", "--master", master.display, env=env)
    assert listed.returncode == 0, listed.stderr
    assert [f["name"] for f in json.loads(listed.stdout)] == [nfd]

    out = tmp_path / "out"
    fetched = run_cli("fetch", nfc, "--master", master.display, "--out", str(out), "--json", "--no-register", env=env)
    assert fetched.returncode == 0, fetched.stderr
    result = json.loads(fetched.stdout)
    assert result["sources"] == [share.display]
    assert result["hash"] == blake3.blake3(data).hexdigest()
    assert Path(result["path"]).read_bytes() == data
    assert Path(result["path"]).parent == out.resolve() / "cours"


def test_config_tables_take_the_option_names_the_help_shows(run_cli: Run, network: TestNetwork, tmp_path: Path) -> None:
    """'json = true' in [ls] was refused ("valid: as-json, ..., pattern") and [fetch] wanted 'content-hash' for
    --hash and 'from-' for --from: the config file spoke the code's parameter names, not the options."""
    config = tmp_path / "config.toml"
    config.write_text('[ls]\njson = true\nmaster = "127.0.0.1:1"\ntimeout = 0.5\n')
    listed = run_cli("--config", str(config), "ls", env=network.env(tmp_path / "home"))
    assert listed.returncode == 1 and "no index master answered" in one_line_error(listed)

    config.write_text(f'[fetch]\nfrom = "127.0.0.1:1"\nhash = "{"0" * 64}"\nregister = false\nchunk-size = 3\n')
    fetched = run_cli("--config", str(config), "fetch", "a.txt", env=network.env(tmp_path / "home"))
    assert fetched.returncode == 2 and "--chunk-size" in one_line_error(fetched)  # read from the table

    config.write_text("[ls]\njsn = true\n")
    typo = run_cli("--config", str(config), "ls", env=network.env(tmp_path / "home"))
    error = one_line_error(typo)
    assert typo.returncode == 2 and "'jsn'" in error
    assert "json" in error and "as-json" not in error


def test_a_master_with_the_wrong_password_says_so_instead_of_running_alone(
    run_cli: Run, network: TestNetwork, children: Children, tmp_path: Path
) -> None:
    """It printed 'listening' and ran on its own forever: no error, no warning, not even at --log-level info."""
    master = children.master()
    env = network.env(tmp_path / "second")
    env["OVERDRIVE_PASSWORD"] = "not the password"
    key = str(network.mesh_key_file(tmp_path))
    result = run_cli(
        "master", "--bind", "tcp://127.0.0.1:0", "--stats", "0", "--mesh-key", key, "--peers", master.display, env=env
    )
    assert result.returncode == 1, result.stderr
    assert "authentication failed" in one_line_error(result)
    assert master.display in one_line_error(result)


def test_a_peer_port_that_is_not_an_overdrive_master_is_a_warning_when_another_peer_answers(
    network: TestNetwork, children: Children, tmp_path: Path
) -> None:
    """A port that accepts and then drops the connection (a proxy whose backend is down, another service) fails
    the handshake exactly like a wrong password; with a real peer among --peers the master must not exit."""
    real = children.master()
    with socket.socket() as impostor:
        impostor.bind(("127.0.0.1", 0))
        impostor.listen(16)
        impostor.settimeout(0.2)
        stop = threading.Event()

        def drop_everyone() -> None:
            while not stop.is_set():
                with contextlib.suppress(OSError):
                    conn, _ = impostor.accept()
                    conn.close()

        dropper = threading.Thread(target=drop_everyone)
        dropper.start()
        try:
            port = impostor.getsockname()[1]
            proc, joined = children.spawn(
                "second", "master", "--bind", "tcp://127.0.0.1:0", "--stats", "0",
                "--mesh-key", str(network.mesh_key_file(tmp_path)), "--peers",
                f"127.0.0.1:{port},{real.display}",
            )  # fmt: skip
            with IndexClient(network.bus(), [joined.endpoint]) as client:
                deadline = time.monotonic() + 60
                while len(client.status(digest=False).masters_online) < 1:
                    assert time.monotonic() < deadline, "the second master never met the real one"
                    time.sleep(0.1)
            assert proc.poll() is None, proc.communicate(timeout=10)[1][-2000:]
        finally:
            stop.set()
            dropper.join()


def test_one_node_identity_shares_from_one_process_at_a_time(
    run_cli: Run, network: TestNetwork, children: Children, tmp_path: Path
) -> None:
    """A second 'overdrive share' with the same OVERDRIVE_HOME (so the same node id) ran: its full
    registration deleted every entry of the first one, which was still serving them."""
    master = children.master()
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    (first / "a.txt").write_text("a")
    children.start("node", "share", str(first), "--master", master.display, "--bind", "tcp://127.0.0.1:0")
    again = run_cli(
        "share", str(second), "--master", master.display, "--bind", "tcp://127.0.0.1:0",
        env=network.env(tmp_path / "node"),
    )  # fmt: skip
    assert again.returncode == 2, again.stderr
    assert "already sharing" in one_line_error(again)
    with IndexClient(network.bus(), [master]) as client:
        deadline = time.monotonic() + 60
        while not client.lookup("a.txt"):
            assert time.monotonic() < deadline, "the first node's file is not in the index"
            time.sleep(0.1)


@pytest.mark.parametrize(("option", "value"), [("--retention", "-5"), ("--timeout", "-1"), ("--heartbeat", "0")])
def test_bad_master_options_are_one_line_naming_the_option(
    run_cli: Run, network: TestNetwork, tmp_path: Path, option: str, value: str
) -> None:
    """--retention -5 was a ValueError traceback; --timeout -1 said 'master_timeout must be positive'."""
    result = run_cli("master", "--bind", "tcp://127.0.0.1:0", option, value, env=network.env(tmp_path / "home"))
    assert result.returncode == 2, result.stderr
    assert option in one_line_error(result)


def test_an_over_long_ls_pattern_is_a_usage_error_not_a_silent_master(
    run_cli: Run, network: TestNetwork, children: Children, tmp_path: Path
) -> None:
    """The master dropped the oversized lookup (as it must) and ls said the master 'did not answer within 3 s'."""
    master = children.master()
    result = run_cli("ls", "x" * 5000, "--master", master.display, env=network.env(tmp_path / "home"))
    assert result.returncode == 2, result.stderr
    assert "pattern" in one_line_error(result)


def test_the_scanner_never_shares_a_fetchs_leftover_state_file(tmp_path: Path) -> None:
    """A fetch that hit a full disk left 'NAME.part.state.tmp' beside its partial file; a node sharing that folder
    (the backup folder is the default for both) listed it in the index."""
    folder = tmp_path / "shared"
    folder.mkdir()
    for name in ("movie.mp4.part", "movie.mp4.part.state", "movie.mp4.part.state.tmp", "movie.mp4"):
        (folder / name).write_text(name)
    scanner = FolderScanner(folder, cache_file=tmp_path / "cache.msgpack")
    assert set(scanner.scan()) == {"movie.mp4"}
