"""The page's chat box against a gateway with a chat wired in: lines typed in one page reach every page, and
hostile text stays text. The chat here is a loopback :class:`ChatPort` (what a page says comes straight back to
every follower), a real implementation of the interface the stream's chat plugs into, so this runs without a
streamer."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from overdrive.web.access import Access, new_token
from overdrive.web.gateway import Limits
from overdrive.web.ports import ChatLine, OnChatLine, OnNotice
from overdrive.web.server import ServerConfig, WebServer
from tests.test_web_live import CHROMIUM, playwright_api

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (scripts/provision)")

HOSTILE = ['<img src=x onerror="window.pwned=1">', "<script>window.pwned=2</script>"]


class LoopbackChat:
    """Every line said is published back to every follower at once."""

    def __init__(self) -> None:
        self.followers: list[OnChatLine] = []
        self.said: list[tuple[str, str]] = []
        self.members: dict[str, str] = {}

    def join(self, session: str, name: str) -> None:
        self.members[session] = name

    def say(self, session: str, name: str, text: str) -> None:
        self.said.append((name, text))
        for follow in self.followers:
            follow(ChatLine(name=name, text=text, time_ns=time.time_ns()))

    def hand(self, session: str, up: bool) -> None:
        pass

    def leave(self, session: str) -> None:
        self.members.pop(session, None)

    def follow(self, on_line: OnChatLine, on_notice: OnNotice) -> None:
        self.followers.append(on_line)


@pytest.fixture
def chat_server() -> Iterator[tuple[WebServer, LoopbackChat]]:
    chat = LoopbackChat()
    server = WebServer(ServerConfig(host="127.0.0.1", port=0, limits=Limits(max_sessions=4)), Access(new_token()), chat)
    server.start()
    try:
        yield server, chat
    finally:
        server.stop()


def test_chat_reaches_every_page_and_hostile_text_is_inert(chat_server: tuple[WebServer, LoopbackChat]) -> None:
    server, chat = chat_server
    assert server.address is not None
    url = f"http://127.0.0.1:{server.address[1]}/?t={server.access.token}"
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM))
        try:
            alice, bob = browser.new_page(), browser.new_page()
            for page in (alice, bob):
                page.goto(url)
                page.wait_for_function("() => window.overdriveStats.state === 'waiting'", timeout=5_000)
                assert page.locator("#chattext").is_visible()  # a gateway with a chat shows the box at once
            alice.fill("#chatname", "alice")
            alice.fill("#chattext", "hello class")
            alice.press("#chattext", "Enter")
            bob.wait_for_function(
                "() => document.getElementById('chatlog').textContent.includes('hello class')", timeout=5_000
            )
            deadline = time.monotonic() + 5
            while sorted(chat.members.values()) != ["alice", "guest"] and time.monotonic() < deadline:
                time.sleep(0.05)
            assert sorted(chat.members.values()) == ["alice", "guest"]  # each page is a member under its name
            for text in HOSTILE:
                chat.say("", "<b>mallory</b>", text)
            bob.wait_for_function("() => document.getElementById('chatlog').children.length >= 3", timeout=5_000)
            log = bob.locator("#chatlog")
            assert log.locator("img, script, b").count() == 0
            assert HOSTILE[0] in log.inner_text() and "<b>mallory</b>" in log.inner_text()
            assert bob.evaluate("() => window.pwned") is None
        finally:
            browser.close()
    assert chat.said[0] == ("alice", "hello class")
    assert chat.members == {}  # each page joined under its own session and left when it closed
