"""A credit window: what a sender has sent and not yet seen acknowledged (after etcd raft's ``Inflights``).

A sender may have at most ``capacity`` items in flight; each is known by an integer key and the time it went out.
Replies free them one by one (:meth:`Window.free`, a chunk answered) or cumulatively (:meth:`Window.free_to`, "I
have everything up to batch k"). Used by the index mesh for snapshot batches and by fetches for chunk requests.
"""

from __future__ import annotations

from collections.abc import Iterator


class Window:
    """Keys in flight with the time each was sent; ``capacity`` 0 means unbounded (no flow control)."""

    __slots__ = ("_sent", "capacity")

    def __init__(self, capacity: int = 0) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be 0 (unbounded) or positive, not {capacity}")
        self.capacity = capacity
        self._sent: dict[int, float] = {}

    @property
    def full(self) -> bool:
        return bool(self.capacity) and len(self._sent) >= self.capacity

    def __len__(self) -> int:
        return len(self._sent)

    def __contains__(self, key: object) -> bool:
        return key in self._sent

    def __iter__(self) -> Iterator[int]:
        return iter(self._sent)

    def add(self, key: int, now: float) -> None:
        """``key`` went out at ``now``; sending into a full window is the caller's bug."""
        if self.full:
            raise ValueError("the credit window is full")
        if key in self._sent:
            raise ValueError(f"{key} is already in flight")
        self._sent[key] = now

    def free(self, key: int) -> bool:
        """``key`` was answered: True if it was in flight."""
        return self._sent.pop(key, None) is not None

    def free_to(self, key: int) -> int:
        """Every key up to ``key`` was answered (a cumulative ack); return how many were freed."""
        freed = [k for k in self._sent if k <= key]
        for k in freed:
            del self._sent[k]
        return len(freed)

    def clear(self) -> list[int]:
        """Forget everything in flight (its receiver is gone); return the keys, oldest first."""
        keys = list(self._sent)
        self._sent.clear()
        return keys

    def sent_before(self, limit: float) -> bool:
        """True if something still in flight went out before ``limit`` (a reply is overdue)."""
        return any(t < limit for t in self._sent.values())
