"""The fetcher's protocol logic, without sockets: which chunk to ask which holder for, and what to do with replies.

A :class:`FetchSession` starts from a :class:`Plan` (size, chunking and chunk checksums from the holders'
``Opened`` replies) and the chunks already on disk. It keeps a window of ``config.window`` requests in flight per
source (credit-based flow control: a new request only when a reply arrives), spreads chunks over every live
source lowest-index first, checks each chunk against its checksum (XXH3-128: catches damage and a changed file
early and names the source; the whole-file BLAKE3 in :mod:`~overdrive.transfer.partial` is what proves the
content, see :mod:`~overdrive.transfer.protocol`), and when a source fails (disconnected, timed
out, refused, sent a chunk that does not match) gives its outstanding chunks to the others. Time is passed in.

The shell (:mod:`overdrive.transfer.fetcher`) sends what :meth:`FetchSession.requests` returns, feeds replies to
:meth:`received`, writes accepted chunks and reports them with :meth:`written`.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from overdrive.bus.credit import Window
from overdrive.errors import ConfigError, TransferError
from overdrive.transfer.protocol import DIGEST_SIZE, Opened, chunk_checksum, chunk_count

DEFAULT_WINDOW = 16
"""Requests in flight per source; chosen by scripts/bench_transfer.py (docs/benchmarks.md): 2-32 with 1 MiB
chunks were within the machine's noise of each other, 16 sits in the plateau and keeps memory low."""
MAX_WINDOW = 32
"""Largest window (and total of requests in flight) a fetch may ask for."""
MAX_INFLIGHT_BYTES = 16 << 20
"""Default cap on the bytes asked for at once over all sources (:attr:`FetchConfig.max_inflight_bytes`): with
chunks bigger than expected (a file over 1 TiB, or a holder that claims one) fewer requests are in flight, so what
a holder's chunk size can make the fetcher hold stays bounded (one 16 MiB chunk; the default 16 x 1 MiB is not
affected, and the fetcher raises the cap for the window and chunk size a user asks for)."""
MAX_INFLIGHT = 16
"""Default cap on requests in flight over all sources together, so memory stays flat however many holders (and
connections) there are: with 32, a fetch from 3 holders peaked at ~100 MB RSS, with 16 at ~80 MB, for no loss of
throughput on loopback (docs/benchmarks.md)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FetchConfig:
    """How a fetch behaves."""

    window: int = DEFAULT_WINDOW
    max_inflight: int = MAX_INFLIGHT
    """Requests in flight over all sources together."""
    max_inflight_bytes: int = MAX_INFLIGHT_BYTES
    """Bytes asked for at once over all sources (at least one request is always allowed)."""
    request_timeout: float = 15.0
    rate_limit: float = 0.0
    """Bytes per second to ask for in total (0 = as fast as possible)."""

    def __post_init__(self) -> None:
        if not 1 <= self.window <= MAX_WINDOW:
            raise ConfigError(f"--window must be 1..{MAX_WINDOW}, not {self.window}")
        if not 1 <= self.max_inflight <= MAX_WINDOW:
            raise ConfigError(f"max_inflight must be 1..{MAX_WINDOW}, not {self.max_inflight}")
        if self.max_inflight_bytes <= 0:
            raise ConfigError("max_inflight_bytes must be positive")
        if self.request_timeout <= 0:
            raise ConfigError("request_timeout must be positive")
        if self.rate_limit < 0:
            raise ConfigError("rate_limit must be >= 0")


@dataclass(frozen=True, slots=True)
class Plan:
    """One version of a file as the holders describe it."""

    size: int
    chunk_size: int
    content_hash: str
    digests: bytes | memoryview
    """The checksum table, kept as received (up to 16 MiB: never copied)."""

    @property
    def chunks(self) -> int:
        return chunk_count(self.size, self.chunk_size)

    def chunk_range(self, index: int) -> tuple[int, int]:
        """(offset, length) of chunk ``index``."""
        offset = index * self.chunk_size
        return offset, min(self.chunk_size, self.size - offset)

    def digest(self, index: int) -> bytes | memoryview:
        return self.digests[index * DIGEST_SIZE : (index + 1) * DIGEST_SIZE]

    def matches(self, index: int, data: memoryview | bytes) -> bool:
        """True when ``data`` has chunk ``index``'s length and checksum."""
        return len(data) == self.chunk_range(index)[1] and chunk_checksum(data) == self.digest(index)

    @classmethod
    def from_opened(cls, opened: Opened, digests: bytes | memoryview) -> Plan:
        """Validate an ``Opened`` reply's checksum table; raise TransferError if it does not fit the file."""
        table = digests if isinstance(digests, memoryview) else bytes(digests)
        if len(table) != opened.chunks * DIGEST_SIZE:
            raise TransferError(
                f"holder sent {len(table)} checksum bytes for {opened.chunks} chunks of {DIGEST_SIZE} "
                "(a different overdrive version?)"
            )
        return cls(opened.size, opened.chunk_size, opened.content_hash, table)


@dataclass
class SessionStats:
    """What happened during one session."""

    chunks_received: int = 0
    bytes_received: int = 0
    rejected: int = 0
    """Chunks that did not match their checksum."""
    unexpected: int = 0
    """Replies for chunks not asked of that source (duplicates, stale, malformed)."""
    reassigned: int = 0
    """Chunks moved to another source after theirs failed."""


@dataclass(slots=True)
class _Source:
    name: str
    inflight: Window
    failed: str = ""
    received: int = 0


class FetchSession:
    """Sans-IO chunk scheduling over one or more sources for one :class:`Plan`."""

    def __init__(self, plan: Plan, sources: Sequence[str], done: Iterable[int] = (), config: FetchConfig | None = None):
        if not sources:
            raise ValueError("a fetch needs at least one source")
        self.plan = plan
        self.config = config or FetchConfig()
        self.stats = SessionStats()
        self._sources = {name: _Source(name, Window(self.config.window)) for name in sources}
        self._order = list(self._sources)
        self._done = bytearray(plan.chunks)
        for index in done:
            self._done[index] = 1
        self.done_chunks = sum(self._done)
        # chunks to ask for: every index from _cursor on that is not done, plus the ones put back in _pending (a
        # heap); memory stays one byte per chunk, whatever number of chunks a holder claims
        self._cursor = 0
        self._pending: list[int] = []
        self._cap = max(1, min(self.config.max_inflight, self.config.max_inflight_bytes // max(plan.chunk_size, 1)))
        self._accepted: set[int] = set()
        self._requested_bytes = 0
        self._started: float | None = None
        self._turn = 0

    # -- queries ------------------------------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self.done_chunks == self.plan.chunks

    @property
    def live_sources(self) -> list[str]:
        return [s.name for s in self._sources.values() if not s.failed]

    @property
    def stalled(self) -> bool:
        """No live source is left but chunks are still missing."""
        return not self.finished and not self.live_sources

    @property
    def failures(self) -> dict[str, str]:
        return {s.name: s.failed for s in self._sources.values() if s.failed}

    @property
    def done_bytes(self) -> int:
        if self.finished:
            return self.plan.size
        full = self.done_chunks * self.plan.chunk_size
        last = self.plan.chunks - 1
        if self.plan.chunks and self._done[last]:
            full -= self.plan.chunk_size - self.plan.chunk_range(last)[1]
        return full

    def is_done(self, index: int) -> bool:
        return bool(self._done[index])

    def done_indices(self) -> list[int]:
        return [i for i, flag in enumerate(self._done) if flag]

    def done_ranges(self) -> list[tuple[int, int]]:
        """Half-open ranges of the chunks on disk (what the state file records), without a list of every index."""
        ranges: list[tuple[int, int]] = []
        done, start = self._done, 0
        while (start := done.find(1, start)) >= 0:
            end = done.find(0, start)
            end = len(done) if end < 0 else end
            ranges.append((start, end))
            start = end
        return ranges

    def _has_pending(self) -> bool:
        if self._pending:
            return True
        # indices from _cursor on were never handed out: the first one not done (resumed) is the next to ask for
        found = self._done.find(0, self._cursor)
        self._cursor = self.plan.chunks if found < 0 else found
        return self._cursor < self.plan.chunks

    def _pop_pending(self) -> int:
        if self._pending:
            return heapq.heappop(self._pending)
        index = self._cursor
        self._cursor += 1
        return index

    def received_by(self, source: str) -> int:
        return self._sources[source].received

    def inflight(self, source: str) -> int:
        return len(self._sources[source].inflight)

    def _total_inflight(self) -> int:
        return sum(len(s.inflight) for s in self._sources.values())

    # -- inputs ---------------------------------------------------------------------------------------------------

    def requests(self, now: float) -> list[tuple[str, int]]:
        """(source, chunk index) pairs to ask for now: fill each live source's window, round-robin."""
        if self._started is None:
            self._started = now
        out: list[tuple[str, int]] = []
        live = [self._sources[n] for n in self._order if not self._sources[n].failed]
        if not live:
            return out
        progress = True
        while self._has_pending() and progress:
            progress = False
            for k in range(len(live)):
                source = live[(self._turn + k) % len(live)]
                if source.inflight.full or not self._has_pending() or not self._allowed(now):
                    continue
                if self._total_inflight() >= self._cap:
                    break
                index = self._pop_pending()
                source.inflight.add(index, now)
                self._requested_bytes += self.plan.chunk_range(index)[1]
                out.append((source.name, index))
                progress = True
            self._turn += 1
        return out

    def _allowed(self, now: float) -> bool:
        rate = self.config.rate_limit
        if rate <= 0 or self._started is None:
            return True
        return self._requested_bytes <= rate * (now - self._started)

    def received(self, source: str, index: int, data: memoryview | bytes) -> bool:
        """A chunk from ``source``: True when it is verified and must be written (then call :meth:`written`)."""
        src = self._sources.get(source)
        if src is None or src.failed or not src.inflight.free(index):
            self.stats.unexpected += 1
            return False
        if self._done[index] or index in self._accepted:
            self.stats.unexpected += 1
            return False
        if not self.plan.matches(index, data):
            self.stats.rejected += 1
            heapq.heappush(self._pending, index)
            self.fail(source, f"sent chunk {index} that does not match its checksum (file changed on the holder?)")
            return False
        src.received += 1
        self.stats.chunks_received += 1
        self.stats.bytes_received += len(data)
        self._accepted.add(index)
        return True

    def written(self, index: int) -> None:
        """Chunk ``index`` is on disk."""
        self._accepted.discard(index)
        if not self._done[index]:
            self._done[index] = 1
            self.done_chunks += 1

    def write_failed(self, index: int) -> None:
        """Writing an accepted chunk failed; it goes back to the queue (the caller decides whether to go on)."""
        self._accepted.discard(index)
        heapq.heappush(self._pending, index)

    def fail(self, source: str, reason: str) -> None:
        """``source`` is gone or untrustworthy: its outstanding chunks go back to the queue for the others."""
        src = self._sources.get(source)
        if src is None or src.failed:
            return
        src.failed = reason
        for index in src.inflight.clear():
            heapq.heappush(self._pending, index)
            self.stats.reassigned += 1

    def check_timeouts(self, now: float) -> list[str]:
        """Fail every source with a request older than ``request_timeout``; return their names."""
        limit = now - self.config.request_timeout
        late = [s.name for s in self._sources.values() if not s.failed and s.inflight.sent_before(limit)]
        for name in late:
            self.fail(name, f"no answer for {self.config.request_timeout:g} s")
        return late
