"""``overdrive master``, ``overdrive share`` and ``overdrive ls``: thin shells over the index library.

``overdrive ls --json`` prints one JSON array, sorted by name then hash; this shape is stable::

    [{"name": "lectures/week 1.mp4", "size": 1048576, "hash": "<64 hex>", "online": true,
      "holders": [{"node_id": "<16 base32>", "address": "10.0.0.5:7772", "online": true,
                   "mtime_ns": 1700000000000000000}]}]

A file is one (name, hash) pair: two different contents under one name are two entries. ``online`` on a file is
true when at least one holder is online.
"""

from __future__ import annotations

import fcntl
import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any

import typer
from rich.cells import cell_len
from rich.markup import escape

from overdrive import interrupts, paths
from overdrive.bus.address import DEFAULT_MASTER_PORT, DEFAULT_SHARE_PORT, Endpoint, parse_endpoint, parse_endpoints
from overdrive.bus.sockets import Bus
from overdrive.cli import discover
from overdrive.cli.options import (
    SHARE_LOCK,
    console,
    expand_home,
    markup_safe,
    options,
    print_json,
    shown,
    warn_insecure,
)
from overdrive.cli.run import Check, ready, run, watching
from overdrive.errors import AuthError, ConfigError, SilentPeerError, UnreachableError, WrongServiceError
from overdrive.index.addresses import advertised
from overdrive.index.client import MAX_PATTERN, Entry, IndexClient, is_glob
from overdrive.index.master import Master, MasterConfig
from overdrive.index.replication import ReplicationConfig
from overdrive.index.stores import open_store, redact

if TYPE_CHECKING:  # for annotations; share's own modules (watchdog among them) load only when share runs
    from overdrive.files.folders import FolderSet
    from overdrive.files.scanner import FolderScanner

log = logging.getLogger(__name__)

DEFAULT_MASTERS = "127.0.0.1:7771"


def register(app: typer.Typer) -> None:
    app.command("master")(master_command)
    app.command("share")(share_command)
    app.command("ls")(ls_command)


@contextmanager
def _interruptible() -> Iterator[Callable[[], None]]:
    """Ctrl-C while only the main thread runs (``ls``, and ``share`` before its threads start): raised at once, so it
    also ends a handshake wait (which polls for its whole timeout), and recorded, so one that pyzmq drops while it
    frees a frame still ends the IndexClient's next poll slice (see :mod:`overdrive.interrupts`). Raising anywhere
    is safe here: no other thread shares a lock or a queue with this one yet."""
    with interrupts.deferred(raise_now=True) as check:
        yield check


def master_command(
    ctx: typer.Context,
    bind: Annotated[str, typer.Option(help="Where to listen for nodes, clients and masters.")] = (
        f"tcp://0.0.0.0:{DEFAULT_MASTER_PORT}"
    ),
    peers: Annotated[
        str, typer.Option(help="Other masters, HOST[:PORT],... (one live one is enough: the rest are learned).")
    ] = "",
    db: Annotated[
        str | None,
        typer.Option(help="Store URL: sqlite:///PATH, mysql://USER:PASS@HOST:PORT/DB, firestore://PROJECT."),
    ] = None,
    advertise: Annotated[
        str | None,
        typer.Option(help="HOST[:PORT] other masters should connect to (default: a guess when bound to 0.0.0.0)."),
    ] = None,
    heartbeat: Annotated[float, typer.Option(help="Seconds between heartbeats to other masters.")] = 0.5,
    timeout: Annotated[float, typer.Option(help="Seconds of silence before a master or node is offline.")] = 3.0,
    retention: Annotated[float, typer.Option(help="Hours a deletion (tombstone) is remembered.")] = 168.0,
    stats: Annotated[float, typer.Option(help="Seconds between status lines (0 = none).")] = 10.0,
    mesh_key: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE", help="The masters' mesh key (overdrive keygen --mesh); without it the master runs solo."
        ),
    ] = None,
    no_discovery: discover.NoDiscovery = False,
) -> None:
    """Run an index master: hold a full replica of the index and replicate with the other masters.

    Every --stats seconds it prints a status line: entries (files the index holds), peers online N of M (other
    masters answering, of those known), nodes online, updates/s (index changes applied lately), and dropped
    messages (malformed, or from a sender that has not proven the mesh key; each is ignored, never applied)."""
    from overdrive.bus.signing import MeshKey

    opts = options(ctx)
    warn_insecure(opts)
    for option, value in (("--heartbeat", heartbeat), ("--timeout", timeout), ("--retention", retention)):
        if not value > 0:
            raise ConfigError(f"{option} must be positive, not {value:g}")
    key = MeshKey.from_file(expand_home(mesh_key, "--mesh-key")) if mesh_key is not None else None
    if key is not None and key.network != opts.network:
        raise ConfigError(f"{mesh_key} is the mesh key of network {key.network!r}, not {opts.network!r}")
    found = discover.settings(ctx, no_discovery)
    if key is None:  # a solo master joins no mesh: nothing to look for
        found_peers = parse_endpoints(peers, DEFAULT_MASTER_PORT)
    else:
        found_peers = discover.masters(ctx, peers, DEFAULT_MASTER_PORT, found, exclude=opts.security().node_id)
    config = MasterConfig(
        mesh_key=key,
        bind=parse_endpoint(bind, DEFAULT_MASTER_PORT),
        peers=tuple(found_peers),
        advertise=advertise,
        heartbeat=heartbeat,
        master_timeout=timeout,
        node_timeout=timeout,
        replication=ReplicationConfig(tombstone_retention=retention * 3600),
    )
    advertised(config.bind, advertise)  # a mistake there is one line before the store is opened
    try:
        with _interruptible():  # Ctrl-C or SIGTERM while a database is slow to answer: a tidy stop, exit 0
            log.debug("opening store %s", redact(db) if db else "(default)")
            store = open_store(db, waiting=_say)
    except KeyboardInterrupt:
        console.print(f"master stopped while opening its store {redact(db) if db else '(the default SQLite)'}")
        return
    try:
        with opts.bus() as bus:
            master = Master(bus, store, config)
            master.start()
            assert master.endpoint is not None
            announcer = discover.announce(found, bus, "master", f"master {bus.node_id[:6]}", master.endpoint, advertise)
            unprobed = list(config.peers)
            refused: list[AuthError] = []
            last = time.monotonic()

            def tick(check: Check) -> None:
                nonlocal unprobed, last
                if unprobed:
                    unprobed = _probe_peer(bus, unprobed, refused, len(config.peers), check)
                if stats > 0 and time.monotonic() - last >= stats:
                    last = time.monotonic()
                    _status_line(master)

            announce = ready(
                "master",
                master.endpoint,
                f"origin {master.origin}",
                f"advertised {master.address}",
                f"store {store.describe()}",
                f"peers {', '.join(p.display for p in config.peers) or 'none yet'}",
                f"mesh key {key.fingerprint}" if key else "solo (no --mesh-key)",
            )
            run(announce, watching("master", master, tick), stop=[*discover.closing(announcer), master.stop])
    finally:
        store.close()


def _probe_peer(
    bus: Bus, peers: list[Endpoint], refused: list[AuthError], total: int, check: Callable[[], None]
) -> list[Endpoint]:
    """Ask the first of ``peers`` for its status. When every peer given refuses the handshake, that is an error
    (the mesh would never accept us; running alone would look fine and hold nothing). One refusal among others
    is only a warning: a handshake that fails looks the same whether the password is wrong or the port belongs
    to something else (a proxy whose backend is down, another service), and the mesh keeps dialling it. A peer
    that is down is tried later by the mesh itself. Returns the peers still worth probing (none once one has
    answered)."""
    peer = peers[0]
    try:
        with IndexClient(bus, [peer], timeout=1.0, check=check) as client:
            client.status(digest=False)
    except SilentPeerError as exc:  # stopped or overloaded: the mesh keeps dialling it
        console.print(f"[yellow]warning: {escape(str(exc))}; will keep trying[/]")
        return peers[1:]
    except AuthError as exc:
        refused.append(exc)
        if len(refused) == total:
            if total == 1:
                raise
            raise AuthError(f"every peer refused us: {'; '.join(str(e) for e in refused)}") from exc
        console.print(f"[yellow]warning: {escape(str(exc))}; will keep trying[/]")
        return peers[1:]
    except WrongServiceError as exc:  # a share or a stream given as a peer: never a master, but others may be
        if total == 1:
            raise
        console.print(f"[yellow]warning: {escape(str(exc))}[/]")
        return peers[1:]
    except UnreachableError:
        if len(peers) == 1:
            console.print("[yellow]warning: no peer master answers yet; will keep trying[/]")
        return peers[1:]
    return []


def _status_line(master: Master) -> None:
    snap = master.snapshot
    console.print(
        f"entries {snap.entries}  peers online {len(snap.masters_online)} of {len(snap.masters) - 1}  "
        f"nodes online {len(snap.nodes_online)}  updates/s {snap.stats.rate:.0f}  "
        f"dropped messages {snap.stats.dropped} (malformed or unproven)"
    )


def share_command(
    ctx: typer.Context,
    folders: Annotated[
        list[Path] | None,
        typer.Argument(
            metavar="FOLDER",
            help="Folders to share, as one node (default: the backup folder). Several folders' files are listed "
            "under each folder's name: 'lectures/week1.mp4'.",
            show_default=False,
        ),
    ] = None,
    master: Annotated[
        str, typer.Option(envvar="OVERDRIVE_MASTERS", help="Masters to register with: HOST[:PORT],...")
    ] = DEFAULT_MASTERS,
    bind: Annotated[str, typer.Option(help="Where to serve files to peers.")] = f"tcp://0.0.0.0:{DEFAULT_SHARE_PORT}",
    advertise: Annotated[
        str | None, typer.Option(help="HOST[:PORT] peers should fetch from (default: a guess when bound to 0.0.0.0).")
    ] = None,
    watch: Annotated[bool, typer.Option("--watch/--no-watch", help="Follow changes in the folder.")] = True,
    no_discovery: discover.NoDiscovery = False,
) -> None:
    """Share folders: serve their files to peers and keep their entries in the index current."""
    from overdrive.files.folders import check_folders

    opts = options(ctx)
    warn_insecure(opts)
    roots = [expand_home(folder, "FOLDER") for folder in folders or [paths.backup_dir()]]
    if not folders:
        roots[0].mkdir(parents=True, exist_ok=True)
    for root in roots:
        if not root.is_dir():
            raise ConfigError(f"{root} is not a folder")
    check_folders(roots)
    found = discover.settings(ctx, no_discovery)
    masters = tuple(discover.masters(ctx, master, DEFAULT_MASTER_PORT, found))
    endpoint = parse_endpoint(bind, DEFAULT_SHARE_PORT)
    advertised(endpoint, advertise)  # a mistake there is one line now, not after the scan
    _check_port_free(endpoint)  # so is a port another program holds: the server binds only after the scan
    lock = _lock_node(roots)
    try:
        with opts.bus() as bus:
            masters, scanner = _prepare_share(bus, roots, masters)
            _serve(bus, scanner, masters, endpoint, advertise, watch, found)
    finally:
        lock.close()


def _say(line: str) -> None:
    console.print(markup_safe(line), soft_wrap=True)


def _check_port_free(endpoint: Endpoint) -> None:
    """Raise ConfigError when another program listens on ``endpoint`` (anything else: the bind itself says it)."""
    import errno
    import socket

    if endpoint.port == 0:
        return
    try:  # IPv4, as ZeroMQ binds it ('*' is 0.0.0.0; the first answer for None or 'localhost' may be ::1)
        family, kind, proto, _, address = socket.getaddrinfo(
            "0.0.0.0" if endpoint.host == "*" else endpoint.host, endpoint.port, socket.AF_INET, socket.SOCK_STREAM
        )[0]
    except (OSError, UnicodeError):
        return
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as libzmq does: TIME_WAIT leaves it free
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"{endpoint.display} is already in use (is another overdrive running?)") from None


def _prepare_share(
    bus: Bus, roots: list[Path], masters: tuple[Endpoint, ...]
) -> tuple[tuple[Endpoint, ...], FolderSet]:
    """Before any thread starts: check the masters take our password (one clear line now, not a failover loop
    later, and not after hashing a large folder), then scan the folders. Returns the masters starting with the one
    that answered (the node began with the first given, and a dead first one cost a failover and a warning at
    every start), and the scanner."""
    from overdrive.files.folders import FolderSet

    with _interruptible() as check:
        try:
            with IndexClient(bus, list(masters), timeout=3.0, check=check) as probe:
                probe.status(digest=False)
                first = masters.index(probe.master)
                masters = masters[first:] + masters[:first]
        except UnreachableError as exc:
            console.print(f"[yellow]warning: {escape(str(exc))}; sharing anyway, will keep trying[/]")
        scanner = FolderSet(roots)
        started = time.monotonic()
        scanner.scan(_scan_progress)
    shown_roots = ", ".join(map(str, scanner.folders))
    console.print(
        f"scanned {markup_safe(shown_roots)}: {len(scanner)} file(s), {scanner.hashed} hashed, "
        f"{time.monotonic() - started:.2f} s" + (f", {scanner.skipped} skipped" if scanner.skipped else ""),
        soft_wrap=True,
    )
    return masters, scanner


def _scan_progress(scanner: FolderScanner) -> None:
    console.print(
        f"scanning {markup_safe(str(scanner.folder))}: {scanner.hashed} file(s) hashed so far "
        f"({_size(scanner.hashed_bytes)}); later runs hash only new or changed files",
        soft_wrap=True,
    )


def _serve(
    bus: Bus,
    scanner: FolderSet,
    masters: tuple[Endpoint, ...],
    endpoint: Endpoint,
    advertise: str | None,
    watch: bool,
    found: discover.DiscoverySettings,
) -> None:
    """Serve the folders' files and keep their index entries current until SIGINT or SIGTERM."""
    from overdrive.app.share import SharingNode

    share = SharingNode(bus, scanner, masters, endpoint, advertise=advertise, watch=watch)
    share.start()
    assert share.node is not None and share.bound is not None  # set by start()
    announcer = discover.announce(found, bus, "share", f"share {bus.node_id[:6]}", share.bound, advertise)
    announce = ready(
        "share",
        share.bound,
        f"node {bus.node_id}",
        f"advertised {share.address}",
        f"masters {', '.join(m.display for m in masters)}",
    )
    run(announce, watching("node", share.node), stop=[*discover.closing(announcer), share.stop])


def _lock_node(roots: list[Path]) -> IO[bytes]:
    """Hold this node identity's share lock for the life of the process (released when it ends, even by kill -9),
    and write ``roots`` (the shared folders, one a line) into it.

    One node id is one set of index entries: a second 'share' under the same identity would register its folder
    as everything the node holds and so delete the first one's entries while it still serves them.
    """
    folder = paths.data_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = (folder / SHARE_LOCK).open("ab")
    except OSError as exc:
        raise ConfigError(f"cannot write into {folder}: {exc.strerror} (is OVERDRIVE_HOME writable?)") from exc
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise ConfigError(
            f"this node (identity in {folder}) is already sharing a folder from another 'overdrive share'; "
            "stop it and share every folder from one ('overdrive share F1 F2'), or give a second node its own "
            "OVERDRIVE_HOME"
        ) from None
    lock.truncate(0)
    for root in roots:
        lock.write(str(root.resolve()).encode("utf-8", "surrogateescape") + b"\n")
    lock.flush()
    return lock


def ls_command(
    ctx: typer.Context,
    pattern: Annotated[
        str,
        typer.Argument(metavar="PATTERN", help="Glob (*.mp4) or text contained in the name; empty lists everything."),
    ] = "",
    master: Annotated[
        str, typer.Option(envvar="OVERDRIVE_MASTERS", help="Masters to ask: HOST[:PORT],... (any live one answers).")
    ] = DEFAULT_MASTERS,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array (stable shape, see the docs).")] = False,
    online_only: Annotated[bool, typer.Option("--online-only", help="Only files a holder serves now.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for a master.")] = 3.0,
    no_discovery: discover.NoDiscovery = False,
) -> None:
    """List the files the network holds: size, hash, every holder, online or offline."""
    opts = options(ctx)
    if not 0 < timeout < float("inf"):  # nan and inf too: they end in a traceback as milliseconds
        raise ConfigError(f"--timeout must be a positive number of seconds, not {timeout:g}")
    masters = discover.masters(ctx, master, DEFAULT_MASTER_PORT, discover.settings(ctx, no_discovery))
    glob = pattern if not pattern or is_glob(pattern) else f"*{pattern}*"
    if len(glob) > MAX_PATTERN:  # a master drops a longer lookup unanswered
        raise ConfigError(f"the pattern is longer than {MAX_PATTERN} characters")
    with _interruptible() as check, opts.bus() as bus, IndexClient(bus, masters, timeout=timeout, check=check) as c:
        entries = c.lookup(glob)
    files = group_entries(entries)
    if online_only:
        files = [f for f in files if f["online"]]
    if as_json:
        print_json(files)
        return
    if not files:
        console.print("no files" + (f" matching {markup_safe(repr(pattern))}" if pattern else ""))
        return
    _print_listing(files)


def group_entries(entries: list[Entry]) -> list[dict[str, Any]]:
    """The stable ``ls --json`` shape: one item per (name, hash) with its holders."""
    grouped: dict[tuple[str, str], dict[str, Any]] = {}
    for e in entries:
        if e.deleted:
            continue
        item = grouped.setdefault(
            (e.name, e.content_hash),
            {"name": e.name, "size": e.size, "hash": e.content_hash, "online": False, "holders": []},
        )
        item["holders"].append({"node_id": e.holder, "address": e.address, "online": e.online, "mtime_ns": e.mtime_ns})
        item["online"] = item["online"] or e.online
    for item in grouped.values():
        item["holders"].sort(key=lambda h: (not h["online"], h["node_id"]))
    return [grouped[k] for k in sorted(grouped)]


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


HOLDERS_WIDTH = 60
"""The holders column is padded to its widest entry; when that is wider than this many cells, only to the widest
entry within it, or what nine rows in ten need if more: a rare file with many holders pushes only its own name to
the right, not every row's."""

_GREEN, _RED, _BOLD, _RESET = "\x1b[32m", "\x1b[31m", "\x1b[1m", "\x1b[0m"


def listing_lines(files: list[dict[str, Any]], *, color: bool = False) -> list[str]:
    """The terminal listing of ``ls``: a header, then one line per file (``SIZE  HASH  HOLDERS  NAME``).

    The name comes last, whole, so a long or deep name never wraps the columns before it and every line can be
    grepped or cut; names, addresses and ids from the network are :func:`shown` (non-printable characters escaped).
    Plain string formatting: a rich Table takes about 8 s to lay out 10,000 rows.
    """
    rows: list[tuple[str, str, list[tuple[str, bool]], str]] = []
    for f in files:
        holders = [(f"{shown(h['address'])} ({shown(h['node_id'][:6])}, ", bool(h["online"])) for h in f["holders"]]
        rows.append((_size(f["size"]), shown(f["hash"][:12]), holders, shown(f["name"])))
    widths = [cell_len(", ".join(f"{text}{'online' if up else 'offline'})" for text, up in r[2])) for r in rows]
    size_width = max([len("SIZE"), *(len(r[0]) for r in rows)])
    holders_width = max([len("HOLDERS"), *widths])
    if holders_width > HOLDERS_WIDTH:
        fitting = max([len("HOLDERS"), *(w for w in widths if w <= HOLDERS_WIDTH)])
        holders_width = max(fitting, sorted(widths)[(len(widths) - 1) * 9 // 10])
    header = f"{'SIZE':>{size_width}}  {'HASH':<12}  {'HOLDERS':<{holders_width}}  NAME"
    lines = [f"{_BOLD}{header}{_RESET}" if color else header]
    for (size, digest, holders, name), width in zip(rows, widths, strict=True):
        if color:
            text = ", ".join(f"{t}{_GREEN}online{_RESET})" if up else f"{t}{_RED}offline{_RESET})" for t, up in holders)
        else:
            text = ", ".join(f"{t}{'online' if up else 'offline'})" for t, up in holders)
        pad = " " * max(0, holders_width - width)
        lines.append(f"{size:>{size_width}}  {digest:<12}  {text}{pad}  {name}")
    return lines


def _print_listing(files: list[dict[str, Any]]) -> None:
    """Write :func:`listing_lines` to stdout in one go, coloured only on a terminal that wants colour (rich decides:
    NO_COLOR, FORCE_COLOR, TERM=dumb); the count goes to stderr with the other human-facing lines."""
    from rich.console import Console

    color = Console().color_system is not None
    sys.stdout.write("\n".join(listing_lines(files, color=color)) + "\n")
    sys.stdout.flush()
    online = sum(1 for f in files if f["online"])
    console.print(f"{len(files)} file(s), {online} available now")


__all__ = ["group_entries", "listing_lines", "redact", "register"]
