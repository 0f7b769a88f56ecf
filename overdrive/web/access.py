"""Who may watch: an invite token in the link, exchanged once for a cookie.

The link ``http://HOST:PORT/?t=TOKEN`` is what the lecturer shows (on the board or as a QR code). A request with
the right token gets a cookie (HttpOnly, SameSite=Strict) and a redirect to ``/``, so the token leaves the address
bar and browser history; later requests (the page, its assets, the WebSocket) need that cookie. The cookie holds a
hash of the token, not the token: a new token (:meth:`Access.rotate`) makes every old cookie worthless at once.
The network password and keys never reach a browser: the gateway is the stream's only viewer in their place.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from overdrive.errors import ConfigError

COOKIE = "overdrive_web"
TOKEN_BYTES = 18
_TOKEN = re.compile(r"[A-Za-z0-9_-]{16,128}")


def new_token() -> str:
    """A fresh invite token (144 random bits, URL-safe)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def check_token(token: str) -> str:
    """``token`` if it can be an invite token (URL-safe, 16..128 characters), else ConfigError."""
    if not _TOKEN.fullmatch(token):
        raise ConfigError("--token must be 16..128 characters of A-Z a-z 0-9 _ -")
    return token


class Access:
    """The current token and the cookie it earns; constant-time comparisons."""

    def __init__(self, token: str) -> None:
        self.token = check_token(token)
        self.generation = 0
        """Bumped by :meth:`rotate`; a WebSocket remembers the generation it was opened under."""

    @property
    def cookie(self) -> str:
        return hashlib.sha256(b"overdrive web cookie\0" + self.token.encode()).hexdigest()

    def token_ok(self, token: str) -> bool:
        return hmac.compare_digest(token.encode(), self.token.encode())

    def cookie_ok(self, cookie: str | None) -> bool:
        return cookie is not None and hmac.compare_digest(cookie.encode(), self.cookie.encode())

    def rotate(self, token: str | None = None) -> str:
        """Switch to ``token`` (a fresh one by default): old links and cookies stop working."""
        self.token = check_token(token) if token is not None else new_token()
        self.generation += 1
        return self.token


__all__ = ["COOKIE", "Access", "check_token", "new_token"]
