#!/usr/bin/env python3
"""Benchmark live streaming: overdrive (H.264 over CURVE) against imagezmq and vidgear NetGear (JPEG, PUB/SUB).

Desktop-like content (windows, scrolling text, a moving picture) is drawn on a 1920x1080 Xvfb screen; every
system captures that same screen with mss at 30 and 60 fps targets and publishes it on loopback to one decoding
viewer (latency) plus 0, 5 or 20 receive-only viewers (fan-out). Per run: delivered fps, latency p50/p99 from
capture to decoded picture, Mbit/s per viewer, and the publisher's CPU (percent of one core).

The peers carry no capture timestamp on their wire, so their publisher stamps one into the picture (a 64-block
barcode in the top-left corner) and their viewer reads it back after decoding. NetGear's PUB/SUB mode has its
receiver bind and its sender connect to one address; for fan-out we connect its PUB socket to every receiver so
it still encodes each picture once. Receive-only viewers of the peers are plain ZeroMQ SUB sockets counting
messages (their own clients always decode); ours are :class:`overdrive.media.viewer.Viewer` with ``decode=False``.

Usage: ``.venv/bin/python scripts/bench_stream.py [--seconds 8] [--quick]`` (needs Xvfb and the ``bench`` extra).
``--smoke`` runs every system once (30 fps, one extra viewer, 2 s), checks the results are sane, prints the
ratios and exits non-zero on a failed row; it writes no docs (CI runs it: tests/test_bench_smoke.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

# The overdrive internals this benchmark uses (the rest goes through the `overdrive` command line).
from overdrive.config import GlobalOptions  # noqa: E402
from overdrive.media.viewer import Viewer, ViewerConfig  # noqa: E402
from tests.services import port_open  # noqa: E402

PY = sys.executable
STREAM_VIDEO_ONLY = ("--audio", "none", "--no-record")  # `overdrive stream`: no sound card, no recording
VIEW_VIDEO_ONLY = ("--no-record",)
QUALITY = 80
BLOCK = 10
BITS = 64


# --------------------------------------------------------------------------------------------------------------
# roles run in child processes
# --------------------------------------------------------------------------------------------------------------
def role_content(fps: float) -> None:
    """Desktop-like content on the X display: three windows, a scrolling text, a moving picture."""
    import tkinter

    import numpy as np

    root = tkinter.Tk()
    root.overrideredirect(True)
    root.geometry("1920x1080+0+0")
    canvas = tkinter.Canvas(root, width=1920, height=1080, bg="#3a6ea5", highlightthickness=0)
    canvas.place(x=0, y=0)
    canvas.create_rectangle(0, 1040, 1920, 1080, fill="#202020", outline="")
    for i, (x, y, w, h) in enumerate(((60, 60, 900, 700), (1000, 100, 860, 520), (700, 650, 800, 360))):
        canvas.create_rectangle(x, y, x + w, y + h, fill="#f4f4f4", outline="#888")
        canvas.create_rectangle(x, y, x + w, y + 28, fill="#2b579a", outline="")
        canvas.create_text(x + 10, y + 14, text=f"window {i + 1} - document.txt", anchor="w", fill="white")
    text = tkinter.Text(root, width=100, height=36, font=("Courier", 10), bd=0)
    text.place(x=70, y=95)
    lines = [
        f"{n:05d}  the quick brown fox jumps over the lazy dog; lorem ipsum dolor sit amet {n * 7919 % 10007}"
        for n in range(400)
    ]
    text.insert("end", "\n".join(lines))
    h, w = 240, 320
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = (xx * 255 // w).astype(np.uint8)
    img[..., 1] = (yy * 255 // h).astype(np.uint8)
    img[..., 2] = (((xx // 20 + yy // 20) % 2) * 180).astype(np.uint8)
    photo = tkinter.PhotoImage(data=b"P6 %d %d 255\n" % (w, h) + img.tobytes(), format="PPM")
    pic = canvas.create_image(1100, 200, image=photo, anchor="nw")
    state = {"t": 0, "line": 0}
    period = int(1000 / fps)

    def tick() -> None:
        state["t"] += 1
        t = state["t"]
        canvas.coords(pic, 1050 + (t * 6) % 500, 150 + (t * 3) % 300)
        if t % 3 == 0:
            state["line"] = (state["line"] + 1) % 360
            text.yview_moveto(state["line"] / 400)
        root.after(period, tick)

    root.after(200, lambda: print("ready", flush=True))
    root.after(period, tick)
    root.mainloop()


def _stamp(img: Any, pts_us: int) -> None:
    for i in range(BITS):
        img[0:BLOCK, i * BLOCK : (i + 1) * BLOCK] = 255 if (pts_us >> i) & 1 else 0


def _read_stamp(img: Any) -> int:
    value = 0
    for i in range(BITS):
        if img[2 : BLOCK - 2, i * BLOCK + 2 : (i + 1) * BLOCK - 2].mean() > 127:
            value |= 1 << i
    return value


def _grab_loop(fps: float, seconds: float, send: Any) -> None:
    """Capture the screen at ``fps`` (skipping when behind), stamp the capture time, hand the BGR picture over."""
    import mss
    import numpy as np

    period = 1.0 / fps
    end = time.monotonic() + seconds
    next_at = time.monotonic()
    with mss.MSS() as sct:
        box = sct.monitors[1]
        while time.monotonic() < end:
            pts_us = time.time_ns() // 1000
            shot = sct.grab(box)
            img = np.ascontiguousarray(np.frombuffer(shot.raw, np.uint8).reshape(shot.height, shot.width, 4)[:, :, :3])
            _stamp(img, pts_us)
            send(img)
            next_at += period
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                next_at = time.monotonic()


def role_izmq_pub(port: int, fps: float, seconds: float) -> None:
    import cv2
    import imagezmq

    sender = imagezmq.ImageSender(connect_to=f"tcp://127.0.0.1:{port}", REQ_REP=False)

    def send(img: Any) -> None:
        _, jpg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, QUALITY])
        sender.send_jpg("bench", jpg)

    print("ready", flush=True)
    _grab_loop(fps, seconds, send)
    sender.close()


def role_ng_pub(ports: list[int], fps: float, seconds: float) -> None:
    from vidgear.gears import NetGear

    server = NetGear(
        address="127.0.0.1",
        port=str(ports[0]),
        protocol="tcp",
        pattern=2,
        logging=False,
        jpeg_compression=True,
        jpeg_compression_quality=QUALITY,
    )
    sock = server._NetGear__msg_socket  # fan-out: one PUB connected to every receiver (see module docstring)
    for port in ports[1:]:
        sock.connect(f"tcp://127.0.0.1:{port}")
    print("ready", flush=True)
    _grab_loop(fps, seconds, server.send)
    server.close()


def _viewer_result(latencies: list[float], times: list[float], nbytes: int, seconds: float) -> dict[str, Any]:
    import numpy as np

    span = times[-1] - times[0] if len(times) > 1 else 0
    return {
        "fps": (len(times) - 1) / span if span > 0 else 0.0,
        "p50": float(np.percentile(latencies, 50)) if latencies else None,
        "p99": float(np.percentile(latencies, 99)) if latencies else None,
        "mbps": nbytes * 8 / seconds / 1e6,
    }


def role_izmq_view(port: int, seconds: float, warmup: float, out: Path) -> None:
    import cv2
    import imagezmq
    import numpy as np

    hub = imagezmq.ImageHub(open_port=f"tcp://127.0.0.1:{port}", REQ_REP=False)
    hub.zmq_socket.setsockopt(__import__("zmq").RCVTIMEO, 500)
    lat, times, nbytes = [], [], 0
    start = time.monotonic()
    while time.monotonic() - start < warmup + seconds:
        try:
            _, jpg = hub.recv_jpg()
        except Exception:  # noqa: BLE001 - zmq.Again on timeout
            continue
        img = cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_COLOR)
        now = time.monotonic()
        if now - start >= warmup:
            lat.append((time.time_ns() // 1000 - _read_stamp(img)) / 1000)
            times.append(now)
            nbytes += len(jpg)
    out.write_text(json.dumps(_viewer_result(lat, times, nbytes, seconds)))
    hub.close()


def role_ng_view(port: int, seconds: float, warmup: float, out: Path) -> None:
    from vidgear.gears import NetGear

    client = NetGear(
        address="127.0.0.1",
        port=str(port),
        protocol="tcp",
        pattern=2,
        receive_mode=True,
        logging=False,
        jpeg_compression=True,
    )
    print("ready", flush=True)
    lat: list[float] = []
    times: list[float] = []
    start = time.monotonic()

    def receive() -> None:  # NetGear's recv() blocks (spinning) until a frame comes, so it runs aside
        while True:
            frame = client.recv()
            now = time.monotonic()
            if frame is not None and now - start >= warmup:
                lat.append((time.time_ns() // 1000 - _read_stamp(frame)) / 1000)
                times.append(now)

    threading.Thread(target=receive, daemon=True).start()
    time.sleep(warmup + seconds)
    res = _viewer_result(list(lat), list(times), 0, seconds)
    res["mbps"] = None  # NetGear's client hides the wire; taken from a raw receiver instead
    out.write_text(json.dumps(res))
    os._exit(0)
    client.close()


def role_raw_recv(mode: str, ports: list[int], seconds: float, warmup: float, out: Path) -> None:
    """Receive-only peers: one SUB per port, counting messages and bytes."""
    import zmq

    ctx = zmq.Context()
    socks = []
    for port in ports:
        s = ctx.socket(zmq.SUB)
        s.setsockopt(zmq.SUBSCRIBE, b"")
        s.rcvhwm = 60
        (s.bind if mode == "bind" else s.connect)(f"tcp://127.0.0.1:{port}")
        socks.append(s)
    print("ready", flush=True)
    counts = [0] * len(socks)
    nbytes = [0] * len(socks)
    poller = zmq.Poller()
    for s in socks:
        poller.register(s, zmq.POLLIN)
    start = time.monotonic()
    while time.monotonic() - start < warmup + seconds:
        for s, _ in poller.poll(100):
            i = socks.index(s)
            while True:
                try:
                    parts = s.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                if time.monotonic() - start >= warmup:
                    counts[i] += 1
                    nbytes[i] += sum(len(p.buffer) for p in parts)
    out.write_text(json.dumps({"fps": [c / seconds for c in counts], "mbps": [b * 8 / seconds / 1e6 for b in nbytes]}))
    ctx.destroy(linger=0)


def role_ours_recv(port: int, n: int, seconds: float, warmup: float, out: Path) -> None:
    opts = GlobalOptions(password=os.environ["OVERDRIVE_PASSWORD"], network="bench")
    buses = [opts.bus() for _ in range(n)]
    viewers = [Viewer(ViewerConfig(host=f"127.0.0.1:{port}", headless=True, decode=False), b) for b in buses]
    for v in viewers:
        v.start()
    print("ready", flush=True)
    time.sleep(warmup)
    before = [(v.stats.frames_received, v.stats.bytes) for v in viewers]
    time.sleep(seconds)
    after = [(v.stats.frames_received, v.stats.bytes) for v in viewers]
    for v in viewers:
        v.stop()
    for b in buses:
        b.close()
    out.write_text(
        json.dumps(
            {
                "fps": [(a[0] - b[0]) / seconds for a, b in zip(after, before, strict=True)],
                "mbps": [(a[1] - b[1]) * 8 / seconds / 1e6 for a, b in zip(after, before, strict=True)],
            }
        )
    )


# --------------------------------------------------------------------------------------------------------------
# the orchestrator
# --------------------------------------------------------------------------------------------------------------
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Run:
    def __init__(self, env: dict[str, str], tmp: Path) -> None:
        self.env = env
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, *argv: str, wait_ready: bool = False) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(list(argv), env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.procs.append(proc)
        if wait_ready:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if line.strip() != b"ready":
                raise RuntimeError(f"{argv[2:4]} failed: {proc.stderr.read().decode()[-800:]}")  # type: ignore[union-attr]
        return proc

    def role(self, *args: object, wait_ready: bool = False) -> subprocess.Popen[bytes]:
        return self.spawn(PY, __file__, *map(str, args), wait_ready=wait_ready)

    def close(self) -> None:
        from overdrive.demo.context import stop

        stop(*self.procs, timeout=10)
        for p in self.procs:
            for f in (p.stdout, p.stderr):
                if f is not None:
                    f.close()


def cpu_of(proc: subprocess.Popen[bytes], seconds: float, warmup: float) -> float:
    import psutil

    ps = psutil.Process(proc.pid)
    time.sleep(warmup)
    ps.cpu_percent(None)
    time.sleep(seconds)
    return float(ps.cpu_percent(None))


def bench_ours(run: Run, fps: float, extra: int, seconds: float, warmup: float, settle: float = 2.0) -> dict[str, Any]:
    port = free_port()
    streamer = run.spawn(
        PY,
        "-m",
        "overdrive",
        "stream",
        "--source",
        "screen",
        "--fps",
        str(fps),
        "--bind",
        f"tcp://127.0.0.1:{port}",
        *STREAM_VIDEO_ONLY,
    )
    spawned = time.monotonic()
    deadline = spawned + 30
    while not port_open("127.0.0.1", port):
        if streamer.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the streamer did not start: {streamer.stderr.read().decode()[-800:]}")  # type: ignore[union-attr]
        time.sleep(0.1)
    time.sleep(max(0.0, spawned + settle - time.monotonic()))  # at least `settle` s from spawn to first viewer
    stats = run.tmp / f"ours-{fps}-{extra}.json"
    recv_out = run.tmp / f"ours-recv-{fps}-{extra}.json"
    if extra:
        run.role("ours-recv", port, extra, seconds, warmup, recv_out, wait_ready=True)
    viewer = run.spawn(
        PY,
        "-m",
        "overdrive",
        "view",
        f"127.0.0.1:{port}",
        "--headless",
        "--duration",
        str(warmup + seconds),
        "--trace",
        str(stats.with_suffix(".trace")),
        "--stats-json",
        str(stats),
        *VIEW_VIDEO_ONLY,
    )
    cpu = cpu_of(streamer, seconds, warmup)
    viewer.wait(60)
    rows = [tuple(map(int, line.split())) for line in stats.with_suffix(".trace").read_text().splitlines()]
    t0 = rows[0][0] + int(warmup * 1e9) if rows else 0
    dec = [r for r in rows if r[3] and r[4] and r[0] >= t0]
    lat = [(r[0] - r[2]) / 1e6 for r in rows if r[3] and r[0] >= t0]
    span = (dec[-1][0] - dec[0][0]) / 1e9 if len(dec) > 1 else 0
    seqs = {r[1] for r in rows if r[0] >= t0}
    result = _viewer_result(lat, [r[0] / 1e9 for r in dec], 0, seconds)
    result["fps"] = (len(dec) - 1) / span if span else 0.0
    result["mbps"] = (json.loads(stats.read_text())["bitrate"] or 0) / 1e6
    result["recv_fps_min"] = min(json.loads(recv_out.read_text())["fps"]) if extra else None
    result["received_fps"] = len(seqs) / seconds
    result["cpu"] = cpu
    streamer.terminate()
    streamer.wait(10)
    return result


def bench_izmq(run: Run, fps: float, extra: int, seconds: float, warmup: float) -> dict[str, Any]:
    port = free_port()
    out = run.tmp / f"iz-{fps}-{extra}.json"
    recv_out = run.tmp / f"iz-recv-{fps}-{extra}.json"
    pub = run.role("izmq-pub", port, fps, warmup + seconds + 4, wait_ready=True)
    viewer = run.role("izmq-view", port, seconds, warmup, out)
    if extra:
        run.role("raw-recv", "connect", ",".join([str(port)] * extra), seconds, warmup, recv_out, wait_ready=True)
    cpu = cpu_of(pub, seconds, warmup)
    viewer.wait(60)
    result = json.loads(out.read_text())
    if extra:
        time.sleep(0.5)
        recv = json.loads(recv_out.read_text())
        result["recv_fps_min"] = min(recv["fps"])
    else:
        result["recv_fps_min"] = None
    result["cpu"] = cpu
    pub.terminate()
    return result


def bench_netgear(run: Run, fps: float, extra: int, seconds: float, warmup: float) -> dict[str, Any]:
    ports = [free_port() for _ in range(extra + 2)]
    out = run.tmp / f"ng-{fps}-{extra}.json"
    recv_out = run.tmp / f"ng-recv-{fps}-{extra}.json"
    viewer = run.role("ng-view", ports[0], seconds, warmup + 1, out, wait_ready=True)
    run.role("raw-recv", "bind", ",".join(map(str, ports[1:])), seconds, warmup + 1, recv_out, wait_ready=True)
    pub = run.role("ng-pub", ",".join(map(str, ports)), fps, warmup + seconds + 10, wait_ready=True)
    cpu = cpu_of(pub, seconds, warmup + 1)
    viewer.wait(60)
    time.sleep(0.5)
    result = json.loads(out.read_text())
    recv = json.loads(recv_out.read_text())
    result["mbps"] = recv["mbps"][0]  # the always-present extra receiver measures the wire rate
    result["recv_fps_min"] = min(recv["fps"][1:]) if extra else None
    result["cpu"] = cpu
    pub.terminate()
    return result


def fmt(v: Any, spec: str = ".1f") -> str:
    return "–" if v is None else format(v, spec)


SYSTEMS = (("overdrive h264", None), ("imagezmq jpeg", "imagezmq"), ("netgear jpeg", "vidgear"))
"""Each system and the module it needs beyond overdrive (the ``bench`` extra); a missing one is skipped."""


def _installed(module: str | None) -> bool:
    import importlib.util

    return module is None or importlib.util.find_spec(module) is not None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per run")
    parser.add_argument("--quick", action="store_true", help="30 fps and 0/5 viewers only")
    parser.add_argument("--smoke", action="store_true", help="every system once, briefly; check, write no docs")
    parser.add_argument("--render", action="store_true", help="only rewrite the docs from the last run's JSON")
    parser.add_argument("--only", help="run only this system (overdrive, imagezmq, netgear); merge into the last JSON")
    args = parser.parse_args()
    if args.render:
        render(json.loads((ROOT / ".cache" / "bench_stream.json").read_text()))
        return

    from tests.services import Xvfb

    fps_list = [30.0] if args.quick or args.smoke else [30.0, 60.0]
    extras = [1] if args.smoke else [0, 5] if args.quick else [0, 5, 20]
    warmup, settle = (1.0, 0.0) if args.smoke else (2.0, 2.0)
    seconds = 2.0 if args.smoke else args.seconds
    systems = []
    for name, module in SYSTEMS:
        if args.only and not name.startswith(args.only):
            continue
        if not _installed(module):
            print(f"{name}: skipped, {module} is not installed (the bench extra)", file=sys.stderr)
            continue
        systems.append(name)
    runners = {"overdrive h264": partial(bench_ours, settle=settle), "imagezmq jpeg": bench_izmq}
    runners["netgear jpeg"] = bench_netgear
    raw: list[dict[str, Any]] = []
    with Xvfb() as xvfb, tempfile.TemporaryDirectory(prefix="bench-stream-") as tmp:
        env = {
            **os.environ,
            **xvfb.env(),
            "OVERDRIVE_HOME": str(Path(tmp) / "home"),
            "OVERDRIVE_PASSWORD": "bench",
            "OVERDRIVE_NETWORK": "bench",
        }
        for fps in fps_list:
            run = Run(env, Path(tmp))
            try:
                run.role("content", fps, wait_ready=True)
                for extra in extras:
                    for name in systems:
                        sub = Run(env, Path(tmp))
                        try:
                            r = runners[name](sub, fps, extra, seconds, warmup)
                        except Exception as exc:  # noqa: BLE001 - a failed run is reported, not fatal
                            print(f"{name} {fps} fps +{extra}: FAILED {exc}", file=sys.stderr)
                            r = {"error": str(exc)}
                        finally:
                            sub.close()
                        r |= {"system": name, "fps_target": fps, "extra": extra}
                        raw.append(r)
                        print(json.dumps(r), file=sys.stderr, flush=True)
            finally:
                run.close()
    if args.smoke:
        render(raw, write=False)
        problems = [p for r in raw for p in insane(r)]
        for problem in problems:
            print(f"smoke: {problem}", file=sys.stderr)
        sys.exit(1 if problems or not raw else 0)
    saved = ROOT / ".cache" / "bench_stream.json"
    if args.only and saved.exists():  # replace that system's rows in the last full run, keeping the order
        fresh = {(r["system"], r["fps_target"], r["extra"]): r for r in raw}
        raw = [fresh.get((r["system"], r["fps_target"], r["extra"]), r) for r in json.loads(saved.read_text())]
    saved.parent.mkdir(exist_ok=True)
    saved.write_text(json.dumps(raw, indent=1))
    render(raw)


def insane(r: dict[str, Any]) -> list[str]:
    """What is wrong with one measured row: a failure, or a viewer that got no pictures, latency or bytes."""
    what = f"{r['system']} {r['fps_target']:g} fps +{r['extra']}"
    if "error" in r:
        return [f"{what} failed: {r['error']}"]
    bad = [k for k in ("fps", "p50", "p99", "mbps", "cpu") if not (r.get(k) or 0) > 0]
    if r["extra"] and not (r.get("recv_fps_min") or 0) > 0:
        bad.append("recv_fps_min")
    return [f"{what}: {k} is {r.get(k)!r}" for k in bad]


def render(raw: list[dict[str, Any]], write: bool = True) -> None:
    """Print (and unless ``write`` is false, write) the table, a check of each target, and the method notes."""
    from benchlib import table, write_section

    headers = [
        "system",
        "target fps",
        "extra viewers",
        "decoding viewer fps",
        "min fps of extra viewers",
        "latency p50 ms",
        "latency p99 ms",
        "Mbit/s per viewer",
        "publisher CPU %",
    ]
    rows = [
        [
            r["system"],
            f"{r['fps_target']:g}",
            str(r["extra"]),
            fmt(r.get("fps")),
            fmt(r.get("recv_fps_min")),
            fmt(r.get("p50"), ".0f"),
            fmt(r.get("p99"), ".0f"),
            fmt(r.get("mbps"), ".2f"),
            fmt(r.get("cpu"), ".0f"),
        ]
        for r in raw
    ]
    ours = [r for r in raw if r["system"].startswith("overdrive") and r["fps_target"] == 30 and "error" not in r]
    peers = [r for r in raw if not r["system"].startswith("overdrive") and "error" not in r and r.get("mbps")]
    checks = []
    if ours:
        worst = min(min(r["fps"], r["recv_fps_min"] or r["fps"]) for r in ours)
        checks.append(
            f"- 1080p30 reaches every viewer at >= 29 fps: {'met' if worst >= 29 else 'MISSED'} "
            f"(slowest viewer {worst:.1f} fps over the {'/'.join(str(e) for e in sorted({r['extra'] for r in ours}))}"
            "-viewer runs)"
        )
        p50 = max(r["p50"] for r in ours)
        p99 = max(r["p99"] for r in ours)
        checks.append(
            f"- decoded latency p50 <= 50 ms and p99 <= 150 ms: p50 {'met' if p50 <= 50 else 'MISSED'} "
            f"(worst run {p50:.0f} ms), p99 {'met' if p99 <= 150 else 'MISSED'} (worst run {p99:.0f} ms)"
        )
        mbps = max(r["mbps"] for r in ours)
        checks.append(
            f"- desktop content <= 4 Mbit/s per viewer with H.264: {'met' if mbps <= 4 else 'MISSED'} "
            f"(highest {mbps:.2f} Mbit/s)"
        )
        for peer in sorted({p["system"] for p in peers}):
            pm = [p["mbps"] for p in peers if p["system"] == peer and p["fps_target"] == 30]
            pl = [p["p50"] for p in peers if p["system"] == peer and p["fps_target"] == 30]
            if pm:
                ratio = min(pm) / mbps
                checks.append(
                    f"- at least 5x less bandwidth than {peer} at equal or better latency: "
                    f"{'met' if ratio >= 5 and p50 <= min(pl) else 'MISSED'} ({ratio:.0f}x less, "
                    f"comparing our highest rate with its lowest; latency p50 {p50:.0f} ms vs its best "
                    f"{min(pl):.0f} ms)"
                )
    o60 = [r for r in raw if r["system"].startswith("overdrive") and r["fps_target"] == 60 and "error" not in r]
    sixty = ""
    if o60:
        fps60 = [r["fps"] for r in o60]
        p99s = [r["p99"] for r in o60]
        mb = [r["mbps"] for r in o60]
        sixty = (
            f": with a 60 fps target it delivered {min(fps60):.0f}-{max(fps60):.0f} fps with p99 of "
            f"{min(p99s):.0f}-{max(p99s):.0f} ms at {min(mb):.1f}-{max(mb):.1f} Mbit/s (more pictures per "
            "second cost more bits)"
        )
    body = (
        table(headers, rows)
        + "\n**Targets (1080p30, this run):**\n\n"
        + "\n".join(checks)
        + "\n\n"
        + NOTES.format(sixty=sixty)
    )
    print(body)
    if write:
        write_section("stream", "Live streaming (scripts/bench_stream.py)", body)


NOTES = """\
How it was measured: a Tk program draws desktop-like content on a 1920x1080 Xvfb screen (three windows, text
scrolling every 100 ms, a 320x240 picture moving every frame). Each system captures that screen with mss at the
target rate and publishes on loopback: overdrive as `overdrive stream --source screen` (H.264
ultrafast/zerolatency, CURVE encryption on); imagezmq (`ImageSender`/`ImageHub` PUB/SUB) and vidgear NetGear
(`pattern=2`) with JPEG quality 80 and no encryption. The decoding viewer measures fps and latency from capture
to decoded picture (same machine, same wall clock); "Mbit/s per viewer" is what one viewer receives. Extra
viewers only receive (overdrive: `Viewer` with `decode=False`; peers: plain SUB sockets, since their clients
always decode). Publisher CPU is percent of one core for the publishing process. Everything (Xvfb, the content
program, the publisher, all viewers) shares the same 2 cores, so fan-out rows measure the whole machine under
load, not a network. Each run measures 8 s after a 2 s warm-up; one run per row (not a median of repeats), so
single rows are noisy (e.g. one NetGear p99 of about 1 s). The NetGear rows in the committed table come from a
`--only netgear` re-run a few minutes after the others, made after fixing this harness's NetGear viewer (its
`recv()` blocks forever when no frame comes, which had hung three runs).

Reading it honestly: the peers are limited by per-picture JPEG encoding of 1080p and push tens of Mbit/s to
every viewer; overdrive is limited by capture and libx264 time. 60 fps at 1080p is out of reach for every
system on 2 cores (capture plus encode of one picture takes most of the 16 ms budget, and the viewers' decoding
shares the cores); the overdrive streamer always encodes the newest captured picture instead of queueing, so
latency stays bounded while the frame rate falls{sixty}. With 20
extra viewers, 20 receiving threads (and, for overdrive, 21 CURVE sessions) compete with the decoder for the
same cores, which shows in fps and p99.
"""


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in {
        "content",
        "izmq-pub",
        "ng-pub",
        "izmq-view",
        "ng-view",
        "raw-recv",
        "ours-recv",
    }:
        role, rest = sys.argv[1], sys.argv[2:]
        if role == "content":
            role_content(float(rest[0]))
        elif role == "izmq-pub":
            role_izmq_pub(int(rest[0]), float(rest[1]), float(rest[2]))
        elif role == "ng-pub":
            role_ng_pub([int(p) for p in rest[0].split(",")], float(rest[1]), float(rest[2]))
        elif role == "izmq-view":
            role_izmq_view(int(rest[0]), float(rest[1]), float(rest[2]), Path(rest[3]))
        elif role == "ng-view":
            role_ng_view(int(rest[0]), float(rest[1]), float(rest[2]), Path(rest[3]))
        elif role == "raw-recv":
            role_raw_recv(rest[0], [int(p) for p in rest[1].split(",")], float(rest[2]), float(rest[3]), Path(rest[4]))
        else:
            role_ours_recv(int(rest[0]), int(rest[1]), float(rest[2]), float(rest[3]), Path(rest[4]))
        threading.Event().wait(0)
    else:
        main()
