"""The sharing node: folder scanning with its hash cache, and the watcher keeping the index current."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from overdrive.bus.address import Endpoint
from overdrive.errors import ConfigError
from overdrive.files.model import FileInfo, hash_file
from overdrive.files.scanner import FolderScanner
from overdrive.index.client import Entry, IndexClient
from overdrive.index.master import Master, MasterConfig
from overdrive.index.node import Node, NodeConfig, NodeSession
from overdrive.index.protocol import Ack, Announce, NodeBeat
from overdrive.index.stores.memory import MemoryStore
from tests.conftest import TestNetwork


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> float:
    began = time.monotonic()
    while not check():
        if time.monotonic() - began > timeout:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)
    return time.monotonic() - began


def test_scanner_shares_regular_files_only_and_caches_hashes(tmp_path: Path) -> None:
    folder, outside = tmp_path / "shared", tmp_path / "outside"
    (folder / "sub dir" / "ünï").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    (folder / "a.txt").write_text("a")
    (folder / "sub dir" / "ünï" / "日本.txt").write_text("b")
    (folder / "movie.mp4.part").write_text("partial")
    (folder / "link-out.txt").symlink_to(outside / "secret.txt")
    (folder / "dir-out").symlink_to(outside)
    (folder / "link-in.txt").symlink_to(folder / "a.txt")
    os.mkfifo(folder / "fifo")
    scanner = FolderScanner(folder)
    found = scanner.scan()
    assert sorted(found) == ["a.txt", "sub dir/ünï/日本.txt"]
    assert found["a.txt"].content_hash == hash_file(folder / "a.txt") and len(found["a.txt"].content_hash) == 64
    assert scanner.get("a.txt") == found["a.txt"] and scanner.get("link-out.txt") is None
    assert scanner.hashed == 2
    again = FolderScanner(folder)
    assert again.scan() == found and again.hashed == 0  # the cache answered
    (folder / "a.txt").write_text("changed")
    third = FolderScanner(folder)
    assert third.scan()["a.txt"].content_hash == hash_file(folder / "a.txt") and third.hashed == 1


def test_overdrives_own_secrets_are_never_shared(tmp_path: Path, overdrive_home: Path) -> None:
    """'overdrive share ~' (or any folder holding overdrive's own) published the node's identity.key, the derived
    network keys and the config file (it may hold a database password): any password holder could fetch the
    identity and register or withdraw files as that node. Recordings in the backup folder are still shared."""
    from overdrive import paths

    private = [
        paths.data_dir() / "identity.key",
        paths.cache_dir() / "keys" / "netkey-0123",
        paths.config_dir() / "config.toml",
    ]
    for path in [*private, paths.backup_dir() / "lecture.mp4", paths.data_dir() / "index.db", tmp_path / "doc.txt"]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(path.name)
    found = FolderScanner(tmp_path, cache_file=tmp_path / "elsewhere.msgpack").scan()
    home = overdrive_home.relative_to(tmp_path).as_posix()
    assert sorted(found) == ["doc.txt", f"{home}/backup/lecture.mp4", f"{home}/data/index.db"]
    assert sorted(FolderScanner(paths.data_dir(), cache_file=tmp_path / "c2.msgpack").scan()) == ["index.db"]


def test_rescanning_many_unchanged_files_only_stats_them(tmp_path: Path) -> None:
    folder = tmp_path / "many"
    for i in range(2000):
        path = folder / f"d{i % 20}" / f"f {i}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(str(i))
    FolderScanner(folder).scan()
    scanner = FolderScanner(folder)
    began = time.monotonic()
    assert len(scanner.scan()) == 2000
    assert scanner.hashed == 0
    assert time.monotonic() - began < 5.0  # loose; the benchmark measures 10,000 files


def test_node_config_needs_a_master() -> None:
    with pytest.raises(ConfigError):
        NodeConfig(masters=(), address="x:1")


@pytest.fixture
def mesh(network: TestNetwork, tmp_path: Path) -> Iterator[tuple[Master, Node, IndexClient, Path]]:
    master = Master(network.bus(), MemoryStore(), MasterConfig(bind=Endpoint("127.0.0.1", 0)))
    master.start()
    assert master.endpoint is not None
    folder = tmp_path / "shared"
    (folder / "docs").mkdir(parents=True)
    (folder / "docs" / "notes.txt").write_text("notes")
    scanner = FolderScanner(folder)
    scanner.scan()
    node = Node(network.bus(), scanner, NodeConfig(masters=(master.endpoint,), address="127.0.0.1:7772"))
    node.start()
    client = IndexClient(network.bus(), [master.endpoint])
    try:
        yield master, node, client, folder
    finally:
        client.close()
        node.stop()
        master.stop()


def names(entries: list[Entry]) -> list[str]:
    return sorted(e.name for e in entries)


def test_changes_in_the_folder_reach_the_index(mesh: tuple[Master, Node, IndexClient, Path]) -> None:
    _master, node, client, folder = mesh
    assert node.registered.wait(10)
    assert names(client.lookup("*")) == ["docs/notes.txt"]
    timings: dict[str, float] = {}

    def step(what: str, action: Callable[[], None], expected: list[str]) -> None:
        action()
        timings[what] = wait_until(lambda: names(client.lookup("*")) == expected, 10, what)

    step("add", lambda: (folder / "new file.txt").write_text("new"), ["docs/notes.txt", "new file.txt"])
    old_hash = client.lookup("docs/notes.txt")[0].content_hash
    (folder / "docs" / "notes.txt").write_text("notes, edited")
    timings["change"] = wait_until(
        lambda: client.lookup("docs/notes.txt")[0].content_hash == hash_file(folder / "docs/notes.txt"), 10, "change"
    )
    assert client.lookup("docs/notes.txt")[0].content_hash != old_hash
    step("rename", lambda: (folder / "new file.txt").rename(folder / "renamed.txt"), ["docs/notes.txt", "renamed.txt"])
    step("delete", (folder / "renamed.txt").unlink, ["docs/notes.txt"])
    step("rename folder", lambda: (folder / "docs").rename(folder / "papers"), ["papers/notes.txt"])
    deep = folder / "a" / "b c" / "δ"

    def make_deep() -> None:
        deep.mkdir(parents=True)
        (deep / "x.txt").write_text("x")

    step("new folder", make_deep, ["a/b c/δ/x.txt", "papers/notes.txt"])
    slow = {what: took for what, took in timings.items() if took >= 2.0}
    assert not slow, f"changes slower than 2 s: {slow}"
    assert node.scanner.get("papers/notes.txt") is not None  # the node is the file server's catalogue
    assert all(e.online and e.holder == node.bus.node_id for e in client.lookup("*"))


def test_changes_between_the_first_scan_and_the_watch_reach_the_index(network: TestNetwork, tmp_path: Path) -> None:
    """'overdrive share' scans, then starts watching: a file added, changed or deleted while a long first scan ran
    (after the scan had passed it) had no event, and the index kept the scan's view until a restart (seen by hand:
    24 of 30 files made during a 5 s scan never listed)."""
    master = Master(network.bus(), MemoryStore(), MasterConfig(bind=Endpoint("127.0.0.1", 0)))
    master.start()
    assert master.endpoint is not None
    folder = tmp_path / "shared"
    folder.mkdir()
    for name in ("kept.txt", "edited.txt", "deleted.txt"):
        (folder / name).write_text(name)
    scanner = FolderScanner(folder)
    scanner.scan()
    (folder / "added.txt").write_text("added during the scan")  # all after the scan passed them
    (folder / "edited.txt").write_text("edited during the scan")
    (folder / "deleted.txt").unlink()
    node = Node(network.bus(), scanner, NodeConfig(masters=(master.endpoint,), address="127.0.0.1:7772"))
    node.start()
    try:
        with IndexClient(network.bus(), [master.endpoint]) as client:
            expected = {"added.txt", "edited.txt", "kept.txt"}

            def current() -> bool:
                entries = {e.name: e for e in client.lookup("*") if not e.deleted}
                edited = entries.get("edited.txt")
                fresh = edited is not None and edited.content_hash == hash_file(folder / "edited.txt")
                return set(entries) == expected and fresh

            wait_until(current, 30, "the index to show what changed during the scan")
    finally:
        node.stop()
        master.stop()


def test_a_refused_registration_is_sent_again_later_in_full() -> None:
    """A master that cannot store a registration (its disk is full) refuses it; the node registers everything
    again after ``retry`` seconds instead of leaving its files out of the index until it restarts."""
    session = NodeSession("nodeaaaaaaaaaaaa", NodeConfig(masters=(Endpoint("127.0.0.1", 1),), address="x:1", retry=10))
    files = [FileInfo(name=f"f{i}", size=i, content_hash=f"{i:064x}", mtime_ns=i) for i in range(3)]
    hello = session.next_message(-1.0, files)  # the master's clock first
    assert isinstance(hello, NodeBeat)
    session.on_reply(Ack(ref=hello.ref, clock=1 << 40), -1.0)
    first = session.next_message(0.0, files)
    assert isinstance(first, Announce) and first.clock > 1 << 40
    assert isinstance(first, Announce) and first.full and len(first.files) == 3
    session.on_reply(Ack(ref=first.ref, ok=False, error="database or disk is full"), 0.1)
    assert not session.idle
    beat = session.next_message(0.2, files)  # meanwhile only heartbeats
    assert isinstance(beat, NodeBeat)
    session.on_reply(Ack(ref=beat.ref), 0.3)
    early = session.next_message(5.0, files)  # before the retry time: still no registration
    assert isinstance(early, NodeBeat)
    session.on_reply(Ack(ref=early.ref), 5.1)
    again = session.next_message(10.2, files)
    assert isinstance(again, Announce) and again.full and [f.name for f in again.files] == ["f0", "f1", "f2"]
    session.on_reply(Ack(ref=again.ref, applied=3), 10.3)
    assert session.idle
