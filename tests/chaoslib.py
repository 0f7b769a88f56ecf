"""Chaos on real processes, for tests/test_chaos.py (short profile) and scripts/chaos (long profile).

* :class:`MeshChaos`: N masters meshed with ``--peers``, M nodes running ``overdrive share`` on temp folders, a
  churn of creates, rewrites, renames and deletes in those folders, and a killer that kill -9s masters (restarted
  on the same port and home) or SIGSTOPs them for a while. The run is cut into rounds; after each round the churn
  and the killer stop, every master is healed, and every master's listing is compared with the files really on
  the disks (name, size, BLAKE3 hash, holder address, holder online) until they agree or a bound passes.
* stream chaos (a streamer killed -9 under recording viewers) is in tests/chaos_stream.py and shares
  :class:`Child` and :class:`Report`.

Every random choice comes from one seed, printed by the callers, so a failing run can be replayed (process timing
still varies). Nothing here imports pytest: callers turn a :class:`Report` with problems into a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from overdrive.bus.address import Endpoint
from overdrive.bus.ready import parse_ready
from overdrive.bus.security import NetworkKey, NodeIdentity
from overdrive.bus.signing import MeshKey
from overdrive.bus.sockets import Bus, Security
from overdrive.errors import OverdriveError
from overdrive.files.model import hash_file
from overdrive.index.client import IndexClient

ROOT = Path(__file__).resolve().parents[1]
MASTER_TIMING = ("--heartbeat", "0.2", "--timeout", "1.5", "--stats", "0")
"""Fast heartbeats so a killed or stopped master is noticed within seconds."""

Row = tuple[str, int, str, str, bool]
"""One holder's copy of one file as a listing shows it: name, size, hash, holder address, holder online."""


class ChaosError(RuntimeError):
    """A chaos process did not start (its log tail is in the message)."""


@dataclass(frozen=True)
class Network:
    """The password network every chaos process and client is on."""

    password: str = "chaos horse battery staple"
    name: str = "overdrive-chaos"

    def env(self, home: Path) -> dict[str, str]:
        return dict(os.environ, OVERDRIVE_HOME=str(home), OVERDRIVE_PASSWORD=self.password, OVERDRIVE_NETWORK=self.name)

    def bus(self, cache: Path) -> Bus:
        """A client bus with a fresh identity; the key derivation is cached under ``cache``."""
        key = NetworkKey.from_password(self.password, self.name, cache)
        return Bus(Security(identity=NodeIdentity.generate(), key=key))


class Child:
    """One ``overdrive`` process: stdout and stderr go to files in its home, the ready line is read from there."""

    def __init__(self, net: Network, home: Path, args: Sequence[str]) -> None:
        self.net, self.home, self.args = net, home, list(args)
        self.popen: subprocess.Popen[bytes] | None = None
        self.endpoint: Endpoint | None = None
        self.starts = 0

    @property
    def what(self) -> str:
        return self.args[0]

    def spawn(self) -> None:
        """Start the process; :meth:`ready` says when it has printed its ready line."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        self._out = self.home / f"stdout.{self.starts}"
        with open(self._out, "wb") as out, open(self.home / "stderr.log", "ab") as err:
            err.write(f"--- start {self.starts}: overdrive {' '.join(self.args)}\n".encode())
            err.flush()
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "overdrive", *self.args],
                env=self.net.env(self.home),
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,  # a Ctrl-C at the terminal reaches the harness only; it stops the children
            )

    def ready(self) -> bool:
        """True once the ready line is out (and remembers the endpoint); ChaosError if the process died first."""
        assert self.popen is not None
        text = self._out.read_text(errors="replace")
        if "\n" in text:
            line = text.split("\n", 1)[0]
            try:
                self.endpoint = parse_ready(line).endpoint
            except ValueError:
                raise ChaosError(f"overdrive {' '.join(self.args)} printed {line!r}\n{self.log_tail()}") from None
            return True
        if self.popen.poll() is not None:
            raise ChaosError(f"overdrive {' '.join(self.args)} exited {self.popen.returncode}\n{self.log_tail()}")
        return False

    def start(self, timeout: float = 60.0) -> Endpoint:
        self.spawn()
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() > deadline:
                self.kill9()
                raise ChaosError(f"overdrive {' '.join(self.args)} not ready after {timeout:g} s\n{self.log_tail()}")
            time.sleep(0.05)
        assert self.endpoint is not None
        return self.endpoint

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        assert self.popen is not None
        with contextlib.suppress(ProcessLookupError):
            self.popen.send_signal(sig)

    def kill9(self) -> None:
        if self.popen is not None:
            self.signal(signal.SIGCONT)  # a stopped process dies at once either way; this keeps wait() honest
            self.signal(signal.SIGKILL)
            self.popen.wait(30)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (after SIGCONT), then SIGKILL after ``timeout``; the exit code of a clean stop, else None."""
        if self.popen is None or self.popen.poll() is not None:
            return None if self.popen is None else self.popen.returncode
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill9()
            return None

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = (self.home / "stderr.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def master_args(port: int, peers: Sequence[Endpoint], mesh_key: Path) -> list[str]:
    """The one place a chaos master's command line is made: every master holds the run's mesh key."""
    args = ["master", "--bind", f"tcp://127.0.0.1:{port}", "--mesh-key", str(mesh_key), *MASTER_TIMING]
    if peers:
        args += ["--peers", ",".join(p.display for p in peers)]
    return args


@dataclass
class Report:
    """What a chaos run did and what it found; ``problems`` empty means it passed."""

    seed: int
    kills: int = 0
    stops: int = 0
    stream_restarts: int = 0
    converge_seconds: list[float] = field(default_factory=list)
    listings_checked: int = 0
    recordings: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        times = sorted(self.converge_seconds)
        p50 = f"{times[len(times) // 2]:.2f}" if times else "-"
        worst = f"{times[-1]:.2f}" if times else "-"
        lines = [
            f"seed {self.seed}: {self.kills} kill -9s of masters, {self.stops} SIGSTOPs, "
            f"{self.stream_restarts} streamer kill -9s",
            f"convergence after {len(times)} heals: p50 {p50} s, max {worst} s; "
            f"{self.listings_checked} master listings compared with the disks",
            f"recordings checked: {len(self.recordings)}",
            *(f"  {r}" for r in self.recordings),
            f"problems: {len(self.problems)}",
            *(f"  {p}" for p in self.problems),
        ]
        return "\n".join(lines)


@dataclass(frozen=True)
class MeshProfile:
    masters: int = 3
    nodes: int = 2
    duration: float = 30.0
    """Seconds of churn and chaos in all (heals not counted)."""
    rounds: int = 2
    kills: int = 6
    stops: int = 1
    stop_seconds: float = 5.0
    churn_rate: float = 8.0
    """File operations per second, over all nodes."""
    max_files: int = 25
    """Files per node folder at most (creates wait until deletes make room)."""
    converge_timeout: float = 30.0
    break_compare: bool = False
    """Drop one file from the expected listing, to show the comparison can fail."""


class Churn:
    """Creates, rewrites, renames and deletes files in the node folders; names stay ASCII and unique."""

    def __init__(self, folders: Sequence[Path], rng: random.Random, max_files: int) -> None:
        self.folders, self.rng, self.max_files = list(folders), rng, max_files
        self.counter = 0
        self.ops = 0

    def _new_name(self, folder: Path) -> Path:
        self.counter += 1
        return folder / self.rng.choice(("", "a/", "b/c/")) / f"f{self.counter:05d}.bin"

    def _write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.rng.randbytes(self.rng.randrange(0, 48 << 10)))

    def step(self) -> None:
        folder = self.rng.choice(self.folders)
        present = sorted(p for p in folder.rglob("*") if p.is_file())
        op = self.rng.choices(("create", "modify", "rename", "delete"), (4, 3, 2, 2))[0]
        if op == "create" or not present:
            if len(present) >= self.max_files:
                op = "delete"
            else:
                self._write(self._new_name(folder))
                self.ops += 1
                return
        victim = self.rng.choice(present)
        if op == "modify":
            self._write(victim)
        elif op == "rename":
            target = self._new_name(folder)
            target.parent.mkdir(parents=True, exist_ok=True)
            victim.replace(target)
        else:
            victim.unlink()
        self.ops += 1

    def seed_folders(self, per_folder: int) -> None:
        for folder in self.folders:
            folder.mkdir(parents=True, exist_ok=True)
            for _ in range(per_folder):
                self._write(self._new_name(folder))


def disk_rows(folder: Path, address: str) -> set[Row]:
    rows = set()
    for path in folder.rglob("*"):
        if path.is_file():
            rows.add((path.relative_to(folder).as_posix(), path.stat().st_size, hash_file(path), address, True))
    return rows


def listing_rows(items: list[dict[str, object]]) -> set[Row]:
    """Rows from the ``ls --json`` shape (one item per name and hash, with its holders)."""
    rows = set()
    for item in items:
        for h in item["holders"]:  # type: ignore[attr-defined]
            rows.add((str(item["name"]), int(item["size"]), str(item["hash"]), h["address"], bool(h["online"])))  # type: ignore[call-overload]
    return rows


def describe_diff(expected: set[Row], got: set[Row], limit: int = 4) -> str:
    missing, extra = sorted(expected - got), sorted(got - expected)

    def short(r: Row) -> str:
        return f"{r[0]} {r[1]}B {r[2][:8]} @{r[3]}{'' if r[4] else ' offline'}"

    parts = [f"{len(missing)} missing", f"{len(extra)} extra"]
    parts += [f"-{short(r)}" for r in missing[:limit]] + [f"+{short(r)}" for r in extra[:limit]]
    return "; ".join(parts)


class MeshChaos:
    """Masters, nodes, churn and a killer; see the module docstring."""

    def __init__(
        self,
        profile: MeshProfile,
        seed: int,
        workdir: Path,
        net: Network | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        self.p, self.seed, self.dir = profile, seed, workdir
        self.net = net or Network()
        self.rng = random.Random(seed)
        self.log = log
        self.report = Report(seed)
        self.masters: list[Child] = []
        self.nodes: list[Child] = []
        self.ports: list[int] = []
        self.folders = [workdir / f"share{i}" for i in range(profile.nodes)]
        self.churn = Churn(self.folders, random.Random(self.rng.random()), profile.max_files)
        self.bus = self.net.bus(workdir / "client-keys")
        self.stopped: dict[int, float] = {}  # master index -> when to SIGCONT
        self.restarting: set[int] = set()
        self.mesh_key = workdir / "mesh.key"
        MeshKey.generate(self.net.name).write(self.mesh_key)

    # -- processes

    def start(self) -> None:
        for i in range(self.p.masters):
            peers = [m.endpoint for m in self.masters]
            child = Child(self.net, self.dir / f"master{i}", master_args(0, peers, self.mesh_key))  # type: ignore[arg-type]
            endpoint = child.start()
            self.masters.append(child)
            self.ports.append(endpoint.port)
        self.churn.seed_folders(self.p.max_files // 2)
        endpoints = [m.endpoint for m in self.masters]
        for i, folder in enumerate(self.folders):
            rotated = endpoints[i % len(endpoints) :] + endpoints[: i % len(endpoints)]
            args = ["share", str(folder), "--master", ",".join(e.display for e in rotated)]  # type: ignore[union-attr]
            node = Child(self.net, self.dir / f"node{i}", [*args, "--bind", "tcp://127.0.0.1:0"])
            node.start()
            self.nodes.append(node)

    def _restart_args(self, i: int) -> list[str]:
        others = [Endpoint("127.0.0.1", port) for j, port in enumerate(self.ports) if j != i]
        return master_args(self.ports[i], others, self.mesh_key)

    def close(self) -> None:
        for child in [*self.nodes, *self.masters]:
            child.stop()
        self.bus.close()

    # -- chaos

    def _healthy(self) -> list[int]:
        return [i for i in range(len(self.masters)) if i not in self.stopped and i not in self.restarting]

    def _act(self, kind: str) -> bool:
        """Kill -9 (and restart) or SIGSTOP a random master that is up; False when none is (try again later)."""
        healthy = self._healthy()
        if not healthy:
            return False
        i = self.rng.choice(healthy)
        master = self.masters[i]
        if kind == "kill":
            master.kill9()
            master.args = self._restart_args(i)
            master.spawn()
            self.restarting.add(i)
            self.report.kills += 1
        else:
            master.signal(signal.SIGSTOP)
            self.stopped[i] = time.monotonic() + self.p.stop_seconds
            self.report.stops += 1
        self.log(f"  {kind} master{i} (port {self.ports[i]})")
        return True

    def _tend(self, now: float, heal: bool = False) -> None:
        """SIGCONT masters whose pause is over (all of them when healing); notice restarted masters coming up."""
        for i, until in list(self.stopped.items()):
            if heal or now >= until:
                self.masters[i].signal(signal.SIGCONT)
                del self.stopped[i]
        for i in list(self.restarting):
            try:
                up = self.masters[i].ready()
            except ChaosError as exc:
                self.report.problems.append(f"master{i} did not come back after kill -9: {exc}")
                self.restarting.discard(i)
                continue
            if up:
                self.restarting.discard(i)

    def _round(self, seconds: float, kills: int, stops: int) -> None:
        began = time.monotonic()
        # events in the first 80% of the round, so the last one has a moment to bite before the heal
        events = sorted((self.rng.uniform(0, 0.8 * seconds), kind) for kind in ["kill"] * kills + ["stop"] * stops)
        next_op = began
        while (now := time.monotonic()) < began + seconds or events:
            while events and began + events[0][0] <= now and self._act(events[0][1]):
                events.pop(0)
            while next_op <= now:
                self.churn.step()
                next_op += self.churn.rng.expovariate(self.p.churn_rate)
            self._tend(now)
            time.sleep(0.02)

    def _heal(self) -> None:
        deadline = time.monotonic() + 60
        while self.stopped or self.restarting:
            self._tend(time.monotonic(), heal=True)
            if time.monotonic() > deadline:
                self.report.problems.append(f"masters {sorted(self.restarting)} never came back")
                break
            time.sleep(0.05)

    # -- comparison

    def expected(self) -> set[Row]:
        rows: set[Row] = set()
        for node, folder in zip(self.nodes, self.folders, strict=True):
            assert node.endpoint is not None
            rows |= disk_rows(folder, node.endpoint.display)
        if self.p.break_compare and rows:
            rows.discard(min(rows))
        return rows

    def listing(self, i: int) -> set[Row] | None:
        """Master i's whole listing, asked of it alone; None when it does not answer."""
        endpoint = Endpoint("127.0.0.1", self.ports[i])
        try:
            with IndexClient(self.bus, [endpoint], timeout=3.0) as client:
                entries = client.lookup("")
        except OverdriveError:
            return None
        return {(e.name, e.size, e.content_hash, e.address, e.online) for e in entries if not e.deleted}

    def cli_listing(self, i: int) -> set[Row] | None:
        """Master i's listing through ``overdrive ls --json`` (the user's view)."""
        run = subprocess.run(
            [sys.executable, "-m", "overdrive", "ls", "--json", "--master", f"127.0.0.1:{self.ports[i]}"],
            env=self.net.env(self.dir / "ls-home"),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if run.returncode != 0:
            self.report.problems.append(f"ls --json against master{i} exited {run.returncode}: {run.stderr[-500:]}")
            return None
        return listing_rows(json.loads(run.stdout))

    def converge(self, began: float, final: bool) -> None:
        """Wait until every master lists exactly what is on the disks; record the time since ``began`` (when the
        churn and the chaos stopped) or the difference."""
        expected = self.expected()
        got: list[set[Row] | None] = []
        while True:
            got = [self.listing(i) for i in range(len(self.masters))]
            if all(g == expected for g in got):
                took = time.monotonic() - began
                self.report.converge_seconds.append(took)
                self.report.listings_checked += len(got)
                self.log(f"  converged in {took:.2f} s ({len(expected)} files on {len(self.nodes)} nodes)")
                break
            if time.monotonic() - began > self.p.converge_timeout:
                for i, g in enumerate(got):
                    if g != expected:
                        diff = "no answer" if g is None else describe_diff(expected, g)
                        self.report.problems.append(
                            f"master{i} not converged after {self.p.converge_timeout:g} s: {diff}"
                        )
                return
            time.sleep(0.1)
        if final:
            for i in range(len(self.masters)):
                rows = self.cli_listing(i)
                self.report.listings_checked += 1
                if rows is not None and rows != expected:
                    self.report.problems.append(f"ls --json against master{i}: {describe_diff(expected, rows)}")

    def _check_alive(self) -> None:
        for child in [*self.masters, *self.nodes]:
            if not child.alive():
                code = child.popen.returncode if child.popen else None
                self.report.problems.append(
                    f"{child.what} in {child.home.name} died (exit {code}):\n{child.log_tail()}"
                )

    def run(self) -> Report:
        """Start everything, run the rounds, heal and compare after each; always stops what it started."""
        rounds = max(1, self.p.rounds)
        kills = spread(self.p.kills, rounds)
        stops = spread(self.p.stops, rounds)
        try:
            self.start()
            for r in range(rounds):
                self.log(f"round {r + 1}/{rounds}: {kills[r]} kills, {stops[r]} stops, churn {self.p.churn_rate:g}/s")
                self._round(self.p.duration / rounds, kills[r], stops[r])
                calm = time.monotonic()
                self._heal()
                self._check_alive()
                if self.report.problems:
                    break
                self.converge(calm, final=r == rounds - 1)
                if self.report.problems:
                    break
        finally:
            self.close()
        self.log(f"  {self.churn.ops} file operations")
        return self.report


def spread(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


@contextlib.contextmanager
def workdir(keep: bool = False) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="overdrive-chaos-"))
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)
