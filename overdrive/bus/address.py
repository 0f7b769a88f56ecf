"""Parsing the addresses users type: ``HOST``, ``HOST:PORT``, ``[V6]:PORT`` and ``tcp://HOST:PORT``."""

from __future__ import annotations

from dataclasses import dataclass

from overdrive.errors import ConfigError

DEFAULT_STREAM_PORT = 7770
DEFAULT_MASTER_PORT = 7771
DEFAULT_SHARE_PORT = 7772


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A TCP endpoint; ``str()`` gives the ZeroMQ form ``tcp://host:port``."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp://{host}:{self.port}"

    @property
    def display(self) -> str:
        """``host:port`` as a user would type it."""
        return str(self)[len("tcp://") :]


def parse_endpoint(text: str, default_port: int) -> Endpoint:
    """Parse one address, filling in ``default_port`` when none is given; raise ConfigError if invalid."""
    raw = text.strip()
    rest = raw
    if "://" in rest:
        scheme, rest = rest.split("://", 1)
        if scheme != "tcp":
            raise ConfigError(f"unsupported address scheme {scheme!r} in {text!r} (only tcp://)")
    port: int | str = default_port
    if rest.startswith("["):
        host, sep, tail = rest[1:].partition("]")
        if not sep or (tail and not tail.startswith(":")):
            raise ConfigError(f"bad IPv6 address {text!r}; use [ADDR]:PORT")
        if tail:
            port = tail[1:]
    elif rest.count(":") == 1:
        host, port = rest.split(":")
    elif ":" in rest:
        host = rest  # a bare IPv6 address
    else:
        host = rest
    if not host or any(c.isspace() or c in "/?#@" for c in host):
        raise ConfigError(f"bad host in address {text!r}")
    try:
        number = int(port)
    except ValueError:
        raise ConfigError(f"bad port {port!r} in address {text!r}") from None
    if not 0 <= number <= 65535:
        raise ConfigError(f"port {number} out of range in address {text!r}")
    return Endpoint(host, number)


def parse_endpoints(text: str | list[str], default_port: int) -> list[Endpoint]:
    """Parse a comma-separated list (or a list of such strings) of addresses."""
    items = [text] if isinstance(text, str) else text
    parts = [p for item in items for p in item.split(",") if p.strip()]
    return [parse_endpoint(p, default_port) for p in parts]
