"""A simulated LAN for discovery tests: network namespaces ("machines") joined by a bridge in a "switch" namespace.

Discovery must never run on the host's real interfaces in a test, so every process that uses mDNS runs inside a
machine namespace (``ip netns exec``), whose only interfaces are its own ``lo`` and one end of a veth pair whose
other end is a port of the switch's bridge. Names are ``od-PID-N-ROLE``: unique per test, and :func:`clean_stale`
removes those whose creating process is gone (a run killed before its finalizers). Needs root and iproute2.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

PREFIX = "od-"
_counter = itertools.count(1)
_NAME = re.compile(rf"{PREFIX}(\d+)-\d+-\w+")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=20)


def usable() -> str | None:
    """Why namespaces cannot be made here (None when they can)."""
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    return None


def _namespaces() -> list[str]:
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_inside(namespace: str) -> None:
    """End what still runs in ``namespace`` (only our test's processes are ever started there)."""
    pids = [int(p) for p in _ip("netns", "pids", namespace, check=False).stdout.split()]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def delete(namespace: str) -> None:
    _kill_inside(namespace)
    _ip("netns", "del", namespace, check=False)


def clean_stale() -> None:
    """Delete ``od-*`` namespaces left by test runs that no longer exist."""
    for namespace in _namespaces():
        match = _NAME.fullmatch(namespace)
        if match and not _alive(int(match.group(1))):
            delete(namespace)


class Lan:
    """One switch and the machines plugged into it (10.77.N.0/24); :meth:`close` removes it all."""

    def __init__(self) -> None:
        self.id = f"{PREFIX}{os.getpid()}-{next(_counter)}"
        self.subnet = 1 + (next(_counter) % 250)
        self.switch = f"{self.id}-sw"
        self.machines: dict[str, str] = {}
        self.addresses: dict[str, str] = {}
        self.procs: list[subprocess.Popen[str]] = []
        _ip("netns", "add", self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")

    def machine(self, name: str, *, multicast: bool = True) -> str:
        """A new machine on the switch; returns its namespace. ``multicast=False``: the switch floods no multicast
        to it (as Wi-Fi client isolation or a firewall on UDP 5353 would), so it hears no mDNS answer; unicast
        (TCP to a typed address) still works."""
        namespace = f"{self.id}-{name}"
        number = len(self.machines) + 1
        _ip("netns", "add", namespace)
        self.machines[name] = namespace
        port = f"p{number}"
        _ip("-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", namespace)
        _ip("-n", self.switch, "link", "set", port, "master", "br0")
        _ip("-n", self.switch, "link", "set", port, "up")
        address = f"10.77.{self.subnet}.{10 + number}"
        _ip("-n", namespace, "link", "set", "lo", "up")
        _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", namespace, "link", "set", "eth0", "up")
        # a gateway nobody answers for, as on a LAN with a router: a service guessing its own address asks the
        # kernel for the route to the outside
        _ip("-n", namespace, "route", "add", "default", "via", f"10.77.{self.subnet}.1", "dev", "eth0")
        if not multicast:
            _ip("-n", self.switch, "link", "set", port, "type", "bridge_slave", "mcast_flood", "off")
        self.addresses[name] = address
        return namespace

    def argv(self, machine: str, args: Sequence[str]) -> list[str]:
        """``overdrive ARGS`` run on ``machine``."""
        return ["ip", "netns", "exec", self.machines[machine], sys.executable, "-m", "overdrive", *args]

    def spawn(self, machine: str, args: Sequence[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
        """Start ``overdrive ARGS`` on ``machine`` (stopped by :meth:`close` if still running)."""
        proc = subprocess.Popen(
            self.argv(machine, args), env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.procs.append(proc)
        return proc

    def python(self, machine: str, code: str, env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
        """Run ``python -c CODE`` on ``machine`` (a hand-made announcement, say), stopped by :meth:`close`."""
        argv = ["ip", "netns", "exec", self.machines[machine], sys.executable, "-c", code]
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.procs.append(proc)
        return proc

    def run(
        self, machine: str, args: Sequence[str], env: dict[str, str], cwd: Path, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(machine, args), env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
        )

    def close(self) -> None:
        """Stop what runs here (SIGTERM, so announcements say goodbye; then SIGKILL), delete every namespace."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 10
        for proc in self.procs:
            try:
                proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
        for namespace in [*self.machines.values(), self.switch]:
            delete(namespace)
