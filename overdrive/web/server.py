"""The gateway's HTTP and WebSocket shell (aiohttp), running its own event loop in one thread.

::

    server = WebServer(ServerConfig(host="0.0.0.0", port=8080), Access(token), chat=None)
    host, port = server.start()                      # bound, serving; raises if it cannot bind
    server.configure(video, audio)                   # from the stream's thread: handed to the loop
    server.video(VideoSample(...)) ...
    server.stop()

Routes: ``/`` (the page), ``/app.js``, ``/style.css`` and ``/ws``. Every one needs the cookie that ``/?t=TOKEN``
gives (:mod:`overdrive.web.access`), else 403; a WebSocket from another origin is refused too. The socket carries
binary fMP4 fragments and JSON control lines out (:mod:`overdrive.web.gateway`) and small JSON lines in
(``{"type": "say", "name": ..., "text": ...}``, ``{"type": "name", ...}``, ``{"type": "hand", "up": ...}``),
bounded by ``ServerConfig.max_message`` and a rate per browser.

Every decision lives in :class:`~overdrive.web.gateway.Gateway`; all of it runs on the loop's thread, so the
methods called from other threads (:meth:`WebServer.video` ...) only post to the loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from aiohttp import WSMsgType, web

from overdrive.errors import ConfigError, OverdriveError
from overdrive.web.access import COOKIE, Access
from overdrive.web.fmp4 import AudioConfig, VideoConfig
from overdrive.web.gateway import AudioSample, FullError, Gateway, Limits, Session, VideoSample
from overdrive.web.ports import ChatLine, ChatPort

log = logging.getLogger(__name__)

START_TIMEOUT = 10.0
CLOCK_PERIOD = 2.0
"""Seconds between two clock lines (pages correct their latency figure by the gateway's clock)."""
MAX_NAME = 40
MAX_TEXT = 500
CHAT_BURST = 5
CHAT_PER_SECOND = 1.0
CLOSE_ROTATED = 4001
"""WebSocket close code: the invite token changed (the page says to ask for the new link)."""

_ASSETS = {
    "/": ("index.html", "text/html"),
    "/app.js": ("app.js", "text/javascript"),
    "/style.css": ("style.css", "text/css"),
}
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; media-src blob:; "
        "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    """Where to listen and the bounds to keep."""

    host: str = "0.0.0.0"
    port: int = 8080
    name: str = "overdrive"
    limits: Limits = field(default_factory=Limits)
    max_message: int = 4096
    """Largest WebSocket message a browser may send (chat lines are JSON well under it)."""

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port {self.port} out of range")
        if not 256 <= self.max_message <= 1 << 20:
            raise ConfigError("max message must be 256 B..1 MiB")


@dataclass(slots=True)
class _Browser:
    """One open WebSocket: its queue, the token generation it was admitted under, its chat allowance."""

    ws: web.WebSocketResponse
    session: Session
    generation: int
    wake: asyncio.Event
    allowance: float = CHAT_BURST
    checked: float = field(default_factory=time.monotonic)

    def may_chat(self) -> bool:
        now = time.monotonic()
        self.allowance = min(CHAT_BURST, self.allowance + (now - self.checked) * CHAT_PER_SECOND)
        self.checked = now
        if self.allowance < 1:
            return False
        self.allowance -= 1
        return True


class WebServer:
    """Serves the page and the stream to browsers; thread-safe entry points post to its loop."""

    def __init__(self, config: ServerConfig, access: Access, chat: ChatPort | None = None) -> None:
        self.config = config
        self.access = access
        self.chat = chat
        self.gateway = Gateway(config.limits, name=config.name, chat=chat is not None)
        self.address: tuple[str, int] | None = None
        self._assets = {
            path: ((resources.files("overdrive.web") / "static" / name).read_bytes(), kind)
            for path, (name, kind) in _ASSETS.items()
        }
        self._browsers: dict[int, _Browser] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._rotate_requested = False
        self._closing: set[asyncio.Future[bool]] = set()
        self.on_rotate: Callable[[str], None] | None = None
        """Called (in the server's thread) with the new token after a rotation :meth:`request_rotate` asked for."""
        if chat is not None:
            chat.follow(self.chat_line, self.chat_notice)

    # -- lifecycle -------------------------------------------------------------------------------------------
    def start(self, timeout: float = START_TIMEOUT) -> tuple[str, int]:
        """Bind and serve in a thread; the bound address (the real port when port 0 was asked for)."""
        self._thread = threading.Thread(target=self._run, name="overdrive-web", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise OverdriveError(f"the web server did not start within {timeout:g} s")
        if self._error is not None:
            self._thread.join()
            raise self._error
        assert self.address is not None
        return self.address

    def stop(self, timeout: float = 10.0) -> None:
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and self._thread is not None and self._thread.is_alive():
            loop.call_soon_threadsafe(stopping.set)
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to start(), or logged once serving
            self._error = exc
            if self._ready.is_set():
                log.exception("the web server stopped")
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        app = web.Application(middlewares=[self._guard], client_max_size=self.config.max_message)
        app.router.add_get("/ws", self._websocket)
        app.router.add_get("/favicon.ico", self._no_icon)
        for path in self._assets:
            app.router.add_get(path, self._asset)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.config.host, self.config.port, reuse_address=True)
            try:
                await site.start()
            except OSError as exc:
                raise ConfigError(f"cannot listen on {self.config.host}:{self.config.port}: {exc.strerror}") from None
            host, port = runner.addresses[0][:2]
            self.address = (str(host), int(port))
            self._ready.set()
            clock = asyncio.create_task(self._housekeeping())
            await self._stopping.wait()
            clock.cancel()
            for browser in list(self._browsers.values()):
                await browser.ws.close(code=1001, message=b"gateway stopping")
        finally:
            await runner.cleanup()

    async def _housekeeping(self) -> None:
        """The clock line every :data:`CLOCK_PERIOD`; a rotation asked for by a signal, within a fifth of a second."""
        ticks = 0
        while True:
            await asyncio.sleep(0.2)
            ticks += 1
            if ticks % round(CLOCK_PERIOD / 0.2) == 0:
                self.gateway.clock(time.time_ns())
            if self._rotate_requested:
                self._rotate_requested = False
                token = self.rotate()
                if self.on_rotate is not None:
                    self.on_rotate(token)

    # -- thread-safe entry points (the stream's thread) ------------------------------------------------------
    def _post(self, call: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(call, *args)
            except RuntimeError:  # the loop closed in between: the server is stopping
                pass

    def configure(self, video: VideoConfig, audio: AudioConfig | None) -> None:
        self._post(self.gateway.configure, video, audio)

    def video(self, sample: VideoSample) -> None:
        self._post(self.gateway.video, sample)

    def audio(self, sample: AudioSample) -> None:
        self._post(self.gateway.audio, sample)

    def end(self) -> None:
        self._post(self.gateway.end)

    def chat_line(self, line: ChatLine) -> None:
        message = {
            "type": "chat",
            "kind": line.kind,
            "name": line.name,
            "text": line.text,
            "time_ms": line.time_ns // 1_000_000,
        }
        self._post(self.gateway.broadcast, message)

    def chat_notice(self, session: str, text: str) -> None:
        """A notice for one browser only (``session`` is the label the chat port was given)."""
        self._post(self._notice, session, text)

    def _notice(self, session: str, text: str) -> None:
        browser = self._browsers.get(int(session)) if session.isdigit() else None
        if browser is not None:
            browser.session.push(json.dumps({"type": "notice", "text": text}))

    def request_rotate(self) -> None:
        """Ask for a new token at the loop's next turn (safe from a signal handler: it only sets a flag)."""
        self._rotate_requested = True

    def rotate(self, token: str | None = None) -> str:
        """A new invite token (fresh unless given); every browser admitted under the old one is disconnected."""
        new = self.access.rotate(token)
        self._post(self._drop_old)
        return new

    def _drop_old(self) -> None:
        for browser in list(self._browsers.values()):
            if browser.generation != self.access.generation:
                task = asyncio.ensure_future(browser.ws.close(code=CLOSE_ROTATED, message=b"invite changed"))
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)

    # -- HTTP ------------------------------------------------------------------------------------------------
    @web.middleware
    async def _guard(self, request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        """The token (exchanged for the cookie) or the cookie, else 403, for every route; security headers."""
        token = request.query.get("t")
        if token is not None and self.access.token_ok(token):
            response: web.StreamResponse = web.Response(status=303, headers={"Location": "/"})
            response.set_cookie(COOKIE, self.access.cookie, httponly=True, samesite="Strict", path="/")
        elif token is None and self.access.cookie_ok(request.cookies.get(COOKIE)):
            response = await handler(request)
        else:
            response = web.Response(status=403, text="This page needs the invite link (ask for it).\n")
        if not isinstance(response, web.WebSocketResponse):
            response.headers.update(_HEADERS)
        return response

    async def _no_icon(self, request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def _asset(self, request: web.Request) -> web.Response:
        body, kind = self._assets[request.path]
        return web.Response(body=body, content_type=kind, charset="utf-8")

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is not None and origin not in (f"http://{request.host}", f"https://{request.host}"):
            return web.Response(status=403, text="wrong origin\n")
        wake = asyncio.Event()
        try:
            session = self.gateway.join(time.time_ns(), wake.set)
        except FullError as exc:
            return web.Response(status=503, text=f"{exc}\n")
        ws = web.WebSocketResponse(max_msg_size=self.config.max_message, heartbeat=15.0, compress=False)
        browser = _Browser(ws, session, self.access.generation, wake)
        self._browsers[session.id] = browser
        try:
            await ws.prepare(request)
            writer = asyncio.create_task(self._write(browser))
            try:
                await self._read(browser)
            finally:
                writer.cancel()
        finally:
            self.gateway.leave(session)
            del self._browsers[session.id]
            if self.chat is not None:
                self.chat.leave(str(session.id))
        return ws

    async def _write(self, browser: _Browser) -> None:
        session, ws = browser.session, browser.ws
        try:
            while not ws.closed:
                await browser.wake.wait()
                browser.wake.clear()
                while (item := session.pop()) is not None:
                    if isinstance(item, str):
                        await ws.send_str(item)
                    else:
                        await ws.send_bytes(item)
        except ConnectionError:
            await ws.close()

    async def _read(self, browser: _Browser) -> None:
        async for message in browser.ws:
            if message.type is not WSMsgType.TEXT:
                break  # binary from a browser, or an oversized message: the page never sends either
            try:
                line = json.loads(message.data)
                if not isinstance(line, dict) or line.get("type") not in ("say", "name", "hand"):
                    raise ValueError("not a chat line")
                name, text = line.get("name"), line.get("text", "")
                if not isinstance(name, str) or not isinstance(text, str):
                    raise ValueError("not a chat line")
            except ValueError:
                break
            name = name.strip()[:MAX_NAME] or "guest"
            if line["type"] == "name":
                if self.chat is not None:
                    self.chat.join(str(browser.session.id), name)
            elif line["type"] == "hand":
                self._hand(browser, name, line.get("up") is True)
            else:
                self._say(browser, name, text.strip()[:MAX_TEXT])
        await browser.ws.close()

    def _hand(self, browser: _Browser, name: str, up: bool) -> None:
        if self.chat is None:
            return
        if not browser.may_chat():  # a hand costs what a line costs: toggling it cannot flood the room
            browser.session.push(json.dumps({"type": "notice", "text": "slow down: too many messages"}))
            return
        try:
            self.chat.join(str(browser.session.id), name)
            self.chat.hand(str(browser.session.id), up)
        except ValueError as exc:
            browser.session.push(json.dumps({"type": "notice", "text": str(exc)}))

    def _say(self, browser: _Browser, name: str, text: str) -> None:
        if self.chat is None or not text:
            return
        if not browser.may_chat():
            browser.session.push(json.dumps({"type": "notice", "text": "slow down: too many messages"}))
            return
        try:
            self.chat.say(str(browser.session.id), name, text)
        except ValueError as exc:
            browser.session.push(json.dumps({"type": "notice", "text": str(exc)}))


__all__ = ["CLOSE_ROTATED", "ServerConfig", "WebServer"]
