"""A service that gets a message of another overdrive protocol says what it is (bus/kind.py), in memory: the codec
tells a foreign message from a malformed one, and the share's core answers each foreign message once."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from overdrive.bus.codec import PROTOCOL_VERSION
from overdrive.bus.kind import MASTER, SHARE, WrongService, wrong_kind
from overdrive.errors import ForeignMessageError, ProtocolError
from overdrive.files.scanner import FolderScanner
from overdrive.index import protocol as index
from overdrive.transfer import protocol as transfer
from overdrive.transfer.serving import ServeCore


def test_a_message_of_the_other_protocol_is_foreign_and_says_its_tag() -> None:
    lookup = index.CODEC.encode(index.Lookup(ref=1, name="x"))
    with pytest.raises(ForeignMessageError) as caught:
        transfer.CODEC.decode(lookup)
    assert caught.value.tag == "lookup"
    opener = transfer.CODEC.encode(transfer.Open(rid=1, name="x", content_hash=""))
    with pytest.raises(ForeignMessageError):
        index.CODEC.decode(opener)


@pytest.mark.parametrize(
    "body",
    [
        {"t": "lookup", "ref": -1},  # one of ours, with a bad field: malformed, not foreign
        {"ref": 1},  # no tag at all
        {"t": 7},  # a tag that is not text
        [1, 2, 3],  # not a message
    ],
)
def test_malformed_messages_are_not_foreign(body: object) -> None:
    header = msgspec.msgpack.encode((PROTOCOL_VERSION, body))
    with pytest.raises(ProtocolError) as caught:
        index.CODEC.decode([header])
    assert not isinstance(caught.value, ForeignMessageError)


def test_both_codecs_carry_the_one_wrong_service_reply() -> None:
    frames = transfer.CODEC.encode(WrongService(kind=SHARE))
    message, _ = index.CODEC.decode(frames)
    assert message == WrongService(kind=SHARE)


def test_the_share_core_answers_each_foreign_message_once_with_its_kind(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a")
    core = ServeCore(tmp_path, FolderScanner(tmp_path).scan())  # type: ignore[arg-type]
    lookup = index.CODEC.encode(index.Lookup(ref=1, name="a.txt"))
    for _ in range(3):
        replies = core.handle("peer", lookup, 0.0)
        assert [transfer.CODEC.decode(r)[0] for r in replies] == [WrongService(kind=SHARE)]
    assert core.handle("peer", [b"\x93garbage"], 0.0) == []  # not overdrive at all: no answer
    assert core.stats.malformed == 4


def test_the_lines_name_what_was_found_and_how_to_use_it() -> None:
    assert wrong_kind("h:1", SHARE, MASTER) == (
        "h:1 is an overdrive share, not a master (fetch from it with 'overdrive fetch NAME --from h:1')"
    )
    assert wrong_kind("h:1", MASTER, SHARE).startswith("h:1 is an overdrive master, not a share (use it with")
    assert "another overdrive version" in wrong_kind("h:1", SHARE, SHARE)
