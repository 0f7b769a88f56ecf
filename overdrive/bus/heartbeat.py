"""Heartbeats without sockets: who was last heard from when, and when to say we are alive.

Protocol shells call :meth:`Liveness.seen` for every message from a peer and :meth:`Liveness.expired` on each
tick; :class:`Ticker` tells them when their own heartbeat is due. Times are plain floats (``time.monotonic()``),
passed in, so tests drive the clock.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

DEFAULT_INTERVAL = 1.0
DEFAULT_TIMEOUT = 3.0


@dataclass(slots=True)
class Ticker:
    """Fires at most once per ``interval`` seconds."""

    interval: float = DEFAULT_INTERVAL
    _next: float = float("-inf")
    _latest: float = float("inf")
    """How far deferrals may push the next tick: one interval past when it was due."""

    def due(self, now: float) -> bool:
        if now < self._next:
            return False
        self._next = now + self.interval
        self._latest = float("inf")
        return True

    def defer(self, now: float) -> None:
        """Fire no sooner than one full interval from ``now``, but never more than one interval later than it
        would have: deferred over and over, it still fires at least every second interval."""
        if self._latest == float("inf"):
            self._latest = max(self._next, now) + self.interval
        self._next = max(self._next, min(now + self.interval, self._latest))


@dataclass(slots=True)
class Liveness(Generic[K]):
    """Tracks peers by last-heard time; a peer silent for ``timeout`` seconds is offline."""

    timeout: float = DEFAULT_TIMEOUT
    _last: dict[K, float] = field(default_factory=dict)

    def seen(self, peer: K, now: float) -> bool:
        """Record a sign of life; return True if the peer was not known to be alive before."""
        fresh = peer not in self._last
        self._last[peer] = now
        return fresh

    def alive(self, peer: K, now: float) -> bool:
        last = self._last.get(peer)
        return last is not None and now - last < self.timeout

    def expired(self, now: float) -> list[K]:
        """Peers that just went silent for too long; each is reported once and forgotten."""
        gone = [p for p, last in self._last.items() if now - last >= self.timeout]
        for peer in gone:
            del self._last[peer]
        return gone

    def forget(self, peer: K) -> None:
        self._last.pop(peer, None)

    def peers(self) -> list[K]:
        return list(self._last)
