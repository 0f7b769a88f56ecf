"""Fetch a file by name: find its online holders in the index, pick one version and spelling, fetch it from them,
register the new copy as ours.

::

    holders = find_holders(bus, masters, "lectures/week 1.mp4")
    result = fetch(bus, FetchRequest(name=holders.name, sources=holders.sources, dest_dir=out,
                                     content_hash=holders.content_hash, size=holders.size), cancel=check)
    outcome = register_copy(bus, masters, result, out, advertise=None)

:func:`find_holders` raises ConfigError (an ambiguous ``--hash``) or TransferError (not found, nobody online);
:func:`register_copy` never raises: a copy that cannot be registered is already safe on disk.
"""

from __future__ import annotations

import glob
import logging
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import zmq

from overdrive.bus.address import DEFAULT_SHARE_PORT, Endpoint, parse_endpoint
from overdrive.bus.sockets import Bus
from overdrive.errors import BusError, ConfigError, OverdriveError, TransferError
from overdrive.files import names
from overdrive.files.folders import locate
from overdrive.files.model import FileInfo, never
from overdrive.index.client import IndexClient, is_glob
from overdrive.transfer.fetcher import Connecting, FetchRequest, FetchResult, fetch
from overdrive.transfer.session import FetchConfig

__all__ = [
    "Connecting",
    "FetchRequest",
    "FetchResult",
    "Holders",
    "Registered",
    "fetch",
    "fetch_by_name",
    "find_holders",
    "register_copy",
]

log = logging.getLogger(__name__)

HASH_RE = re.compile(r"^[0-9a-f]{64}$")
PROBE_TIMEOUT = 1.0
"""Seconds to wait for a share's handshake at the address the fetcher would register."""


@dataclass(frozen=True, slots=True)
class Holders:
    """Where one version of a name can be fetched from, as the index says."""

    sources: tuple[Endpoint, ...]
    content_hash: str
    size: int
    name: str
    """The name as the holders hold it (its spelling may differ from the one asked for)."""
    versions: int
    """Versions of the name online; more than one with no version asked for means the newest was picked."""
    holders: dict[Endpoint, frozenset[str]] = field(default_factory=dict)
    """The node ids the index names at each source: only those may serve there (see :class:`FetchRequest`)."""


def find_holders(
    bus: Bus, masters: list[Endpoint], name: str, wanted: str = "", own_folders: Mapping[str, Path] | None = None
) -> Holders:
    """Online holders of ``name`` (one version) from the index; ``wanted``: a content hash or its start.

    The name matches whatever its Unicode normalisation (a file saved as NFD is found by the NFC name a user
    types); an exact match wins, and the holders are asked for the name as they hold it. Without ``wanted`` the
    newest version is chosen; of its spellings, the one most holders use. ``own_folders``: the folders this node
    shares, by name prefix (:func:`~overdrive.files.folders.locate`), to say where it is when the only holder is
    this node itself.
    """
    # '[1080p] movie.mkv' is a name, not a pattern: looked up as a glob that matches only itself
    literal = glob.escape(name) if is_glob(name) else name
    with IndexClient(bus, masters) as client:
        full = wanted if HASH_RE.match(wanted) else None  # a prefix is matched here, against every version
        entries = [e for e in client.lookup(literal, content_hash=full) if not e.deleted]
    if any(e.name == name for e in entries):
        entries = [e for e in entries if e.name == name]
    if wanted:
        entries = [e for e in entries if e.content_hash.startswith(wanted)]
        matched = sorted({e.content_hash for e in entries})
        if len(matched) > 1:
            shown = ", ".join(h[:16] + "…" for h in matched)
            raise ConfigError(f"--hash {wanted} matches {len(matched)} versions of {name!r} ({shown}); give more of it")
        wanted = matched[0] if matched else wanted
    if not entries:
        version = f" with hash {wanted[:16]}…" if wanted else ""
        hint = " (fetch takes one exact name, not a pattern; see 'overdrive ls')" if is_glob(name) else ""
        raise TransferError(f"{name!r}{version} not found in the index{hint}")
    online = [e for e in entries if e.online and e.holder != bus.node_id]
    if not online:
        own = [e for e in entries if e.holder == bus.node_id]
        if own:
            found = locate(own_folders, own[0].name) if own_folders else None
            where = f" as {found[0] / found[1]}" if found is not None else ""
            others = len(entries) - len(own)
            rest = f"; the {others} other holder(s) are offline" if others else ""
            raise TransferError(f"{name!r} is this node's own file: it already has it{where}{rest}")
        raise TransferError(f"no holder of {name!r} is online ({len(entries)} known, all offline)")
    versions = sorted(
        {e.content_hash for e in online}, key=lambda h: max(e.mtime_ns for e in online if e.content_hash == h)
    )
    chosen = wanted or versions[-1]
    # one name for every source: of the chosen version's spellings, the one most holders use
    spellings = [e.name for e in online if e.content_hash == chosen]
    held_as = max(dict.fromkeys(spellings), key=spellings.count)
    online = [e for e in online if e.name == held_as]
    holders: dict[Endpoint, frozenset[str]] = {}
    for entry in online:
        if entry.content_hash != chosen:
            continue
        try:
            endpoint = parse_endpoint(entry.address, DEFAULT_SHARE_PORT)
        except ConfigError:
            log.warning("holder %s advertises an invalid address %r; skipped", entry.holder, entry.address)
            continue
        holders[endpoint] = holders.get(endpoint, frozenset()) | {entry.holder}
    if not holders:
        raise TransferError(f"no online holder of {name!r} has a usable address")
    size = next(e.size for e in online if e.content_hash == chosen)
    return Holders(tuple(holders), chosen, size, held_as, 1 if wanted else len(versions), holders)


@dataclass(frozen=True, slots=True)
class Registered:
    """What :func:`register_copy` did: ``registered``; ``no-share`` (nothing serves at ``address``, so the copy was
    not offered); or ``failed`` (``error`` says why)."""

    outcome: Literal["registered", "no-share", "failed"]
    address: str = ""
    error: str = ""


def register_copy(
    bus: Bus, masters: list[Endpoint], result: FetchResult, dest_dir: Path, advertise: str | None
) -> Registered:
    """Tell the index we now hold the fetched file, served at ``advertise`` (default: this machine's address toward
    the first master, when a share answers there). Best effort: the file is already safe."""
    try:
        rel = Path(result.path).relative_to(Path(dest_dir).resolve()).as_posix()
        names.check_name(rel)
        if advertise:
            address = parse_endpoint(advertise, DEFAULT_SHARE_PORT).display
        else:
            guess = Endpoint(_local_address(masters[0]), DEFAULT_SHARE_PORT)
            if not _serving(bus, guess):  # a holder nobody can fetch from would cost every later fetch a wait
                return Registered("no-share", guess.display)
            address = guess.display
        st = Path(result.path).stat()
        entry = FileInfo(name=rel, size=result.bytes, content_hash=result.hash, mtime_ns=st.st_mtime_ns)
        with IndexClient(bus, masters) as client:
            client.register([entry], address)
    except (OverdriveError, OSError, ValueError) as exc:
        return Registered("failed", error=str(exc))
    return Registered("registered", address)


def _serving(bus: Bus, endpoint: Endpoint) -> bool:
    """True when an overdrive service of this network answers at ``endpoint`` (the handshake succeeds)."""
    sock = bus.client(zmq.DEALER)
    try:
        bus.connect(sock, endpoint, timeout=PROBE_TIMEOUT)
    except BusError:
        return False
    finally:
        sock.close(linger=0)
    return True


def _local_address(master: Endpoint) -> str:
    """This machine's address on the route toward ``master`` (no packet is sent)."""
    family = socket.AF_INET6 if ":" in master.host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((master.host, master.port))
            return str(probe.getsockname()[0])
    except OSError:
        return "127.0.0.1"


def fetch_by_name(
    bus: Bus,
    masters: list[Endpoint],
    name: str,
    dest_dir: Path,
    *,
    wanted: str = "",
    config: FetchConfig | None = None,
    register: bool = True,
    advertise: str | None = None,
    cancel: Callable[[], None] = never,
) -> tuple[FetchResult, Registered | None]:
    """The whole fetch by name for a program: :func:`find_holders`, :func:`fetch` from them into ``dest_dir``, then
    :func:`register_copy` unless ``register`` is False or the file was already there."""
    holders = find_holders(bus, masters, name, wanted)
    request = FetchRequest(
        name=holders.name,
        sources=holders.sources,
        dest_dir=dest_dir,
        content_hash=holders.content_hash,
        config=config or FetchConfig(),
        size=holders.size,
        holders=holders.holders,
    )
    result = fetch(bus, request, cancel=cancel)
    if not register or result.already_present:
        return result, None
    return result, register_copy(bus, masters, result, dest_dir, advertise)
