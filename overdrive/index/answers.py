"""Lookup answers a master is sending, a batch at a time, bounded per peer and in total (sans-IO).

A list-everything lookup on a big index is many :class:`~overdrive.index.protocol.Found` batches. Queued all at once
for a peer that never reads, a thousand such lookups grow a master by a gigabyte. Instead an answer takes its next
batch from the store only once the socket accepted the one before (the socket's send high-water mark refuses more
for a peer that does not read), so each answer holds at most one batch here, and the number of answers is bounded.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from overdrive.index.protocol import Found

log = logging.getLogger(__name__)

MAX_ANSWERS = 64
"""Lookups being answered at once, over all peers; beyond, a new lookup from a peer with none under way is dropped."""
MAX_ANSWERS_PER_PEER = 4
"""Lookups answered at once per connection: a fifth replaces the peer's own oldest."""
ANSWER_IDLE = 30.0
"""An answer whose peer has taken no batch for this long is dropped (it stopped reading)."""

P = TypeVar("P")


@dataclass(slots=True)
class Answering(Generic[P]):
    """A lookup being answered to ``peer``, a :class:`Found` at a time."""

    peer: P
    batches: Iterator[Found]
    stream: int
    progress: float
    """When the last batch was taken from ``batches`` (the one before it had been accepted)."""
    waiting: Found | None = None
    """A batch the peer's full queue refused, to send again."""
    finished: bool = False
    """The last batch went out: the answer ends at the next pump unless that batch is refused."""


class Answers(Generic[P]):
    """Every answer under way; ``dropped`` counts lookups not answered in full."""

    def __init__(self) -> None:
        self.under_way: list[Answering[P]] = []
        self.dropped = 0

    def start(self, peer: P, batches: Iterator[Found], stream: int, now: float) -> Found | None:
        """Admit a lookup from ``peer`` (``stream`` names its sends); return its first batch, or None if the table
        is full with other peers' answers."""
        own = [a for a in self.under_way if a.peer == peer]
        if len(own) >= MAX_ANSWERS_PER_PEER:
            self.drop(own[0].stream)
        elif len(self.under_way) >= MAX_ANSWERS:
            self.dropped += 1
            return None
        answer = Answering(peer, batches, stream, now)
        self.under_way.append(answer)
        return self._next(answer, now)

    def pump(self, now: float) -> Iterator[tuple[Answering[P], Found]]:
        """The batch each answer should send now (again, if refused); answers idle too long are dropped."""
        for answer in list(self.under_way):
            if now - answer.progress > ANSWER_IDLE:
                log.info("dropping a lookup answer: its peer stopped reading")
                self.drop(answer.stream)
                continue
            batch = self._next(answer, now)
            if batch is not None:
                yield answer, batch

    def refused(self, stream: int, batch: Found) -> bool:
        """The peer's queue refused ``batch``: keep it to send again. False if no answer has that stream."""
        for answer in self.under_way:
            if answer.stream == stream:
                answer.waiting = batch
                return True
        return False

    def drop(self, stream: int) -> None:
        """Give up the answer with this stream (its peer is gone, or it was replaced)."""
        for answer in [a for a in self.under_way if a.stream == stream]:
            self.under_way.remove(answer)
            self.dropped += 1

    @property
    def busy(self) -> bool:
        """An answer has a batch to send now."""
        return any(a.waiting is None and not a.finished for a in self.under_way)

    def _next(self, answer: Answering[P], now: float) -> Found | None:
        batch, answer.waiting = answer.waiting, None
        if batch is not None:
            return batch
        if not answer.finished:
            try:
                batch = next(answer.batches, None)
            except Exception:
                self.under_way.remove(answer)
                raise
            answer.progress = now
        if batch is None:
            self.under_way.remove(answer)
            return None
        answer.finished = batch.done
        return batch
