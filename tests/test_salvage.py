"""Finishing cut-short recordings (overdrive.media.salvage) on crafted box layouts, in memory-sized files."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from overdrive.media import salvage


def box(kind: bytes, body: bytes = b"") -> bytes:
    return struct.pack(">I4s", 8 + len(body), kind) + body


HEAD = box(b"ftyp", b"isom") + box(b"moov", b"\0" * 20)
FRAGMENT = box(b"moof", b"\0" * 12) + box(b"mdat", b"\1" * 100)


@pytest.mark.parametrize(
    ("content", "end"),
    [
        (HEAD + FRAGMENT + FRAGMENT, len(HEAD) + 2 * len(FRAGMENT)),  # complete
        (HEAD + FRAGMENT + FRAGMENT[:-30], len(HEAD) + len(FRAGMENT)),  # cut inside the last mdat (mid-NAL)
        (HEAD + FRAGMENT + FRAGMENT[:20], len(HEAD) + len(FRAGMENT)),  # cut inside a moof
        (HEAD + FRAGMENT + box(b"moof", b"\0" * 12), len(HEAD) + len(FRAGMENT)),  # a moof without its data
        (HEAD + FRAGMENT + b"\0\0\0", len(HEAD) + len(FRAGMENT)),  # a few bytes of the next header
        (HEAD, 0),  # no fragment: nothing plays
        (HEAD[:10], 0),
        (b"", 0),
        (HEAD + FRAGMENT + struct.pack(">I4s", 0, b"mdat") + b"xx", len(HEAD) + len(FRAGMENT)),  # "to the end"
    ],
)
def test_playable_end(tmp_path: Path, content: bytes, end: int) -> None:
    part = tmp_path / ".a.mp4.part"
    part.write_bytes(content)
    assert salvage.playable_end(part) == end


def test_recover_cuts_renames_and_removes_what_cannot_play(tmp_path: Path) -> None:
    (tmp_path / ".talk.mp4.part").write_bytes(HEAD + FRAGMENT + FRAGMENT[:-1])
    (tmp_path / ".empty.mp4.part").write_bytes(HEAD)
    (tmp_path / "talk (recovered).mp4").write_bytes(b"an earlier one")
    done = {d.part.name: d for d in salvage.recover(tmp_path)}
    assert done[".talk.mp4.part"].path == tmp_path / "talk (recovered) 2.mp4"
    assert (tmp_path / "talk (recovered) 2.mp4").read_bytes() == HEAD + FRAGMENT
    assert done[".empty.mp4.part"].path is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["talk (recovered) 2.mp4", "talk (recovered).mp4"]


def test_recover_leaves_a_part_someone_is_writing(tmp_path: Path) -> None:
    part = tmp_path / ".live.mp4.part"
    part.write_bytes(HEAD + FRAGMENT)
    with salvage.hold(part):  # a recorder writing it, here or in another process
        assert salvage.recover(tmp_path) == []
        assert part.exists()
    assert [d.path for d in salvage.recover(tmp_path)] == [tmp_path / "live (recovered).mp4"]
