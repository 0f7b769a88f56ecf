"""The one way a long-lived command (``stream``, ``view``, ``master``, ``share``) runs once its service is started.

::

    service.start()
    run(ready("master", endpoint, *details), watching("master", service, tick), stop=[service.stop])

:func:`run` prints the one ready line (:mod:`overdrive.bus.ready`) on stdout, then calls ``wait`` until it returns
or SIGINT/SIGTERM stops it, and always stops the service. A signal is a tidy stop: :func:`run` returns normally and
the command exits 0. ``wait`` is either the command's own foreground loop (``stream``, ``view``: ``request_stop``
ends it) or :func:`watching`, which polls a background service (``master``, ``share``); a service that ends by
itself is an error (exit 1).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import Protocol

from overdrive import interrupts
from overdrive.bus.address import Endpoint
from overdrive.bus.ready import Ready
from overdrive.cli.options import settle_heap, shown
from overdrive.errors import OverdriveError

Check = Callable[[], None]
"""Raises KeyboardInterrupt once a stop signal came (see :func:`overdrive.interrupts.deferred`)."""

Wait = Callable[[Check], object]
"""Blocks while the command runs; returns when it is done (a ``--duration`` over, a window closed)."""

POLL = 0.2
"""Seconds between two looks at a background service (and between ``tick`` calls)."""


class Watched(Protocol):
    """A background service (:class:`~overdrive.index.master.Master`, an index node): running, or why it ended."""

    @property
    def running(self) -> bool: ...

    @property
    def error(self) -> BaseException | None: ...


def ready(what: str, endpoint: Endpoint, *details: str) -> Ready:
    """The ready line for ``what``; details (which can hold names from the network) shown safe to print."""
    return Ready(what, endpoint, tuple(shown(d) for d in details if d))


def run(
    announce: Ready,
    wait: Wait,
    *,
    stop: Sequence[Callable[[], None]],
    request_stop: Callable[[], None] | None = None,
) -> None:
    """Print ``announce``'s line, then ``wait(check)`` until it returns or SIGINT/SIGTERM ends it; then call every
    ``stop`` step in order (each one also when an earlier one raised).

    ``request_stop`` is called from the signal handler, so it may only set a flag the loop reads (see
    :func:`overdrive.interrupts.deferred`): a foreground loop that never calls ``check`` ends through it.
    """
    with ExitStack() as stopping:
        for step in reversed(stop):
            stopping.callback(step)
        try:
            with interrupts.deferred(on_signal=request_stop) as check:  # first: a stop right after the line counts
                settle_heap()
                announce.announce()
                wait(check)
        except KeyboardInterrupt:
            pass


def watching(what: str, service: Watched, tick: Callable[[Check], None] | None = None) -> Wait:
    """A ``wait`` for :func:`run` that polls ``service`` every :data:`POLL` seconds, calling ``tick(check)`` each
    time, and raises OverdriveError if the service stops by itself."""

    def wait(check: Check) -> None:
        while True:
            check()
            time.sleep(POLL)
            if not service.running:
                raise OverdriveError(f"{what} stopped: {service.error}")
            if tick is not None:
                tick(check)

    return wait


__all__ = ["Check", "Wait", "Watched", "ready", "run", "watching"]
