"""Discovery for the commands: announce a service, find masters or a stream, and ``overdrive streams``.

Every long-lived command announces itself unless ``--no-discovery`` (or ``OVERDRIVE_NO_DISCOVERY=1``, or
``discovery = false`` in the config file); a command given no address looks for one. The order is always: an
address given by hand (option, environment, config file), else what discovery finds on this network, else the
built-in default (``127.0.0.1``). When mDNS cannot run here, one warning line says so and nothing else changes.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, cast

import click
import typer

from overdrive.bus.address import Endpoint, parse_endpoint
from overdrive.bus.discovery import (
    INTERFACES_ENV,
    MAX_CANDIDATES,
    SETTLE,
    Announcement,
    DiscoveryError,
    DiscoverySettings,
    Role,
    choose_stream,
    network_tag,
    pick_address,
)
from overdrive.bus.signing import Signer
from overdrive.bus.sockets import Bus
from overdrive.cli.options import console, endpoints, markup_safe, options, print_json, shown
from overdrive.config import GlobalOptions
from overdrive.errors import ConfigError, UnreachableError

if TYPE_CHECKING:  # zeroconf loads only when discovery runs
    from overdrive.bus.discovery_mdns import Announcer

log = logging.getLogger(__name__)

NO_DISCOVERY_ENV = "OVERDRIVE_NO_DISCOVERY"
NoDiscovery = Annotated[
    bool,
    typer.Option(
        "--no-discovery",
        envvar=NO_DISCOVERY_ENV,
        help="Neither announce this service on the LAN (mDNS) nor look for peers there.",
    ),
]
Advertise = Annotated[
    str | None,
    typer.Option(
        help="HOST[:PORT] to announce on the LAN (default: this machine's IPv4 addresses).", show_default=False
    ),
]
StreamName = Annotated[
    str | None,
    typer.Option(
        "--stream",
        metavar="NAME",
        help="Without HOST: join the discovered stream with this name (or node id, or key fingerprint).",
        show_default=False,
    ),
]
FIND_TIMEOUT = 3.0
"""Seconds a command with no address waits for a first answer (it stops shortly after one)."""
LIST_TIMEOUT = 2.0
JOIN_WAIT = 10.0
"""Seconds ``view`` with no HOST waits for the discovered stream to start before it gives up."""


def settings(ctx: typer.Context, no_discovery: bool) -> DiscoverySettings:
    """The discovery settings: off by option, environment or config key; interfaces from the environment, else
    the config file's ``discovery-interfaces``."""
    from overdrive.bus.discovery_mdns import parse_interfaces

    opts = options(ctx)
    if no_discovery or not opts.discovery:
        return DiscoverySettings(enabled=False)
    text = os.environ.get(INTERFACES_ENV) or opts.discovery_interfaces
    return DiscoverySettings(interfaces=parse_interfaces(text))


def tag(opts: GlobalOptions) -> str:
    """This network's discovery tag (from the stretched secret; never from the password itself)."""
    key = opts.network_key()
    return network_tag(key.server_secret if key is not None else None)


def _warn(exc: DiscoveryError) -> None:
    console.print(f"[yellow]warning: {markup_safe(str(exc))}[/]")


def announce(
    found: DiscoverySettings,
    bus: Bus,
    role: Role,
    name: str,
    endpoint: Endpoint,
    advertise: str | None = None,
    *,
    codec: str = "",
    fps: float = 0.0,
) -> Announcer | None:
    """Announce a bound service (stream, master, share, web) until the returned Announcer is closed; None when
    discovery is off or cannot run here (then one warning line). ``advertise`` (HOST[:PORT]) decides the announced
    address; else the bound address, or this machine's non-loopback IPv4 addresses when bound to all of them."""
    from overdrive.bus.discovery_mdns import Announcer, own_addresses

    if not found.enabled:
        return None
    port = endpoint.port
    if advertise:
        chosen = parse_endpoint(advertise, port)
        port = chosen.port
        addresses: tuple[str, ...] = (_ipv4(chosen.host),)
    else:
        addresses = own_addresses(found, endpoint.host)
    key = bus.security.key
    announcement = Announcement(
        role=role,
        name=name.strip()[:64] or role,
        node_id=bus.node_id,
        fingerprint=Signer.for_identity(bus.security.identity).fingerprint,
        tag=network_tag(key.server_secret if key is not None else None),
        addresses=addresses,
        port=port,
        codec=codec,
        fps=fps,
    )
    try:
        announcer = Announcer(found)
    except DiscoveryError as exc:
        _warn(exc)
        return None
    try:
        announcer.announce(announcement)
    except Exception as exc:  # noqa: BLE001 - zeroconf's own errors: announcing is a convenience, never fatal
        announcer.close()
        _warn(DiscoveryError(f"discovery (mDNS) could not announce this {role}: {exc}"))
        return None
    log.info("announced %s %r on %s port %d", role, announcement.name, ", ".join(addresses), port)
    return announcer


def _ipv4(host: str) -> str:
    try:
        return str(socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)[0][4][0])
    except (OSError, UnicodeError):
        raise ConfigError(f"--advertise {host!r}: not an IPv4 address or a name that resolves to one") from None


def closing(announcer: Announcer | None) -> list[Callable[[], None]]:
    """Stop steps for :func:`overdrive.cli.run.run`: the goodbye first, so browsers drop us at once."""
    return [announcer.close] if announcer is not None else []


def find(
    found: DiscoverySettings, role: Role, *, timeout: float = FIND_TIMEOUT, settle: float | None = SETTLE
) -> list[Announcement]:
    """Announcements of ``role`` on the LAN (every network); empty when discovery is off or cannot run."""
    from overdrive.bus.discovery_mdns import browse

    if not found.enabled:
        return []
    try:
        return browse(found, [role], timeout=timeout, settle=settle).entries(role)
    except DiscoveryError as exc:
        _warn(exc)
        return []


def endpoint_of(found: DiscoverySettings, announcement: Announcement) -> Endpoint:
    from overdrive.bus.discovery_mdns import local_networks

    return Endpoint(pick_address(announcement.addresses, local_networks(found)), announcement.port)


def masters(
    ctx: typer.Context, value: str, default_port: int, found: DiscoverySettings, *, exclude: str = ""
) -> list[Endpoint]:
    """The masters for ``--master``/``--peers``: the value given by hand (option, environment, config file) as
    today; when none was, the masters of this network that discovery finds, then the built-in default."""
    param = "peers" if ctx.command.name == "master" else "master"
    source = ctx.get_parameter_source(param)
    given = source is not None and source.name != "DEFAULT"
    if given or not found.enabled:
        return endpoints(value, default_port, f"--{param}") if value else []
    ours = tag(options(ctx))
    live = find(found, "master")
    seen = [a for a in live if a.same_network(ours) and a.node_id != exclude][:MAX_CANDIDATES]
    discovered = [endpoint_of(found, a) for a in seen]
    fallback = endpoints(value, default_port, f"--{param}") if value else []
    if discovered:
        console.print(f"found master(s) by discovery: {', '.join(e.display for e in discovered)}")
    elif fallback:
        console.print(
            f"no master of this network answered discovery (none running, or multicast blocked here); "
            f"trying {', '.join(e.display for e in fallback)}"
        )
    return discovered + [e for e in fallback if e not in discovered]


def stream_to_join(ctx: typer.Context, found: DiscoverySettings, select: str | None) -> Announcement:
    """The stream ``view`` with no HOST joins: the only one of this network, or the one ``--stream`` names. Several:
    list them and exit 2; none: say so (and how many of other networks were seen) and exit 1."""
    if not found.enabled:  # a usage mistake as typer words it, with the pointer to --help
        message = "Missing argument 'HOST[:PORT]' (discovery is off, so give the address)"
        raise click.UsageError(message, ctx=cast(click.Context, ctx))
    choice = choose_stream(find(found, "stream"), tag(options(ctx)), select)
    if choice.chosen is not None:
        return choice.chosen
    if choice.problem == "several" or (choice.problem == "no-match" and choice.ours):
        for a in choice.ours:
            console.print(f"  {markup_safe(_line(found, a))}")
        what = "match" if select else "are live on this network"
        raise ConfigError(f"{len(choice.ours)} streams {what}: pick one with --stream NAME (or give HOST)")
    other = f"; {choice.others} of another network (another password or network name)" if choice.others else ""
    raise UnreachableError(f"no live stream of this network found{other}; give HOST to connect by address")


def join_target(
    ctx: typer.Context, no_discovery: bool, select: str | None, pin: str | None, wait: float | None
) -> tuple[str, str, float]:
    """``view`` with no HOST: the discovered stream's address, the key to pin (``--pin``, else the announced one, so
    the stream shown is the one that was announced) and how long to wait for it (``--wait``, else
    :data:`JOIN_WAIT`: an announced stream is live, so one that does not start is stale or fake)."""
    found = settings(ctx, no_discovery)
    chosen = stream_to_join(ctx, found, select)
    endpoint = endpoint_of(found, chosen)
    console.print(f"found stream {markup_safe(repr(chosen.name))} at {endpoint.display} (node {chosen.node_id})")
    return endpoint.display, pin or chosen.fingerprint, JOIN_WAIT if wait is None else wait


def _line(found: DiscoverySettings, a: Announcement) -> str:
    return f"{a.name}  {endpoint_of(found, a).display}  node {a.node_id}  key {a.fingerprint}"


def streams_command(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array.")] = False,
    wait: Annotated[float, typer.Option(help="Seconds to listen for announcements.")] = LIST_TIMEOUT,
) -> None:
    """List the live streams on the LAN (mDNS): name, address, node id, and whether each is of this network."""
    if not 0 < wait <= 60:
        raise ConfigError(f"--wait must be more than 0 and at most 60 seconds, not {wait:g}")
    found = settings(ctx, no_discovery=False)
    ours = tag(options(ctx))
    rows = []
    for a in find(found, "stream", timeout=wait, settle=None):
        rows.append(
            {
                "name": a.name,
                "address": endpoint_of(found, a).display,
                "addresses": list(a.addresses),
                "port": a.port,
                "node_id": a.node_id,
                "fingerprint": a.fingerprint,
                "codec": a.codec,
                "fps": a.fps,
                "same_network": a.same_network(ours),
            }
        )
    if as_json:
        print_json(rows)
        return
    if not rows:
        console.print("no live streams found")
        return
    for row in rows:
        where = "join: overdrive view" if row["same_network"] else "another network (not joinable with this password)"
        typer.echo(
            f"{shown(str(row['name']))}  {row['address']}  node {row['node_id']}  key {row['fingerprint']}  {where}"
        )


def register(app: typer.Typer) -> None:
    app.command("streams")(streams_command)


__all__ = [
    "Advertise",
    "DiscoverySettings",
    "NoDiscovery",
    "StreamName",
    "announce",
    "closing",
    "find",
    "join_target",
    "masters",
    "register",
    "settings",
    "stream_to_join",
]
