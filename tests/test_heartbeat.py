"""Heartbeat bookkeeping, driven by an explicit clock."""

from __future__ import annotations

from overdrive.bus.heartbeat import Liveness, Ticker


def test_ticker_fires_once_per_interval() -> None:
    ticker = Ticker(interval=1.0)
    assert ticker.due(0.0)
    assert not ticker.due(0.5)
    assert ticker.due(1.0)
    assert not ticker.due(1.9)


def test_liveness_expires_silent_peers_once() -> None:
    live: Liveness[str] = Liveness(timeout=3.0)
    assert live.seen("a", 0.0)
    assert not live.seen("a", 1.0)
    live.seen("b", 2.0)
    assert live.expired(3.9) == []
    assert live.alive("a", 3.9)
    assert live.expired(4.0) == ["a"]
    assert not live.alive("a", 4.0)
    assert live.expired(10.0) == ["b"]
    assert live.peers() == []
