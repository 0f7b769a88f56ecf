"""A background thread around a ZeroMQ loop (masters, nodes, the file server): ready event to start, inproc to stop.

Subclasses implement :meth:`Runner.setup` (make and bind sockets in the loop thread; raise to fail start),
:meth:`Runner.loop` (poll until the control socket is readable) and :meth:`Runner.teardown` (close sockets).
"""

from __future__ import annotations

import logging
import threading

import zmq

from overdrive.bus.sockets import Bus
from overdrive.errors import BusError, OverdriveError

log = logging.getLogger(__name__)

START_TIMEOUT = 10.0


class Runner:
    """Runs ``setup``/``loop``/``teardown`` in a thread named ``name``."""

    name = "overdrive-runner"

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._control_addr = f"inproc://{self.name}-{id(self):x}"
        self._control: zmq.Socket | None = None  # type: ignore[type-arg]

    def setup(self) -> None:
        raise NotImplementedError

    def loop(self, control: zmq.Socket) -> None:  # type: ignore[type-arg]
        raise NotImplementedError

    def teardown(self) -> None:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the thread; return once it is ready, or raise its start-up error here."""
        if self._thread is not None:
            raise RuntimeError(f"{self.name} already started")
        self._control = self.bus.context.socket(zmq.PAIR)
        self._control.linger = 0
        self._control.bind(self._control_addr)
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            self.stop()
            raise BusError(f"{self.name} did not start within {timeout:g} s")
        if self._error is not None:
            error = self._error
            self.stop()
            if isinstance(error, OverdriveError):
                raise error
            raise BusError(f"{self.name} failed to start: {error}") from error

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the thread to stop and wait for it; idempotent."""
        thread, control = self._thread, self._control
        if control is not None:
            try:
                control.send(b"stop", zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.error("%s did not stop within %g s", self.name, timeout)
        if control is not None:
            control.close(linger=0)
        self._control = None

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the thread ends (it crashed or was stopped); True if it has ended."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def error(self) -> BaseException | None:
        """What stopped the loop, if it died of an error."""
        return self._error

    def _run(self) -> None:
        control = self.bus.context.socket(zmq.PAIR)
        control.linger = 0
        try:
            control.connect(self._control_addr)
            try:
                self.setup()
            except (OverdriveError, zmq.ZMQError, OSError) as exc:
                self._error = exc
                self._ready.set()
                self.teardown()
                return
            self._ready.set()
            try:
                self.loop(control)
            except BaseException as exc:
                self._error = exc
                log.exception("%s crashed", self.name)
            finally:
                self.teardown()
        finally:
            control.close(linger=0)

    def __enter__(self) -> Runner:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
