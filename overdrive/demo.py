"""``overdrive demo``: run the system on loopback in child processes and report what happened.

Each step is a function returning True on success; later features append their own steps. The demo uses a fresh
``OVERDRIVE_HOME`` and random password, so it never touches the user's keys, index or backup folder.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import zmq

from overdrive.bus.address import Endpoint
from overdrive.bus.codec import Codec, Message
from overdrive.bus.security import NetworkKey, NodeIdentity
from overdrive.bus.sockets import Bus, Security
from overdrive.cliutil import console
from overdrive.config import PASSWORD_ENV, GlobalOptions
from overdrive.errors import AuthError, OverdriveError, UnreachableError


class Note(Message, tag="note", frozen=True):
    """The demo's only message: some text, echoed back with who sent it."""

    text: str
    sender: str = ""


CODEC: Codec[Note] = Codec(Note)


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

    def stop_all(self) -> None:
        for proc in self.children:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.children:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


Step = Callable[[DemoContext], bool]


def free_port() -> int:
    """A port free on loopback now (a child binds it a moment later; the demo accepts that small race)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _client_bus(ctx: DemoContext, password: str | None) -> Bus:
    key = NetworkKey.from_password(password, ctx.network) if password is not None else None
    return Bus(Security(identity=NodeIdentity.generate(), key=key))


def step_secure_echo(ctx: DemoContext) -> bool:
    """An echo server in a child process; a right, a wrong and a plain-text client try it."""
    console.rule("[bold]bus: encrypted, authenticated messages")
    server = ctx.spawn("-m", "overdrive.demo", "echo-server")
    assert server.stdout is not None
    line = server.stdout.readline().decode().strip()
    if not line.startswith("port "):
        console.print(f"[red]echo server failed to start: {line or server.stderr.read().decode()[-300:]}")  # type: ignore[union-attr]
        return False
    endpoint = Endpoint("127.0.0.1", int(line.split()[1]))
    ok = True
    with _client_bus(ctx, ctx.password) as bus:
        sock = bus.client(zmq.DEALER)
        started = time.perf_counter()
        bus.connect(sock, endpoint)
        sock.send_multipart(CODEC.encode(Note(text="hello over CURVE")))
        if sock.poll(3000):
            reply, _ = CODEC.decode(sock.recv_multipart())
            elapsed = (time.perf_counter() - started) * 1000
            same = reply.sender == bus.node_id
            console.print(
                f"right password: echoed {reply.text!r} in {elapsed:.1f} ms; server saw node id {reply.sender}"
                f" ({'matches ours' if same else 'MISMATCH'})"
            )
            ok &= same
        else:
            console.print("[red]right password: no reply")
            ok = False
        sock.close()
    for label, password in (("wrong password", "not-" + ctx.password), ("no encryption", None)):
        with _client_bus(ctx, password) as bus:
            sock = bus.client(zmq.DEALER)
            started = time.perf_counter()
            try:
                bus.connect(sock, endpoint)
                console.print(f"[red]{label}: was admitted (this is a bug)")
                ok = False
            except (AuthError, UnreachableError) as exc:
                console.print(f"{label}: refused after {(time.perf_counter() - started) * 1000:.0f} ms: {exc}")
            sock.close()
    return ok


def all_steps() -> list[Step]:
    """The bus step, then each feature's ``STEPS`` (imported late: they import this module's DemoContext)."""
    from overdrive.index import demo as index_demo
    from overdrive.media import demo as media_demo
    from overdrive.transfer import demo as transfer_demo

    return [step_secure_echo, *media_demo.STEPS, *index_demo.STEPS, *transfer_demo.STEPS]


def run_demo(opts: GlobalOptions, seconds: float = 5.0) -> bool:
    """Run every step; print a summary; return True when all succeeded."""
    with tempfile.TemporaryDirectory(prefix="overdrive-demo-") as home:
        ctx = DemoContext(Path(home), secrets.token_urlsafe(12), "demo", seconds)
        console.print(f"demo home {home}, network 'demo', random password")
        results: list[tuple[str, bool]] = []
        try:
            for step in all_steps():
                try:
                    ok = step(ctx)
                except OverdriveError as exc:
                    console.print(f"[red]{step.__name__}: {exc}")
                    ok = False
                results.append((step.__name__.removeprefix("step_"), ok))
        finally:
            ctx.stop_all()
    console.rule("[bold]summary")
    for name, ok in results:
        console.print(f"{'[green]OK  ' if ok else '[red]FAIL'}[/] {name}")
    return all(ok for _, ok in results)


def _echo_server() -> None:
    """Child process: bind a CURVE ROUTER on an ephemeral port, print it, echo notes with the sender's node id."""
    opts = GlobalOptions(password=os.environ[PASSWORD_ENV], network=os.environ.get("OVERDRIVE_NETWORK", "demo"))
    with opts.bus() as bus:
        sock = bus.server(zmq.ROUTER)
        endpoint = bus.bind(sock, Endpoint("127.0.0.1", 0))
        print(f"port {endpoint.port}", flush=True)
        while True:
            frames = sock.recv_multipart(copy=False)
            try:
                note, _ = CODEC.decode(frames[1:])
            except OverdriveError:
                continue
            reply = Note(text=note.text, sender=bus.peer_id(frames[1]))
            sock.send_multipart([frames[0], *CODEC.encode(reply)])


if __name__ == "__main__" and sys.argv[1:] == ["echo-server"]:
    _echo_server()
