#!/usr/bin/env python3
"""Memory of a master and a share under the floods of a password holder (issue 11), before and after hardening.

Writes the ``floods`` section of docs/benchmarks.md. Each target runs as a real ``overdrive master`` or
``overdrive share`` process on loopback (CURVE on), started from one of two source trees: this tree ("after") and
the tree of the last commit before the hardening ("before", extracted with ``git archive``). The wire protocol of
every message used here is the same in both, so the same hostile clients (password holders, built from the
blocks of tests/test_hostile_decode.py, test_mesh_bounds.py and test_transfer_fairness.py) face both.

Each run: start the target, warm it up with an honest client, take its RSS, flood it (stopped at the time cap or
when its RSS passes the memory cap), keep the hostile connected for a while and ask as an honest client meanwhile
("serves during"), let the hostile leave, wait, take the RSS again and ask again ("serves after"). An honest ask is
a master lookup answered and a status that decodes, or a file fetched byte-identical from a share (not "busy").

    .venv/bin/python scripts/bench_floods.py            # the full run (~20 min), 3 repeats; writes the docs
    .venv/bin/python scripts/bench_floods.py --smoke    # every flood tiny against both trees, checked; for CI
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import zmq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import benchlib  # noqa: E402

from overdrive.bus.address import Endpoint  # noqa: E402
from overdrive.bus.ready import parse_ready  # noqa: E402
from overdrive.bus.security import NetworkKey  # noqa: E402
from overdrive.bus.signing import MeshKey  # noqa: E402
from overdrive.demo.context import stop  # noqa: E402
from overdrive.errors import OverdriveError  # noqa: E402
from overdrive.files.model import FileInfo  # noqa: E402
from overdrive.index.client import IndexClient  # noqa: E402
from overdrive.index.protocol import CODEC as INDEX  # noqa: E402
from overdrive.index.protocol import VECTOR_LIMIT, BucketRequest, Lookup, MasterBeat, Updates  # noqa: E402
from overdrive.index.records import encode_rows  # noqa: E402
from overdrive.transfer.fetcher import FetchRequest, fetch  # noqa: E402
from overdrive.transfer.protocol import Open, Opened, Read  # noqa: E402
from overdrive.transfer.session import FetchConfig  # noqa: E402
from tests.conftest import TestNetwork  # noqa: E402
from tests.test_hostile_decode import DEEP  # noqa: E402
from tests.test_mesh_bounds import HOSTILE, made_up  # noqa: E402
from tests.test_transfer_fairness import BIG_CHUNK, Hostile  # noqa: E402

BEFORE = "370ad0f"
"""Merge of the review branch, the last commit before the hardening (the next, 39bda00, bounds decoding)."""
PASSWORD = "bench-floods-password"
NETWORK = "bench"
MB = 1 << 20
TITLE = "Floods: a master and a share against password holders, before and after hardening"


@dataclass(frozen=True)
class Scale:
    """How big and long each flood is."""

    repeats: int
    flood_s: float  # time cap of the flooding phase
    hold_s: float  # the hostile stays connected this long after flooding (the honest ask runs meanwhile)
    settle_s: float  # wait after it leaves before the "after" RSS
    cap: int  # stop flooding past this RSS; the target is killed past twice this
    ask_s: float  # an honest ask fails after this long
    files: int  # entries in a master's index
    fakes: int  # made-up masters in a heartbeat (flood 2)
    lookups: int  # unread list-everything lookups or bucket requests (flood 4)
    patterns: int  # distinct 4 KB glob patterns (flood 5)
    reads_few: int  # reads each of six identities sends (flood 7a)
    reads_many: int  # reads each of four identities sends (flood 7b)


FULL = Scale(3, 45.0, 6.0, 5.0, 1500 * MB, 10.0, 2_000, 1_000, 1_000, 20_000, 40, 600)
SMOKE = Scale(1, 4.0, 1.0, 1.0, 1500 * MB, 10.0, 100, 30, 30, 30, 2, 4)


@dataclass
class Target:
    """An ``overdrive master`` or ``overdrive share`` child process from one source tree, its RSS sampled."""

    proc: subprocess.Popen[str]
    endpoint: Endpoint
    cap: int
    peak: int = 0
    killed: bool = False
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.memory = psutil.Process(self.proc.pid)
        self.peak = self.rss()
        self._sampler = threading.Thread(target=self._sample, name="rss", daemon=True)
        self._sampler.start()

    def rss(self) -> int:
        try:
            return int(self.memory.memory_info().rss)
        except psutil.Error:
            return 0

    def _sample(self) -> None:
        while not self._stop.wait(0.05) and self.proc.poll() is None:
            self.peak = max(self.peak, self.rss())
            if self.peak > 2 * self.cap:  # protect the machine: the figure is "> cap" anyway
                self.killed = True
                self.proc.kill()

    @property
    def over(self) -> bool:
        return self.peak > self.cap or self.proc.poll() is not None

    def stop(self) -> None:
        self._stop.set()
        self._sampler.join(5)
        stop(self.proc, timeout=10)


def start(tree: Path, home: Path, args: list[str], cap: int) -> Target:
    """``python -m overdrive ARGS`` with ``tree`` first on the path (and as cwd, which ``-m`` puts first)."""
    home.mkdir(parents=True)
    env = dict(os.environ, PYTHONPATH=str(tree), OVERDRIVE_HOME=str(home), OVERDRIVE_PASSWORD=PASSWORD,
               OVERDRIVE_NETWORK=NETWORK)  # fmt: skip
    with (home / "stderr").open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "overdrive", *args], cwd=tree, env=env,
                                stdout=subprocess.PIPE, stderr=err, text=True)  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    try:
        ready = parse_ready(line)
    except ValueError:
        proc.kill()
        raise SystemExit(
            f"{args[0]} from {tree} did not start: {line}{(home / 'stderr').read_text()[-2000:]}"
        ) from None
    return Target(proc, ready.endpoint, cap)


@dataclass
class Run:
    """What one flood did to one target."""

    base: int
    peak: int
    after: int
    capped: bool
    alive: bool
    during: bool
    served: bool
    sent: int


@dataclass
class Ctx:
    """What a flood needs: the target, the network, the scale, and when to stop."""

    target: Target
    net: TestNetwork
    scale: Scale
    work: Path
    deadline: float = 0.0
    sent: int = 0

    def stop(self) -> bool:
        return time.monotonic() > self.deadline or self.target.over


# -- honest clients ------------------------------------------------------------------------------------------------

HONEST = "honest.bin"
WANTED = 8 << 20


def ask_master(ctx: Ctx) -> bool:
    """A lookup answered with the honest entry, and a status that decodes."""
    try:
        with IndexClient(ctx.net.bus(), [ctx.target.endpoint], timeout=ctx.scale.ask_s) as client:
            found = client.lookup(HONEST)
            client.status(digest=False)
        return [e.name for e in found] == [HONEST]
    except OverdriveError:
        return False


def ask_share(ctx: Ctx) -> bool:
    """The wanted file fetched byte-identical (a "busy" share fails it) within the ask timeout."""
    out = Path(tempfile.mkdtemp(dir=ctx.work))
    request = FetchRequest(name=HONEST, sources=(ctx.target.endpoint,), dest_dir=out,
                           config=FetchConfig(request_timeout=ctx.scale.ask_s))  # fmt: skip
    done: list[bool] = []

    def go() -> None:
        try:
            fetch(ctx.net.bus(), request)
            done.append((out / HONEST).read_bytes() == (ctx.work / "shared" / HONEST).read_bytes())
        except OverdriveError:
            done.append(False)

    thread = threading.Thread(target=go, name="honest-fetch", daemon=True)
    thread.start()
    thread.join(ctx.scale.ask_s + 5)
    shutil.rmtree(out, ignore_errors=True)
    return bool(done and done[0])


# -- the floods ------------------------------------------------------------------------------------------------------


class Flood:
    """One flood: ``run`` floods until done or ``ctx.stop()``; ``hold`` keeps it going while the honest client asks;
    ``leave`` closes every hostile socket."""

    def __init__(self, ctx: Ctx) -> None:
        self.ctx = ctx
        self.context: zmq.Context = zmq.Context()  # type: ignore[type-arg]
        self.socks: list[zmq.Socket] = []  # type: ignore[type-arg]

    def dealer(self, *, reads: bool = False) -> zmq.Socket:  # type: ignore[type-arg]
        """A password holder's DEALER to the target; one that never reads has a 4 KB receive buffer and HWM 1."""
        bus = self.ctx.net.bus()
        sock = bus.client(zmq.DEALER, hwm=1000 if reads else 1)
        if not reads:
            sock.rcvbuf = 4096
        bus.connect(sock, self.ctx.target.endpoint)
        self.socks.append(sock)
        return sock

    def run(self) -> None:
        raise NotImplementedError

    def hold(self, until: float) -> None:
        while time.monotonic() < until and not self.ctx.target.over:
            time.sleep(0.05)

    def leave(self) -> None:
        for sock in self.socks:
            sock.close(linger=0)
        self.context.destroy(linger=0)


class Deep(Flood):
    """1: three messages nested 2,000 levels deep."""

    def run(self) -> None:
        sock = self.dealer()
        for _ in range(3):
            sock.send_multipart([DEEP])
            self.ctx.sent += 1
        time.sleep(0.5)


class PosingMaster(Flood):
    """2 and 3: a password holder posing as a master; it answers the target's link with its own heartbeat."""

    fakes = 0

    def __init__(self, ctx: Ctx) -> None:
        super().__init__(ctx)
        bus = ctx.net.bus()
        self.listener = bus.server(zmq.ROUTER)
        self.socks.append(self.listener)
        at = bus.bind(self.listener, Endpoint("127.0.0.1", 0)).display
        fakes = {made_up(i): f"127.0.0.1:{40000 + i}" for i in range(self.fakes)}
        self.beat = INDEX.encode(MasterBeat(origin=HOSTILE, address=at, vector={}, masters={HOSTILE: at, **fakes},
                                            nodes=[]))  # fmt: skip
        self.sock = self.dealer(reads=True)
        self.answered = 0
        self._next = 0.0

    def turn(self) -> None:
        """Send a heartbeat every 0.2 s on the target's router; answer its link; drop what it sends us."""
        now = time.monotonic()
        if now >= self._next:
            self._next = now + 0.2
            self.sock.send_multipart(self.beat)
            self.ctx.sent += 1
        while self.listener.poll(20):
            identity, *frames = self.listener.recv_multipart()
            if frames and self.answered < 1_000_000:
                self.listener.send_multipart([identity, *self.beat])
                self.answered += 1
        while self.sock.poll(0):
            self.sock.recv_multipart()

    def run(self) -> None:
        while not self.ctx.stop():
            self.turn()

    def hold(self, until: float) -> None:
        while time.monotonic() < until and not self.ctx.target.over:
            self.turn()


class Gossip(PosingMaster):
    """2: a heartbeat listing made-up masters, sent until the time cap."""

    def __init__(self, ctx: Ctx) -> None:
        self.fakes = ctx.scale.fakes
        super().__init__(ctx)


class Origins(PosingMaster):
    """3: once the target has heard it as a master, live rows from VECTOR_LIMIT + 1 made-up origins."""

    def run(self) -> None:
        until = time.monotonic() + 3.0
        while self.answered < 3 and time.monotonic() < until and not self.ctx.stop():
            self.turn()
        rows = [(f"f{i}", 1, "ab" * 32, "nodeaaaaaaaaaaaa", "10.9.9.9:7772", 1, made_up(i), 1, 1 << 50, False)
                for i in range(VECTOR_LIMIT + 1)]  # fmt: skip
        self.sock.send_multipart(INDEX.encode(Updates(origin=HOSTILE), encode_rows(rows)))
        until = time.monotonic() + 2.0
        while time.monotonic() < until and not self.ctx.stop():
            self.turn()


class Unread(Flood):
    """4: list-everything lookups (or bucket requests) from a peer that never reads."""

    buckets = False

    def run(self) -> None:
        sock = self.dealer()
        for ref in range(1, self.ctx.scale.lookups + 1):
            if self.buckets:
                message = INDEX.encode(BucketRequest(ref=ref, buckets=list(range(256))))
            else:
                message = INDEX.encode(Lookup(ref=ref, name=""))
            sock.send_multipart(message)
            self.ctx.sent += 1


class UnreadBuckets(Unread):
    buckets = True


class Patterns(Flood):
    """5: lookups with distinct 4 KB glob patterns, a window of 50 in flight, answers read."""

    def run(self) -> None:
        sock = self.dealer(reads=True)
        answered = 0
        while self.ctx.sent < self.ctx.scale.patterns and not self.ctx.stop():
            while self.ctx.sent - answered < 50 and self.ctx.sent < self.ctx.scale.patterns:
                self.ctx.sent += 1
                pattern = f"{self.ctx.sent:06d}*" + "[ab]" * 1020
                sock.send_multipart(INDEX.encode(Lookup(ref=self.ctx.sent, name=pattern, glob=True)))
            if sock.poll(100):
                sock.recv_multipart()
                answered += 1


class Slots(Flood):
    """6: 40 identities from 20 loopback addresses ask for 8 transfers each (320; a share has 256) and never
    read (one read a minute is longer than the run)."""

    def run(self) -> None:
        self.hostile = [self.client(f"127.0.0.{2 + i % 20}") for i in range(40)]
        for client in self.hostile:
            for rid in range(8):
                client.send(Open(rid=rid, name=HONEST, content_hash=""))
                self.ctx.sent += 1
        until = time.monotonic() + 10
        while time.monotonic() < until and not self.ctx.stop():
            for client in self.hostile:
                client.take()
            if sum(len(c.answers) for c in self.hostile) >= self.ctx.sent:
                break
            time.sleep(0.05)

    def client(self, source: str) -> Hostile:
        client = Hostile(self.ctx.net, self.context, source, self.ctx.target.endpoint)
        self.socks.append(client.sock)
        return client


class BigChunks(Slots):
    """7: identities open the 16 MiB file in 4 MiB chunks and send reads they never collect."""

    identities, sources, many = 6, 1, False

    def run(self) -> None:
        reads = self.ctx.scale.reads_many if self.many else self.ctx.scale.reads_few
        hostile = [self.client(f"127.0.0.{2 + i % self.sources}") for i in range(self.identities)]
        for client in hostile:
            client.send(Open(rid=1, name="big.bin", content_hash="", chunk_size=BIG_CHUNK))
        for client in hostile:
            until = time.monotonic() + 10
            while not client.answers and time.monotonic() < until:
                client.take()
                time.sleep(0.02)
            opened = client.answers[0] if client.answers else None
            if not isinstance(opened, Opened):
                continue
            for n in range(reads):
                if self.ctx.stop():
                    return
                client.send(Read(tid=opened.tid, index=n % 4))
                self.ctx.sent += 1


class ManyReads(BigChunks):
    identities, sources, many = 4, 4, True


@dataclass(frozen=True)
class Case:
    label: str
    target: str  # "master" or "share"
    flood: type[Flood]


CASES = [
    Case("1 nested 2,000 deep", "master", Deep),
    Case("1 nested 2,000 deep", "share", Deep),
    Case("2 heartbeat with made-up masters", "master", Gossip),
    Case("3 rows from 10,001 made-up origins", "master", Origins),
    Case("4 unread list-everything lookups", "master", Unread),
    Case("4 unread bucket requests", "master", UnreadBuckets),
    Case("5 distinct 4 KB glob patterns", "master", Patterns),
    Case("6 40 identities holding the slots", "share", Slots),
    Case("7 six identities, 4 MiB chunks unread", "share", BigChunks),
    Case("7 four identities, many reads each", "share", ManyReads),
]


# -- running -------------------------------------------------------------------------------------------------------


def prepare(kind: str, tree: Path, work: Path, net: TestNetwork, scale: Scale) -> Target:
    if kind == "master":
        target = start(tree, work / "home", ["master", "--bind", "tcp://127.0.0.1:0", "--stats", "0"], scale.cap)
        names = [HONEST] + [f"{i:05d}-" + "n" * 150 for i in range(scale.files - 1)]
        files = [FileInfo(name=n, size=1, content_hash="ab" * 32, mtime_ns=1) for n in names]
        with IndexClient(net.bus(), [target.endpoint], timeout=10) as client:
            client.register(files, "127.0.0.1:7772")
        return target
    folder = work / "shared"
    folder.mkdir()
    (folder / HONEST).write_bytes(os.urandom(WANTED))
    (folder / "big.bin").write_bytes(os.urandom(4 * BIG_CHUNK))
    args = ["share", str(folder), "--master", "127.0.0.1:1", "--bind", "tcp://127.0.0.1:0", "--no-watch"]
    return start(tree, work / "home", args, scale.cap)


def one(case: Case, tree: Path, scale: Scale, key: NetworkKey) -> Run:
    work = Path(tempfile.mkdtemp(prefix="od-flood-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    net = TestNetwork(PASSWORD, NETWORK, key, MeshKey.generate(NETWORK))
    target = prepare(case.target, tree, work, net, scale)
    ctx = Ctx(target, net, scale, work)
    ask = ask_master if case.target == "master" else ask_share
    try:
        ask(ctx)  # warm-up: the honest client's first visit is part of the baseline
        time.sleep(0.5)
        base = target.rss()
        target.peak = base
        flood = case.flood(ctx)
        ctx.deadline = time.monotonic() + scale.flood_s
        try:
            flood.run()
            result: list[bool] = []
            asker = threading.Thread(target=lambda: result.append(ask(ctx)), name="ask-during", daemon=True)
            asker.start()
            flood.hold(time.monotonic() + scale.hold_s)
            asker.join(scale.ask_s + 10)
            during = bool(result and result[0])
        finally:
            flood.leave()
        until = time.monotonic() + scale.settle_s
        while time.monotonic() < until and target.proc.poll() is None:
            time.sleep(0.05)
        after = target.rss()
        alive = target.proc.poll() is None
        served = alive and ask(ctx)
        return Run(base, target.peak, after, target.peak > scale.cap or target.killed, alive and not target.killed,
                   during, served, ctx.sent)  # fmt: skip
    finally:
        target.stop()
        net.close()
        shutil.rmtree(work, ignore_errors=True)


def extract(commit: str, into: Path) -> Path:
    """The source tree of ``commit`` (``git archive | tar -x``), byte-compiled once so imports are not timed."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(into / "overdrive")], check=True)
    return into


def mb(value: float) -> str:
    return f"{value / MB:.0f}"


def cell_yes(values: list[bool]) -> str:
    yes = sum(values)
    return "yes" if yes == len(values) else "no" if yes == 0 else f"{yes}/{len(values)}"


def summarize(case: Case, tree: str, runs: list[Run]) -> list[object]:
    peak = benchlib.median([r.peak for r in runs])
    capped = sum(r.capped for r in runs) * 2 > len(runs)
    alive = [r.alive for r in runs]
    after = benchlib.median([r.after for r in runs if r.alive]) if any(alive) else float("nan")
    return [case.label, case.target, tree, mb(benchlib.median([r.base for r in runs])),
            f"> {mb(peak)}" if capped else mb(peak), "dead" if after != after else mb(after), cell_yes(alive),
            cell_yes([r.during for r in runs]), cell_yes([r.served for r in runs]),
            f"{benchlib.median([r.sent for r in runs]):,.0f}"]  # fmt: skip


HEADERS = ["flood", "target", "tree", "RSS before (MB)", "peak (MB)", "after it leaves (MB)", "alive",
           "serves during", "serves after", "messages sent"]  # fmt: skip


def comparable(case: Case, tree: str) -> bool:
    """Whether ``case`` can run against ``tree``. The holder proof changed the transfer wire format (open.v2) after
    the "before" commit, so today's clients cannot open files on the before share (floods 6 and 7 there). The share
    rows of docs/benchmarks.md were measured before that change, with one protocol for both trees."""
    return not (tree == "before" and case.target == "share" and case.label[0] in "67")


def check(results: dict[tuple[str, str, str], list[Run]]) -> list[str]:
    """What is missing or not sane: every run measured, and the hardened tree alive and serving under every flood."""
    problems = []
    for case in CASES:
        for tree in ("before", "after"):
            if not comparable(case, tree):
                continue
            runs = results.get((case.label, case.target, tree), [])
            if not runs:
                problems.append(f"{case.label} on the {tree} {case.target}: no result")
            for run in runs:
                if run.base <= 0 or run.peak < run.base or run.sent <= 0:
                    problems.append(f"{case.label} on the {tree} {case.target}: not sane: {run}")
                if tree == "after" and not (run.alive and run.during and run.served and not run.capped):
                    problems.append(f"{case.label} on the {tree} {case.target}: not alive and serving: {run}")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default=BEFORE, help=f"commit of the 'before' tree (default {BEFORE})")
    parser.add_argument("--repeats", type=int, help="runs of each flood on each tree (default 3)")
    parser.add_argument("--smoke", action="store_true", help="every flood tiny against both trees, checked; no docs")
    parser.add_argument("--only", default="", help="run only the floods whose label or target contains this")
    args = parser.parse_args()
    scale = SMOKE if args.smoke else FULL
    repeats = args.repeats or scale.repeats
    key = NetworkKey.from_password(PASSWORD, NETWORK)
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.before], capture_output=True,
                            text=True, check=True).stdout.strip()  # fmt: skip
    results: dict[tuple[str, str, str], list[Run]] = {}
    with tempfile.TemporaryDirectory(prefix="od-before-") as tmp:
        trees = {"before": extract(args.before, Path(tmp)), "after": ROOT}
        for repeat in range(repeats):
            for case in CASES:
                if args.only not in f"{case.label} {case.target}":
                    continue
                for name, tree in trees.items():
                    if not comparable(case, name):
                        continue
                    began = time.monotonic()
                    run = one(case, tree, scale, key)
                    results.setdefault((case.label, case.target, name), []).append(run)
                    print(f"[{repeat + 1}/{repeats}] {case.label} / {case.target} / {name}: {mb(run.base)} -> "
                          f"{mb(run.peak)}{'+' if run.capped else ''} -> {mb(run.after)} MB, alive {run.alive}, "
                          f"during {run.during}, after {run.served}, sent {run.sent} "
                          f"({time.monotonic() - began:.0f} s)", file=sys.stderr, flush=True)  # fmt: skip
    done = [c for c in CASES if (c.label, c.target, "after") in results]
    rows = [
        summarize(c, t, results[(c.label, c.target, t)])
        for c in done
        for t in ("before", "after")
        if (c.label, c.target, t) in results
    ]
    body = (
        f"`scripts/bench_floods.py`: each flood of issue 11 from a password holder on loopback, against an "
        f'`overdrive master` or `overdrive share` process started from the tree before the hardening ("before", '
        f'commit {commit}) and from this tree ("after"). RSS of the target before the flood, at its peak '
        f"(sampled every 50 ms; the flood stops after {scale.flood_s:.0f} s or once RSS passes "
        f'{scale.cap / MB:,.0f} MB, shown "> X", and the target is killed past twice that), and '
        f'{scale.settle_s:.0f} s after the hostile leaves. "Serves": an honest lookup answered and a status '
        f'decoded (master), or an 8 MiB file fetched byte-identical, not refused "busy" (share), within '
        f"{scale.ask_s:.0f} s, while the hostile is still connected ({scale.hold_s:.0f} s) and after it left. "
        f"The master holds {scale.files:,} entries; the share a 16 MiB file read in 4 MiB chunks. Medians of "
        f'{repeats} runs (yes/no: k/n when runs differ); "messages sent" is how much of the flood went out '
        f"before a cap.\n\n" + benchlib.table(HEADERS, rows)
    )
    print(body)
    problems = check(results)
    if args.smoke:
        for problem in problems:
            print(f"smoke: {problem}", file=sys.stderr)
        sys.exit(1 if problems else 0)
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    if args.only:
        return
    print(f"wrote {benchlib.write_section('floods', TITLE, body)}", file=sys.stderr)


if __name__ == "__main__":
    main()
