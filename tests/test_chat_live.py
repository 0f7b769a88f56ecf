"""The chat on real sockets (127.0.0.1): a streamer with its chat, clients, a feed, a hostile peer.

An in-process :class:`Streamer` on a test pattern with :func:`attach_chat`; :class:`ChatClient` s on other node
identities send, :class:`ChatFeed` and a :class:`Viewer` receive the signed lines.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from overdrive.bus.address import Endpoint
from overdrive.media.chat import CHAT_CODEC, MAX_CHAT_TEXT, ChatRefusedError, Hello, Say
from overdrive.media.chat_client import ChatClient, ChatFeed
from overdrive.media.chat_server import ChatServer, attach_chat
from overdrive.media.chat_view import ViewerChat
from overdrive.media.protocol import ChatLine, Presence
from overdrive.media.recorder import attach_recorder
from overdrive.media.streamer import Streamer
from tests.test_stream_live import pattern_config, wait_until

HOSTILE = '<img src=x onerror="alert(1)"><script>alert(2)</script>&amp;'


class Lecture:
    """A running streamer with a chat, and the lines its feed saw."""

    def __init__(self, network: object, tmp: Path | None = None) -> None:
        self.network = network
        self.bus = network.bus()  # type: ignore[attr-defined]
        self.streamer = Streamer(pattern_config(), self.bus)
        self.server: ChatServer = attach_chat(self.streamer, self.bus)
        self.recorder = attach_recorder(self.streamer, tmp) if tmp is not None else None
        self.endpoint = self.streamer.start()
        self.chat = Endpoint("127.0.0.1", self.server.port)
        self.lines: list[ChatLine] = []
        self.presence: list[Presence] = []
        self.feed = ChatFeed(network.bus(), self.endpoint)  # type: ignore[attr-defined]
        self.feed.on_line = self.lines.append
        self.feed.on_presence = self.presence.append
        self.feed.start()
        assert self.feed.has_info.wait(10), "no stream info"
        self.clients: list[ChatClient] = []

    def client(self, bus: object | None = None) -> ChatClient:
        client = ChatClient(bus or self.network.bus(), self.chat)  # type: ignore[attr-defined]
        client.start()
        self.clients.append(client)
        return client

    def said(self, text: str) -> list[ChatLine]:
        return [line for line in list(self.lines) if line.kind == "say" and line.text == text]

    def close(self) -> None:
        for client in self.clients:
            client.stop()
        self.feed.stop()
        self.streamer.stop()
        if self.recorder is not None:
            self.recorder.close()


@pytest.fixture
def lecture(network) -> Iterator[Lecture]:
    room = Lecture(network)
    yield room
    room.close()


def test_a_line_reaches_followers_signed_with_the_name_the_streamer_gave(lecture: Lecture) -> None:
    ada = lecture.client()
    bob = lecture.client()
    assert ada.join("Ada").result(5).name == "Ada"
    assert bob.join("ada").result(5).name == "ada-2"  # names are unique, whatever the case
    sent = bob.say(HOSTILE).result(5)
    wait_until(lambda: lecture.said(HOSTILE), 5, "the line on the stream")
    (line,) = lecture.said(HOSTILE)
    assert (line.name, line.seq, line.host) == ("ada-2", sent.seq, False)
    assert line.text == HOSTILE  # stored and sent as the characters it is
    wait_until(lambda: any(p.count == 2 for p in lecture.presence), 5, "presence of both")
    assert ada.hand(True).result(5).ok
    wait_until(lambda: any("Ada" in p.hands for p in lecture.presence), 5, "the raised hand")


def test_a_peer_speaks_only_for_its_own_members(lecture: Lecture) -> None:
    """A name is the streamer's choice, and a label belongs to its connection: no one sends as another."""
    ada = lecture.client()
    ada.join("Ada").result(5)
    mallory = lecture.client()
    with pytest.raises(ChatRefusedError) as refused:
        mallory.say("I am Ada").result(5)  # not joined: no member to speak for
    assert refused.value.error == "not-joined"
    assert mallory.join("Ada").result(5).name == "Ada-2"
    assert mallory.join("Ada [streamer]", via="x").result(5).name == "Ada streamer"
    mallory.say("still me").result(5)
    wait_until(lambda: lecture.said("still me"), 5, "mallory's line")
    assert {line.name for line in lecture.said("still me")} == {"Ada-2"}
    assert all(not line.host for line in lecture.lines)
    # the streamer's own identity is the host: its lines are marked
    lecturer = lecture.client(lecture.bus)
    lecturer.join("Prof").result(5)
    lecturer.say("welcome").result(5)
    wait_until(lambda: lecture.said("welcome"), 5, "the lecturer's line")
    assert lecture.said("welcome")[0].host


def test_floods_and_many_labels_are_bounded(lecture: Lecture) -> None:
    flood = lecture.client()
    flood.join("flood").result(5)
    results = [flood.say(f"spam {i}") for i in range(20)]
    errors = []
    for future in results:
        try:
            future.result(5)
        except ChatRefusedError as exc:
            errors.append(exc.error)
    assert 20 - len(errors) == 5 and set(errors) == {"rate"}  # the member's burst, then refused
    with pytest.raises(ChatRefusedError, match="rate limited: wait"):
        flood.say("one more").result(5)
    # labels: one connection joining ever more members is stopped by the node's join budget, then by the cap
    joined = refused = 0
    for i in range(300):
        try:
            flood.join(f"m{i}", via=f"v{i}").result(5)
            joined += 1
        except ChatRefusedError:
            refused += 1
    assert joined < 300 and len(lecture.server.room.members) <= lecture.server.room.limits.vias
    assert len(lecture.server.room.members) <= 31


def test_too_long_and_malformed_input(lecture: Lecture) -> None:
    client = lecture.client()
    client.join("Ada").result(5)
    with pytest.raises(ChatRefusedError, match="too long"):
        client.say("x" * (MAX_CHAT_TEXT + 1)).result(5)
    # a raw DEALER sending what the client would refuse to: the streamer refuses it too, or drops it
    raw = lecture.network.bus().client(zmq.DEALER)  # type: ignore[attr-defined]
    try:
        raw.connect(str(lecture.chat))
        raw.send_multipart(CHAT_CODEC.encode(Hello(ref=1, name="raw")))
        raw.send_multipart(CHAT_CODEC.encode(Say(ref=2, text="y" * 1000)))
        raw.send_multipart([b"\x93garbage", b"more"])
        raw.send_multipart(CHAT_CODEC.encode(Say(ref=3, text="fine")))
        replies = [CHAT_CODEC.decode(raw.recv_multipart())[0] for _ in range(3) if raw.poll(5000)]
    finally:
        raw.close(linger=0)
    assert [(r.ref, r.ok, r.error) for r in replies] == [(1, True, ""), (2, False, "too-long"), (3, True, "")]  # type: ignore[union-attr]
    wait_until(lambda: lecture.server.malformed == 1, 5, "the garbage counted")


def test_a_viewer_joins_by_name_and_sees_lines_and_history(network, lecture: Lecture) -> None:
    early = lecture.client()
    early.join("early").result(5)
    early.say("before you came").result(5)
    seen: list[ChatLine] = []
    done = threading.Event()

    def on_line(line: ChatLine) -> None:
        seen.append(line)
        if line.text == "after":
            done.set()

    viewer_chat = ViewerChat(network.bus(), "127.0.0.1", "Viewer", on_line=on_line)
    from overdrive.media.viewer import Viewer, ViewerConfig

    viewer = Viewer(ViewerConfig(host=str(lecture.endpoint), headless=True, decode=False), network.bus())
    viewer.add_listener(viewer_chat)
    viewer.start()
    try:
        wait_until(lambda: viewer_chat.shown_name == "Viewer", 10, "the viewer in the chat")
        wait_until(lambda: any(p.count == 2 and "Viewer" in p.names for p in lecture.presence), 10, "presence")
        early.say("after").result(5)
        assert done.wait(5)
        texts = [line.text for line in seen if line.kind == "say"]
        assert texts == ["before you came", "after"]  # the history, then the live line, each once
    finally:
        viewer.stop()
        viewer_chat.close()


def test_the_streamer_recording_keeps_the_chat(network, tmp_path: Path) -> None:
    import json

    import av

    room = Lecture(network, tmp_path)
    try:
        client = room.client()
        client.join("Ada").result(5)
        time.sleep(0.5)  # the lines spread over the recording, not all at its first frame
        client.say(HOSTILE).result(5)
        time.sleep(0.5)
        client.say("second").result(5)
        time.sleep(0.5)
    finally:
        room.close()
    (mp4,) = tmp_path.glob("*.mp4")
    stem = mp4.name.removesuffix(".mp4")
    records = [json.loads(line) for line in (tmp_path / f"{stem}.chat.jsonl").read_text().splitlines()]
    vtt = (tmp_path / f"{stem}.vtt").read_text()
    with av.open(str(mp4)) as container:
        seconds = float(container.duration or 0) / 1e6
        (subs,) = container.streams.subtitles
        samples = [bytes(p)[2:].decode() for p in container.demux(subs) if p.size > 2]
    said = [r for r in records if r["kind"] == "say"]
    assert [r["text"] for r in said] == [HOSTILE, "second"] and said[0]["name"] == "Ada"
    assert all(0 <= r["t"] <= seconds + 0.05 for r in records), (records, seconds)
    assert vtt.startswith("WEBVTT") and "&lt;script&gt;" in vtt and "<script>" not in vtt
    assert any("Ada: second" in s for s in samples) and any(HOSTILE in s for s in samples)
    assert not list(tmp_path.glob(".*.part"))
