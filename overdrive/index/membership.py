"""Masters a master has only heard of (sans-IO): the candidates of gossip membership, bounded.

A master named in a heartbeat is only a *candidate*: an address to try. It becomes a known master (``Mesh.masters``)
when the master at that address answers on the link we opened, with its own ``MasterBeat``. Only known masters are
gossiped on, so a made-up list reaches no further than the master it was sent to, and its candidates expire.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from overdrive.bus.address import DEFAULT_MASTER_PORT, parse_endpoint
from overdrive.errors import ConfigError

if TYPE_CHECKING:
    from overdrive.index.mesh import Mesh

log = logging.getLogger(__name__)

MAX_MASTERS = 64
"""Known masters (ourselves included); beyond that a master that answers is not taken until another is forgotten.
Far below the 1,000 a MasterBeat's ``masters`` may list, so our heartbeats always decode."""
MAX_CANDIDATES = 32
"""Masters heard of but not (yet) answered, in total."""
MAX_CANDIDATES_PER_PEER = 8
"""Candidates one announcer (a known master's gossip, or one connection naming itself) may hold at once."""
DIAL_SPACING = 0.2
"""Seconds between two dials of candidates: at most five new links a second, whatever the gossip says."""


@dataclass(slots=True)
class Candidate:
    """An address heard of: who named it, since when, and when we dialled it (None: not yet)."""

    announcer: str
    since: float
    dialled: float | None = None


@dataclass(slots=True)
class Candidates:
    """The bounded table of candidates: ``propose`` one, ``to_dial`` the next, drop the ``expired``."""

    timeout: float
    """Seconds a candidate has to answer once dialled (or to be dialled once named)."""
    table: dict[str, Candidate] = field(default_factory=dict)
    refused: int = 0
    """Candidates not taken because the table (or their announcer's share) was full."""
    _next_dial: float = float("-inf")

    def propose(self, address: str, announcer: str, now: float) -> bool:
        """Remember ``address`` as named by ``announcer``; False if already there or no room."""
        if address in self.table:
            return False
        mine = sum(1 for c in self.table.values() if c.announcer == announcer)
        if len(self.table) >= MAX_CANDIDATES or mine >= MAX_CANDIDATES_PER_PEER:
            self.refused += 1
            return False
        self.table[address] = Candidate(announcer, now)
        return True

    def to_dial(self, now: float) -> str | None:
        """The next candidate to dial now, if the dial rate allows one."""
        if now < self._next_dial:
            return None
        for address, candidate in self.table.items():
            if candidate.dialled is None:
                candidate.dialled = now
                self._next_dial = now + DIAL_SPACING
                return address
        return None

    def answered(self, address: str) -> None:
        self.table.pop(address, None)

    def expired(self, now: float) -> list[str]:
        """Candidates that did not answer in time (counted from the dial, or from being named): forgotten."""
        gone = [
            address
            for address, c in self.table.items()
            if now - (c.since if c.dialled is None else c.dialled) >= self.timeout
        ]
        for address in gone:
            del self.table[address]
        return gone


def propose(mesh: Mesh, address: str, announcer: str, now: float) -> None:
    """A heartbeat named a master at ``address``: a candidate to dial, unless we already have a link there."""
    if address == mesh.address or address in mesh.links or address in mesh.masters.values():
        return
    try:
        parse_endpoint(address, DEFAULT_MASTER_PORT)
    except ConfigError:
        return
    mesh.candidates.propose(address, announcer, now)


def confirm(mesh: Mesh, origin: str, address: str, now: float) -> bool:
    """The master at ``address`` answered on our link as ``origin``: it is known (if there is room)."""
    mesh.candidates.answered(address)
    if origin not in mesh.masters and len(mesh.masters) >= MAX_MASTERS:
        mesh.candidates.refused += 1
        return False
    mesh.masters[origin] = address
    return True


def may_originate(mesh: Mesh, origin: str) -> bool:
    """Only real masters originate updates: ones we know, or whose updates we already hold."""
    return origin in mesh.masters or origin in mesh.replica.vector


def masters_part(mesh: Mesh, vector: dict[str, int]) -> dict[str, int]:
    """What anti-entropy compares: known masters' seqs (origins a peer only vouches for are left out, so a hostile
    master cannot keep two honest ones from ever being calm)."""
    return {origin: seq for origin, seq in vector.items() if seq and origin in mesh.masters}


def tend(mesh: Mesh, now: float) -> None:
    """Hang up candidates that never answered, forget masters long silent, dial the next candidate."""
    configured = {p.display for p in mesh.config.peers}
    for address in mesh.candidates.expired(now):
        if mesh.links.get(address) == "" and address not in configured:
            mesh.unlink(address)
    for origin in mesh.heard.expired(now):
        log.info("master %s: forgetting %s, silent for %g s", mesh.origin, origin, mesh.config.forget)
        mesh.masters.pop(origin, None)
        for table in (mesh.vectors, mesh.remote_nodes, mesh.peer_masters):
            table.pop(origin, None)
        mesh.master_live.forget(origin)
        for address in [a for a, o in mesh.links.items() if o == origin and a not in configured]:
            mesh.unlink(address)
    dial = mesh.candidates.to_dial(now)
    if dial is not None:
        mesh.link(dial)
