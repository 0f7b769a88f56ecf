"""``overdrive fetch``: find a file's online holders (index or ``--from``), fetch it verified, register the copy."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from overdrive import interrupts, paths
from overdrive.app.fetch import HASH_RE, Holders, find_holders, register_copy
from overdrive.bus.address import DEFAULT_MASTER_PORT, DEFAULT_SHARE_PORT, Endpoint
from overdrive.bus.sockets import Bus, check_resolves
from overdrive.cli import discover
from overdrive.cli.options import (
    console,
    endpoints,
    expand_home,
    markup_safe,
    options,
    print_json,
    shared_folders,
    warn_insecure,
)
from overdrive.errors import ConfigError, HostNotFoundError, OverdriveError
from overdrive.files import names
from overdrive.transfer.fetcher import CONNECTIONS, Connecting, FetchRequest, FetchResult, check_connections, fetch
from overdrive.transfer.protocol import valid_chunk_size
from overdrive.transfer.session import DEFAULT_WINDOW, FetchConfig

log = logging.getLogger(__name__)

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
    no_discovery: discover.NoDiscovery = False,
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
    check_connections(connections)
    config = FetchConfig(window=window, request_timeout=timeout, rate_limit=limit_rate * 1e6)
    dest_dir = expand_home(out, "--out") if out is not None else paths.backup_dir()
    found = discover.settings(ctx, no_discovery)
    masters = discover.masters(ctx, master, DEFAULT_MASTER_PORT, found) if from_ is None else []
    with opts.bus() as bus:
        if from_ is not None:
            sources = tuple(endpoints(from_, DEFAULT_SHARE_PORT, "--from"))
            for source in sources:
                try:
                    check_resolves(source)
                except HostNotFoundError as exc:  # checked before any work: an argument's mistake (exit 2)
                    raise ConfigError(f"--from {source.display}: {exc}") from None
            size_hint, holder_ids = 0, {}
        else:
            holders = _resolve(bus, masters, name, wanted)
            sources, wanted, size_hint, name = holders.sources, holders.content_hash, holders.size, holders.name
            holder_ids = holders.holders
        request = FetchRequest(
            name=name,
            sources=sources,
            dest_dir=dest_dir,
            content_hash=wanted,
            chunk_size=chunk_size,
            config=config,
            connections=connections,
            size=size_hint,
            holders=holder_ids,
        )
        connecting = Connecting()
        try:  # Ctrl-C stops at the fetch's checks, never inside its writer's queue; while connecting, at once
            with interrupts.deferred(on_signal=connecting) as check:
                result = _fetch_with_progress(
                    bus, request, size_hint, quiet=as_json, cancel=check, connecting=connecting
                )
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


def _resolve(bus: Bus, masters: list[Endpoint], name: str, wanted: str) -> Holders:
    """Online holders of ``name`` (one version) from the index; says so when several versions are online."""
    holders = find_holders(bus, masters, name, wanted, own_folders=shared_folders())
    if holders.versions > 1:
        console.print(
            f"{markup_safe(repr(name))} exists in {holders.versions} versions online; "
            f"fetching the newest ({holders.content_hash[:16]}…), pick another with --hash",
            soft_wrap=True,
        )
    return holders


def _fetch_with_progress(
    bus: Bus,
    request: FetchRequest,
    size_hint: int,
    *,
    quiet: bool,
    cancel: Callable[[], None],
    connecting: Connecting,
) -> FetchResult:
    if quiet or not console.is_terminal:
        return fetch(bus, request, cancel=cancel, connecting=connecting)
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

        return fetch(bus, request, update, cancel=cancel, connecting=connecting)


def _register(bus: Bus, masters: list[Endpoint], result: FetchResult, dest_dir: Path, advertise: str | None) -> bool:
    """Tell the index we now hold the file (best effort: a failure is a warning, the file is already safe)."""
    registered = register_copy(bus, masters, result, dest_dir, advertise)
    if registered.outcome == "no-share":
        console.print(
            f"not registered as a holder: no 'overdrive share' answers at {registered.address}; share "
            f"{markup_safe(str(dest_dir))} to offer the file, or pass --advertise HOST:PORT if one serves it",
            soft_wrap=True,
        )
    elif registered.outcome == "failed":
        console.print(
            "[yellow]warning: fetched, but could not register the new copy in the index: "
            f"{markup_safe(registered.error)}",
            soft_wrap=True,
        )
    return registered.outcome == "registered"
