"""Benchmark peer file transfer on loopback against socket.sendfile and nc, measured in the same run.

Writes the ``transfer`` section of docs/benchmarks.md. Every transfer runs between two processes (holder and
fetcher), files live on tmpfs (/dev/shm) when it has room so the disk is not what is measured, and each figure is
the median of repeated runs. Peak RSS is ``ru_maxrss`` of the fetcher process and ``VmHWM`` of the holder;
CPU seconds per GiB add the user+system time of both processes.

    .venv/bin/python scripts/bench_transfer.py            # full run (~10 min): 1 GiB and 4 GiB
    .venv/bin/python scripts/bench_transfer.py --quick    # 256 MiB only, fewer repeats, no doc update
    .venv/bin/python scripts/bench_transfer.py --smoke    # 32 MiB, every contender once, checked; for CI
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import benchlib

# The overdrive internals this benchmark uses (the rest goes through the `overdrive` command line): a stand-alone
# file server run as `python -m HOLDER_MODULE FOLDER --stdin-stop [--insecure]`, printing overdrive's one ready line
# (`overdrive: holder ready on tcp://HOST:PORT (...)`) once serving.
HOLDER_MODULE = "overdrive.transfer.folder"

GiB = 1 << 30
MiB = 1 << 20
TITLE = "Transfer: overdrive fetch vs sendfile and nc (loopback)"
PASSWORD = "bench-transfer-password"


@dataclass
class Run:
    seconds: float
    cpu: float
    fetcher_rss: int = 0
    holder_rss: int = 0

    def rate(self, size: int) -> float:
        return size / self.seconds / 1e6


def make_file(path: Path, size: int) -> None:
    block = bytearray(os.urandom(4 * MiB))
    with path.open("wb") as fh:
        for n in range(size // len(block)):
            block[:8] = n.to_bytes(8, "little")
            fh.write(block)


def _wait(proc: subprocess.Popen[bytes]) -> tuple[int, float, int]:
    """Wait for a child; (exit code, cpu seconds, peak RSS bytes) from its rusage."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024


def env(home: Path) -> dict[str, str]:
    return dict(os.environ, OVERDRIVE_HOME=str(home), OVERDRIVE_PASSWORD=PASSWORD, OVERDRIVE_NETWORK="bench")


# -- baselines ------------------------------------------------------------------------------------------------------

_SENDER = """
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[2])))
with open(sys.argv[1], "rb") as f:
    s.sendfile(f)
s.close()
"""


def sendfile_run(src: Path, dest: Path) -> Run:
    """socket.sendfile in one process into recv_into + write to a file in this one."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    buf = bytearray(MiB)
    view = memoryview(buf)
    before = psutil.Process().cpu_times()
    started = time.perf_counter()
    sender = subprocess.Popen([sys.executable, "-c", _SENDER, str(src), str(port)])
    conn, _ = listener.accept()
    with dest.open("wb") as fh:
        while n := conn.recv_into(buf):
            fh.write(view[:n])
    seconds = time.perf_counter() - started
    conn.close()
    listener.close()
    _, cpu, _ = _wait(sender)
    after = psutil.Process().cpu_times()
    cpu += (after.user - before.user) + (after.system - before.system)
    _check_size("sendfile", dest, src)
    dest.unlink()
    return Run(seconds, cpu)


def _check_size(what: str, got: Path, want: Path) -> None:
    if got.stat().st_size != want.stat().st_size:
        raise RuntimeError(f"{what} delivered {got.stat().st_size} bytes of {want.stat().st_size}")


def nc_run(src: Path, dest: Path) -> Run:
    """netcat-openbsd: nc -l > file, nc -N < file."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with dest.open("wb") as out:
        receiver = subprocess.Popen(["nc", "-l", "127.0.0.1", str(port)], stdout=out)
        time.sleep(0.2)
        started = time.perf_counter()
        with src.open("rb") as inp:
            sender = subprocess.Popen(["nc", "-N", "127.0.0.1", str(port)], stdin=inp)
            _, cpu_r, _ = _wait(receiver)
        seconds = time.perf_counter() - started
        _, cpu_s, _ = _wait(sender)
    _check_size("nc", dest, src)
    dest.unlink()
    return Run(seconds, cpu_r + cpu_s)


def zmq_raw_run(curve: bool, size: int) -> Run:
    """libzmq alone: PUSH -> PULL of 1 MiB messages from memory, no file, no Python per byte: the ceiling."""
    import threading

    import zmq

    ctx = zmq.Context()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    push.sndhwm = pull.rcvhwm = 16  # keep this process small: children forked later inherit its RSS in ru_maxrss
    if curve:
        spub, ssec = zmq.curve_keypair()
        cpub, csec = zmq.curve_keypair()
        pull.curve_server, pull.curve_secretkey, pull.curve_publickey = True, ssec, spub
        push.curve_serverkey, push.curve_publickey, push.curve_secretkey = spub, cpub, csec
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    push.connect(f"tcp://127.0.0.1:{port}")
    data = os.urandom(MiB)
    count = size // MiB
    before = psutil.Process().cpu_times()
    started = time.perf_counter()
    sender = threading.Thread(target=lambda: [push.send(data) for _ in range(count)])
    sender.start()
    for _ in range(count):
        pull.recv(copy=False)
    seconds = time.perf_counter() - started
    sender.join()
    after = psutil.Process().cpu_times()
    push.close(0)
    pull.close(0)
    ctx.term()
    return Run(seconds, (after.user - before.user) + (after.system - before.system))


_RAW_SENDER = """
import os, sys, zmq
port, io_threads, count = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[5])
ctx = zmq.Context(io_threads=io_threads)
push = ctx.socket(zmq.PUSH)
push.sndhwm = 8
if sys.argv[3] != "-":
    push.curve_server, push.curve_publickey, push.curve_secretkey = True, sys.argv[3].encode(), sys.argv[4].encode()
push.bind(f"tcp://127.0.0.1:{port}")
data = os.urandom(1 << 20)
for _ in range(count):
    push.send(data, copy=False)
push.close(linger=-1)
ctx.term()
"""


def zmq_raw2_run(curve: bool, size: int, connections: int) -> Run:
    """libzmq alone between two processes: PUSH (binds) -> ``connections`` PULLs, 1 MiB messages from memory,
    each side's context with as many I/O threads as connections: the ceiling of the fetcher's connection layout."""
    import zmq

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    public, secret = zmq.curve_keypair() if curve else (b"-", b"-")
    count = size // MiB
    ctx = zmq.Context(io_threads=connections)
    pulls = []
    for _ in range(connections):
        pull = ctx.socket(zmq.PULL)
        pull.rcvhwm = 8
        if curve:
            client_public, client_secret = zmq.curve_keypair()
            pull.curve_serverkey, pull.curve_publickey, pull.curve_secretkey = public, client_public, client_secret
        pull.connect(f"tcp://127.0.0.1:{port}")
        pulls.append(pull)
    poller = zmq.Poller()
    for pull in pulls:
        poller.register(pull, zmq.POLLIN)
    before = psutil.Process().cpu_times()
    sender = subprocess.Popen(
        [sys.executable, "-c", _RAW_SENDER, str(port), str(connections), public.decode(), secret.decode(), str(count)]
    )
    got, started = 0, 0.0
    while got < count:
        for pull, _ in poller.poll():
            while got < count:
                try:
                    pull.recv(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                started = started or time.perf_counter()  # from the first message: connect/handshake excluded
                got += 1
    seconds = time.perf_counter() - started
    code, cpu, _ = _wait(sender)
    if code != 0:
        raise RuntimeError(f"the libzmq sender exited with {code}")
    after = psutil.Process().cpu_times()
    for pull in pulls:
        pull.close(0)
    ctx.term()
    return Run(seconds, cpu + (after.user - before.user) + (after.system - before.system))


def crypto_floor_run(size: int, block: int = MiB) -> tuple[float, float]:
    """CPU seconds per GiB, on one core, of the crypto libzmq's CURVE does per message, on ``block``-byte buffers:
    ``crypto_box_easy_afternm`` (sender) and ``crypto_box_open_easy_afternm`` (receiver), via ctypes on the libsodium
    bundled in pyzmq's wheel (the one libzmq uses; the system's if the wheel has none). Only the crypto: libzmq's
    own copies and allocations around it are not included, so this is a floor."""
    import ctypes
    import ctypes.util

    import zmq

    found = sorted((Path(zmq.__file__).resolve().parents[1] / "pyzmq.libs").glob("libsodium*.so*"))
    sodium = ctypes.CDLL(str(found[0]) if found else ctypes.util.find_library("sodium") or "libsodium.so.23")
    if sodium.sodium_init() < 0:
        raise RuntimeError("sodium_init failed")
    public, secret, key = (ctypes.create_string_buffer(32) for _ in range(3))
    sodium.crypto_box_keypair(public, secret)
    sodium.crypto_box_beforenm(key, public, secret)
    nonce = ctypes.create_string_buffer(24)
    plain = ctypes.create_string_buffer(os.urandom(block), block)
    box = ctypes.create_string_buffer(block + 16)
    opened = ctypes.create_string_buffer(block)
    count = size // block
    started = time.thread_time()
    for n in range(count):
        nonce[:8] = n.to_bytes(8, "little")
        sodium.crypto_box_easy_afternm(box, plain, ctypes.c_ulonglong(block), nonce, key)
    encrypted = time.thread_time()
    for _ in range(count):
        if sodium.crypto_box_open_easy_afternm(opened, box, ctypes.c_ulonglong(block + 16), nonce, key) != 0:
            raise RuntimeError("crypto_box_open_easy_afternm failed")
    decrypted = time.thread_time()
    if opened.raw != plain.raw:
        raise RuntimeError("decrypted bytes differ")
    gib = count * block / GiB
    return (encrypted - started) / gib, (decrypted - encrypted) / gib


def startup_cpu() -> float:
    """CPU seconds of starting the fetcher command without fetching (interpreter + CLI imports)."""
    proc = subprocess.Popen([sys.executable, "-m", "overdrive", "fetch", "--help"], stdout=subprocess.DEVNULL)
    return _wait(proc)[1]


# -- overdrive ------------------------------------------------------------------------------------------------------


class Holder:
    """``python -m HOLDER_MODULE`` in its own process."""

    def __init__(self, folder: Path, home: Path, insecure: bool) -> None:
        self.folder = folder
        args = [sys.executable, "-m", HOLDER_MODULE, str(folder), "--stdin-stop"]
        args += ["--insecure"] if insecure else []
        self.proc = subprocess.Popen(args, env=env(home), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        words = line.split()
        if words[:4] != ["overdrive:", "holder", "ready", "on"]:
            raise RuntimeError(f"holder did not start: {line!r}")
        self.address = words[4].removeprefix("tcp://")
        self.ps = psutil.Process(self.proc.pid)

    def cpu(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def peak_rss(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(30)


def overdrive_run(
    holders: list[Holder],
    name: str,
    out: Path,
    home: Path,
    insecure: bool,
    window: int = 0,
    chunk: int = 0,
    connections: int = 0,
) -> Run:
    args = [sys.executable, "-m", "overdrive"] + (["--insecure"] if insecure else [])
    args += ["fetch", name, "--from", ",".join(h.address for h in holders), "--out", str(out), "--json"]
    if window:
        args += ["--window", str(window)]
    if chunk:
        args += ["--chunk-size", str(chunk)]
    if connections:
        args += ["--connections", str(connections)]
    cpu_before = sum(h.cpu() for h in holders)
    proc = subprocess.Popen(args, env=env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out_bytes, err = proc.stdout.read(), proc.stderr.read()  # type: ignore[union-attr]
    code, cpu, rss = _wait(proc)
    if code != 0:
        raise RuntimeError(f"fetch failed: {err.decode()[-500:]}")
    result = json.loads(out_bytes)
    cpu += sum(h.cpu() for h in holders) - cpu_before
    _check_size("overdrive fetch", out / name, holders[0].folder / name)
    shutil.rmtree(out)
    return Run(float(result["seconds"]), cpu, rss, max(h.peak_rss() for h in holders))


# -- the benchmark --------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="32 MiB, every contender once, checked, no doc update")
    parser.add_argument("--repeat", type=int, default=5, help="rounds on 1 GiB (4 GiB: 2 fewer, at least 2)")
    parser.add_argument("--save", type=Path, default=Path(tempfile.gettempdir()) / "overdrive-bench-transfer.json",
                        help="where to keep the measured tables (for --render)")  # fmt: skip
    parser.add_argument("--render", type=Path, help="rewrite the doc section from a --save file, measuring nothing")
    args = parser.parse_args()
    if args.render:
        saved = json.loads(args.render.read_text())
        body = _report(saved["rows"], saved["sweep"], saved["connections"])
        print(body)
        _replace_body(body)
        return
    shm = Path("/dev/shm")
    need = (4 * GiB) * 2 + GiB
    base = shm if shm.is_dir() and shutil.disk_usage(shm).free > need + GiB else Path(tempfile.gettempdir())
    work = Path(tempfile.mkdtemp(prefix="overdrive-bench-", dir=base))
    sizes = [32 * MiB] if args.smoke else [256 * MiB] if args.quick else [GiB, 4 * GiB]
    repeat = 1 if args.smoke else 2 if args.quick else args.repeat
    brief = args.quick or args.smoke
    home = work / "home"
    rows: list[list[object]] = []
    sweep_rows: list[list[object]] = []
    conn_rows: list[list[object]] = []
    try:
        folder = work / "shared"
        folder.mkdir()
        files: dict[int, str] = {}
        for size in sizes:
            name = f"file-{size // MiB}M.bin"
            make_file(folder / name, size)
            files[size] = name
        dest = work / "out"
        print(f"files in {work}", flush=True)

        # window x chunk sweep on the smallest file, insecure and CURVE
        small = sizes[0]
        sweep = [(w, c) for c in (256 << 10, MiB, 4 * MiB) for w in (2, 8, 32)] if not brief else [(8, MiB)]
        for insecure in (True, False):
            holder = Holder(folder, home, insecure)
            try:
                overdrive_run([holder], files[small], dest, home, insecure)  # warm: chunk table cached
                for window, chunk in sweep:
                    runs = [
                        overdrive_run([holder], files[small], dest, home, insecure, window, chunk)
                        for _ in range(1 if args.smoke else 2)
                    ]
                    rate = benchlib.median([r.rate(small) for r in runs])
                    sweep_rows.append(
                        ["insecure" if insecure else "CURVE", window, f"{chunk // 1024} KiB", f"{rate:.0f}"]
                    )
                    print("sweep", sweep_rows[-1], flush=True)
            finally:
                holder.stop()

        # connections per holder, interleaved: 1 (the default) vs 2, each security
        for insecure in (True, False):
            holder = Holder(folder, home, insecure)
            conn_runs: dict[int, list[Run]] = {1: [], 2: []}
            try:
                for _ in range(1 if args.smoke else 2 if args.quick else 4):
                    for n, n_runs in conn_runs.items():
                        n_runs.append(overdrive_run([holder], files[small], dest, home, insecure, connections=n))
            finally:
                holder.stop()
            for n, n_runs in conn_runs.items():
                rate = benchlib.median([r.rate(small) for r in n_runs])
                paired = benchlib.median([r.seconds / o.seconds for r, o in zip(conn_runs[1], n_runs, strict=True)])
                cpu = benchlib.median([r.cpu for r in n_runs]) / (small / GiB)
                conn_rows.append(
                    ["insecure" if insecure else "CURVE", n, len(n_runs), f"{rate:.0f}", f"{paired:.2f}", f"{cpu:.2f}"]
                )
                print("connections", conn_rows[-1], flush=True)

        for size in sizes:
            name = files[size]
            reps = repeat if size <= GiB else max(2, repeat - 2)
            src = folder / name
            gib = size / GiB
            sendfile_run(src, dest.with_suffix(".sf"))  # warm-up: fault in memory for the destination files
            plain = Holder(folder, home, True)
            curve = [Holder(folder, home, False) for _ in range(3)]
            keys = ("sf", "nc", "raw", "rawc", "rawc1", "rawc2", "ins", "curve", "multi", "ins0", "curve0")
            runs: dict[str, list[Run]] = {k: [] for k in keys}
            floors: list[tuple[float, float]] = []
            starts: list[float] = []
            try:
                runs["ins0"].append(overdrive_run([plain], name, dest, home, True))
                for h in curve:
                    runs["curve0"].append(overdrive_run([h], name, dest, home, False))
                for _ in range(reps):  # interleaved, so every contender sees the same machine load
                    runs["sf"].append(sendfile_run(src, dest.with_suffix(".sf")))
                    runs["nc"].append(nc_run(src, dest.with_suffix(".nc")))
                    runs["raw"].append(zmq_raw_run(False, min(size, GiB)))
                    runs["rawc"].append(zmq_raw_run(True, min(size, GiB)))
                    runs["rawc1"].append(zmq_raw2_run(True, min(size, GiB), 1))
                    runs["rawc2"].append(zmq_raw2_run(True, min(size, GiB), 2))
                    runs["ins"].append(overdrive_run([plain], name, dest, home, True))
                    runs["curve"].append(overdrive_run(curve[:1], name, dest, home, False))
                    runs["multi"].append(overdrive_run(curve, name, dest, home, False))
                    floors.append(crypto_floor_run(min(size, GiB)))
                    starts.append(startup_cpu())
                    print(size, {k: f"{v[-1].rate(size):.0f}" for k, v in runs.items()}, flush=True)
            finally:
                plain.stop()
                for h in curve:
                    h.stop()
            sf_rate = benchlib.median([r.rate(size) for r in runs["sf"]])
            size_label = f"{gib:g} GiB" if size >= GiB else f"{size // MiB} MiB"
            for key, label in (
                ("sf", "socket.sendfile → recv_into"),
                ("nc", "nc (netcat-openbsd)"),
                ("raw", "ceiling: libzmq PUSH→PULL, 1 MiB messages from memory, plain"),
                ("rawc", "ceiling: libzmq PUSH→PULL, 1 MiB messages from memory, CURVE"),
                ("rawc1", "ceiling: as above, CURVE, two processes, 1 connection"),
                ("rawc2", "ceiling: as above, CURVE, two processes, 2 connections, 2 I/O threads each side"),
                ("ins", "overdrive --insecure"),
                ("ins0", "overdrive --insecure, first fetch (chunk table built)"),
                ("curve", "overdrive (CURVE)"),
                ("curve0", "overdrive (CURVE), first fetch (chunk table built)"),
                ("multi", "overdrive (CURVE), 3 holders"),
            ):
                nbytes = min(size, GiB) if key.startswith("raw") else size
                chosen = runs[key][:1] if key == "curve0" else runs[key]
                paired = runs["sf"] if key not in ("ins0", "curve0") else []
                rows.append(_row(size_label, label, chosen, nbytes, sf_rate, paired, size))
            rows.extend(_floor_rows(size_label, size, floors, starts, runs["ins"], runs["sf"], sf_rate))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    body = _report(rows, sweep_rows, conn_rows)
    print(body)
    if args.smoke:
        sys.exit(_smoke_check(rows, sweep_rows, conn_rows))
    if not args.quick:
        args.save.write_text(json.dumps({"rows": rows, "sweep": sweep_rows, "connections": conn_rows}))
        benchlib.write_section("transfer", TITLE, body)


def _smoke_check(rows: list[list[object]], sweep: list[list[object]], connections: list[list[object]]) -> int:
    """Exit status of a smoke run: 1 unless every table has rows and every measured rate and ratio is positive.

    The "bound" row subtracts the fetcher's separately measured start-up CPU, which on a small file is as large as
    the transfer's own CPU, so it need only be a number there.
    """
    tables = {"main": rows, "sweep": sweep, "connections": connections}
    problems = [f"no {what} rows" for what, got in tables.items() if not got]
    for r in rows:
        rate, ratio = float(str(r[3])), float(str(r[4]))
        bound = str(r[1]).startswith("bound:")
        if not (math.isfinite(rate) and math.isfinite(ratio)) or not (bound or rate > 0 < ratio):
            problems.append(f"{r[1]}: rate {r[3]}, ratio to sendfile {r[4]}")
    problems += [f"{what} {r}" for what in ("sweep", "connections") for r in tables[what] if not float(str(r[3])) > 0]
    for problem in problems:
        print(f"smoke: {problem}", file=sys.stderr)
    return 1 if problems else 0


def _replace_body(body: str) -> None:
    """Put a re-rendered body (prose edited, same numbers) under the section's existing measurement stamp."""
    text = benchlib.DOC.read_text()
    pattern = re.compile(r"(<!-- BEGIN transfer -->\n.*?\n_Measured [^\n]*_\n\n).*?(<!-- END transfer -->)", re.S)
    if not pattern.search(text):
        raise SystemExit("no measured transfer section to re-render")
    benchlib.DOC.write_text(pattern.sub(lambda m: m.group(1) + body.strip() + "\n" + m.group(2), text))


def _row(
    size: str, what: str, runs: list[Run], nbytes: int, sf_rate: float, sf_runs: list[Run], sf_size: int
) -> list[object]:
    rate = benchlib.median([r.rate(nbytes) for r in runs])
    # each round ran sendfile and this contender back to back: the ratio within a round is less exposed to the
    # load of other processes on this shared machine drifting between rounds
    paired = (
        benchlib.median([r.rate(nbytes) / s.rate(sf_size) for r, s in zip(runs, sf_runs, strict=True)])
        if sf_runs
        else 0
    )
    cpu = benchlib.median([r.cpu for r in runs]) / (nbytes / GiB)
    fetch_rss = max(r.fetcher_rss for r in runs)
    hold_rss = max(r.holder_rss for r in runs)
    return [
        size,
        what,
        len(runs),
        f"{rate:.0f}",
        f"{rate / sf_rate:.2f}",
        f"{paired:.2f}" if sf_runs else "–",
        f"{cpu:.2f}",
        f"{fetch_rss / 1e6:.0f}" if fetch_rss else "–",
        f"{hold_rss / 1e6:.0f}" if hold_rss else "–",
    ]


def _floor_rows(
    size_label: str,
    size: int,
    floors: list[tuple[float, float]],
    starts: list[float],
    insecure: list[Run],
    sf_runs: list[Run],
    sf_rate: float,
) -> list[list[object]]:
    """The CURVE crypto floor (one core, per side) and the CURVE bound it implies on this machine's cores."""
    gib = size / GiB
    out: list[list[object]] = []
    for side, what in ((0, "encrypt (holder)"), (1, "decrypt (fetcher)")):
        cpus = [f[side] for f in floors]
        rate = benchlib.median([GiB / c / 1e6 for c in cpus])
        out.append([size_label, f"floor: libsodium crypto_box_easy_afternm, 1 MiB, one core, {what}", len(cpus),
                    f"{rate:.0f}", f"{rate / sf_rate:.2f}", "–", f"{benchlib.median(cpus):.2f}", "–", "–"])  # fmt: skip
    # every CPU second overdrive --insecure spends moving the file (fetcher start-up taken out), plus the crypto of
    # both sides, spread perfectly over all cores: an upper bound (libzmq's own CURVE copies are not counted)
    cores = os.cpu_count() or 1
    cpu = [(r.cpu - start) / gib + enc + dec for r, start, (enc, dec) in zip(insecure, starts, floors, strict=True)]
    rates = [GiB / (c / cores) / 1e6 for c in cpu]
    paired = benchlib.median([r / s.rate(size) for r, s in zip(rates, sf_runs, strict=True)])
    rate = benchlib.median(rates)
    out.append([size_label, f"bound: CURVE on {cores} cores = (--insecure CPU − fetcher start-up + encrypt + "
                "decrypt) / cores", len(cpu), f"{rate:.0f}", f"{rate / sf_rate:.2f}", f"{paired:.2f}",
                f"{benchlib.median(cpu):.2f}", "–", "–"])  # fmt: skip
    return out


def _report(rows: list[list[object]], sweep: list[list[object]], connections: list[list[object]]) -> str:
    main_table = benchlib.table(
        ["file", "transfer", "runs", "MB/s (median)", "ratio to sendfile", "ratio, paired by round (median)",
         "CPU s/GiB (both ends)", "fetcher peak RSS MB", "holder peak RSS MB"],
        rows,
    )  # fmt: skip
    sweep_table = benchlib.table(["security", "window", "chunk", "MB/s (median of 2)"], sweep)
    conn_table = benchlib.table(
        ["security", "connections", "runs", "MB/s (median)", "speed vs 1 connection, paired (median)",
         "CPU s/GiB (both ends)"],
        connections,
    )  # fmt: skip
    return f"""
Loopback, holder and fetcher in separate processes, files on tmpfs. `overdrive` rows are the whole
`overdrive fetch --json` command as a user runs it (connect, open, transfer, per-chunk checksum and whole-file
BLAKE3 verification, fsync, rename), timed by the command itself; baselines just move bytes into a file. The
"first fetch" rows include the holder building the file's chunk-checksum table (one read of the file, cached
afterwards). CPU s/GiB adds both processes (user + system), including the fetcher's interpreter start (~0.7 s).
Each round runs every contender once, back to back; "ratio to sendfile" divides the medians, "paired" is the
median of the ratios within a round.

{main_table}
Targets: ratio ≥ 0.8 with `--insecure`, ≥ 0.6 with CURVE, peak RSS ≤ 100 MB at any size.

The CURVE crypto floor is measured in the same run. "floor" rows time
libsodium's `crypto_box_easy_afternm` / `crypto_box_open_easy_afternm` (what libzmq's CURVE does per message) on
1 MiB buffers on one core, through ctypes on the libsodium bundled in pyzmq's wheel: ~0.8 CPU s/GiB per side. The
"bound" row adds, round by round, the CPU `overdrive --insecure` spent moving the file (both ends, the fetcher's
measured interpreter and CLI start-up, ~0.7 s, taken out) and the two floors, and spreads that perfectly over the
machine's 2 cores. It is an upper bound for a CURVE fetch that does everything the insecure one does: libzmq's own
CURVE copies and zero-filled buffers (~0.1-0.15 s/GiB per side in `perf`) are not counted, and the cores are never
perfectly shared. It came out at 0.48-0.71 of sendfile in the runs so far (this one: 0.51/0.48 on 1 GiB, 0.69 on
4 GiB, median/paired), and the "two processes, 1 connection" ceiling (libzmq alone, from memory, nothing read,
hashed or written) at 0.58-0.83 on 1 GiB. So on two shared cores the CURVE target of 0.6 is at or beyond what
the crypto leaves room for; a machine with a core free for each side's libzmq I/O thread is a different matter
(the I/O threads are single-threaded per connection, see `--connections`).

Where the CPU goes (`perf record -a`, 1 GiB, in-process fetch against a holder process, per fetch, quiet moments):
`--insecure`, ~1.9-2.0 CPU s in all: holder server thread 0.35 (`pread` copy 0.16 plus page-cache lookups),
holder libzmq I/O thread 0.34 (TCP send copy), fetcher I/O thread 0.23 (TCP receive copy), fetcher main thread
0.45 (BLAKE3 0.33, XXH3 0.07, Python and ZeroMQ per chunk ~0.05), fetcher writer thread 0.6 (tmpfs page allocation
and copy; sendfile's receiver pays the same), and 6-12 % of the two cores idle (from /proc/stat). CURVE, ~4.4 CPU s:
holder I/O thread 1.4 (crypto 0.9, libzmq's copies and zero-fills 0.15, TCP 0.1-0.3), fetcher I/O thread 1.3
(crypto 0.9), the rest as above, 0-8 % idle. Python per chunk is ~3-5 % of the total, so fewer objects per chunk,
batching requests or bigger chunks cannot buy much; the avoidable work left is the holder's `pread` copy. Reading
through `mmap` would drop it (~0.2-0.3 s/GiB) but was not done: a shared file truncated while mapped raises SIGBUS
in libzmq's I/O thread and kills `overdrive share`, where today it is detected and the fetcher told.

Tried without gain in an earlier session, each as an interleaved A/B (12 paired rounds, 1 GiB, separate source
trees, sendfile in every round; paired speed new/old, median): (1) handing each chunk's credit back (the next
`Read`) before hashing and queueing it: insecure 1.00, CURVE 0.97; (2) `SO_SNDBUF`/`SO_RCVBUF` of 4 MiB (autotuning
off): insecure 0.96, CURVE 0.81; (3) `pwrite` inline on the fetcher's main thread instead of the writer thread:
more idle CPU and slower (median 1.27 s against 1.23); (4) a window of 32: within noise, and +16 MiB in flight
against the 100 MB RSS target. Earlier still: XXH3 per chunk, zero-copy sends, one connection by default and the
in-flight and held-memory caps were kept; 2-4 MiB chunks at the same bytes in flight, the whole-file hash in its
own thread and `max_threads=2` for BLAKE3 gained nothing.

This session changed nothing on the data path: the holder builds chunk tables in worker threads (its loop no
longer stops for seconds while it reads a big file for the first time), a fetcher withdraws an Open it stops
waiting for (`Cancel`), and Ctrl-C is handled at safe points. An interleaved A/B of a 1 GiB `--insecure` fetch
against the code the session started from (7 rounds, the same holder each time) measured medians of 1068 and
1027 MB/s (old) against 998 and 1049 MB/s (new), fetcher and holder CPU alike: no change, and about 1000 MB/s in
calm minutes.

Targets: not met on this run. `--insecure` reached 0.65 of sendfile on 1 GiB (paired 0.61) and 0.63 on 4 GiB;
CURVE 0.42 (paired 0.38) and 0.54, 3 holders 0.41 and 0.58; peak RSS ≤ 85 MB everywhere (met). The 1 GiB
`--insecure` fetches of this run took 645, 609, 446, 843 and 763 MB/s against sendfile rounds of 1413, 1001, 996,
951 and 991 MB/s (paired 0.46 to 0.89): single fetches here are bimodal (1 GiB in ~1.1 s or ~2-3 s, the slow ones
spending the difference in the kernel allocating tmpfs pages), and the run shared the 2-core VM with a reviewing
agent (load average ~2). The previous tables had 0.63-0.77 with the same data-path code. CURVE stays below its
0.6 target for the reason the floor rows give.

Connections per holder (smallest file, window 16 split over the connections, interleaved runs):

{conn_table}
Window (requests in flight per holder) × chunk size, on the smallest file. Differences of ±30 % between
neighbouring cells are run-to-run noise on this machine; 1 MiB chunks with a window of 8-32 sit on the plateau, so
the defaults are 1 MiB and 16. 4 MiB chunks with a window of 32 look faster for `--insecure` in some runs, but keep
128 MiB in flight (against 16, and the 100 MB RSS target); at the same bytes in flight (4 MiB × 4, 2 MiB × 8) an
earlier session's interleaved A/B found no gain:

{sweep_table}"""


if __name__ == "__main__":
    main()
