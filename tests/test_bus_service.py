"""The one service lifecycle: readiness, start errors raised in the caller, timeouts, stop by message."""

from __future__ import annotations

import threading

import pytest
import zmq

from overdrive.bus.security import NodeIdentity
from overdrive.bus.service import Worker, ZmqService
from overdrive.bus.sockets import Bus, Security
from overdrive.errors import BusError, MediaError


class Ticker(Worker):
    name = "test-ticker"

    def __init__(self, fail: BaseException | None = None) -> None:
        super().__init__()
        self.fail = fail
        self.ticks = 0
        self.torn_down = False

    def setup(self) -> None:
        if self.fail is not None:
            raise self.fail

    def loop(self) -> None:
        while not self.stopping.wait(0.01):
            self.ticks += 1

    def teardown(self) -> None:
        self.torn_down = True


class Slow(Worker):
    """Ready only when told; waits on its own event, so stop() must wake it."""

    name = "test-slow"
    ready_on_setup = False
    error_type = MediaError

    def __init__(self) -> None:
        super().__init__()
        self.poke = threading.Event()

    def wake(self) -> None:
        self.poke.set()

    def loop(self) -> None:
        while not self.stopping.is_set():
            self.poke.wait()


class Echo(ZmqService):
    name = "test-echo"

    def loop(self, control: zmq.Socket) -> None:  # type: ignore[type-arg]
        control.poll()


def test_worker_starts_ready_and_stops_by_message() -> None:
    worker = Ticker()
    with worker:
        assert worker.running
    assert not worker.running and worker.torn_down and worker.error is None
    worker.stop()  # idempotent


def test_start_error_is_raised_in_the_caller_after_teardown() -> None:
    worker = Ticker(fail=OSError("no device"))
    with pytest.raises(Exception, match="test-ticker failed to start: no device") as info:
        worker.start()
    assert type(info.value) is not OSError and isinstance(info.value.__cause__, OSError)
    assert worker.torn_down and not worker.running
    own = Ticker(fail=MediaError("busy"))
    with pytest.raises(MediaError, match=r"^busy$"):
        own.start()


def test_start_timeout_raises_and_stops_a_loop_blocked_elsewhere() -> None:
    slow = Slow()
    with pytest.raises(MediaError, match=r"test-slow did not start within 0\.2 s"):
        slow.start(timeout=0.2)
    assert not slow.running


def test_serve_runs_in_the_caller_and_raises() -> None:
    with pytest.raises(OSError, match="no device"):
        Ticker(fail=OSError("no device")).serve()


def test_zmq_service_stops_by_an_inproc_message() -> None:
    with Bus(Security(identity=NodeIdentity.generate(), key=None)) as bus:
        echo = Echo(bus)
        echo.start()
        assert echo.running
        echo.stop()
        assert not echo.running and echo.error is None
        with pytest.raises(RuntimeError):
            echo.start()
        assert Echo.error_type is BusError
