"""The one line a long-lived overdrive process prints on stdout once it accepts work, and its parser.

::

    overdrive: master ready on tcp://127.0.0.1:7771 (origin 7KX2...; advertised 10.0.0.5:7771; store sqlite:///...)

``overdrive: WHAT ready on ADDRESS``, then optional details in parentheses separated by ``; ``. ADDRESS is where
the process listens (for ``view``: the stream it is connected to), a ``tcp://HOST:PORT`` URL with the real port
when port 0 was asked for. A script reads the first line of stdout and takes the fifth word, or calls
:func:`parse_ready`; people read the details.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass

from overdrive.bus.address import Endpoint, parse_endpoint
from overdrive.errors import ConfigError

PREFIX = "overdrive: "

_LINE = re.compile(r"overdrive: (?P<what>\S+) ready on (?P<address>tcp://\S+)(?: \((?P<details>.*)\))?")


@dataclass(frozen=True, slots=True)
class Ready:
    """What a ready line says: the command (``master``, ``share``, ...), its address and free-text details."""

    what: str
    endpoint: Endpoint
    details: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.what or any(c.isspace() for c in self.what):
            raise ValueError(f"a ready line names its command in one word, not {self.what!r}")
        if any(not d or not d.isprintable() for d in self.details):
            raise ValueError(f"ready-line details must be non-empty and printable (one line): {self.details!r}")

    def line(self) -> str:
        text = f"{PREFIX}{self.what} ready on {self.endpoint}"
        return f"{text} ({'; '.join(self.details)})" if self.details else text

    def announce(self) -> None:
        """Print the line on stdout, flushed: a script waiting on the pipe sees it at once."""
        print(self.line(), file=sys.stdout, flush=True)


def parse_ready(line: str) -> Ready:
    """The :class:`Ready` a ready line says; ValueError for any other line (an error, or nothing: the process
    ended before it was ready)."""
    match = _LINE.fullmatch(line.strip())
    if match is None:
        raise ValueError(f"not an overdrive ready line: {line!r}")
    details = match["details"]
    try:
        endpoint = parse_endpoint(match["address"], 0)
    except ConfigError as exc:
        raise ValueError(f"not an overdrive ready line: {line!r} ({exc})") from None
    return Ready(match["what"], endpoint, tuple(details.split("; ")) if details else ())


__all__ = ["PREFIX", "Ready", "parse_ready"]
