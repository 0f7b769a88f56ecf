"""Invite tokens and the gateway's command-line helpers, in memory."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from overdrive.app.web import invite_token, parse_bind, viewer_url
from overdrive.errors import ConfigError
from overdrive.web.access import Access, new_token


def test_cookie_is_tied_to_the_token_and_rotation_voids_it() -> None:
    access = Access(new_token())
    old_token, old_cookie = access.token, access.cookie
    assert old_token not in old_cookie
    assert access.token_ok(old_token) and access.cookie_ok(old_cookie)
    assert not access.cookie_ok(None) and not access.cookie_ok("") and not access.token_ok("x" * len(old_token))
    access.rotate()
    assert access.generation == 1
    assert not access.token_ok(old_token) and not access.cookie_ok(old_cookie)
    assert access.cookie_ok(access.cookie)


@pytest.mark.parametrize("token", ["short", "has space in it......", "é" * 20, "x" * 129])
def test_bad_tokens_are_config_errors(token: str) -> None:
    with pytest.raises(ConfigError):
        Access(token)


def test_stored_token_survives_a_restart_unless_rotated(overdrive_home: Path) -> None:
    first = invite_token(None, rotate=False)
    assert invite_token(None, rotate=False) == first
    rotated = invite_token(None, rotate=True)
    assert rotated != first and invite_token(None, rotate=False) == rotated
    assert invite_token("a-chosen-token-0123", rotate=False) == "a-chosen-token-0123"
    stored = next(overdrive_home.rglob("web-token"))
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600


def test_bind_and_url() -> None:
    assert parse_bind("8080", "--web") == ("0.0.0.0", 8080)
    assert parse_bind("127.0.0.1:0", "--bind") == ("127.0.0.1", 0)
    for bad in ("", "host", "1:99999", "a:b"):
        with pytest.raises(ConfigError, match="--web"):
            parse_bind(bad, "--web")
    assert viewer_url("127.0.0.1", 8080, "T" * 16) == "http://127.0.0.1:8080/?t=" + "T" * 16
    lan = viewer_url("0.0.0.0", 8080, "T" * 16)
    assert "0.0.0.0" not in lan and lan.startswith("http://")


def test_cli_mistakes_are_one_line(run_cli: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    env = dict(os.environ, OVERDRIVE_PASSWORD="pw")
    for args, message in (
        (["web", "127.0.0.1:9", "--bind", "nonsense"], "--bind must be [HOST:]PORT"),
        (["web", "127.0.0.1:9", "--bind", "127.0.0.1:0", "--token", "short"], "--token must be 16..128"),
        (["stream", "--source", "testpattern", "--web", "x:y"], "--web must be [HOST:]PORT"),
    ):
        result = run_cli(*args, env=env, timeout=60)
        assert result.returncode != 0 and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr and result.stdout == ""
