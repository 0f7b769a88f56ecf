"""Shared fixtures: an isolated OVERDRIVE_HOME per test, a secured test network, and leak checks.

Every test runs with ``OVERDRIVE_HOME`` in its own temporary folder, so nothing touches the user's keys, index or
backup folder. Sockets made through ``zmq.Context.socket`` and threads started during a test must be closed and
finished when it ends, or the test fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import zmq
from zmq.utils import garbage

from overdrive.bus.address import Endpoint
from overdrive.bus.ready import Ready, parse_ready
from overdrive.bus.security import NetworkKey, NodeIdentity
from overdrive.bus.signing import MeshKey
from overdrive.bus.sockets import Bus, Security
from overdrive.demo.context import stop

pytest_plugins = ["tests.plugin_services"]

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "correct horse battery staple"
NETWORK = "overdrive-tests"


def pytest_configure(config: pytest.Config) -> None:
    """Children get SIGINT at its default even when this run is a background job: a shell starts those with SIGINT
    ignored, which every child would inherit, and the Ctrl-C tests would then test nothing.

    Discovery (mDNS) is off for every command a test runs: it must never start on the host's real interfaces.
    The discovery tests turn it on again inside network namespaces (tests/netns.py)."""
    os.environ["OVERDRIVE_NO_DISCOVERY"] = "1"
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def overdrive_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private OVERDRIVE_HOME for every test, and no password leaking in from the environment."""
    home = tmp_path / "home"
    monkeypatch.setenv("OVERDRIVE_HOME", str(home))
    monkeypatch.delenv("OVERDRIVE_PASSWORD", raising=False)
    monkeypatch.delenv("OVERDRIVE_KEY_FILE", raising=False)
    monkeypatch.delenv("OVERDRIVE_CONFIG", raising=False)
    return home


_open_sockets: weakref.WeakSet[zmq.Socket] = weakref.WeakSet()  # type: ignore[type-arg]
_original_socket = zmq.Context.socket


def _tracking_socket(self: zmq.Context, *args: object, **kwargs: object) -> zmq.Socket:  # type: ignore[type-arg]
    sock = _original_socket(self, *args, **kwargs)  # type: ignore[arg-type]
    _open_sockets.add(sock)
    return sock


zmq.Context.socket = _tracking_socket  # type: ignore[method-assign]


def _pyzmq_internal(sock: zmq.Socket) -> bool:  # type: ignore[type-arg]
    """pyzmq's zero-copy garbage collector owns a process-wide context, thread and sockets; they are not leaks,
    and closing them from here would pull a socket out from under that thread (a libzmq signaler assertion)."""
    return garbage.gc._context is not None and sock.context is garbage.gc._context


@pytest.fixture(autouse=True)
def no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves ZeroMQ sockets open or threads running (pyzmq's own zero-copy helper excepted)."""
    threads_before = set(threading.enumerate())
    sockets_before = {id(s) for s in _open_sockets if not s.closed}
    yield
    if request.node.get_closest_marker("allow_leaks"):
        return
    deadline = time.monotonic() + 5.0
    while True:
        leaked_sockets = [
            s for s in _open_sockets if not s.closed and id(s) not in sockets_before and not _pyzmq_internal(s)
        ]
        leaked_threads = [
            t
            for t in threading.enumerate()
            if t not in threads_before and t.is_alive() and not isinstance(t, garbage.GarbageCollectorThread)
        ]
        if not (leaked_sockets or leaked_threads) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for sock in leaked_sockets:
        sock.close(linger=0)
    problems = []
    if leaked_sockets:
        kinds = sorted(zmq.SocketType(s.type).name for s in leaked_sockets)
        problems.append(f"{len(leaked_sockets)} ZeroMQ socket(s) left open: {', '.join(kinds)}")
    if leaked_threads:
        problems.append(f"thread(s) still running: {', '.join(t.name for t in leaked_threads)}")
    if problems:
        pytest.fail("; ".join(problems))


@dataclass
class TestNetwork:
    """A password-protected network for tests, handing out buses that are closed at teardown."""

    __test__ = False  # not a test class, despite the name

    password: str
    name: str
    key: NetworkKey
    mesh_key: MeshKey
    """The masters' credential: every master of a test shares it."""
    _buses: list[Bus] = field(default_factory=list)

    def mesh_key_file(self, folder: Path) -> Path:
        """The mesh key as a file in ``folder`` (written on first use), for ``overdrive master --mesh-key``."""
        path = folder / "mesh.key"
        if not path.exists():
            folder.mkdir(parents=True, exist_ok=True)
            self.mesh_key.write(path)
        return path

    def bus(self, *, password: str | None = None, insecure: bool = False) -> Bus:
        """A bus with a fresh node identity: the network's key, another password's, or none (insecure)."""
        if insecure:
            key = None
        elif password is None:
            key = self.key
        else:
            key = NetworkKey.from_password(password, self.name)
        bus = Bus(Security(identity=NodeIdentity.generate(), key=key))
        self._buses.append(bus)
        return bus

    def env(self, home: Path, **extra: str) -> dict[str, str]:
        """Environment for an overdrive child process on this network."""
        env = dict(
            os.environ, OVERDRIVE_HOME=str(home), OVERDRIVE_PASSWORD=self.password, OVERDRIVE_NETWORK=self.name, **extra
        )
        return env

    def close(self) -> None:
        for bus in self._buses:
            bus.close()
        self._buses.clear()


_KEY_CACHE: dict[tuple[str, str], NetworkKey] = {}


@pytest.fixture
def network() -> Iterator[TestNetwork]:
    """A test network (password, name, derived key); the key derivation is paid once per session."""
    key = _KEY_CACHE.get((PASSWORD, NETWORK))
    if key is None:
        key = _KEY_CACHE[(PASSWORD, NETWORK)] = NetworkKey.from_password(PASSWORD, NETWORK)
    net = TestNetwork(PASSWORD, NETWORK, key, MeshKey.generate(NETWORK))
    yield net
    net.close()


class Children:
    """overdrive child processes that print the ready line (:mod:`overdrive.bus.ready`) on stdout; stopped at
    teardown (SIGTERM, then kill)."""

    def __init__(self, network: TestNetwork, tmp: Path) -> None:
        self.network, self.tmp = network, tmp
        self.procs: list[subprocess.Popen[str]] = []

    def spawn(self, home: str, *args: str) -> tuple[subprocess.Popen[str], Ready]:
        """Start ``overdrive ARGS`` with its own OVERDRIVE_HOME; its process and the ready line it printed."""
        proc = subprocess.Popen(
            [sys.executable, "-m", "overdrive", *args],
            env=self.network.env(self.tmp / home),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        try:
            ready = parse_ready(line)
        except ValueError:
            proc.kill()
            pytest.fail(f"{args[0]} did not start: {line}{proc.communicate(timeout=10)[1][-2000:]}")
        assert ready.what == args[0], line
        return proc, ready

    def start(self, home: str, *args: str) -> Endpoint:
        return self.spawn(home, *args)[1].endpoint

    def master(self, *args: str) -> Endpoint:
        """A master holding the test network's mesh key (so it may join other masters started here)."""
        key = str(self.network.mesh_key_file(self.tmp))
        return self.start("master", "master", "--bind", "tcp://127.0.0.1:0", "--stats", "0", "--mesh-key", key, *args)

    def stop(self) -> None:
        stop(*self.procs, timeout=10)


@pytest.fixture
def children(network: TestNetwork, tmp_path: Path) -> Iterator[Children]:
    c = Children(network, tmp_path)
    yield c
    c.stop()


@pytest.fixture
def run_cli(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run ``python -m overdrive ARGS`` as a real subprocess and capture its output.

    A run that outlives ``timeout`` is sent SIGABRT first, so faulthandler prints where every thread was stuck
    (the failure shows it), and only then killed.
    """

    def run(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "overdrive", *args]
        child_env = {**(env or os.environ), "PYTHONFAULTHANDLER": "1"}
        with subprocess.Popen(
            argv, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path
        ) as proc:
            try:
                stdout, stderr = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGABRT)
                try:
                    stdout, stderr = proc.communicate(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    stdout, stderr = proc.communicate()
                pytest.fail(f"{' '.join(args)} still running after {timeout} s; its stderr:\n{stderr}", pytrace=False)
        return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)

    return run
