"""A fuzz harness: real overdrive processes on loopback fed hostile messages (tests/fuzzlib.py) by peers holding
the network password.

Server targets (``master`` ROUTER, ``share`` ROUTER, ``stream`` PUB) run as ``python -m overdrive`` children. Each
is warmed up with honest work and a short flood, then flooded with N messages from many connections (a new
identity every few batches, from 8 source addresses), after which its RSS growth is measured (psutil) and an honest
client must still be served: a master takes a registration and answers a lookup, a share serves a file
byte-identically, a streamer's viewer gets a video frame. Client targets (``ls``, ``fetch``, ``view``) run against
a hostile server run here, which answers every request with a batch of hostile messages (echoing the request's
ref) or keeps publishing them; each run must end without a traceback and with at most one line on stderr.

Used by tests/test_fuzz.py (the CI profile) and scripts/fuzz (the long run).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import zmq
from hypothesis import strategies as st

from overdrive.bus.address import Endpoint
from overdrive.bus.codec import Codec
from overdrive.bus.ready import parse_ready
from overdrive.bus.security import NetworkKey, NodeIdentity
from overdrive.bus.sockets import DEFAULT_MAX_MESSAGE, Bus, Security
from overdrive.demo.context import stop
from overdrive.files.model import FileInfo
from overdrive.index import protocol as ip
from overdrive.index.client import IndexClient
from overdrive.media import protocol as mp
from overdrive.transfer import protocol as tp
from overdrive.transfer.fetcher import FetchRequest, fetch
from overdrive.transfer.server import MAX_REQUEST
from tests.fuzzlib import Fuzz, examples, messages, subscriptions

PASSWORD = "fuzz horse battery staple"
NETWORK = "overdrive-fuzz"
MB = 1 << 20
ATTACKER_ADDRESSES = 8
"""Source addresses the attacker's connections come from (127.0.0.2 and up); honest clients use 127.0.0.1."""
SEND_TIMEOUT_MS = 20_000
"""A target that takes no message for this long is stuck: the flood fails."""


@dataclass
class Result:
    """One target's run, as scripts/fuzz prints it."""

    target: str
    messages: int
    rss_before: float | None = None
    rss_after: float | None = None
    served: bool = False
    detail: str = ""
    seconds: float = 0.0

    @property
    def growth(self) -> float | None:
        return None if self.rss_before is None or self.rss_after is None else self.rss_after - self.rss_before


class Network:
    """Password, key and buses for one harness run; every bus is closed by :meth:`close`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.key = NetworkKey.from_password(PASSWORD, NETWORK)
        self.buses: list[Bus] = []
        self.procs: list[subprocess.Popen[str]] = []

    def bus(self) -> Bus:
        bus = Bus(Security(identity=NodeIdentity.generate(), key=self.key))
        self.buses.append(bus)
        return bus

    def env(self, home: str) -> dict[str, str]:
        return dict(os.environ, OVERDRIVE_HOME=str(self.root / home), OVERDRIVE_PASSWORD=PASSWORD,
                    OVERDRIVE_NETWORK=NETWORK, PYTHONFAULTHANDLER="1")  # fmt: skip

    def spawn(self, home: str, *args: str) -> tuple[subprocess.Popen[str], Endpoint]:
        """``overdrive ARGS`` as a child; its process and the address from its ready line."""
        err = open(self.root / f"{home}.stderr", "w")  # noqa: SIM115 - the child holds it; closed with the run
        proc = subprocess.Popen([sys.executable, "-m", "overdrive", *args], env=self.env(home),
                                stdout=subprocess.PIPE, stderr=err, text=True)  # fmt: skip
        err.close()
        self.procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        try:
            return proc, parse_ready(line).endpoint
        except ValueError:
            proc.kill()
            raise RuntimeError(f"{args[0]} did not start: {line}{self.stderr(home)}") from None

    def stderr(self, home: str) -> str:
        path = self.root / f"{home}.stderr"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def close(self) -> None:
        stop(*self.procs, timeout=10)
        for bus in self.buses:
            bus.close()


def rss_mb(proc: subprocess.Popen[str]) -> float:
    return psutil.Process(proc.pid).memory_info().rss / MB


class Server:
    """A server target: a child process, a hostile socket kind, its strategy and an honest check."""

    name = ""
    hostile_kind = zmq.DEALER
    max_frame = DEFAULT_MAX_MESSAGE
    """The target's ZMQ_MAXMSGSIZE: a message with a bigger frame goes out on a connection of its own."""

    def __init__(self, net: Network) -> None:
        self.net = net
        self.bus = net.bus()
        self.connections = 0
        self.proc, self.endpoint = self.start()

    def start(self) -> tuple[subprocess.Popen[str], Endpoint]:
        raise NotImplementedError

    def strategy(self) -> st.SearchStrategy[Fuzz]:
        raise NotImplementedError

    def honest(self) -> None:
        """Raise AssertionError (or an overdrive error) unless an honest client is served."""
        raise NotImplementedError

    def alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited {self.proc.returncode}: {self.net.stderr(self.name)}")

    def hostile(self) -> zmq.Socket:  # type: ignore[type-arg]
        """A new connection with a new identity (ROUTER routing id and CURVE key), holding the password, from one
        of the attacker's source addresses (127.0.0.2-9): on a LAN the attacker is another machine than the honest
        client (127.0.0.1), whose per-address budgets the target keeps apart."""
        bus = Bus(Security(identity=NodeIdentity.generate(), key=self.net.key), context=self.bus.context)
        sock = bus.client(self.hostile_kind)
        sock.setsockopt(zmq.SNDTIMEO, SEND_TIMEOUT_MS)
        sock.setsockopt(zmq.LINGER, 0)
        self.connections += 1
        source = f"127.0.0.{2 + self.connections % ATTACKER_ADDRESSES}:0"
        sock.connect(f"tcp://{source};{self.endpoint.host}:{self.endpoint.port}")
        return sock


class MasterTarget(Server):
    name = "master"

    def start(self) -> tuple[subprocess.Popen[str], Endpoint]:
        return self.net.spawn("master", "master", "--bind", "tcp://127.0.0.1:0", "--stats", "0")

    def strategy(self) -> st.SearchStrategy[Fuzz]:
        node = "n" * 16
        info = FileInfo(name="honest.bin", size=1, content_hash="cd" * 32, mtime_ns=1)
        honest = [
            ip.CODEC.encode(ip.Lookup(ref=1, name="")),
            ip.CODEC.encode(ip.Lookup(ref=2, name="*.bin", glob=True)),
            ip.CODEC.encode(ip.StatusQuery(ref=3)),
            ip.CODEC.encode(ip.Announce(ref=4, holder=node, address="127.0.0.1:9", files=[info], full=True)),
            ip.CODEC.encode(ip.NodeBeat(ref=5)),
            ip.CODEC.encode(ip.SyncRequest(ref=6, vector={})),
            ip.CODEC.encode(ip.BucketRequest(ref=7, buckets=[0, 1])),
        ]
        return messages(ip.CODEC, [[bytes(f) for f in m] for m in honest])

    def honest(self) -> None:
        info = FileInfo(name="after-fuzz.bin", size=7, content_hash="ef" * 32, mtime_ns=1)
        with IndexClient(self.bus, [self.endpoint], timeout=10) as client:
            client.register([info], "127.0.0.1:9")
            found = [e.name for e in client.lookup("after-fuzz.bin")]
        assert found == ["after-fuzz.bin"], found


class ShareTarget(Server):
    name = "share"
    max_frame = MAX_REQUEST

    def start(self) -> tuple[subprocess.Popen[str], Endpoint]:
        folder = self.net.root / "shared"
        folder.mkdir()
        self.data = os.urandom(300_000)
        (folder / "f.bin").write_bytes(self.data)
        _, master = self.net.spawn("share-master", "master", "--bind", "tcp://127.0.0.1:0", "--stats", "0")
        self.fetches = 0
        return self.net.spawn("share", "share", str(folder), "--master", master.display,
                              "--bind", "tcp://127.0.0.1:0", "--advertise", "127.0.0.1", "--no-watch")  # fmt: skip

    def strategy(self) -> st.SearchStrategy[Fuzz]:
        honest = [
            tp.CODEC.encode(tp.Open(rid=1, name="f.bin", content_hash="")),
            tp.CODEC.encode(tp.Read(tid=1, index=0)),
            tp.CODEC.encode(tp.Close(tid=1)),
        ]
        return messages(tp.CODEC, [[bytes(f) for f in m] for m in honest])

    def honest(self) -> None:
        self.fetches += 1
        dest = self.net.root / f"fetched-{self.fetches}"
        fetch(self.bus, FetchRequest(name="f.bin", sources=(self.endpoint,), dest_dir=dest))
        assert (dest / "f.bin").read_bytes() == self.data, "the fetched file differs"


class StreamTarget(Server):
    name = "stream"
    hostile_kind = zmq.XSUB  # (un)subscriptions are single frames: sent in line even past MAX_SUBSCRIPTION

    def start(self) -> tuple[subprocess.Popen[str], Endpoint]:
        return self.net.spawn("stream", "stream", "--source", "testpattern", "--bind", "tcp://127.0.0.1:0",
                              "--no-record", "--audio", "none", "--fps", "5", "--codec", "jpeg",
                              "--scale", "320x240")  # fmt: skip

    def strategy(self) -> st.SearchStrategy[Fuzz]:
        return subscriptions()

    def honest(self) -> None:
        sock = self.bus.client(zmq.SUB)
        try:
            sock.setsockopt(zmq.SUBSCRIBE, mp.TOPIC_VIDEO)
            self.bus.connect(sock, self.endpoint)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                if sock.poll(500):
                    _, *frames, _signature = sock.recv_multipart()  # the streamer signs every message
                    message, _ = mp.CODEC.decode(frames)
                    assert isinstance(message, mp.VideoFrame)
                    return
            raise AssertionError("an honest viewer got no video frame in 15 s")
        finally:
            sock.close(linger=0)


SERVERS: dict[str, type[Server]] = {"master": MasterTarget, "share": ShareTarget, "stream": StreamTarget}
CLIENTS = ("ls", "fetch", "view")
TARGETS = (*SERVERS, *CLIENTS)


def send_alone(target: Server, frames: list[bytes]) -> int:
    """Send one message with a frame past the target's limit on a connection of its own, which the target drops
    for it. (When a connection was dropped while multipart messages were queued behind it, libzmq 4.3.5 aborted the
    sending process, the harness, at session_base.cpp:233.)"""
    sock = target.hostile()
    try:
        sock.send_multipart(frames, copy=False)
    finally:
        sock.close(linger=2000)
    return 1


def flood_server(target: Server, count: int, seed_value: int, *, identities: int = 20) -> int:
    """Send ``count`` hostile messages to ``target`` from a pool of connections, a fresh one (new identity) every
    few batches; read replies only sometimes (a peer that never reads is hostile too). Returns messages sent."""
    pool = [target.hostile() for _ in range(4)]
    sent = 0
    fresh = 0
    try:
        for n, batch in enumerate(examples(target.strategy(), count, seed_value)):
            sock = pool[n % len(pool)]
            for fuzz in batch:
                frames = fuzz.encode()
                if max(len(f) for f in frames) > target.max_frame:
                    sent += send_alone(target, frames)
                    continue
                for _ in range(fuzz.repeat):
                    sock.send_multipart(frames, copy=False)
                    sent += 1
            if n % 3 == 0:
                while sock.poll(0):
                    sock.recv_multipart()
            if n % 5 == 4:
                sock.close(linger=0)
                pool[n % len(pool)] = target.hostile()
                fresh += 1
                if fresh % identities == 0:
                    target.alive()
    finally:
        for sock in pool:
            sock.close(linger=0)
    return sent


def settle(target: Server) -> None:
    """Let the target work through what it was sent: an honest round trip, then a short quiet."""
    time.sleep(1.0)
    target.alive()


def run_server(name: str, count: int, seed_value: int, root: Path) -> Result:
    """Start one server target, warm it up with honest work, flood it, and check it: the table row."""
    net = Network(root)
    try:
        target = SERVERS[name](net)
        target.honest()
        flood_server(target, min(200, count), seed_value - 1)  # warm-up: caches and buffers reach steady size
        settle(target)
        target.honest()
        before = rss_mb(target.proc)
        result = Result(name, 0, before)
        try:
            result.messages = flood_server(target, count, seed_value)
            settle(target)
            result.rss_after = rss_mb(target.proc)
            target.honest()
            target.alive()
            result.served = True
        except Exception as exc:  # noqa: BLE001 - a dead target or a failed honest client is the result
            result.detail = f"seed {seed_value}: {type(exc).__name__}: {exc}".replace("\n", " / ")[-1500:]
        return result
    finally:
        net.close()


@dataclass
class HostileServer:
    """A hostile ROUTER (or PUB) run here for one CLI run: answers every request with ``answers`` (echoing the
    request's ref/rid/tid into those that ask for it), or keeps publishing them."""

    bus: Bus
    kind: int
    answers: list[Fuzz]
    codec: Codec  # type: ignore[type-arg]
    sent: int = 0
    thread: threading.Thread | None = None
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.sock = self.bus.server(self.kind)
        self.endpoint = self.bus.bind(self.sock, Endpoint("127.0.0.1", 0))
        self.thread = threading.Thread(target=self._run, name=f"hostile-{self.kind}", daemon=True)
        self.thread.start()

    def _refs(self, frames: list[bytes]) -> dict[str, int]:
        try:
            message, _ = self.codec.decode(frames)
        except Exception:  # noqa: BLE001 - whatever the client sent, keep answering
            return {}
        return {k: getattr(message, k) for k in ("ref", "rid", "tid") if isinstance(getattr(message, k, None), int)}

    def _run(self) -> None:
        n = 0
        while not self.stop.is_set():
            if self.kind == zmq.PUB:
                fuzz = self.answers[n % len(self.answers)]
                topic = (mp.TOPIC_INFO, mp.TOPIC_VIDEO, mp.TOPIC_AUDIO, b"z")[n % 4]
                self.sock.send_multipart([topic, *fuzz.encode()])
                self.sent += 1
                n += 1
                if n % 10 == 0:
                    time.sleep(0.005)
            elif self.sock.poll(50):
                routing, *frames = self.sock.recv_multipart()
                refs = self._refs(frames)
                for fuzz in self.answers:
                    for _ in range(fuzz.repeat):
                        self.sock.send_multipart([routing, *fuzz.encode(refs)])
                        self.sent += 1

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(10)
        self.sock.close(linger=0)


def client_argv(name: str, address: str, out: Path) -> list[str]:
    if name == "ls":
        return ["ls", "--master", address, "--timeout", "1"]
    if name == "fetch":
        return ["fetch", "f.bin", "--from", address, "--out", str(out)]
    return ["view", address, "--headless", "--duration", "1.5", "--no-record"]


CLIENT_CODECS: dict[str, tuple[Codec, int]] = {  # type: ignore[type-arg]
    "ls": (ip.CODEC, zmq.ROUTER),
    "fetch": (tp.CODEC, zmq.ROUTER),
    "view": (mp.CODEC, zmq.PUB),
}


def check_client_output(proc: subprocess.CompletedProcess[str]) -> str:
    """Empty when a CLI run facing a hostile server ended well: no traceback and at most one line on stderr. (It
    may succeed: a hostile master may answer a lookup with made-up entries that are valid messages.)"""
    if "Traceback" in proc.stderr:
        return f"traceback: {proc.stderr[-2000:]}"
    lines = proc.stderr.strip().splitlines()
    if len(lines) > 1:
        return f"{len(lines)} lines on stderr: {proc.stderr[-2000:]}"
    return ""


def _grouped(batches: Iterator[list[Fuzz]], size: int) -> Iterator[list[Fuzz]]:
    """The drawn messages in groups of at least ``size`` (replays counted), the last one smaller."""
    group: list[Fuzz] = []
    for batch in batches:
        group.extend(batch)
        if sum(f.repeat for f in group) >= size:
            yield group
            group = []
    if group:
        yield group


def run_client(name: str, count: int, seed_value: int, root: Path) -> Result:
    """Run the CLI command ``name`` against hostile servers until ``count`` hostile messages were sent to it: at
    most 25 runs, each answering every request with at least 400 messages (a publisher cycles through at least
    2,000 for the whole run)."""
    net = Network(root)
    codec, kind = CLIENT_CODECS[name]
    per_run = max(2_000 if kind == zmq.PUB else 400, count // 25)
    result = Result(name, 0, served=True)
    started = time.monotonic()
    try:
        bus = net.bus()
        batches = examples(messages(codec, [[b"\x92\x01\xc0"]]), count, seed_value)
        for runs, answers in enumerate(_grouped(batches, per_run), 1):
            server = HostileServer(bus, kind, answers, codec)
            try:
                argv = [sys.executable, "-m", "overdrive", *client_argv(name, server.endpoint.display, root / "out")]
                proc = subprocess.run(argv, env=net.env(f"{name}-home"), capture_output=True, text=True,
                                      timeout=60, check=False, cwd=root)  # fmt: skip
            finally:
                server.close()
            result.messages += server.sent
            problem = check_client_output(proc)
            if problem:
                result.served = False
                result.detail = f"run {runs} (seed {seed_value}): {problem}"
                break
        return result
    finally:
        result.seconds = time.monotonic() - started
        net.close()


def run(name: str, count: int, seed_value: int) -> Result:
    """One target's fuzz run in a temporary folder."""
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{name}-") as tmp:
        started = time.monotonic()
        if name in SERVERS:
            result = run_server(name, count, seed_value, Path(tmp))
        else:
            result = run_client(name, count, seed_value, Path(tmp))
        result.seconds = time.monotonic() - started
        return result


def table(results: list[Result]) -> str:
    """The results as a Markdown table."""
    rows = ["| target | messages | RSS before MB | RSS after MB | growth MB | honest service | seconds |",
            "|---|---:|---:|---:|---:|---|---:|"]  # fmt: skip

    def mb(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    for r in results:
        ok = "ok" if r.served else f"LOST ({r.detail})"
        rows.append(f"| {r.target} | {r.messages:,} | {mb(r.rss_before)} | {mb(r.rss_after)} | {mb(r.growth)} | "
                    f"{ok} | {r.seconds:.0f} |")  # fmt: skip
    return "\n".join(rows)
