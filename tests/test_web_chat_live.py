"""The web page's chat is the stream's chat: a real ``overdrive stream``, the real ``overdrive web`` (or ``stream
--web``), ``overdrive chat`` from a shell, and Debian's Chromium driven headless by playwright."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Children, TestNetwork
from tests.test_chat_cli import Lines, Procs
from tests.test_web_live import CHROMIUM, _spawn_url, _streamer, playwright_api

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (scripts/provision)")

HOSTILE = ["<img src=x onerror=window.pwned=1>", "<script>window.pwned=1</script>"]


@pytest.fixture
def shell(network: TestNetwork, tmp_path: Path) -> Iterator[Procs]:
    started = Procs(network.env(tmp_path / "shell"), tmp_path)
    yield started
    started.stop()


@pytest.fixture
def chromium() -> Iterator[object]:
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM))
        try:
            yield browser
        finally:
            browser.close()


def _open(browser: object, url: str, name: str) -> object:
    page = browser.new_page()  # type: ignore[attr-defined]
    page.goto(url)
    page.wait_for_selector("#chattext", state="visible", timeout=10_000)  # the gateway has a chat
    page.fill("#chatname", name)
    page.dispatch_event("#chatname", "change")  # tells the gateway its name: the streamer counts it
    return page


def _shows(page: object, text: str) -> None:
    page.wait_for_function(  # type: ignore[attr-defined]
        "t => document.getElementById('chatlog').textContent.includes(t)", arg=text, timeout=5_000
    )


def _type(page: object, text: str) -> None:
    page.fill("#chattext", text)  # type: ignore[attr-defined]
    page.press("#chattext", "Enter")  # type: ignore[attr-defined]


def test_web_pages_share_the_streams_chat(
    children: Children, network: TestNetwork, tmp_path: Path, shell: Procs, chromium: object
) -> None:
    stream = _streamer(children, "--audio", "none").display
    _, url = _spawn_url(children, network, tmp_path, "web", "web", stream, "--bind", "127.0.0.1:0")
    follow = shell.spawn("chat", stream, "--follow", "--json", home="follower")
    watch = shell.spawn("chat", stream, "--follow", home="watcher")
    assert follow.stdout is not None and watch.stderr is not None
    lines, presence = Lines(follow.stdout), Lines(watch.stderr)
    alice, bob = _open(chromium, url, "alice"), _open(chromium, url, "bob")

    presence.wait_for("alice", 10)  # the streamer counts the web viewers by name
    assert "bob" in presence.wait_for("bob", 10)
    bob.click("#hand")  # type: ignore[attr-defined]
    presence.wait_for("hands up: bob", 10)  # a hand raised in the page reaches the room

    said = shell.run("chat", stream, "--say", "from the shell", "--name", "Ada", home="ada")
    assert said.returncode == 0, said.stderr
    for page in (alice, bob):
        _shows(page, "from the shell")

    _type(alice, "hello class")
    _shows(bob, "hello class")
    record = json.loads(lines.wait_for("hello class", 5))
    assert (record["name"], record["text"], record["kind"]) == ("alice", "hello class", "say")

    for text in HOSTILE:
        _type(alice, text)
    for page in (alice, bob):
        _shows(page, HOSTILE[1])
        log = page.locator("#chatlog")  # type: ignore[attr-defined]
        assert log.locator("img, script").count() == 0
        assert HOSTILE[0] in log.inner_text() and HOSTILE[1] in log.inner_text()
        assert page.evaluate("() => window.pwned") is None  # type: ignore[attr-defined]
        assert log.inner_text().count("hello class") == 1  # each line once

    # The streamer's room allows a member 5 lines per 10 s, the gateway a page a burst of 5 then 1 a second: lines
    # half a second apart meet the room's refusal first, and it is shown to that page only.
    for n in range(12):
        _type(alice, f"line {n}")
        if "rate limited" in alice.locator("#chatlog").inner_text():  # type: ignore[attr-defined]
            break
        time.sleep(0.5)
    _shows(alice, "rate limited: wait")
    _shows(bob, "line 0")  # the lines the room took reached the other page
    assert "rate limited" not in bob.locator("#chatlog").inner_text()  # type: ignore[attr-defined]


def test_stream_web_page_chats_with_the_shell(
    children: Children, network: TestNetwork, tmp_path: Path, shell: Procs, chromium: object
) -> None:
    proc, url = _spawn_url(
        children, network, tmp_path, "streamer", "stream", "--source", "testpattern", "--audio", "none",
        "--bind", "tcp://127.0.0.1:0", "--no-record", "--duration", "120", "--web", "127.0.0.1:0",
    )  # fmt: skip
    assert proc.stdout is not None
    stream = proc.stdout.readline().split("tcp://")[1].split()[0]
    follow = shell.spawn("chat", stream, "--follow", "--json", home="follower")
    assert follow.stdout is not None
    lines = Lines(follow.stdout)
    page = _open(chromium, url, "carol")
    lines.wait_for('"carol"', 10)  # carol's join line: the streamer's room has her

    _type(page, "from the page")
    record = json.loads(lines.wait_for("from the page", 5))
    assert (record["name"], record["kind"]) == ("carol", "say")
    _shows(page, "from the page")
    said = shell.run("chat", stream, "--say", "from the shell", home="ada")
    assert said.returncode == 0, said.stderr
    _shows(page, "from the shell")
