"""What every demo step uses: :class:`DemoContext` (a scratch home, the password, child processes) and
:func:`stop`, the one way overdrive stops a child process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from overdrive.bus.address import Endpoint
from overdrive.bus.ready import parse_ready
from overdrive.config import PASSWORD_ENV

console = Console(highlight=False, soft_wrap=True)
"""Where the demo reports: stdout, since its progress and results are what the user ran it for; a line stays one
line in a pipe or file (the demo sits below the CLI, so it has its own console)."""

STOP_TIMEOUT = 5.0
"""Seconds a child gets to end after SIGTERM before it is killed."""


def stop(*procs: subprocess.Popen[Any], timeout: float = STOP_TIMEOUT) -> None:
    """End child processes: SIGTERM to every one still running, then wait for each, killing one that takes
    longer than ``timeout`` seconds (all are signalled first, so they wind down together). Their pipes are
    drained while waiting, so a child blocked writing to a full pipe still ends."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


@dataclass
class DemoContext:
    """What every demo step can use: a scratch home, the password, and child processes to clean up."""

    home: Path
    password: str
    network: str
    seconds: float
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ, OVERDRIVE_HOME=str(self.home), **extra)
        env[PASSWORD_ENV] = self.password
        env["OVERDRIVE_NETWORK"] = self.network
        return env

    def spawn(self, *args: str, **env: str) -> subprocess.Popen[bytes]:
        """Start ``python -m overdrive ARGS`` (or a module when args[0] is ``-m``) as a child process."""
        argv = [sys.executable, *args] if args[0] == "-m" else [sys.executable, "-m", "overdrive", *args]
        proc = subprocess.Popen(argv, env=self.env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.children.append(proc)
        return proc

    def started(self, *args: str) -> Endpoint | None:
        """:meth:`spawn` a long-lived child and wait for its ready line (:mod:`overdrive.bus.ready`); the address
        it gives, or None (said in red) when the child ended first."""
        proc = self.spawn(*args)
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        try:
            return parse_ready(line).endpoint
        except ValueError:
            if not line:  # stdout closed: the child is ending, and its stderr says why
                proc.wait(STOP_TIMEOUT)
            err = proc.stderr.read().decode()[-500:] if proc.stderr is not None and proc.poll() is not None else ""
            console.print(f"[red]{' '.join(args)} did not start: {line.strip() or err}")
            return None

    def stop_all(self) -> None:
        stop(*self.children)


Step = Callable[[DemoContext], bool]


def free_port() -> int:
    """A port free on loopback now (a child binds it a moment later; the demo accepts that small race)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
