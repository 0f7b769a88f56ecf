"""Untrusted names: validation, opening inside a shared folder, and placing a fetched file (no sockets)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from overdrive.errors import TransferError, UnsafePathError
from overdrive.files import names

HOSTILE = [
    "",
    "../x",
    "../../etc/passwd",
    "/etc/passwd",
    "a/../../b",
    "a/./b",
    "./a",
    "a//b",
    "a/",
    "..",
    ".",
    "a\x00b",
    "a\nb",
    "..\\..\\x",
    "C:/Windows/x",
    "x" * 256,
    "a/" * 40 + "b",
    "y/" * 2000 + "z",
    "\udcff",
]


@pytest.mark.parametrize("name", HOSTILE, ids=lambda n: repr(n[:20]))
def test_hostile_names_are_refused(name: str) -> None:
    with pytest.raises(UnsafePathError):
        names.check_name(name)


@pytest.mark.parametrize("name", ["a.bin", "lectures/week 1.mp4", "ünï cødé/ファイル.txt", "..a", "a..", ".hidden"])
def test_ordinary_names_pass(name: str) -> None:
    assert "/".join(names.check_name(name)) == name


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    """A shared folder with a file, a sub-folder, and hostile entries pointing outside."""
    folder = tmp_path / "shared"
    (folder / "sub").mkdir(parents=True)
    (folder / "ok.txt").write_text("fine")
    (folder / "sub" / "deep.txt").write_text("deep")
    outside = tmp_path / "secret.txt"
    outside.write_text("SECRET")
    (tmp_path / "outdir").mkdir()
    (tmp_path / "outdir" / "x.txt").write_text("SECRET2")
    (folder / "link_out").symlink_to(outside)
    (folder / "abs_link").symlink_to("/etc/passwd")
    (folder / "dir_out").symlink_to(tmp_path / "outdir")
    (folder / "link_in").symlink_to(folder / "ok.txt")
    (folder / "loop").symlink_to(folder / "loop")
    os.mkfifo(folder / "fifo")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(folder / "sock"))
    (folder / "devnull").symlink_to("/dev/null")
    return folder


def test_open_shared_serves_regular_files_inside(shared: Path) -> None:
    for name, text in (("ok.txt", b"fine"), ("sub/deep.txt", b"deep"), ("link_in", b"fine")):
        fd, st = names.open_shared(shared, name)
        try:
            assert os.pread(fd, 100, 0) == text and st.st_size == len(text)
        finally:
            os.close(fd)


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("link_out", UnsafePathError),
        ("abs_link", UnsafePathError),
        ("dir_out/x.txt", UnsafePathError),
        ("devnull", UnsafePathError),
        ("../secret.txt", UnsafePathError),
        ("sub/../../secret.txt", UnsafePathError),
        ("/etc/passwd", UnsafePathError),
        ("fifo", TransferError),
        ("sock", TransferError),
        ("sub", TransferError),
        ("missing", TransferError),
        ("loop", TransferError),
    ],
)
def test_open_shared_refuses(shared: Path, name: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        fd, _ = names.open_shared(shared, name)
        os.close(fd)


def test_open_shared_refuses_device_inside_folder(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("making a device node needs root")
    folder = tmp_path / "dev"
    folder.mkdir()
    os.mknod(folder / "zero", 0o600 | 0o020000, os.makedev(1, 5))  # character device like /dev/zero
    with pytest.raises(TransferError, match="regular"):
        names.open_shared(folder, "zero")


def test_destination_stays_inside_and_refuses_symlinked_folders(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    assert names.destination(dest, "a/b/c.txt") == dest.resolve() / "a" / "b" / "c.txt"
    assert (dest / "a" / "b").is_dir()
    (tmp_path / "elsewhere").mkdir()
    (dest / "evil").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UnsafePathError):
        names.destination(dest, "evil/x.txt")
    for bad in ("../x", "/etc/passwd", "a/../../b"):
        with pytest.raises(UnsafePathError):
            names.destination(dest, bad)
    assert not any((tmp_path / "elsewhere").iterdir())


def test_free_name_keeps_both(tmp_path: Path) -> None:
    target = tmp_path / "talk.mp4"
    assert names.free_name(target) == target
    target.write_text("one")
    assert names.free_name(target).name == "talk (1).mp4"
    (tmp_path / "talk (1).mp4").write_text("two")
    assert names.free_name(target).name == "talk (2).mp4"


def test_destination_checks_without_creating(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    assert names.destination(dest, "a/b/c.txt", create=False) == dest.resolve() / "a" / "b" / "c.txt"
    assert not dest.exists()
    dest.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (dest / "evil").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UnsafePathError):
        names.destination(dest, "evil/x/y.txt", create=False)
    with pytest.raises(UnsafePathError):
        names.destination(dest, "evil/x/y.txt")
    assert sorted(p.name for p in dest.iterdir()) == ["evil"] and not any((tmp_path / "elsewhere").iterdir())


@pytest.mark.parametrize(("name", "says"), [("a//b", "an empty component"), ("a/", "an empty component"),
                                            ("a/./b", "a '.' component"), ("../b", "a '..' component")])  # fmt: skip
def test_a_bad_component_is_named_in_plain_words(name: str, says: str) -> None:
    with pytest.raises(UnsafePathError, match=says):
        names.check_name(name)
