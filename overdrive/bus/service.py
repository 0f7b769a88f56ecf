"""One lifecycle for every long-lived thread: start with a readiness event and a timeout, stop with a message.

    Service        the contract: ``setup()``, the loop and ``teardown()`` run in one thread; ``start()`` returns
                   once it is ready or raises its start error in the caller; ``stop()`` is idempotent
    ├── ZmqService a ZeroMQ loop (masters, nodes, the file server, the viewer): ``stop()`` sends a message over
    │              an inproc PAIR that the loop polls with its own sockets
    └── Worker     a plain thread (capture, encoders, writers, audio): ``stop()`` sets the ``stopping`` event
                   the loop waits on, and calls :meth:`Worker.wake` for a loop blocked on something else

A service can also run in the caller's thread with :meth:`Service.serve` (a CLI's main thread, where a window
or a signal handler must live); errors then propagate instead of being kept in :attr:`Service.error`.
"""

from __future__ import annotations

import logging
import threading
from typing import ClassVar, Self

import zmq

from overdrive.bus.sockets import Bus
from overdrive.errors import BusError, OverdriveError

log = logging.getLogger(__name__)

START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


class Service:
    """A thread running ``setup``/loop/``teardown``, named ``name``; not restartable once started."""

    name = "overdrive-service"
    error_type: ClassVar[type[OverdriveError]] = OverdriveError
    """What a start error that is not an :class:`OverdriveError` is wrapped in."""
    ready_on_setup: ClassVar[bool] = True
    """Ready once ``setup`` returns; if False, the loop calls :meth:`mark_ready` (e.g. at its first output)."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # -- what a service does (in its own thread) ---------------------------------------------------------------
    def setup(self) -> None:
        """Open and bind what the loop needs; raise to fail :meth:`start`."""

    def teardown(self) -> None:
        """Release everything; runs last, also after a failed ``setup`` or a crashed loop."""

    # The base's own hooks start with _svc_ so they never collide with a subclass's private names.
    def _svc_loop(self) -> None:
        raise NotImplementedError

    def _svc_signal_stop(self) -> None:
        """Tell the loop to end (from another thread)."""
        raise NotImplementedError

    def _svc_open(self) -> None:
        """Before the loop starts, in the caller's thread."""

    def _svc_close(self) -> None:
        """After the loop has ended (or could not be stopped), in the caller's thread."""

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def mark_ready(self) -> None:
        """Let :meth:`start` return (for services whose readiness is more than a finished ``setup``)."""
        self._ready.set()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def error(self) -> BaseException | None:
        """What ended the loop, if it died of an error."""
        return self._error

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the thread; return once it is ready, or raise its start-up error here."""
        if self._thread is not None:
            raise RuntimeError(f"{self.name} already started")
        self._svc_open()
        self._thread = threading.Thread(target=self._svc_thread_main, name=self.name, daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            self.stop()
            raise self.start_timeout_error(timeout)
        error = self._error
        if error is not None:
            self.stop()
            if isinstance(error, OverdriveError):
                raise error
            raise self.error_type(f"{self.name} failed to start: {error}") from error

    def start_timeout_error(self, timeout: float) -> OverdriveError:
        return self.error_type(f"{self.name} did not start within {timeout:g} s")

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Ask the loop to end and wait for it; idempotent (from the service's own thread it does not wait)."""
        self._svc_stop(timeout)

    def _svc_stop(self, timeout: float | None) -> None:
        """:meth:`stop`, or with ``None`` wait however long the loop needs to finish its work (a writer's queue)."""
        thread = self._thread
        self._svc_signal_stop()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                log.error("%s did not stop within %s s", self.name, timeout)
        self._svc_close()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the thread ends (it finished, crashed or was stopped); True if it has ended."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def serve(self) -> None:
        """Run setup, the loop and teardown in the caller's thread; raises what ended it."""
        if self._thread is not None:
            raise RuntimeError(f"{self.name} already started")
        self._svc_open()
        try:
            self._svc_run()
        finally:
            self._ready.set()
            self._svc_close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _svc_run(self) -> None:
        try:
            self.setup()
            if self.ready_on_setup:
                self._ready.set()
            self._svc_loop()
        except BaseException as exc:
            self._error = exc  # already visible to teardown and to whoever it wakes
            raise
        finally:
            self.teardown()

    def _svc_thread_main(self) -> None:
        try:
            self._svc_run()
        except BaseException as exc:  # kept for start() and .error
            self._error = exc
            if self._ready.is_set():  # a start error is raised by start() instead
                if isinstance(exc, OverdriveError):
                    log.error("%s stopped: %s", self.name, exc)
                else:
                    log.exception("%s crashed", self.name)
        finally:
            self._ready.set()


class ZmqService(Service):
    """A ZeroMQ loop in a thread. Subclasses implement :meth:`loop`, returning once ``control`` is readable."""

    name = "overdrive-zmq-service"
    error_type: ClassVar[type[OverdriveError]] = BusError

    def __init__(self, bus: Bus) -> None:
        super().__init__()
        self.bus = bus
        self._control_addr = f"inproc://{self.name}-{id(self):x}"
        self._control: zmq.Socket | None = None  # type: ignore[type-arg]
        self._svc_peer: zmq.Socket | None = None  # type: ignore[type-arg]

    def loop(self, control: zmq.Socket) -> None:  # type: ignore[type-arg]
        raise NotImplementedError

    def _svc_open(self) -> None:
        self._control = self.bus.context.socket(zmq.PAIR)
        self._control.linger = 0
        self._control.bind(self._control_addr)

    def _svc_close(self) -> None:
        if self._control is not None:
            self._control.close(linger=0)
        self._control = None

    def _svc_signal_stop(self) -> None:
        if self._control is not None:
            try:
                self._control.send(b"stop", zmq.NOBLOCK)
            except zmq.ZMQError:
                pass

    def _svc_run(self) -> None:
        control = self.bus.context.socket(zmq.PAIR)
        control.linger = 0
        try:
            control.connect(self._control_addr)
            self._svc_peer = control
            super()._svc_run()
        finally:
            control.close(linger=0)

    def _svc_loop(self) -> None:
        assert self._svc_peer is not None
        self.loop(self._svc_peer)


class Worker(Service):
    """A plain thread. :meth:`loop` returns once ``stopping`` is set; :meth:`wake` unblocks it if it waits on
    something other than ``stopping`` (a queue's condition, its own event)."""

    name = "overdrive-worker"

    def __init__(self) -> None:
        super().__init__()
        self.stopping = threading.Event()

    def loop(self) -> None:
        raise NotImplementedError

    def wake(self) -> None:
        """Called by :meth:`stop` after ``stopping`` is set."""

    def request_stop(self) -> None:
        """Set ``stopping`` only, without :meth:`wake`: safe from a signal handler in the thread running
        :meth:`serve`, provided the loop never waits on ``stopping`` there (the handler could run while that thread
        holds the event's lock, and would deadlock)."""
        self.stopping.set()

    def _svc_signal_stop(self) -> None:
        self.stopping.set()
        self.wake()

    def _svc_loop(self) -> None:
        self.loop()
