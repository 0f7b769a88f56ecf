"""Fair sharing of one file server: what each peer holds, counted per identity, per address and in total.

Identities are free to make (anyone with the password can generate as many keypairs as they like), so every limit
is also kept per network address: many identities from one machine share one budget. :class:`Tally` counts one
kind of holding (transfer slots, or bytes handed to the socket and not yet sent) and :class:`Limits` says how much
of it one identity, one address and everybody together may hold. No I/O here: :mod:`~overdrive.transfer.serving`
decides what to do when a limit is reached.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from overdrive.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Peer:
    """Who sent a request: the authenticated node id of its connection, and the network address it came from."""

    identity: str
    address: str


@dataclass(frozen=True, slots=True)
class Limits:
    """How much one identity, one address, and everybody together may hold."""

    per_identity: int
    per_address: int
    total: int
    newcomer_passes_total: bool = False
    """An address holding nothing may take one amount past the total: peers that keep what they hold (bytes a
    peer never reads) cannot lock out a new one; the total is then passed by at most one amount per address."""

    def __post_init__(self) -> None:
        if not 1 <= self.per_identity <= self.per_address <= self.total:
            raise ConfigError(f"need 1 <= per identity <= per address <= total, not {self}")


class Tally:
    """Amounts held per identity, per address and in total; entries that drop to zero are forgotten, so the
    tables hold only peers that hold something."""

    def __init__(self) -> None:
        self.by_identity: Counter[str] = Counter()
        self.by_address: Counter[str] = Counter()
        self.total = 0

    def add(self, peer: Peer, amount: int) -> None:
        self.by_identity[peer.identity] += amount
        self.by_address[peer.address] += amount
        self.total += amount

    def remove(self, peer: Peer, amount: int) -> None:
        for table, key in ((self.by_identity, peer.identity), (self.by_address, peer.address)):
            table[key] -= amount
            if table[key] <= 0:
                del table[key]
        self.total -= amount

    def over(self, peer: Peer, amount: int, limits: Limits) -> str:
        """Which limit holding ``amount`` more would pass ("identity", "address", "total"), or "" if none.

        A holder with nothing held may always take one amount, however big (a chunk larger than a byte budget
        must still go out); so each bound is its limit plus one amount."""
        by_address = self.by_address[peer.address]
        total = 0 if limits.newcomer_passes_total and not by_address else self.total
        for scope, held, limit in (
            ("identity", self.by_identity[peer.identity], limits.per_identity),
            ("address", by_address, limits.per_address),
            ("total", total, limits.total),
        ):
            if held and held + amount > limit:
                return scope
        return ""

    def clear(self) -> None:
        self.by_identity.clear()
        self.by_address.clear()
        self.total = 0
