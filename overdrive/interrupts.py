"""Ctrl-C at a point the program chooses.

Python's default SIGINT handler raises KeyboardInterrupt at whatever bytecode the main thread runs next. Right after
a C call such as a lock's ``acquire`` counts, so the exception can land inside ``queue.Queue.put`` once the queue's
lock is taken but before the ``with`` block that releases it has begun: the lock is then held forever, and the next
``put`` (say, the one that stops a writer thread on the way out) waits for ever: the command hangs after a Ctrl-C.

:func:`deferred` swaps in a handler that only records the signal; the loop calls the returned check at a safe point,
which raises KeyboardInterrupt there. Outside the main thread, or when the signal was ignored when the process started
(a background job), nothing is installed and the check never fires.

SIGHUP (the terminal was closed, an ssh session dropped) stops the same way as Ctrl-C and SIGTERM: recordings are
finished instead of being left as hidden partial files.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""All stop the same way: SIGTERM (``kill``, a service manager) and SIGHUP (a closed terminal) also get the tidy
exit Ctrl-C gets."""

Check = Callable[[], None]
"""Raises KeyboardInterrupt once a stop signal came (the function :func:`deferred` yields)."""

SLEEP_STEP = 0.1


def never() -> None:
    """A check for code run where no stop signal is watched."""


def sleep(seconds: float, check: Check) -> None:
    """Sleep, calling ``check`` every :data:`SLEEP_STEP` seconds, so a stop signal ends the sleep soon."""
    end = time.monotonic() + seconds
    while True:
        check()
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(SLEEP_STEP, left))


@contextmanager
def deferred(
    signals: tuple[signal.Signals, ...] = SIGNALS,
    on_signal: Callable[[], None] | None = None,
    *,
    raise_now: bool = False,
) -> Iterator[Callable[[], None]]:
    """Within the block, the ``signals`` only set a flag; the yielded function raises KeyboardInterrupt if one came.

    ``on_signal`` is also called, from the handler, so it must only set a flag or an event (a loop's stop request)
    that the main thread never sets, clears or waits on itself: the handler runs in the main thread, between two of
    its bytecodes, possibly inside that event's ``set``/``clear``/``wait`` with the event's lock held, and taking it
    again there never returns (an event other threads wait on is fine).
    ``raise_now`` also raises KeyboardInterrupt from the handler, at once: only for phases where the main thread is
    the only one and holds no lock another thread needs (it then also ends a wait that never checks, such as a
    handshake's); the signal stays recorded, so one pyzmq drops is still raised at the next check.
    The previous handlers are restored on exit, and a signal that came during the block is re-raised as
    KeyboardInterrupt there if the block did not check for it, also in place of another exception leaving the
    block (the stop the user asked for is what they should hear about, with exit 130).
    """
    received: list[int] = []

    def check() -> None:
        if received:
            received.clear()  # raised once: a block that catches it is not interrupted again on the way out
            raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield check
        return

    def record(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        if on_signal is not None:
            on_signal()
        if raise_now:
            raise KeyboardInterrupt

    previous: dict[signal.Signals, signal.Handlers | Callable[[int, FrameType | None], object] | int | None] = {}
    for sig in signals:
        current = signal.getsignal(sig)
        if current is signal.SIG_IGN:
            continue  # started ignoring it (e.g. a background job): keep ignoring it
        previous[sig] = signal.SIG_DFL if current is None else current  # None: set outside Python
        signal.signal(sig, record)
    try:
        yield check
    except Exception as exc:
        if received:  # the user asked to stop, and the way out failed on something else: say it was stopped
            raise KeyboardInterrupt from exc
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
    check()
