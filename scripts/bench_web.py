#!/usr/bin/env python3
"""The browser gateway (issue 13): capture-to-shown latency in Chromium, the gateway's CPU and memory per number of
pages, bytes per viewer and time to first picture.

A real ``overdrive stream`` (720p test pattern, 30 fps) and a real ``overdrive web`` on loopback; N headless pages
of Debian's Chromium (one browser, one page each) read ``window.overdriveStats``. The gateway's CPU is its own
process's (user+system over the window); the browsers' is every Chromium process together, printed beside it to
show what share of the machine the pages themselves take (on one machine they compete with the gateway).
Baseline in the same run: ``overdrive view --headless`` on the same stream (a native viewer that decodes), its
latency p50 from its stats file.

    .venv/bin/python scripts/bench_web.py            # 1, 10 and 50 pages, 15 s each; video, then video+audio
    .venv/bin/python scripts/bench_web.py --write    # the same, and the section in docs/benchmarks.md
    .venv/bin/python scripts/bench_web.py --smoke    # 1 and 2 pages, 3 s; checked; for CI
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import benchlib  # noqa: E402

from overdrive.bus.ready import parse_ready  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
PASSWORD = "bench web password"


def _env(home: Path) -> dict[str, str]:
    return dict(os.environ, OVERDRIVE_HOME=str(home), OVERDRIVE_PASSWORD=PASSWORD, OVERDRIVE_NETWORK="bench-web")


def _spawn(home: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "overdrive", *args],
        env=_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def _stop(*procs: subprocess.Popen[str]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def _cpu(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def _browser_processes(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def native_baseline(tmp: Path, stream: str, seconds: float) -> float | None:
    stats = tmp / "view.json"
    proc = subprocess.run(
        [sys.executable, "-m", "overdrive", "view", stream, "--headless", "--no-record", "--duration", f"{seconds:g}",
         "--stats-json", str(stats)],
        env=_env(tmp / "view"), capture_output=True, text=True, timeout=seconds + 60, check=False,
    )  # fmt: skip
    if proc.returncode != 0 or not stats.exists():
        return None
    p50 = json.loads(stats.read_text())["latency_ms"]["p50"]
    return None if p50 is None else float(p50)


def measure(playwright: Any, url: str, gateway: subprocess.Popen[str], pages: int, seconds: float) -> dict[str, Any]:
    browser = playwright.chromium.launch(executable_path=CHROMIUM)
    try:
        opened = []
        for _ in range(pages):
            page = browser.new_page(viewport={"width": 640, "height": 360})
            page.goto(url)
            opened.append(page)
        for page in opened:
            page.wait_for_function("() => window.overdriveStats.frames >= 10", timeout=60_000)
        gw = psutil.Process(gateway.pid)
        browsers = _browser_processes(browser.process.pid) if hasattr(browser, "process") else []
        if not browsers:
            browsers = [p for p in psutil.process_iter() if "chromium" in (p.name() or "")]
        before = [page.evaluate("() => window.overdriveStats") for page in opened]
        gw_cpu, br_cpu, start = _cpu([gw]), _cpu(browsers), time.monotonic()
        time.sleep(seconds)
        elapsed = time.monotonic() - start
        gw_cpu, br_cpu = (_cpu([gw]) - gw_cpu) / elapsed, (_cpu(browsers) - br_cpu) / elapsed
        after = [page.evaluate("() => window.overdriveStats") for page in opened]
        rss = gw.memory_info().rss / 2**20
    finally:
        browser.close()
    p50s = [a["latency_ms_p50"] for a in after if a["latency_ms_p50"] is not None]
    p99s = [a["latency_ms_p99"] for a in after if a["latency_ms_p99"] is not None]
    rates = [(a["bytes"] - b["bytes"]) / elapsed for a, b in zip(after, before, strict=True)]
    fps = [(a["frames"] - b["frames"]) / elapsed for a, b in zip(after, before, strict=True)]
    first = [a["first_frame_ms"] for a in after if a["first_frame_ms"] is not None]
    return {
        "pages": pages,
        "p50": benchlib.median(p50s),
        "p99": benchlib.median(p99s),
        "fps": benchlib.median(fps),
        "first_ms": benchlib.median(first),
        "gateway_cpu": gw_cpu,
        "browsers_cpu": br_cpu,
        "gateway_rss": rss,
        "kbit_per_viewer": benchlib.median(rates) * 8 / 1000,
    }


def run(audio: str, page_counts: list[int], seconds: float, tmp: Path) -> tuple[list[dict[str, Any]], float | None]:
    from playwright.sync_api import sync_playwright

    streamer = _spawn(tmp / "stream", "stream", "--source", "testpattern", "--bind", "tcp://127.0.0.1:0",
                      "--no-record", "--audio", audio)  # fmt: skip
    assert streamer.stdout is not None
    endpoint = parse_ready(streamer.stdout.readline()).endpoint.display
    gateway = _spawn(tmp / "web", "web", endpoint, "--bind", "127.0.0.1:0", "--max-browsers", "100")
    assert gateway.stdout is not None
    url = gateway.stdout.readline().strip()
    try:
        if not url.startswith("http://"):
            raise SystemExit(f"overdrive web printed no link: {url!r}")
        with sync_playwright() as playwright:
            rows = [measure(playwright, url, gateway, n, seconds) for n in page_counts]
        baseline = native_baseline(tmp, endpoint, max(3.0, seconds))
    finally:
        _stop(gateway, streamer)
    return rows, baseline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny and checked, for CI")
    parser.add_argument("--write", action="store_true", help="write the section in docs/benchmarks.md")
    args = parser.parse_args()
    page_counts, seconds = ([1, 2], 3.0) if args.smoke else ([1, 10, 50], 15.0)
    table_rows, problems = [], []
    with tempfile.TemporaryDirectory(prefix="bench-web-") as folder:
        for audio in ("none", "testtone"):
            rows, baseline = run(audio, page_counts, seconds, Path(folder) / audio)
            native = "n/a" if baseline is None else f"{baseline:.0f}"
            for r in rows:
                table_rows.append([
                    "video" if audio == "none" else "video + Opus", r["pages"], f"{r['p50']:.0f}", f"{r['p99']:.0f}",
                    native, f"{r['fps']:.1f}", f"{r['first_ms']:.0f}", f"{r['gateway_cpu'] * 100:.1f}%",
                    f"{r['browsers_cpu'] * 100:.0f}%", f"{r['gateway_rss']:.0f}", f"{r['kbit_per_viewer']:.0f}",
                ])  # fmt: skip
                if not r["fps"] > 0 or r["p50"] != r["p50"] or r["kbit_per_viewer"] <= 0:
                    problems.append(f"{audio} x{r['pages']}: {r}")
            if baseline is None:
                problems.append(f"the native viewer baseline ({audio}) gave no latency")
    headers = ["stream", "pages", "p50 ms", "p99 ms", "native view p50 ms (baseline)", "fps/page", "first picture ms",
               "gateway CPU", "browsers CPU", "gateway RSS MiB", "kbit/s per viewer"]  # fmt: skip
    body = (
        "Capture-to-shown latency in headless Chromium pages on loopback (medians over pages), the `overdrive web`\n"
        "process's CPU (100% = one core) and memory, every Chromium process's CPU together, and bytes per viewer.\n"
        "Baseline: `overdrive view --headless` (native, decoding) on the same stream.\n\n"
        + benchlib.table(headers, table_rows)
    )
    print(body)
    if args.write and not args.smoke:
        print(f"wrote {benchlib.write_section('web', 'Browser gateway (overdrive web)', body)}")
    if problems:
        print("\n".join(problems), file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
