"""The index commands as a user meets them over time: listing a large index, and a shared folder that goes away
and comes back while ``overdrive share`` runs."""

from __future__ import annotations

import errno
import json
import logging
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import zmq
from watchdog.observers import Observer

from overdrive.bus.address import Endpoint
from overdrive.bus.sockets import Bus
from overdrive.cli.index import HOLDERS_WIDTH, listing_lines
from overdrive.cli.options import shown
from overdrive.files import scanner as scan_module
from overdrive.files import watch as watch_module
from overdrive.files.model import FileInfo
from overdrive.files.scanner import FolderScanner
from overdrive.index.client import IndexClient
from overdrive.index.master import Master, MasterConfig
from overdrive.index.node import Node, NodeConfig
from overdrive.index.stores.memory import MemoryStore
from tests.conftest import Children, TestNetwork

Run = Callable[..., subprocess.CompletedProcess[str]]


def _file(name: str, *holders: tuple[str, str, bool], size: int = 10) -> dict[str, object]:
    return {
        "name": name,
        "size": size,
        "hash": "ab" * 32,
        "online": any(up for _, _, up in holders),
        "holders": [{"node_id": n, "address": a, "online": up, "mtime_ns": 1} for n, a, up in holders],
    }


def test_the_listing_is_one_line_per_file_with_the_name_last_and_aligned() -> None:
    deep = "/".join(f"dossier {i}" for i in range(20)) + "/fin.txt"
    files = [
        _file("a.txt", ("nodeaaaaaaaaaaaa", "10.0.0.5:7772", True)),
        _file(deep, ("nodebbbbbbbbbbbb", "10.0.0.6:7772", False), size=5 * 1024**3),
        _file(
            "日本語 ファイル.mp4", ("nodeaaaaaaaaaaaa", "10.0.0.5:7772", True), ("nodebbbbbbbbbbbb", "h6:7772", False)
        ),
        _file("esc\x1b[2J.txt", ("nodecccccccccccc", "10.0.0.7:7772", True)),
    ]
    header, *rows = listing_lines(files)
    assert header.split() == ["SIZE", "HASH", "HOLDERS", "NAME"]
    assert len(rows) == len(files)
    column = header.index("NAME")
    for row, f in zip(rows, files, strict=True):
        assert row[column:] == shown(str(f["name"]))  # whole, never folded, and where the header says
    assert "5.0 GiB" in rows[1] and "10.0.0.6:7772 (nodebb, offline)" in rows[1]
    assert "10.0.0.5:7772 (nodeaa, online), h6:7772 (nodebb, offline)" in rows[2]
    assert "\x1b" not in "".join(rows) and rows[3].endswith("esc\\x1b[2J.txt")


def test_one_file_with_many_holders_does_not_widen_every_row() -> None:
    one = [(f"n{0:015}", "10.0.0.0:7772", True)]
    many = [(f"n{i:015}", f"10.0.0.{i}:7772", i % 2 == 0) for i in range(12)]
    files = [_file(f"f{i:02}.txt", *one) for i in range(20)] + [_file("popular.txt", *many)]
    header, *rows = listing_lines(files)
    column = header.index("NAME")
    assert column == len(rows[0]) - len("f00.txt")  # as wide as the one-holder rows need, no wider
    assert column < 12 + 14 + HOLDERS_WIDTH + 2
    assert all(row[column:] == f"f{i:02}.txt" for i, row in enumerate(rows[:20]))
    assert rows[20].endswith("  popular.txt") and rows[20].count("(n0000") == 12


def test_colour_only_marks_online_and_offline() -> None:
    files = [_file("a.txt", ("nodeaaaaaaaaaaaa", "h:1", True), ("nodebbbbbbbbbbbb", "h:2", False))]
    plain = listing_lines(files)
    coloured = listing_lines(files, color=True)
    assert "\x1b[32monline\x1b[0m" in coloured[1] and "\x1b[31moffline\x1b[0m" in coloured[1]
    stripped = [line.replace("\x1b[32m", "").replace("\x1b[31m", "").replace("\x1b[1m", "") for line in coloured]
    assert [line.replace("\x1b[0m", "") for line in stripped] == plain


def _register(network: TestNetwork, master: Endpoint, names: list[str], address: str) -> None:
    with IndexClient(network.bus(), [master]) as client:
        files = [FileInfo(name=n, size=len(n), content_hash="cd" * 32, mtime_ns=1) for n in names]
        assert client.register(files, address) == len(files)


def test_ls_of_many_files_prints_one_line_each_and_the_documented_json(
    run_cli: Run, network: TestNetwork, children: Children, tmp_path: Path
) -> None:
    """A rich Table laid out 10,000 rows in about 8 s, folding long names over several lines (not greppable)."""
    master = children.master()
    names = [f"cours/semaine {i % 7}/" + "très long nom de fichier " * 4 + f"{i:04}.mp4" for i in range(300)]
    _register(network, master, names, "127.0.0.1:9")
    _register(network, master, names[:10], "127.0.0.1:8")
    env = network.env(tmp_path / "lister")
    listed = run_cli("ls", "--master", master.display, env=env)
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    column = header.index("NAME")
    assert [row[column:] for row in rows] == sorted(names)
    assert all(re.search(r"\s127\.0\.0\.1:9 \(\w{6}, (online|offline)\)", row) for row in rows)
    assert sum("127.0.0.1:8 (" in row for row in rows) == 10
    assert "\x1b" not in listed.stdout  # not a terminal: no colour
    assert re.search(r"^300 file\(s\), \d+ available now$", listed.stderr, re.M)

    as_json = run_cli("ls", "--json", "--master", master.display, env=env)
    assert as_json.returncode == 0, as_json.stderr
    items = json.loads(as_json.stdout)
    assert [f["name"] for f in items] == sorted(names)
    assert all(list(f) == ["name", "size", "hash", "online", "holders"] for f in items)
    assert all(list(h) == ["node_id", "address", "online", "mtime_ns"] for f in items for h in f["holders"])
    assert sum(len(f["holders"]) for f in items) == 310


def test_the_scanner_resyncs_a_folder_that_went_away_and_came_back(tmp_path: Path) -> None:
    folder = tmp_path / "shared"
    folder.mkdir()
    (folder / "a.txt").write_text("a")
    scanner = FolderScanner(folder, cache_file=tmp_path / "cache.msgpack")
    scanner.scan()
    shutil.rmtree(folder)
    assert scanner.resync() == ([], ["a.txt"])
    assert len(scanner) == 0
    folder.mkdir()
    (folder / "a.txt").write_text("a")
    (folder / "b.txt").write_text("b")
    hashed = scanner.hashed
    changed, removed = scanner.resync()
    assert sorted(f.name for f in changed) == ["a.txt", "b.txt"] and removed == []
    assert scanner.resync() == ([], [])
    assert scanner.hashed >= hashed + 1


def _wait_for(client: IndexClient, expected: set[str], what: str) -> None:
    deadline = time.monotonic() + 60
    while (names := {e.name for e in client.lookup("*.txt") if not e.deleted}) != expected:
        assert time.monotonic() < deadline, f"{what}: the index holds {sorted(names)}, not {sorted(expected)}"
        time.sleep(0.1)


def test_share_follows_its_folder_deleted_recreated_moved_away_and_back(
    network: TestNetwork, children: Children, tmp_path: Path
) -> None:
    """The watch died with the first folder: a folder deleted and made again (or moved away and back) while
    'overdrive share' ran was never watched again, so its files never reached the index until a restart; a folder
    moved away stayed listed as online though nothing could serve it."""
    folder = tmp_path / "shared folder"
    folder.mkdir()
    (folder / "a.txt").write_text("a")
    master = children.master()
    proc, _ = children.spawn("node", "share", str(folder), "--master", master.display, "--bind", "tcp://127.0.0.1:0")
    with IndexClient(network.bus(), [master]) as client:
        _wait_for(client, {"a.txt"}, "at start")
        shutil.rmtree(folder)
        _wait_for(client, set(), "after the folder was deleted")
        folder.mkdir()
        (folder / "b.txt").write_text("b")
        _wait_for(client, {"b.txt"}, "after the folder was made again")
        (folder / "deep" / "er").mkdir(parents=True)
        (folder / "deep" / "er" / "c.txt").write_text("c")
        _wait_for(client, {"b.txt", "deep/er/c.txt"}, "a change in the new folder")
        folder.rename(tmp_path / "moved")
        _wait_for(client, set(), "after the folder was moved away")
        (tmp_path / "moved").rename(folder)
        (folder / "d.txt").write_text("d")
        _wait_for(client, {"b.txt", "deep/er/c.txt", "d.txt"}, "after the folder was moved back")
    assert proc.poll() is None
    proc.terminate()
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert "is gone (deleted or moved away)" in stderr and "is back" in stderr
    assert "Traceback" not in stderr


class _SilentMaster:
    """Completes the secure handshake, takes requests and never answers: a master whose loop is stuck."""

    def __init__(self, network: TestNetwork) -> None:
        self.sock = network.bus().server(zmq.ROUTER)
        self.endpoint = Bus.bind(self.sock, Endpoint("127.0.0.1", 0))

    def wait_for_request(self) -> None:
        assert self.sock.poll(60_000), "no request reached the silent master"
        self.sock.recv_multipart()

    def close(self) -> None:
        self.sock.close(linger=0)


def test_an_index_client_wait_ends_at_its_check(network: TestNetwork) -> None:
    """A Ctrl-C recorded while a lookup waited for a reply was seen only after the whole --timeout (pyzmq can drop
    the KeyboardInterrupt itself while it frees a frame, so the command must check for it while it waits)."""
    silent = _SilentMaster(network)
    calls: list[float] = []

    def check() -> None:
        calls.append(time.monotonic())
        if len(calls) >= 3:
            raise KeyboardInterrupt

    try:
        client = IndexClient(network.bus(), [silent.endpoint], timeout=30, check=check)
        with client, pytest.raises(KeyboardInterrupt):
            client.lookup("*.txt")
        assert len(calls) == 3
    finally:
        silent.close()


def test_ctrl_c_stops_ls_waiting_for_a_silent_master(network: TestNetwork, tmp_path: Path) -> None:
    silent = _SilentMaster(network)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "overdrive", "ls", "--master", silent.endpoint.display, "--timeout", "600"],
            env=network.env(tmp_path / "lister"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            silent.wait_for_request()
            proc.send_signal(signal.SIGINT)
            _, stderr = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 130, stderr
        assert stderr.strip().splitlines()[-1] == "overdrive: interrupted" and "Traceback" not in stderr
    finally:
        silent.close()


def test_an_advertised_address_is_checked_and_shown_as_given(
    run_cli: Run, network: TestNetwork, children: Children, tmp_path: Path
) -> None:
    """'--advertise a:b:c' was taken as an IPv6 host and went into the records; an IPv6 address that begins with a
    letter ('[fe80::1]:7772') was read as rich markup and vanished from the start line ('(advertised :7772)')."""
    folder = tmp_path / "shared"
    folder.mkdir()
    master = children.master()
    bad = run_cli(
        "share", str(folder), "--master", master.display, "--bind", "tcp://127.0.0.1:0", "--advertise", "a:b:c",
        env=network.env(tmp_path / "bad"),
    )  # fmt: skip
    assert bad.returncode == 2 and "--advertise" in bad.stderr.strip().splitlines()[-1], bad.stderr
    proc, ready = children.spawn(
        "node", "share", str(folder), "--master", master.display, "--bind", "tcp://127.0.0.1:0",
        "--advertise", "fe80::1", "--no-watch",
    )  # fmt: skip
    proc.terminate()
    proc.communicate(timeout=30)
    assert f"advertised [fe80::1]:{ready.endpoint.port}" in ready.details, ready


class _NoInotify(Observer):  # type: ignore[misc,valid-type]
    """An observer on a system whose inotify instances are used up (by editors, other watchers)."""

    def schedule(self, *args: object, **kwargs: object) -> object:
        raise OSError(errno.EMFILE, "inotify instance limit reached")


def test_a_folder_that_cannot_be_watched_is_rescanned_instead(
    network: TestNetwork, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """'overdrive share' failed to start ('overdrive-node failed to start: inotify instance limit reached') on a
    machine where other programs had used up the inotify instances; it now warns once and rescans the folder."""
    monkeypatch.setattr(watch_module, "Observer", _NoInotify)
    master = Master(network.bus(), MemoryStore(), MasterConfig(bind=Endpoint("127.0.0.1", 0)))
    master.start()
    folder = tmp_path / "shared"
    folder.mkdir()
    (folder / "a.txt").write_text("a")
    scanner = FolderScanner(folder, cache_file=tmp_path / "cache.msgpack")
    scanner.scan()
    assert master.endpoint is not None
    node = Node(network.bus(), scanner, NodeConfig(masters=(master.endpoint,), address="127.0.0.1:9", poll=0.5))
    try:
        node.start()
        with IndexClient(network.bus(), [master.endpoint]) as client:
            _wait_for(client, {"a.txt"}, "at start")
            (folder / "b.txt").write_text("b")
            (folder / "a.txt").unlink()
            _wait_for(client, {"b.txt"}, "after a change in the unwatched folder")
    finally:
        node.stop()
        master.stop()
    warnings = [r.getMessage() for r in caplog.records if "cannot watch the shared folder" in r.getMessage()]
    assert len(warnings) == 1 and "inotify instance limit reached" in warnings[0], warnings


def test_share_starts_with_the_master_that_answered(network: TestNetwork, children: Children, tmp_path: Path) -> None:
    """With a dead master first in --master, every start registered only after a failover and warned 'master
    stopped answering; failing over' although the start-up check had already found the live one."""
    folder = tmp_path / "shared"
    folder.mkdir()
    (folder / "a.txt").write_text("a")
    master = children.master()
    with socket.socket() as dead:  # bound, never listening: connections to it are refused
        dead.bind(("127.0.0.1", 0))
        masters = f"127.0.0.1:{dead.getsockname()[1]},{master.display}"
        proc, ready = children.spawn("node", "share", str(folder), "--master", masters, "--bind", "tcp://127.0.0.1:0")
        with IndexClient(network.bus(), [master]) as client:
            _wait_for(client, {"a.txt"}, "at start")
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
    assert "stopped answering" not in stderr, stderr
    assert ready.details[-1].startswith(f"masters {master.display}, 127.0.0.1:"), ready


def test_a_skipped_name_is_a_warning_once_however_often_the_folder_is_rescanned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A folder rescanned every few seconds (unwatched) or after it came back repeated 'not sharing ...' for every
    skipped name at every rescan."""
    folder = tmp_path / "shared"
    folder.mkdir()
    (folder / "tab\there.txt").write_text("tab")
    (folder / "fine.txt").write_text("fine")
    scanner = FolderScanner(folder, cache_file=tmp_path / "cache.msgpack")
    scanner.scan()
    for _ in range(3):
        scanner.resync()
        scanner.refresh(["tab\there.txt"])
    assert len(scanner) == 1
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and "not sharing" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]


def test_an_interrupted_first_scan_keeps_the_hashes_it_made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hash cache was written only when a scan finished: a Ctrl-C an hour into hashing a large folder for its
    first share threw every hash away, and the next 'overdrive share' started again from nothing."""
    folder = tmp_path / "shared"
    folder.mkdir()
    for i in range(6):
        (folder / f"f{i}.bin").write_bytes(bytes([i]) * 1000)
    cache = tmp_path / "cache.msgpack"
    real = scan_module.hash_file
    hashed: list[Path] = []

    def interrupted_at_the_fourth(path: Path) -> str:
        if len(hashed) == 3:
            raise KeyboardInterrupt
        hashed.append(path)
        return real(path)

    monkeypatch.setattr(scan_module, "hash_file", interrupted_at_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        FolderScanner(folder, cache_file=cache).scan()
    monkeypatch.setattr(scan_module, "hash_file", real)
    again = FolderScanner(folder, cache_file=cache)
    assert len(again.scan()) == 6
    assert again.hashed == 3


def test_a_long_scan_reports_its_progress(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first share of a large folder hashed for many minutes with nothing on the screen."""
    folder = tmp_path / "shared"
    folder.mkdir()
    for i in range(4):
        (folder / f"f{i}.bin").write_bytes(b"x" * 1000)
    monkeypatch.setattr(scan_module, "PROGRESS_EVERY", 0.0)
    scanner = FolderScanner(folder, cache_file=tmp_path / "cache.msgpack")
    seen: list[tuple[int, int]] = []
    scanner.progress = lambda s: seen.append((s.hashed, s.hashed_bytes))
    scanner.scan()
    assert seen == [(1, 1000), (2, 2000), (3, 3000), (4, 4000)]
    FolderScanner(folder, cache_file=tmp_path / "cache.msgpack").scan()  # all cached: nothing to report
    assert len(seen) == 4


def test_a_master_outage_is_two_warnings_and_its_end_one(
    network: TestNetwork, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With its masters down a node warned 'master stopped answering; failing over to X' every 1.5 s for as long as
    the outage lasted (with one master, 'failing over' to that same master), and never said when it was over."""
    caplog.set_level(logging.WARNING, logger="overdrive.index.node")
    folder = tmp_path / "shared"
    folder.mkdir()
    (folder / "a.txt").write_text("a")
    scanner = FolderScanner(folder, cache_file=tmp_path / "cache.msgpack")
    scanner.scan()
    master = Master(network.bus(), MemoryStore(), MasterConfig(bind=Endpoint("127.0.0.1", 0)))
    master.start()
    assert master.endpoint is not None
    endpoint = master.endpoint
    config = NodeConfig(masters=(endpoint,), address="127.0.0.1:9", heartbeat=0.1, failover=1.0)
    node = Node(network.bus(), scanner, config, watch=False)
    node.start()
    try:
        assert node.registered.wait(60)
        master.stop()
        deadline = time.monotonic() + 60
        while node.session.failovers < 3:
            assert time.monotonic() < deadline, "the node never noticed its master had gone"
            time.sleep(0.05)
        master = Master(network.bus(), MemoryStore(), MasterConfig(bind=endpoint))
        master.start()
        with IndexClient(network.bus(), [endpoint]) as client:
            _wait_for(client, {"a.txt"}, "after the master came back")
    finally:
        node.stop()
        master.stop()
    said = [r.getMessage() for r in caplog.records if r.name == "overdrive.index.node"]
    assert said == [
        f"node: master {endpoint.display} stopped answering; trying it again",
        f"node: no master answers ({endpoint.display}); will keep trying",
        f"node: master {endpoint.display} answers again",
    ], said


def test_folders_made_in_one_go_print_no_watchdog_warning(
    network: TestNetwork, children: Children, tmp_path: Path
) -> None:
    """'mkdir -p a/b/c/...' inside a shared folder printed watchdog's raw 'RuntimeWarning: Callback with id ...
    already exists for watch ...' lines on the user's terminal (its walk of a new folder and the new subfolders' own
    events both add the same watch; harmless), each several KB long (the repr of every watch), enough to fill a
    pipe and stall a node whose stderr is read late."""
    folder = tmp_path / "shared"
    folder.mkdir()
    master = children.master()
    proc, _ = children.spawn("node", "share", str(folder), "--master", master.display, "--bind", "tcp://127.0.0.1:0")
    expected: set[str] = set()
    with IndexClient(network.bus(), [master]) as client:
        _wait_for(client, set(), "at start")
        for tree in range(10):  # the race needs a folder made while its parent's watch is being added: vary the pace
            deep = folder
            for depth in range(10):
                deep = deep / f"t{tree}d{depth}"
                deep.mkdir()
                time.sleep(tree / 2000)
            (deep / "f.txt").write_text("f")
            expected.add(deep.relative_to(folder).as_posix() + "/f.txt")
        _wait_for(client, expected, "after the folders were made")
    proc.terminate()
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert "Warning" not in stderr and "already exists for watch" not in stderr, stderr
