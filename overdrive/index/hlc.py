"""A hybrid logical clock: timestamps that follow wall time but never go backwards or repeat.

A timestamp is one int: milliseconds since the epoch shifted left by 16 bits, plus a 16-bit logical counter.
:meth:`HybridClock.now` stamps a local event; :meth:`HybridClock.observe` folds in a timestamp seen from a peer, so
a later local stamp is always larger than anything observed (causality), even when wall clocks disagree a little.
Wall time is passed in (milliseconds), which keeps the clock testable.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

LOGICAL_BITS = 16
LOGICAL_MASK = (1 << LOGICAL_BITS) - 1
MAX_DRIFT_MS = 60_000
"""Timestamps further than this ahead of our wall clock are not folded in (a broken or hostile peer)."""


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def physical_ms(stamp: int) -> int:
    """The wall-clock part of a timestamp, in milliseconds since the epoch."""
    return stamp >> LOGICAL_BITS


def from_ms(ms: int) -> int:
    """The smallest timestamp at wall time ``ms``."""
    return ms << LOGICAL_BITS


@dataclass(slots=True)
class HybridClock:
    """Issues strictly increasing timestamps close to wall time."""

    wall: Callable[[], int] = wall_ms
    last: int = 0

    def now(self) -> int:
        """A new timestamp, larger than every one issued or observed before."""
        candidate = from_ms(self.wall())
        self.last = candidate if candidate > self.last else self.last + 1
        return self.last

    def observe(self, stamp: int) -> bool:
        """Fold in a peer's timestamp; return False (and ignore it) if it is implausibly far in the future."""
        if physical_ms(stamp) > self.wall() + MAX_DRIFT_MS:
            return False
        self.last = max(self.last, stamp)
        return True
