"""The browser gateway end to end: a real streamer (test pattern), the real ``overdrive web`` process and Debian's
Chromium driven headless by playwright (never a downloaded browser).

Headless Chromium under playwright reports every page as visible whatever is in front of it (new tabs, minimised
windows and lifecycle freezing were tried), so the hidden-tab test hides the page the way the page sees it: the
``visibilitychange`` event with ``document.hidden`` true, and the video paused as Chromium pauses a background tab's
rendering, while the WebSocket keeps delivering.
"""

from __future__ import annotations

import http.client
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from overdrive.bus.address import Endpoint
from tests.conftest import PASSWORD, Children, TestNetwork

playwright_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (scripts/provision)")


def _streamer(children: Children, *extra: str) -> Endpoint:
    return children.start(
        "streamer", "stream", "--source", "testpattern", "--bind", "tcp://127.0.0.1:0", "--no-record",
        "--duration", "120", *extra,
    )  # fmt: skip


def _spawn_url(
    children: Children, network: TestNetwork, tmp: Path, home: str, *args: str
) -> tuple[subprocess.Popen[str], str]:
    """Start ``overdrive ARGS`` whose first stdout line is the viewer link; the process and the link."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "overdrive", *args],
        env=network.env(tmp / home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    children.procs.append(proc)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith("http://"):
        proc.kill()
        pytest.fail(f"{args[0]} printed no link: {line!r} {proc.communicate(timeout=10)[1][-2000:]}")
    return proc, line


@pytest.fixture
def web_url(children: Children, network: TestNetwork, tmp_path: Path) -> str:
    """A test-pattern stream with a test tone, and ``overdrive web`` in front of it; the viewer link."""
    stream = _streamer(children, "--audio", "testtone")
    _, url = _spawn_url(children, network, tmp_path, "web", "web", stream.display, "--bind", "127.0.0.1:0")
    return url


@pytest.fixture
def browser() -> Iterator[object]:
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM))
        try:
            yield chromium
        finally:
            chromium.close()


def _get(url: str, path: str, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    conn.request("GET", path, headers=headers or {})
    response = conn.getresponse()
    response.read()
    conn.close()
    return response


WS_UPGRADE = {
    "Connection": "Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}


def test_without_the_invite_everything_is_refused(web_url: str) -> None:
    token = urlsplit(web_url).query.removeprefix("t=")
    for path in ("/", "/app.js", "/style.css", "/ws", "/?t=" + "x" * len(token), "/nothing"):
        assert _get(web_url, path, WS_UPGRADE if path == "/ws" else None).status == 403, path

    invited = _get(web_url, f"/?t={token}")
    assert invited.status == 303 and invited.headers["Location"] == "/"
    set_cookie = invited.headers["Set-Cookie"]
    assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie and token not in set_cookie
    cookie = {"Cookie": set_cookie.split(";")[0]}
    page = _get(web_url, "/", cookie)
    assert page.status == 200 and "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert _get(web_url, "/app.js", cookie).status == 200
    # the cookie does not make a WebSocket from another site acceptable
    hostile = {**cookie, **WS_UPGRADE, "Origin": "http://evil.example"}
    assert _get(web_url, "/ws", hostile).status == 403
    origin = f"http://{urlsplit(web_url).netloc}"
    assert _get(web_url, "/ws", {**cookie, **WS_UPGRADE, "Origin": origin}).status == 101


def _stats(page: object) -> dict[str, object]:
    return page.evaluate("() => window.overdriveStats")  # type: ignore[attr-defined, no-any-return]


def test_page_plays_the_stream_live(web_url: str, browser: object) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 720})  # type: ignore[attr-defined]
    page.goto(web_url)
    page.wait_for_function("() => window.overdriveStats.frames >= 200", timeout=15_000)
    stats = _stats(page)
    assert stats["codec"] == "avc1.42C01F" and stats["audio"] is True  # from the 720p SPS; the test tone's Opus
    p50 = stats["latency_ms_p50"]
    assert isinstance(p50, int) and 0 <= p50 <= 500, stats
    first = page.locator("#video").screenshot()
    page.wait_for_timeout(300)
    second = page.locator("#video").screenshot()
    assert first != second  # the picture moves
    assert page.locator("#unmute").is_visible()  # it starts muted, with one click to unmute
    assert page.locator("#chat").is_visible()  # the stream's chat is wired to this gateway


def test_hidden_tab_is_back_at_live_within_two_seconds(web_url: str, browser: object) -> None:
    page = browser.new_page(viewport={"width": 390, "height": 844})  # type: ignore[attr-defined]  # a phone
    page.goto(web_url)
    page.wait_for_function("() => window.overdriveStats.frames >= 30", timeout=15_000)
    page.evaluate(
        """() => {
            window.hiddenForTest = true;
            Object.defineProperty(document, "hidden", {configurable: true, get: () => window.hiddenForTest});
            Object.defineProperty(document, "visibilityState", {configurable: true,
                get: () => window.hiddenForTest ? "hidden" : "visible"});
            document.getElementById("video").pause();
            document.dispatchEvent(new Event("visibilitychange"));
        }"""
    )
    page.wait_for_timeout(10_000)
    stale = _stats(page)
    assert isinstance(stale["behind_s"], float) and stale["behind_s"] > 5  # it really fell behind while hidden
    page.evaluate("""() => { window.hiddenForTest = false; document.dispatchEvent(new Event("visibilitychange")); }""")
    shown = time.monotonic()
    page.wait_for_function(
        "() => window.overdriveStats.latency_ms_last !== null && window.overdriveStats.latency_ms_last < 500"
        " && window.overdriveStats.behind_s < 0.5",
        timeout=2_000,
    )
    assert time.monotonic() - shown < 2.5


def test_stream_web_and_rotating_the_invite(
    children: Children, network: TestNetwork, tmp_path: Path, browser: object
) -> None:
    proc, url = _spawn_url(
        children, network, tmp_path, "streamer", "stream", "--source", "testpattern", "--audio", "none",
        "--bind", "tcp://127.0.0.1:0", "--no-record", "--duration", "120", "--web", "127.0.0.1:0",
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("overdrive: stream ready on tcp://127.0.0.1:")
    page = browser.new_page()  # type: ignore[attr-defined]
    page.goto(url)
    page.wait_for_function("() => window.overdriveStats.frames >= 30", timeout=15_000)
    old_cookie = {
        "Cookie": _get(url, urlsplit(url).path + "?" + urlsplit(url).query).headers["Set-Cookie"].split(";")[0]
    }
    assert _get(url, "/", old_cookie).status == 200

    proc.send_signal(signal.SIGUSR1)
    new_url = proc.stdout.readline().strip()
    assert new_url.startswith("http://127.0.0.1:") and new_url != url
    page.wait_for_function("() => window.overdriveStats.state === 'expired'", timeout=5_000)
    assert _get(url, "/", old_cookie).status == 403
    assert _get(url, urlsplit(url).path + "?" + urlsplit(url).query).status == 403
    assert _get(new_url, "/?" + urlsplit(new_url).query).status == 303
    assert PASSWORD not in page.content()
