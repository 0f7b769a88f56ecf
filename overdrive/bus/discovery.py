"""Zero-config discovery, the pure part: what an mDNS/DNS-SD announcement says, and what to do with one.

Streams, masters, shares and web gateways announce themselves with DNS-SD (the socket side is
:mod:`overdrive.bus.discovery_mdns`). An announcement carries no secret: the role, the node id, a public-key
fingerprint, a display name (and for a stream its codec and fps), the port and the IPv4 addresses, and a short
*network tag* so two classes on one LAN do not mix. The tag is an HMAC keyed with the already stretched network
secret, so it reveals neither the network name nor the password, and testing a password guess against it costs a
full scrypt stretch, as against a captured handshake.

Everything here is input from the LAN: :func:`parse_announcement` bounds every size and count and raises only
:class:`ProtocolError`; :class:`Directory` holds a bounded number of them. An announcement is a hint, never a
credential: CURVE (and a viewer's key pinning) still decides who is real, and anyone on the LAN can copy a tag.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

from overdrive.errors import OverdriveError, ProtocolError

Role = Literal["stream", "master", "share", "web"]
ROLES: tuple[Role, ...] = get_args(Role)
SERVICE_TYPES: dict[Role, str] = {role: f"_od-{role}._tcp.local." for role in ROLES}
"""One DNS-SD type per role (a service label is at most 15 bytes: ``_od-stream`` is 10), so a command browses only
the roles it needs and never parses the others' announcements."""

VERSION = "1"
TAG_CONTEXT = b"overdrive discovery tag v1"
TAG_HEX = 16
INSECURE_TAG = "insecure"
"""The tag of an ``--insecure`` network (no secret to key an HMAC with): such networks only match each other."""

MAX_TXT_KEYS = 12
MAX_TXT_VALUE = 96
MAX_TXT_TOTAL = 512
MAX_NAME = 64
"""Bytes of UTF-8 in a display name (a DNS label is at most 63, the instance label adds the node id)."""
MAX_ADDRESSES = 4
MAX_ENTRIES = 64
"""Announcements one :class:`Directory` keeps: a LAN flooding more costs it nothing but the excess."""
MAX_CANDIDATES = 4
"""Discovered peers (masters) a command tries before it gives up: each stale or fake one costs a short timeout."""
MAX_FPS = 1000.0
INTERFACES_ENV = "OVERDRIVE_DISCOVERY_INTERFACES"
SETTLE = 1.2
"""Seconds :func:`browse` keeps listening after the first answer it wants, for other responders' answers: a
responder that multicast its records less than a second ago holds its answer back until that second is over
(RFC 6762 7.1 rate limit), so a second stream started just before can answer 0.5 s or more after the first."""

_NODE_ID = re.compile(r"[a-z2-7]{16}")
_FINGERPRINT = re.compile(r"[0-9a-f]{4}(-[0-9a-f]{4}){3}")
_TAG = re.compile(rf"[0-9a-f]{{{TAG_HEX}}}|{INSECURE_TAG}")
_CODEC = re.compile(r"[a-z0-9]{0,16}")


class DiscoveryError(OverdriveError):
    """mDNS cannot run here (no multicast route, port 5353 blocked, no interface): discovery is off, nothing else."""


@dataclass(frozen=True, slots=True)
class DiscoverySettings:
    """Whether discovery runs, and on which IPv4 interfaces (empty: all of them)."""

    enabled: bool = True
    interfaces: tuple[str, ...] = ()


def network_tag(secret: bytes | None) -> str:
    """The network tag for a stretched network secret (the Z85 CURVE server secret), or for no key at all."""
    if secret is None:
        return INSECURE_TAG
    return hmac.new(secret, TAG_CONTEXT, hashlib.sha256).hexdigest()[:TAG_HEX]


@dataclass(frozen=True, slots=True, kw_only=True)
class Announcement:
    """One announced service, checked: every field is within its bounds."""

    role: Role
    name: str
    node_id: str
    fingerprint: str
    tag: str
    addresses: tuple[str, ...]
    port: int
    codec: str = ""
    fps: float = 0.0
    instance: str = field(default="", compare=False)
    """The DNS-SD instance name it came under (empty for our own, before registration)."""

    def __post_init__(self) -> None:
        check_fields(self)

    def same_network(self, tag: str) -> bool:
        return hmac.compare_digest(self.tag, tag)

    def txt(self) -> dict[str, str]:
        """The TXT record that announces it."""
        record = {"v": VERSION, "id": self.node_id, "fp": self.fingerprint, "net": self.tag, "name": self.name}
        if self.codec:
            record["codec"] = self.codec
        if self.fps:
            record["fps"] = f"{self.fps:g}"
        return record

    def label(self) -> str:
        """The DNS-SD instance label: the name cut to fit, made unique by node id and port, so registration needs
        no probing for conflicts (two processes of one node never share a port)."""
        suffix = f" {self.node_id[:8]}-{self.port}"
        return _cut(self.name, 63 - len(suffix)) + suffix

    def matches(self, select: str) -> bool:
        """Whether ``select`` (what a user typed) names this service: its name, a node id prefix of four or more
        characters, or its key fingerprint."""
        wanted = select.strip()
        if wanted == self.name:
            return True
        lowered = wanted.lower()
        if len(lowered) >= 4 and self.node_id.startswith(lowered):
            return True
        return lowered.replace("-", "") == self.fingerprint.replace("-", "")


def check_fields(a: Announcement) -> None:
    """Raise ProtocolError unless every field of ``a`` is within its bounds."""
    if a.role not in ROLES:
        raise ProtocolError(f"unknown discovery role {a.role!r}")
    if not a.name or len(a.name.encode()) > MAX_NAME or not a.name.isprintable():
        raise ProtocolError("announced name is empty, too long or not printable")
    if not _NODE_ID.fullmatch(a.node_id):
        raise ProtocolError("announced node id is malformed")
    if not _FINGERPRINT.fullmatch(a.fingerprint):
        raise ProtocolError("announced key fingerprint is malformed")
    if not _TAG.fullmatch(a.tag):
        raise ProtocolError("announced network tag is malformed")
    if not 1 <= a.port <= 65535:
        raise ProtocolError(f"announced port {a.port} is out of range")
    if not a.addresses or len(a.addresses) > MAX_ADDRESSES:
        raise ProtocolError("an announcement needs 1 to 4 IPv4 addresses")
    if not _CODEC.fullmatch(a.codec):
        raise ProtocolError("announced codec is malformed")
    if not 0 <= a.fps <= MAX_FPS:  # nan fails too
        raise ProtocolError("announced fps is out of range")


def _cut(text: str, size: int) -> str:
    """``text`` cut to at most ``size`` bytes of UTF-8, never inside a character."""
    return text.encode()[:size].decode(errors="ignore")


def _text(properties: Mapping[bytes, bytes | None], key: bytes, *, required: bool = True) -> str:
    value = properties.get(key)
    if value is None:
        if required:
            raise ProtocolError(f"announcement has no {key.decode()!r}")
        return ""
    try:
        return value.decode()
    except UnicodeDecodeError:
        raise ProtocolError(f"announcement's {key.decode()!r} is not UTF-8") from None


def usable_address(raw: bytes | str) -> str | None:
    """A routable unicast IPv4 address in text form, or None (IPv6, multicast, unspecified, broadcast, junk)."""
    try:
        address = ipaddress.IPv4Address(raw)
    except ValueError:
        return None
    if address.is_multicast or address.is_unspecified or address.is_reserved or address == _BROADCAST:
        return None
    return str(address)


_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


def parse_announcement(
    role: Role, instance: str, addresses: Iterable[bytes | str], port: int, properties: Mapping[bytes, bytes | None]
) -> Announcement:
    """Check and type one resolved DNS-SD service; raise ProtocolError if anything in it is malformed or too big."""
    if len(properties) > MAX_TXT_KEYS:
        raise ProtocolError("announcement has too many TXT keys")
    total = 0
    for key, value in properties.items():
        size = len(key) + (len(value) if value is not None else 0)
        if value is not None and len(value) > MAX_TXT_VALUE:
            raise ProtocolError(f"announcement's TXT value for {key[:16]!r} is too long")
        total += size
    if total > MAX_TXT_TOTAL:
        raise ProtocolError("announcement's TXT record is too long")
    if _text(properties, b"v") != VERSION:
        raise ProtocolError("announcement of another discovery version")
    usable: list[str] = []
    for raw in addresses:
        address = usable_address(raw)
        if address is not None and address not in usable:
            usable.append(address)
        if len(usable) == MAX_ADDRESSES:
            break
    fps_text = _text(properties, b"fps", required=False)
    try:
        fps = float(fps_text) if fps_text else 0.0
    except ValueError:
        raise ProtocolError("announced fps is not a number") from None
    return Announcement(
        role=role,
        name=_text(properties, b"name"),
        node_id=_text(properties, b"id"),
        fingerprint=_text(properties, b"fp"),
        tag=_text(properties, b"net"),
        addresses=tuple(usable),
        port=port,
        codec=_text(properties, b"codec", required=False),
        fps=fps,
        instance=instance[:256],
    )


def pick_address(addresses: Sequence[str], local: Sequence[ipaddress.IPv4Network]) -> str:
    """The address to dial: the first one inside a network this machine is on, else the first one."""
    for text in addresses:
        address = ipaddress.IPv4Address(text)
        if any(address in network for network in local):
            return text
    return addresses[0]


class Directory:
    """The announcements seen so far, keyed by instance name; bounded to :data:`MAX_ENTRIES` (more are dropped and
    counted, not stored)."""

    def __init__(self, limit: int = MAX_ENTRIES) -> None:
        self._entries: dict[str, Announcement] = {}
        self._limit = limit
        self.dropped = 0
        self.malformed = 0

    def add(self, announcement: Announcement) -> bool:
        key = announcement.instance
        if key not in self._entries and len(self._entries) >= self._limit:
            self.dropped += 1
            return False
        self._entries[key] = announcement
        return True

    def remove(self, instance: str) -> None:
        self._entries.pop(instance, None)

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self, role: Role | None = None) -> list[Announcement]:
        """Every entry (of ``role``), sorted by name then node id, so listings are stable."""
        found = [a for a in self._entries.values() if role is None or a.role == role]
        return sorted(found, key=lambda a: (a.name, a.node_id, a.port))

    def candidates(self, role: Role, tag: str, *, exclude: str = "") -> list[Announcement]:
        """Entries of ``role`` on this network (not node ``exclude``), at most :data:`MAX_CANDIDATES`."""
        same = [a for a in self.entries(role) if a.same_network(tag) and a.node_id != exclude]
        return same[:MAX_CANDIDATES]


@dataclass(frozen=True, slots=True)
class StreamChoice:
    """What ``view`` with no address should do: join ``chosen``, or explain why not (``problem``)."""

    chosen: Announcement | None
    problem: str
    """``none`` (no stream of this network), ``several`` (pick one), ``no-match`` (nothing is called that), or
    empty when one was chosen."""
    ours: tuple[Announcement, ...]
    others: int
    """Streams of other networks seen (shown as such, never joined)."""


def choose_stream(streams: Sequence[Announcement], tag: str, select: str | None = None) -> StreamChoice:
    """Pick the stream to join among ``streams``: the only one of this network, or the one ``select`` names."""
    ours = tuple(a for a in streams if a.role == "stream" and a.same_network(tag))
    others = sum(1 for a in streams if a.role == "stream" and not a.same_network(tag))
    pool = ours if select is None else tuple(a for a in ours if a.matches(select))
    if len(pool) == 1:
        return StreamChoice(pool[0], "", ours, others)
    if not pool:
        return StreamChoice(None, "none" if select is None or not ours else "no-match", ours, others)
    return StreamChoice(None, "several", ours, others)


__all__ = [
    "INTERFACES_ENV",
    "MAX_CANDIDATES",
    "MAX_ENTRIES",
    "ROLES",
    "SERVICE_TYPES",
    "Announcement",
    "Directory",
    "DiscoveryError",
    "DiscoverySettings",
    "Role",
    "StreamChoice",
    "choose_stream",
    "network_tag",
    "parse_announcement",
    "pick_address",
]
