"""Resuming a partial file whose state file does not match the new fetch exactly."""

from __future__ import annotations

import os
from pathlib import Path

import blake3
import msgspec
import pytest

from overdrive.errors import TransferError
from overdrive.transfer import names
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
