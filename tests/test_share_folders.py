"""``overdrive share F1 F2 ...``: several folders as one node, each folder's files under its own name."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess

import pytest

from overdrive.errors import ConfigError
from overdrive.files.folders import FolderSet, check_folders, locate
from overdrive.files.model import FileInfo
from overdrive.transfer import protocol as transfer
from overdrive.transfer.serving import ServeCore
from tests.conftest import Children, TestNetwork
from tests.test_cli_mistakes import one_error

Run = Callable[..., CompletedProcess[str]]


@pytest.fixture
def two(tmp_path: Path) -> tuple[Path, Path]:
    lectures, papers = tmp_path / "a" / "lectures", tmp_path / "b" / "papers"
    (lectures / "week1").mkdir(parents=True)
    papers.mkdir(parents=True)
    (lectures / "week1" / "intro.txt").write_text("lecture one")
    (lectures / "same.txt").write_text("from lectures")
    (papers / "same.txt").write_text("from papers")
    return lectures, papers


def test_several_folders_list_their_files_under_their_names(two: tuple[Path, Path]) -> None:
    folders = FolderSet(list(two))
    folders.scan()
    assert sorted(f.name for f in folders.files()) == [
        "lectures/same.txt",
        "lectures/week1/intro.txt",
        "papers/same.txt",
    ]
    info = folders.get("papers/same.txt")
    assert info is not None and info.size == len("from papers")
    assert folders.get("same.txt") is None and folders.get("other/same.txt") is None
    alone = FolderSet([two[0]])  # one folder keeps its names as they were
    alone.scan()
    assert sorted(f.name for f in alone.files()) == ["same.txt", "week1/intro.txt"]


def test_a_change_in_either_folder_is_seen_under_its_name(two: tuple[Path, Path]) -> None:
    folders = FolderSet(list(two))
    folders.scan()
    lectures, papers = folders.scanners
    (two[1] / "new.txt").write_text("new")
    changed, removed = papers.refresh(["new.txt", "same.txt"])
    assert [f.name for f in changed] == ["papers/new.txt"] and removed == []
    (two[0] / "same.txt").unlink()
    changed, removed = lectures.refresh(["same.txt"])
    assert changed == [] and removed == ["lectures/same.txt"]
    assert folders.get("lectures/same.txt") is None and folders.get("papers/same.txt") is not None


def test_folders_that_would_clash_are_refused(tmp_path: Path, two: tuple[Path, Path]) -> None:
    twin = tmp_path / "c" / "lectures"
    twin.mkdir(parents=True)
    with pytest.raises(ConfigError, match="have the same name 'lectures'"):
        check_folders([two[0], twin])
    with pytest.raises(ConfigError, match="is inside"):
        check_folders([two[0], two[0] / "week1"])
    with pytest.raises(ConfigError, match="cannot be a prefix"):
        check_folders([Path("/"), two[0]])


def test_names_are_served_from_their_own_folder_and_never_out_of_it(two: tuple[Path, Path], tmp_path: Path) -> None:
    folders = FolderSet(list(two))
    folders.scan()
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    (two[0] / "link.txt").symlink_to(secret)
    catalogue = {f.name: f for f in folders.files()}
    # a catalogue that names what no folder may serve: the open must still stay inside the prefix's folder
    catalogue["lectures/link.txt"] = FileInfo(name="lectures/link.txt", size=6, content_hash="0" * 64, mtime_ns=0)
    catalogue["nowhere/same.txt"] = catalogue["papers/same.txt"]
    core = ServeCore(folders.roots, catalogue)  # type: ignore[arg-type]

    def opened(name: str) -> transfer.TransferMessage:
        frames = core.handle("peer", transfer.CODEC.encode(transfer.Open(rid=1, name=name, content_hash="")), 0.0)
        return transfer.CODEC.decode(frames[-1])[0]

    for name, size in (("papers/same.txt", len("from papers")), ("lectures/same.txt", len("from lectures"))):
        answer = opened(name)
        assert isinstance(answer, transfer.Opened) and answer.size == size, answer
    for name, reason in (
        ("lectures/link.txt", "unsafe"),
        ("nowhere/same.txt", "not-found"),
        ("lectures/../papers/same.txt", "unsafe"),
    ):
        answer = opened(name)
        assert isinstance(answer, transfer.Refused) and answer.reason == reason, (name, answer)
    assert locate(folders.roots, "papers") is None and locate(folders.roots, "papers/") is None


def _listed(run_cli: Run, master: str, env: dict[str, str], wanted: set[str]) -> set[str]:
    names: set[str] = set()
    for _ in range(200):  # registered within seconds; the bound only ends a broken run
        result = run_cli("ls", "--master", master, "--json", env=env)
        assert result.returncode == 0, result.stderr
        names = {entry["name"] for entry in json.loads(result.stdout)}
        if wanted <= names:
            break
        time.sleep(0.1)
    return names


def test_share_serves_several_folders_as_one_node(
    network: TestNetwork, children: Children, tmp_path: Path, run_cli: Run, two: tuple[Path, Path]
) -> None:
    master = children.master().display
    _, ready = children.spawn("node", "share", *map(str, two), "--master", master, "--bind", "tcp://127.0.0.1:0")
    env = network.env(tmp_path / "client")
    first = {"lectures/same.txt", "lectures/week1/intro.txt", "papers/same.txt"}
    assert first <= _listed(run_cli, master, env, first)
    (two[1] / "late.txt").write_text("added while sharing")  # the watch covers every folder
    assert "papers/late.txt" in _listed(run_cli, master, env, {"papers/late.txt"})
    out = tmp_path / "out"
    for name, text in (("papers/same.txt", "from papers"), ("lectures/same.txt", "from lectures")):
        result = run_cli("fetch", name, "--master", master, "--out", str(out), "--no-register", env=env)
        assert result.returncode == 0, result.stderr
        got = [p for p in out.rglob("same.txt*") if p.read_text() == text]
        assert got, sorted(out.rglob("*"))
    fetched = run_cli("fetch", "papers/late.txt", "--from", ready.endpoint.display, "--out", str(out), env=env)
    assert fetched.returncode == 0, fetched.stderr


def test_share_refuses_two_folders_of_one_name(tmp_path: Path, run_cli: Run, network: TestNetwork) -> None:
    one, other = tmp_path / "a" / "notes", tmp_path / "b" / "notes"
    one.mkdir(parents=True)
    other.mkdir(parents=True)
    result = run_cli("share", str(one), str(other), "--master", "127.0.0.1:9", env=network.env(tmp_path / "n"))
    one_error(result, 2, "have the same name 'notes'")
