"""``overdrive fetch``: find a file's online holders (index or ``--from``), fetch it verified, register the copy."""

from __future__ import annotations

import logging
import re
import socket
import time
from pathlib import Path
from typing import Annotated

import typer
import zmq

from overdrive import paths
from overdrive.bus.address import DEFAULT_MASTER_PORT, DEFAULT_SHARE_PORT, Endpoint, parse_endpoint
from overdrive.bus.sockets import Bus
from overdrive.cliutil import console, endpoints, expand_home, markup_safe, options, print_json, warn_insecure
from overdrive.errors import BusError, ConfigError, OverdriveError, TransferError
from overdrive.transfer import names
from overdrive.transfer.catalogue import SharedFile
from overdrive.transfer.fetcher import CONNECTIONS, FetchRequest, FetchResult, fetch
from overdrive.transfer.protocol import valid_chunk_size
from overdrive.transfer.session import DEFAULT_WINDOW, FetchConfig

log = logging.getLogger(__name__)

HASH_RE = re.compile(r"^[0-9a-f]{64}$")
HASH_PREFIX_RE = re.compile(r"^[0-9a-f]{6,64}$")
"""A --hash looked up in the index may be cut short (``overdrive ls`` shows 12 characters), as long as one version
has it."""
DEFAULT_MASTERS = f"127.0.0.1:{DEFAULT_MASTER_PORT}"


def register(app: typer.Typer) -> None:
    app.command("fetch")(fetch_command)


def fetch_command(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="File name as 'overdrive ls' shows it (relative path).")],
    from_: Annotated[
        str | None,
        typer.Option("--from", help="Fetch from HOST:PORT[,HOST:PORT...] directly, skipping the index."),
    ] = None,
    master: Annotated[
        str,
        typer.Option(envvar="OVERDRIVE_MASTERS", help="Masters to look NAME up in: HOST[:PORT],... (unless --from)."),
    ] = DEFAULT_MASTERS,
    content_hash: Annotated[
        str | None,
        typer.Option("--hash", help="Fetch this version (BLAKE3 hex, or its start as 'ls' shows) when several exist."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Folder to put the file in (default: the backup folder).", show_default=False)
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")] = False,
    window: Annotated[
        int, typer.Option(help="Chunk requests in flight per holder (over all holders: 16, or the window if larger).")
    ] = DEFAULT_WINDOW,
    chunk_size: Annotated[
        int, typer.Option(help="Chunk size in bytes (power of two, 64 KiB-16 MiB); 0 = the holder's choice.")
    ] = 0,
    connections: Annotated[
        int, typer.Option(help="Connections per holder, sharing its window (spreads CURVE crypto over cores).")
    ] = CONNECTIONS,
    limit_rate: Annotated[float, typer.Option(help="Download at most this many MB/s (0 = no limit).")] = 0.0,
    timeout: Annotated[
        float,
        typer.Option(
            help="Seconds without an answer before a holder is given up (also to open the file; a holder that says "
            "it is reading a big file for the first time gets time for that on top)."
        ),
    ] = 15.0,
    register_copy: Annotated[
        bool,
        typer.Option("--register/--no-register", help="After an index fetch, register the new copy as ours."),
    ] = True,
    advertise: Annotated[
        str | None,
        typer.Option(help="HOST:PORT our 'share' serves on, for registering (default: our address toward the master)."),
    ] = None,
) -> None:
    """Download NAME from a peer that holds it, verify every chunk and the whole file, resume if interrupted."""
    opts = options(ctx)
    warn_insecure(opts)
    names.check_name(name)
    wanted = (content_hash or "").lower()
    if wanted and not HASH_PREFIX_RE.match(wanted):
        raise ConfigError(
            f"--hash must be hex: the start of a BLAKE3 digest as 'overdrive ls' shows it (6 or more characters) or "
            f"all 64 ('overdrive ls --json'), not {wanted!r}"
        )
    if wanted and from_ is not None and not HASH_RE.match(wanted):
        raise ConfigError(f"--hash with --from needs all 64 hex characters ('overdrive ls --json'), not {wanted!r}")
    if chunk_size and not valid_chunk_size(chunk_size):
        raise ConfigError(f"--chunk-size must be 0 or a power of two from 64 KiB to 16 MiB, not {chunk_size}")
    if not 0 < timeout < float("inf"):  # nan and inf too: they end in a traceback as milliseconds
        raise ConfigError(f"--timeout must be a positive number of seconds, not {timeout:g}")
    if not 0 <= limit_rate < float("inf"):  # nan: no chunk would ever be asked for
        raise ConfigError(f"--limit-rate must be 0 (no limit) or a number of MB/s, not {limit_rate:g}")
    try:
        config = FetchConfig(window=window, request_timeout=timeout, rate_limit=limit_rate * 1e6)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    dest_dir = expand_home(out, "--out") if out is not None else paths.backup_dir()
    masters = endpoints(master, DEFAULT_MASTER_PORT, "--master") if from_ is None else []
    with opts.bus() as bus:
        if from_ is not None:
            sources = tuple(endpoints(from_, DEFAULT_SHARE_PORT, "--from"))
            for source in sources:
                _check_resolves(source)
            size_hint = 0
        else:
            sources, wanted, size_hint, name = _resolve(bus, masters, name, wanted)
        request = FetchRequest(
            name=name,
            sources=sources,
            dest_dir=dest_dir,
            content_hash=wanted,
            chunk_size=chunk_size,
            config=config,
            connections=connections,
            size=size_hint,
        )
        try:
            result = _fetch_with_progress(bus, request, size_hint, quiet=as_json)
        except KeyboardInterrupt:
            _say_kept(request)
            raise
        if not as_json:
            _say_result(result)  # first: what registering says comes after it
        registered = False
        if masters and register_copy and not result.already_present:
            registered = _register(bus, masters, result, dest_dir, advertise)
    if as_json:
        print_json(
            {
                "name": result.name,
                "path": result.path,
                "bytes": result.bytes,
                "seconds": round(result.seconds, 3),
                "mb_per_s": round(result.mb_per_s, 1),
                "hash": result.hash,
                "sources": result.sources,
                "already_present": result.already_present,
                "resumed_chunks": result.resumed_chunks,
                "bytes_received": result.bytes_received,
                "registered": registered,
            }
        )


def _say_result(result: FetchResult) -> None:
    """The one line a person reads after a fetch (``--json`` prints the result instead)."""
    if result.already_present:
        console.print(
            f"{markup_safe(result.path)} is already here with hash {result.hash[:16]}…; nothing to do", soft_wrap=True
        )
    else:
        resumed = f", resumed {result.resumed_chunks} chunks" if result.resumed_chunks else ""
        console.print(
            f"fetched {markup_safe(result.path)}: {result.bytes:,} bytes in {result.seconds:.2f} s "
            f"({result.mb_per_s:.0f} MB/s) from {', '.join(result.sources) or 'the partial file'}{resumed}; "
            f"BLAKE3 {result.hash} verified",
            soft_wrap=True,  # one line, also in a log or a pipe (rich would cut it at 80 columns there)
        )


def _say_kept(request: FetchRequest) -> None:
    """After Ctrl-C: say what was kept and how to go on, when a partial file is there."""
    from overdrive.transfer.partial import part_path

    try:
        part = part_path(names.destination(request.dest_dir, request.name, create=False))
        kept = part.stat().st_blocks * 512
    except (OSError, OverdriveError):
        return
    console.print(
        f"stopped: {markup_safe(str(part))} keeps {kept / 1e6:,.1f} MB; run the same command again to resume",
        soft_wrap=True,
    )


def _check_resolves(source: Endpoint) -> None:
    """A --from host name that does not resolve is said at once (libzmq would only time out on it)."""
    try:
        socket.getaddrinfo(source.host, source.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConfigError(f"--from {source.display}: cannot resolve {source.host!r} ({exc.strerror})") from None
    except UnicodeError:  # the IDNA codec's: an empty or over-long label ('a..b')
        raise ConfigError(f"--from {source.display}: cannot resolve {source.host!r} (not a host name)") from None


def _resolve(bus: Bus, masters: list[Endpoint], name: str, wanted: str) -> tuple[tuple[Endpoint, ...], str, int, str]:
    """Online holders of ``name`` (one version) from the index: (sources, content hash, size, name as held).

    The name matches whatever its Unicode normalisation (a file saved as NFD is found by the NFC name a user
    types); an exact match wins, and the holders are asked for the name as they hold it.
    """
    import glob

    try:
        from overdrive.index.client import IndexClient, is_glob
    except ModuleNotFoundError as exc:  # pragma: no cover - the index package ships with overdrive
        raise TransferError("index lookup unavailable: use --from HOST:PORT") from exc
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
        raise TransferError(f"no holder of {name!r} is online ({len(entries)} known, all offline)")
    versions = sorted(
        {e.content_hash for e in online}, key=lambda h: max(e.mtime_ns for e in online if e.content_hash == h)
    )
    chosen = wanted or versions[-1]
    # one name for every source: of the chosen version's spellings, the one most holders use
    spellings = [e.name for e in online if e.content_hash == chosen]
    held_as = max(dict.fromkeys(spellings), key=spellings.count)
    online = [e for e in online if e.name == held_as]
    if len(versions) > 1 and not wanted:
        console.print(
            f"{markup_safe(repr(name))} exists in {len(versions)} versions online; "
            f"fetching the newest ({chosen[:16]}…), pick another with --hash",
            soft_wrap=True,
        )
    sources: list[Endpoint] = []
    for entry in online:
        if entry.content_hash != chosen:
            continue
        try:
            sources.append(parse_endpoint(entry.address, DEFAULT_SHARE_PORT))
        except ConfigError:
            log.warning("holder %s advertises an invalid address %r; skipped", entry.holder, entry.address)
    if not sources:
        raise TransferError(f"no online holder of {name!r} has a usable address")
    size = next(e.size for e in online if e.content_hash == chosen)
    return tuple(dict.fromkeys(sources)), chosen, size, held_as


def _fetch_with_progress(bus: Bus, request: FetchRequest, size_hint: int, *, quiet: bool) -> FetchResult:
    if quiet or not console.is_terminal:
        return fetch(bus, request)
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task(markup_safe(request.name), total=size_hint or None)
        last = [0.0]

        def update(done: int, total: int) -> None:
            now = time.monotonic()
            if now - last[0] >= 0.1 or done == total:
                last[0] = now
                bar.update(task, completed=done, total=total)

        return fetch(bus, request, update)


def _register(bus: Bus, masters: list[Endpoint], result: FetchResult, dest_dir: Path, advertise: str | None) -> bool:
    """Tell the index we now hold the file (best effort: a failure is a warning, the file is already safe)."""
    from overdrive.index.client import IndexClient

    try:
        rel = Path(result.path).relative_to(Path(dest_dir).resolve()).as_posix()
        names.check_name(rel)
        if advertise:
            address = parse_endpoint(advertise, DEFAULT_SHARE_PORT).display
        else:
            guess = Endpoint(_local_address(masters[0]), DEFAULT_SHARE_PORT)
            if not _serving(bus, guess):  # a holder nobody can fetch from would cost every later fetch a wait
                console.print(
                    f"not registered as a holder: no 'overdrive share' answers at {guess.display}; share "
                    f"{markup_safe(str(dest_dir))} to offer the file, or pass --advertise HOST:PORT if one serves it",
                    soft_wrap=True,
                )
                return False
            address = guess.display
        st = Path(result.path).stat()
        entry = SharedFile(name=rel, size=result.bytes, content_hash=result.hash, mtime_ns=st.st_mtime_ns)
        with IndexClient(bus, masters) as client:
            client.register([entry], address)
    except (OverdriveError, OSError, ValueError) as exc:
        console.print(
            f"[yellow]warning: fetched, but could not register the new copy in the index: {markup_safe(str(exc))}",
            soft_wrap=True,
        )
        return False
    return True


PROBE_TIMEOUT = 1.0
"""Seconds to wait for a share's handshake at the address the fetcher would register."""


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
