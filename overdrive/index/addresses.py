"""The address a listening endpoint is reachable at, as others should be told (in gossip and in records)."""

from __future__ import annotations

import ipaddress
import socket

from overdrive.bus.address import Endpoint, parse_endpoint
from overdrive.errors import ConfigError


def guess_host() -> str:
    """This machine's LAN address as others would reach it (falls back to 127.0.0.1)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # no packet is sent for UDP connect
            return str(probe.getsockname()[0])
    except OSError:
        return "127.0.0.1"


def advertised(bind: Endpoint, host: str | None) -> str:
    """``host:port`` others should use for an endpoint bound at ``bind``."""
    if host:  # HOST or HOST:PORT (a NAT or port forward in front of us)
        endpoint = parse_endpoint(host, bind.port)
        if ":" in endpoint.host:  # parse_endpoint reads any host with a colon as IPv6: 'a:b:c' went into records
            try:
                ipaddress.IPv6Address(endpoint.host)
            except ValueError:
                raise ConfigError(f"--advertise {host!r} is not HOST[:PORT]") from None
        return endpoint.display
    if bind.host in ("0.0.0.0", "*", "::"):
        return Endpoint(guess_host(), bind.port).display
    return bind.display
