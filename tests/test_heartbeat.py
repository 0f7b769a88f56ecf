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


def test_a_deferred_ticker_waits_an_interval_but_deferrals_never_starve_it() -> None:
    ticker = Ticker(interval=5.0)
    assert ticker.due(0.0)
    ticker.defer(4.0)  # due at 5.0: put off to 9.0
    assert not ticker.due(8.9)
    ticker.defer(8.0)  # again: but never past 10.0, one interval after it was due
    assert not ticker.due(9.9)
    assert ticker.due(10.0)
    fired = []
    for t in range(11, 61):
        if t % 4 == 0:
            ticker.defer(float(t))
        if ticker.due(float(t)):
            fired.append(t)
    assert fired == [20, 30, 40, 50, 60]  # deferred every 4 s, it still fires every second interval
