"""Resuming a partial file whose state file does not match the new fetch exactly."""

from __future__ import annotations

import os
from pathlib import Path

import blake3
import msgspec
import pytest

from overdrive.errors import TransferError
from overdrive.files import names
from overdrive.transfer.partial import STATE_VERSION, PartialFile
from overdrive.transfer.protocol import DIGEST_SIZE, MIN_CHUNK, chunk_checksum
from overdrive.transfer.session import Plan

DATA = os.urandom(20 * MIN_CHUNK + 777)
HASH = blake3.blake3(DATA).hexdigest()


def _plan(chunk_size: int) -> Plan:
    table = b"".join(chunk_checksum(DATA[i : i + chunk_size]) for i in range(0, len(DATA), chunk_size))
    assert len(table) % DIGEST_SIZE == 0
    return Plan(len(DATA), chunk_size, HASH, table)


def _state(path: Path, **fields: object) -> None:
    values: dict[str, object] = dict(version=STATE_VERSION, name="f.bin", content_hash=HASH, size=len(DATA))
    values.update(fields)
    path.write_bytes(msgspec.json.encode(values))


@pytest.mark.parametrize(("before", "after"), [(MIN_CHUNK, 4 * MIN_CHUNK), (4 * MIN_CHUNK, MIN_CHUNK)])
def test_the_same_version_chunked_differently_resumes(tmp_path: Path, before: int, after: int) -> None:
    """Another holder or --chunk-size chunks the same version differently: the bytes on disk are kept and
    re-checked against the new table, not truncated. Here the first 9 chunks of 64 KiB (the first two of 256 KiB
    fully inside them) and the last chunk are on disk."""
    dest = tmp_path / "f.bin"
    part = tmp_path / "f.bin.part"
    have = 9 * MIN_CHUNK
    with part.open("wb") as fh:
        fh.write(DATA[:have])
    ranges = [(0, have // before)] if before == MIN_CHUNK else [(0, 2)]  # 2 x 256 KiB = 8 x 64 KiB
    _state(tmp_path / "f.bin.part.state", chunk_size=before, done=ranges)
    partial = PartialFile(dest, "f.bin")
    good = partial.open(_plan(after))
    partial.close()
    expected = [0, 1] if after == 4 * MIN_CHUNK else list(range(9))
    assert good == expected
    assert part.read_bytes()[:have] == DATA[:have]


@pytest.mark.parametrize(
    "fields",
    [
        {"chunk_size": 12345, "done": [[0, 10]]},
        {"chunk_size": 0, "done": [[0, 10]]},
        {"chunk_size": MIN_CHUNK, "size": -1, "done": []},
        {"chunk_size": MIN_CHUNK, "done": [[-5, 10**12]]},
    ],
)
def test_a_damaged_state_file_is_not_trusted(tmp_path: Path, fields: dict[str, object]) -> None:
    """A state file with an impossible chunk size or size is ignored (a fetch asked the holder for its chunk
    size and crashed on 12345); absurd ranges only claim chunks that are then checked."""
    part = tmp_path / "f.bin.part"
    part.write_bytes(DATA[: 3 * MIN_CHUNK])
    _state(tmp_path / "f.bin.part.state", **fields)
    partial = PartialFile(tmp_path / "f.bin", "f.bin")
    state = partial.saved_state()
    if fields["chunk_size"] == MIN_CHUNK and fields.get("size", 0) != -1:
        assert state is not None
        assert partial.open(_plan(MIN_CHUNK)) == [0, 1, 2]
        partial.close()
    else:
        assert state is None


def test_a_name_at_the_file_systems_limit_is_fetched_resumed_and_kept_beside_another(tmp_path: Path) -> None:
    """A name of 250-255 bytes (83 CJK characters) is legal and shared, but NAME.part.state did not fit in the
    file system's 255 bytes: every fetch of it failed with 'cannot write NAME.part: File name too long', even into
    an empty folder, and a different file already there could not be kept beside as 'name (1).ext'."""
    name = "日" * 83 + ".txt"
    assert len(name.encode()) == 253
    dest = tmp_path / name
    plan = _plan(MIN_CHUNK)
    first = PartialFile(dest, name)
    assert first.open(plan) == []
    for index in range(plan.chunks // 2):
        offset, length = plan.chunk_range(index)
        first.write(index, DATA[offset : offset + length])
    first.save_state([(0, plan.chunks // 2)], force=True)
    first.close()
    assert all(len(p.name.encode()) <= 255 for p in tmp_path.iterdir())
    (tmp_path / name).write_bytes(b"a different file already there")
    again = PartialFile(dest, name)  # resumes from the first run's partial file
    assert again.open(plan) == list(range(plan.chunks // 2))
    for index in range(plan.chunks // 2, plan.chunks):
        offset, length = plan.chunk_range(index)
        again.write(index, DATA[offset : offset + length])
    final = again.finish()
    assert final.read_bytes() == DATA and final != dest and final.name.startswith("日" * 40)
    assert len(final.name.encode()) <= 255 and final.suffix == ".txt"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, final.name])  # no partial files left
    assert names.copies(dest) == [dest, final]  # a fetch of either again finds it there


def test_two_fetches_of_one_file_into_one_folder_do_not_share_its_partial_file(tmp_path: Path) -> None:
    """Two 'overdrive fetch' of the same name into the same folder at once both wrote NAME.part (the second
    truncating what the first had, unless it resumed it), and the second then failed on a partial file the first
    had moved into place: 'cannot write NAME (1).ext: No such file or directory'."""
    dest = tmp_path / "f.bin"
    plan = _plan(MIN_CHUNK)
    first = PartialFile(dest, "f.bin")
    first.open(plan)
    first.write(0, DATA[:MIN_CHUNK])
    first.save_state([(0, 1)], force=True)
    second = PartialFile(dest, "f.bin")
    with pytest.raises(TransferError, match="another fetch"):
        second.open(_plan(4 * MIN_CHUNK))  # another chunking: it would have truncated the first one's file
    first.close()
    assert (tmp_path / "f.bin.part").read_bytes()[:MIN_CHUNK] == DATA[:MIN_CHUNK]
    third = PartialFile(dest, "f.bin")  # once the first has stopped, the next one resumes its file
    assert third.open(plan) == [0]
    third.close()


def test_a_fetch_keeps_its_partial_file_locked_until_it_is_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """finish() closed NAME.part (and so let go of its lock) before moving it into place: a second fetch starting
    in that moment took the lock on the same file and, for another version, truncated it, the finished file too
    (it is the same inode once linked into place)."""
    from overdrive.transfer import partial as partial_module

    dest = tmp_path / "f.bin"
    plan = _plan(MIN_CHUNK)
    first = PartialFile(dest, "f.bin")
    first.open(plan)
    for index in range(plan.chunks):
        offset, length = plan.chunk_range(index)
        first.write(index, DATA[offset : offset + length])
    refused: list[str] = []
    link = os.link

    def link_while_another_starts(src: os.PathLike[str], dst: os.PathLike[str]) -> None:
        second = PartialFile(dest, "f.bin")
        try:
            second.open(Plan(plan.size, plan.chunk_size, "0" * 64, plan.digests))  # another version: truncates
        except TransferError as exc:
            refused.append(str(exc))
        finally:
            second.close()
        link(src, dst)

    monkeypatch.setattr(partial_module.os, "link", link_while_another_starts)  # just before it is put in place
    final = first.finish()
    monkeypatch.undo()
    assert refused and "another fetch" in refused[0], refused
    assert final.read_bytes() == DATA


def test_a_partial_file_put_in_place_between_open_and_lock_is_not_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fetch that opened NAME.part just as another one finished (moved it into place, closed it) then got the
    lock on a file no longer named NAME.part: it wrote into nothing, and failed when it tried to put it in place."""
    from overdrive.transfer import partial as partial_module

    dest = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(b"the other fetch's file")
    flock = partial_module.fcntl.flock
    finished: list[bool] = []

    def flock_after_the_other_finished(fd: int, operation: int) -> None:
        if not finished:
            finished.append(True)
            (tmp_path / "f.bin.part").rename(tmp_path / "f.bin")
        flock(fd, operation)

    monkeypatch.setattr(partial_module.fcntl, "flock", flock_after_the_other_finished)
    partial = PartialFile(dest, "f.bin")
    try:
        partial.open(_plan(MIN_CHUNK))
        monkeypatch.undo()
        assert os.fstat(partial._fd).st_ino == (tmp_path / "f.bin.part").stat().st_ino
    finally:
        partial.close()
    assert (tmp_path / "f.bin").read_bytes() == b"the other fetch's file"
