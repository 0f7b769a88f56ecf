"""ChatRoom and the recording's cue timeline, in memory: names, text, rates, bounds, expiry, presence."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from overdrive.media import salvage
from overdrive.media.chat import MAX_CHAT_TEXT, Bye, Hand, Hello, Say, clean_name, line_text
from overdrive.media.chat_record import CUE_SECONDS, CueTimeline, vtt_escape
from overdrive.media.chat_room import ChatLimits, ChatRoom, Peer, Rate
from overdrive.media.protocol import MAX_CHAT_NAME, ChatLine

A = Peer(b"conn-a", "node-a", "10.0.0.1")
B = Peer(b"conn-b", "node-b", "10.0.0.2")
HOST = Peer(b"conn-h", "node-h", "10.0.0.9", host=True)


def joined(room: ChatRoom, peer: Peer, name: str, via: str = "", now: float = 0.0) -> str:
    reply = room.receive(peer, Hello(ref=1, name=name, via=via), now, 0)
    assert reply.ok, reply
    return reply.name


def test_names_are_cleaned_unique_and_decided_by_the_room() -> None:
    room = ChatRoom("s")
    assert joined(room, A, "  Ada\u202e\x1b[31m\n Lovelace ") == "Ada[31m Lovelace".replace("[", "").replace("]", "")
    assert joined(room, B, "ADA31M LOVELACE") == "ADA31M LOVELACE-2"
    assert joined(room, B, "\x00\u200b", via="w1") == "guest"
    assert joined(room, B, "x" * 100, via="w2") == "x" * MAX_CHAT_NAME
    assert joined(room, A, "x" * 100, via="w3") == "x" * (MAX_CHAT_NAME - 2) + "-2"
    assert joined(room, A, "Prof [streamer]", via="w4") == "Prof streamer"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=80), min_size=1, max_size=30))
def test_any_wished_names_give_distinct_clean_shown_names(wishes: list[str]) -> None:
    room = ChatRoom("s")
    names = [joined(room, A, wish, via=str(i)) for i, wish in enumerate(wishes)]
    assert len({n.casefold() for n in names}) == len(names)
    for name in names:
        assert 1 <= len(name) <= MAX_CHAT_NAME and name == name.strip()
        assert name == unicodedata.normalize("NFC", name) or name.endswith(tuple(f"-{n}" for n in range(2, 40)))
        assert all(unicodedata.category(c)[0] != "C" and c not in "[]\n\r" for c in name)


def test_a_connection_speaks_only_for_its_own_labels() -> None:
    room = ChatRoom("s")
    joined(room, A, "Ada")
    refused = room.receive(B, Say(ref=2, text="as Ada"), 0, 0)
    assert (refused.ok, refused.error) == (False, "not-joined")
    joined(room, B, "Bob", via="tab-1")
    assert room.receive(B, Say(ref=3, text="hi"), 0, 0).error == "not-joined"  # B's "" label is not "tab-1"
    assert room.receive(B, Say(ref=4, text="hi", via="tab-1"), 0, 5).ok
    said = [line for line in room.take_lines() if line.kind == "say"]
    assert [(line.name, line.text, line.sent_ns) for line in said] == [("Bob", "hi", 5)]


def test_only_the_streamer_identity_is_the_host() -> None:
    room = ChatRoom("s")
    joined(room, A, "Prof")
    joined(room, HOST, "Prof")
    room.receive(A, Say(ref=1, text="fake"), 0, 0)
    room.receive(HOST, Say(ref=2, text="real"), 0, 0)
    said = {line.text: line for line in room.take_lines() if line.kind == "say"}
    assert not said["fake"].host and said["real"].host and said["real"].name == "Prof-2"
    assert line_text(said["real"]) == "Prof-2 [streamer]: real"


def test_text_is_checked_not_cut_and_kept_literal() -> None:
    room = ChatRoom("s")
    joined(room, A, "Ada")
    assert room.receive(A, Say(ref=1, text="x" * (MAX_CHAT_TEXT + 1)), 0, 0).error == "too-long"
    assert room.receive(A, Say(ref=2, text=" \n\t "), 0, 0).error == "empty"
    hostile = "<script>alert(1)</script>\x1b[2J<img src=x onerror=alert(2)>"
    assert room.receive(A, Say(ref=3, text=hostile), 0, 0).ok
    (line,) = [line for line in room.take_lines() if line.kind == "say"]
    assert line.text == hostile.replace("\x1b", "")  # markup stays as typed; terminal escapes go


def test_member_rate_recovers_with_time() -> None:
    room = ChatRoom("s")
    joined(room, A, "Ada")
    results = [room.receive(A, Say(ref=i, text="m"), 0.0, 0).error for i in range(7)]
    assert results == ["", "", "", "", "", "rate", "rate"]
    assert room.receive(A, Say(ref=8, text="m"), 1.0, 0).error == "rate"
    assert room.receive(A, Say(ref=9, text="m"), 2.1, 0).ok  # 5 per 10 s: one token every 2 s


def test_labels_share_their_connection_node_budget() -> None:
    limits = ChatLimits(member=Rate(5, 10.0), node=Rate(8, 10.0), address=Rate(100, 10.0))
    room = ChatRoom("s", limits)
    for i in range(3):
        joined(room, A, f"tab{i}", via=str(i))  # 3 of the node's 8 tokens
    sent = [room.receive(A, Say(ref=i, text="m", via=str(i % 3)), 0, 0).ok for i in range(9)]
    assert sent.count(True) == 5


def test_caps_on_labels_members_and_the_room() -> None:
    room = ChatRoom("s", ChatLimits(vias=3, members=4, node=Rate(100, 1), address=Rate(100, 1)))
    for i in range(3):
        joined(room, A, "a", via=str(i))
    assert room.receive(A, Hello(ref=9, name="a", via="3"), 0, 0).error == "full"
    joined(room, B, "b")
    assert room.receive(Peer(b"c", "n", "10.0.0.3"), Hello(ref=1, name="c"), 0, 0).error == "full"
    busy = ChatRoom("s", ChatLimits(room=Rate(3, 100.0)))
    joined(busy, A, "a")  # the join line takes one of the room's three tokens
    joined(busy, B, "b")
    assert busy.receive(A, Say(ref=1, text="x"), 0, 0).ok
    assert busy.receive(B, Say(ref=2, text="x"), 0, 0).error == "busy"


def test_silent_members_expire_and_heartbeats_keep_them() -> None:
    room = ChatRoom("s", ChatLimits(timeout=30.0))
    joined(room, A, "Ada", now=0)
    joined(room, B, "Bob", now=0)
    assert room.receive(A, Hello(ref=2, name="other"), 20.0, 0).name == "Ada"  # a heartbeat renames nothing
    room.tick(35.0, 35)
    assert [m.name for m in room.members.values()] == ["Ada"]
    kinds = [line.kind for line in room.take_lines()]
    assert kinds == ["join", "join", "leave"]
    room.receive(A, Bye(ref=3), 36.0, 36)
    assert not room.members


def test_presence_counts_hands_and_is_sent_when_changed_or_due() -> None:
    room = ChatRoom("s")
    joined(room, A, "Ada")
    joined(room, B, "cli", via="")  # a CLI member...
    room.receive(B, Bye(ref=1), 0, 0)
    room.receive(B, Hello(ref=2, name="cli", kind="cli"), 0, 0)  # ...is not counted as watching
    first = room.presence(0.0, 0)
    assert first is not None and (first.count, first.names) == (1, ("Ada",))
    assert room.presence(0.5, 0) is None
    room.receive(A, Hand(ref=3, up=True), 0.6, 0)
    assert room.presence(0.8, 0) is None  # not twice within a second
    second = room.presence(1.1, 0)
    assert second is not None and second.hands == ("Ada",)
    assert room.presence(3.0, 0) is None and room.presence(6.2, 0) is not None  # the periodic one


def test_history_goes_to_a_new_member_and_stays_bounded() -> None:
    room = ChatRoom(
        "s", ChatLimits(member=Rate(1000, 1), node=Rate(1000, 1), address=Rate(1000, 1), room=Rate(1000, 1))
    )
    joined(room, A, "Ada")
    for i in range(80):
        room.receive(A, Say(ref=i, text=f"l{i}"), 0, 0)
    reply = room.receive(B, Hello(ref=1, name="late"), 0, 0)
    assert len(reply.history) == 50 and reply.history[-1].text == "l79"
    assert len(room.take_lines()) <= 50


def line(seq: int, ms: int, text: str = "t") -> ChatLine:
    return ChatLine(stream_id="s", seq=seq, sent_ns=1_000_000_000 + ms * 1_000_000, name="Ada", text=text)


def test_cues_follow_each_other_and_end_with_the_recording() -> None:
    timeline = CueTimeline(t0_ns=1_000_000_000)
    assert timeline.add(line(1, -500)) == (0, [])  # before the first frame: at the start
    start, cues = timeline.add(line(2, 2000, "two"))
    assert start == 2000 and [(c.start_ms, c.duration_ms) for c in cues] == [(0, 2000)]
    _, cues = timeline.add(line(3, 1000))  # out of order: after the previous one
    assert cues[0].start_ms == 2000 and cues[0].text == "Ada: t\nAda: two"  # the last lines together
    (last,) = timeline.finish(end_ms=2500)
    assert last.start_ms == 2001 and last.duration_ms == 499
    assert last.text.splitlines() == ["Ada: t", "Ada: two", "Ada: t"]
    assert CueTimeline(0).finish(None) == []
    timeline = CueTimeline(0)
    timeline.add(line(1, 0))
    assert timeline.finish(None)[0].duration_ms == int(CUE_SECONDS * 1000)


def test_vtt_text_is_inert() -> None:
    assert vtt_escape("<b>x</b> & -->\n\nnext") == "&lt;b&gt;x&lt;/b&gt; &amp; --&gt;\nnext"
    assert clean_name("") == ""


def test_a_salvaged_recording_keeps_its_chat_beside_it(tmp_path: Path) -> None:
    """A killed recorder's chat parts follow its MP4 when it is recovered (an unfinished last line dropped), and
    go with it when nothing of it plays."""
    from tests.test_salvage import FRAGMENT, HEAD

    (tmp_path / ".talk.mp4.part").write_bytes(HEAD + FRAGMENT)
    (tmp_path / ".talk.chat.jsonl.part").write_text('{"t": 0.5, "text": "hi"}\n{"t": 0.9, "te')
    (tmp_path / ".talk.vtt.part").write_text("WEBVTT\n\n")
    (tmp_path / ".empty.mp4.part").write_bytes(HEAD)
    (tmp_path / ".empty.vtt.part").write_text("WEBVTT\n\n")
    salvage.recover(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "talk (recovered).chat.jsonl",
        "talk (recovered).mp4",
        "talk (recovered).vtt",
    ]
    lines = (tmp_path / "talk (recovered).chat.jsonl").read_text().splitlines()
    assert [json.loads(x)["text"] for x in lines] == ["hi"]
