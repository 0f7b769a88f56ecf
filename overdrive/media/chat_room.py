"""The chat's decisions, without sockets: who is in, under what name, who may say what how often, what to publish.

:class:`ChatRoom` takes one upstream message with the sender's :class:`Peer` (connection, authenticated node id,
address: what the ROUTER shell knows, never what the message claims) and the time, and returns the
:class:`~overdrive.media.chat.Reply`; accepted lines wait in :meth:`ChatRoom.take_lines` and a changed presence in
:meth:`ChatRoom.presence` for the shell to publish. Time is passed in, so tests run in memory.

Rules:

* A member is ``(connection, via)``: a connection speaks only for its own labels. The shown name is the wished one
  after :func:`~overdrive.media.chat.clean_name` ("guest" if nothing is left), made unique (case-insensitively)
  with a ``-2``, ``-3``... suffix. Only lines from the streamer's own identity carry ``host``.
* Text: NFC, trimmed, 1..:data:`~overdrive.media.protocol.MAX_CHAT_TEXT` characters, refused (not cut) past that.
* Rates (token buckets): per member :attr:`ChatLimits.member`, per node id :attr:`ChatLimits.node`, per address
  :attr:`ChatLimits.address` and for the whole room :attr:`ChatLimits.room`. A join costs a token too (joins are
  published). When the room's bucket is empty a Say is refused as "busy" and join/leave lines are not published
  (presence still is).
* Bounds: :attr:`ChatLimits.members` in total, :attr:`ChatLimits.vias` labels per connection, bucket tables of
  :attr:`ChatLimits.tracked` node ids and addresses (least recently used forgotten), :data:`MAX_HISTORY` lines.
* A member silent for :attr:`ChatLimits.timeout` seconds is gone (clients resend Hello as a heartbeat).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from hashlib import blake2b

from overdrive.media.chat import (
    MAX_HISTORY,
    Bye,
    Error,
    Hand,
    Hello,
    MemberKind,
    Reply,
    Say,
    Upstream,
    check_text,
    clean_name,
)
from overdrive.media.protocol import MAX_CHAT_NAME, MAX_PRESENCE_NAMES, ChatKind, ChatLine, Presence

DEFAULT_NAME = "guest"
PRESENCE_EVERY = 5.0
"""Seconds between two presence snapshots when nothing changed (late joiners learn who is there)."""
PRESENCE_MIN_GAP = 1.0
"""Seconds at least between two snapshots (a burst of joins is one snapshot)."""


@dataclass(frozen=True, slots=True)
class Rate:
    """A token bucket: ``burst`` tokens, refilled at ``burst / per`` tokens a second."""

    burst: int
    per: float

    def __post_init__(self) -> None:
        if self.burst < 1 or self.per <= 0:
            raise ValueError("a rate needs burst >= 1 and per > 0")


@dataclass(frozen=True, slots=True, kw_only=True)
class ChatLimits:
    """The room's bounds (see the module docstring)."""

    member: Rate = Rate(5, 10.0)
    node: Rate = Rate(30, 10.0)
    address: Rate = Rate(30, 10.0)
    room: Rate = Rate(50, 5.0)
    members: int = 1024
    vias: int = 256
    tracked: int = 1024
    timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.members < 1 or self.vias < 1 or self.tracked < 1 or self.timeout <= 0:
            raise ValueError("chat limits must be positive")


@dataclass
class Bucket:
    rate: Rate
    tokens: float
    at: float

    @classmethod
    def full(cls, rate: Rate, now: float) -> Bucket:
        return cls(rate, float(rate.burst), now)

    def ready(self, now: float) -> bool:
        self.tokens = min(self.rate.burst, self.tokens + (now - self.at) * self.rate.burst / self.rate.per)
        self.at = now
        return self.tokens >= 1

    def wait(self) -> float:
        """Seconds until the next token."""
        return max(0.0, (1 - self.tokens) * self.rate.per / self.rate.burst)


@dataclass(frozen=True, slots=True)
class Peer:
    """The sender as the socket knows it: ``conn`` (the ROUTER routing id), ``node`` (authenticated node id),
    ``address`` (IP) and whether it is the streamer's own identity."""

    conn: bytes
    node: str
    address: str
    host: bool = False


@dataclass
class Member:
    name: str
    kind: MemberKind
    host: bool
    tag: str
    bucket: Bucket
    seen: float
    hand: bool = False
    peer: Peer = field(default=Peer(b"", "", ""))


class _Lru:
    """Buckets by key, at most ``size`` of them (the least recently used forgotten)."""

    def __init__(self, rate: Rate, size: int) -> None:
        self.rate = rate
        self.size = size
        self._items: OrderedDict[str, Bucket] = OrderedDict()

    def get(self, key: str, now: float) -> Bucket:
        bucket = self._items.get(key)
        if bucket is None:
            bucket = self._items[key] = Bucket.full(self.rate, now)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        self._items.move_to_end(key)
        return bucket

    def __len__(self) -> int:
        return len(self._items)


class ChatRoom:
    """One stream's chat; pure bookkeeping (no I/O; ``now`` is monotonic seconds, ``now_ns`` the stream clock)."""

    def __init__(self, stream_id: str, limits: ChatLimits | None = None) -> None:
        self.stream_id = stream_id
        self.limits = limits or ChatLimits()
        self.members: dict[tuple[bytes, str], Member] = {}
        self.history: deque[ChatLine] = deque(maxlen=MAX_HISTORY)
        self.refused: dict[str, int] = {}
        """Refusals by reason (counters for the status line and tests)."""
        self._seq = 0
        self._vias: dict[bytes, int] = {}
        self._nodes = _Lru(self.limits.node, self.limits.tracked)
        self._addresses = _Lru(self.limits.address, self.limits.tracked)
        self._room: Bucket | None = None
        self._lines: list[ChatLine] = []
        self._changed = True
        self._presence_at = float("-inf")

    # -- input ---------------------------------------------------------------------------------------------------
    def receive(self, peer: Peer, message: Upstream, now: float, now_ns: int) -> Reply:
        """Handle one upstream message from ``peer``; the answer to send back to it."""
        key = (peer.conn, message.via)
        member = self.members.get(key)
        if isinstance(message, Hello):
            if member is not None:
                member.seen = now
                return Reply(ref=message.ref, ok=True, name=member.name)
            return self._join(peer, message, now, now_ns)
        if member is None:
            return self._refuse(message.ref, "not-joined", "not in the chat (send Hello first)")
        member.seen = now
        if isinstance(message, Bye):
            self._leave(key, now_ns)
            return Reply(ref=message.ref, ok=True, name=member.name)
        if isinstance(message, Hand):
            if member.hand == message.up:
                return Reply(ref=message.ref, ok=True, name=member.name)
            refused = self._spend(member, now)
            if refused is not None:
                return self._refuse(message.ref, *refused, name=member.name)
            member.hand = message.up
            self._changed = True
            line = self._line(member, "hand", "up" if message.up else "down", now_ns)
            return Reply(ref=message.ref, ok=True, name=member.name, seq=line.seq)
        assert isinstance(message, Say)
        try:
            text = check_text(message.text)
        except ValueError as exc:
            error: Error = "empty" if not message.text.strip() else "too-long"
            return self._refuse(message.ref, error, str(exc), name=member.name)
        refused = self._spend(member, now)
        if refused is not None:
            return self._refuse(message.ref, *refused, name=member.name)
        line = self._line(member, "say", text, now_ns)
        return Reply(ref=message.ref, ok=True, name=member.name, seq=line.seq)

    def tick(self, now: float, now_ns: int) -> None:
        """Forget members silent for longer than the timeout."""
        limit = now - self.limits.timeout
        for key in [k for k, m in self.members.items() if m.seen < limit]:
            self._leave(key, now_ns)

    # -- output --------------------------------------------------------------------------------------------------
    def take_lines(self) -> list[ChatLine]:
        """Lines accepted since the last call, to publish in this order."""
        lines, self._lines = self._lines, []
        return lines

    def presence(self, now: float, now_ns: int) -> Presence | None:
        """A snapshot to publish, if one is due (changed and not too soon, or the periodic one)."""
        since = now - self._presence_at
        if not ((self._changed and since >= PRESENCE_MIN_GAP) or since >= PRESENCE_EVERY):
            return None
        self._presence_at = now
        self._changed = False
        shown = [m for m in self.members.values() if m.kind != "cli"]
        names = sorted(m.name for m in shown)
        hands = sorted(m.name for m in shown if m.hand)
        return Presence(
            stream_id=self.stream_id,
            sent_ns=now_ns,
            count=len(shown),
            names=tuple(names[:MAX_PRESENCE_NAMES]),
            hands=tuple(hands[:MAX_PRESENCE_NAMES]),
        )

    # -- the rules -----------------------------------------------------------------------------------------------
    def _join(self, peer: Peer, hello: Hello, now: float, now_ns: int) -> Reply:
        limits = self.limits
        if len(self.members) >= limits.members:
            return self._refuse(hello.ref, "full", f"the chat is full ({limits.members} members)")
        if self._vias.get(peer.conn, 0) >= limits.vias:
            return self._refuse(hello.ref, "full", f"this connection has {limits.vias} members already")
        for bucket in (self._nodes.get(peer.node, now), self._addresses.get(peer.address, now)):
            if not bucket.ready(now):
                return self._refuse(hello.ref, "rate", f"too many joins; try again in {bucket.wait():.0f} s")
        for bucket in (self._nodes.get(peer.node, now), self._addresses.get(peer.address, now)):
            bucket.tokens -= 1
        tag = blake2b(peer.conn + b"\0" + hello.via.encode(), digest_size=6, key=b"overdrive-chat").hexdigest()
        member = Member(
            name=self._unique(clean_name(hello.name) or DEFAULT_NAME),
            kind=hello.kind,
            host=peer.host,
            tag=tag,
            bucket=Bucket.full(limits.member, now),
            seen=now,
            peer=peer,
        )
        self.members[(peer.conn, hello.via)] = member
        self._vias[peer.conn] = self._vias.get(peer.conn, 0) + 1
        self._changed = True
        history = tuple(self.history)
        if member.kind != "cli" and self._room_ready(now):
            self._line(member, "join", "", now_ns)
        return Reply(ref=hello.ref, ok=True, name=member.name, history=history)

    def _leave(self, key: tuple[bytes, str], now_ns: int) -> None:
        member = self.members.pop(key)
        left = self._vias[key[0]] - 1
        if left:
            self._vias[key[0]] = left
        else:
            del self._vias[key[0]]
        self._changed = True
        if member.kind != "cli" and self._room is not None and self._room.tokens >= 1:
            self._room.tokens -= 1
            self._line(member, "leave", "", now_ns)

    def _unique(self, wish: str) -> str:
        taken = {m.name.casefold() for m in self.members.values()}
        if wish.casefold() not in taken:
            return wish
        for n in range(2, len(self.members) + 3):
            suffix = f"-{n}"
            candidate = wish[: MAX_CHAT_NAME - len(suffix)] + suffix
            if candidate.casefold() not in taken:
                return candidate
        raise AssertionError("unreachable: more names than members")

    def _room_ready(self, now: float) -> bool:
        """Take a token of the room's bucket if there is one."""
        if self._room is None:
            self._room = Bucket.full(self.limits.room, now)
        if not self._room.ready(now):
            return False
        self._room.tokens -= 1
        return True

    def _spend(self, member: Member, now: float) -> tuple[Error, str] | None:
        """Take one token from each of the member's buckets, or say why not (taking none)."""
        peer = member.peer
        buckets = [member.bucket]
        if not member.host:
            buckets += [self._nodes.get(peer.node, now), self._addresses.get(peer.address, now)]
        for bucket in buckets:
            if not bucket.ready(now):
                return "rate", f"rate limited: wait {max(1.0, bucket.wait()):.0f} s"
        if not self._room_ready(now):
            return "busy", "the chat is busy: try again in a moment"
        for bucket in buckets:
            bucket.tokens -= 1
        return None

    def _line(self, member: Member, kind: ChatKind, text: str, now_ns: int) -> ChatLine:
        self._seq += 1
        line = ChatLine(
            stream_id=self.stream_id,
            seq=self._seq,
            sent_ns=now_ns,
            name=member.name,
            text=text,
            kind=kind,
            host=member.host,
            member=member.tag,
        )
        self.history.append(line)
        self._lines.append(line)
        del self._lines[:-MAX_HISTORY]  # a shell that stopped taking them loses the oldest, never grows
        return line

    def _refuse(self, ref: int, error: Error, detail: str, name: str = "") -> Reply:
        self.refused[error] = self.refused.get(error, 0) + 1
        return Reply(ref=ref, ok=False, error=error, detail=detail, name=name)
