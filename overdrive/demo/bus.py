"""Demo step for the bus: an echo server in a child process (``python -m overdrive.demo echo-server``), and a
right, a wrong and a plain-text client trying it."""

from __future__ import annotations

import os
import time

import zmq

from overdrive.bus.address import Endpoint
from overdrive.bus.codec import Codec, Message
from overdrive.bus.ready import Ready
from overdrive.bus.security import NetworkKey, NodeIdentity
from overdrive.bus.sockets import Bus, Security
from overdrive.config import PASSWORD_ENV, GlobalOptions
from overdrive.demo.context import DemoContext, console
from overdrive.errors import AuthError, OverdriveError, UnreachableError


class Note(Message, tag="note", frozen=True):
    """The demo's only message: some text, echoed back with who sent it."""

    text: str
    sender: str = ""


CODEC: Codec[Note] = Codec(Note)


def _client_bus(ctx: DemoContext, password: str | None) -> Bus:
    key = NetworkKey.from_password(password, ctx.network) if password is not None else None
    return Bus(Security(identity=NodeIdentity.generate(), key=key))


def step_secure_echo(ctx: DemoContext) -> bool:
    """An echo server in a child process; a right, a wrong and a plain-text client try it."""
    console.rule("[bold]bus: encrypted, authenticated messages")
    endpoint = ctx.started("-m", "overdrive.demo", "echo-server")
    if endpoint is None:
        return False
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


def echo_server() -> None:
    """Child process: bind a CURVE ROUTER on an ephemeral port, print it, echo notes with the sender's node id."""
    opts = GlobalOptions(password=os.environ[PASSWORD_ENV], network=os.environ.get("OVERDRIVE_NETWORK", "demo"))
    with opts.bus() as bus:
        sock = bus.server(zmq.ROUTER)
        endpoint = bus.bind(sock, Endpoint("127.0.0.1", 0))
        Ready("echo-server", endpoint).announce()
        while True:
            frames = sock.recv_multipart(copy=False)
            try:
                note, _ = CODEC.decode(frames[1:])
            except OverdriveError:
                continue
            reply = Note(text=note.text, sender=bus.peer_id(frames[1]))
            sock.send_multipart([frames[0], *CODEC.encode(reply)])
