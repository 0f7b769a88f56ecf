#!/usr/bin/env python3
"""Benchmark the browser gateway: a live stream played in headless Chromium through `overdrive web`.

A real streamer (`overdrive stream --source testpattern`, 1280x720 at 30 fps, with or without a test tone)
publishes on loopback; a real `overdrive web` process subscribes to it and serves pages; Debian's Chromium
(playwright, ``executable_path=/usr/bin/chromium``, never a downloaded browser) plays them. Every figure about a
page comes from the page's own ``window.overdriveStats`` (overdrive/web/static/app.js): ``latency_ms_p50`` /
``latency_ms_p99`` (capture to shown, from ``requestVideoFrameCallback``, over the page's last 300 pictures),
``first_frame_ms`` (first picture after the page's script started), ``frames`` and ``bytes`` (WebSocket payload
received). The gateway's CPU is its process's ``cpu_times`` over the measured window as a fraction of one core;
the browsers', the streamer's and the whole machine's are measured over the same window.

Baseline, in the same run on the same stream: the native viewer, ``overdrive view --headless --trace`` (capture to
decoded picture, like scripts/bench_stream.py; headless it plays no sound, so with audio it measures the video of
the stream that carries the tone).

Usage: ``.venv/bin/python scripts/bench_web.py [--repeats 3] [--seconds 10]``. ``--smoke`` runs each step once and
small (1 and 2 pages, 3 s), checks every result is present and sane, prints the table and exits non-zero on a
missing result; it writes no docs (CI runs it: tests/test_bench_smoke.py).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from overdrive.bus.ready import parse_ready  # noqa: E402

PY = sys.executable
CHROMIUM = "/usr/bin/chromium"
TOKEN = "benchmark-invite-token"
PAGES_PER_BROWSER = 25
"""Pages share one Chromium process up to this many (each page still gets its own renderer and context)."""
GOALS = {"video_p50": 150.0, "audio_p50": 300.0, "first_ms": 1000.0, "gateway_cores_50": 0.5}


# --------------------------------------------------------------------------------------------------------------
# processes
# --------------------------------------------------------------------------------------------------------------
class Procs:
    """The overdrive processes of one run: started with stdout piped (their first line is read), stderr to a
    file (so a chatty process never blocks on a full pipe), stopped with SIGTERM at the end."""

    def __init__(self, env: dict[str, str], tmp: Path) -> None:
        self.env, self.tmp = env, tmp
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, name: str, *args: str) -> tuple[subprocess.Popen[str], str]:
        """``overdrive ARGS``; the process and its first stdout line (a ready line or the viewer link)."""
        err = (self.tmp / f"{name}.err").open("w")
        proc = subprocess.Popen(
            [PY, "-m", "overdrive", *args], env=self.env, stdout=subprocess.PIPE, stderr=err, text=True
        )
        err.close()
        self.procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if not line:
            proc.wait(10)
            raise RuntimeError(f"{name} did not start: {(self.tmp / f'{name}.err').read_text()[-800:]}")
        return proc, line

    def stop(self, proc: subprocess.Popen[str]) -> None:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def close(self) -> None:
        for proc in self.procs:
            self.stop(proc)


@contextmanager
def stream_and_gateway(procs: Procs, audio: bool) -> Iterator[tuple[str, str, subprocess.Popen[str], int]]:
    """A test-pattern streamer (with a test tone if ``audio``) and `overdrive web` in front of it: the stream's
    address, the viewer link, the gateway process and the streamer's pid."""
    streamer, line = procs.start(
        "streamer", "stream", "--source", "testpattern", "--bind", "tcp://127.0.0.1:0", "--no-record",
        "--audio", "testtone" if audio else "none",
    )  # fmt: skip
    try:
        address = parse_ready(line).endpoint.display
        gateway, url = procs.start("gateway", "web", address, "--bind", "127.0.0.1:0", "--token", TOKEN)
        if not url.startswith("http://"):
            raise RuntimeError(f"overdrive web printed no link: {url!r}")
        try:
            yield address, url, gateway, streamer.pid
        finally:
            procs.stop(gateway)
    finally:
        procs.stop(streamer)


# --------------------------------------------------------------------------------------------------------------
# measurements
# --------------------------------------------------------------------------------------------------------------
def stats(page: Any) -> dict[str, Any]:
    """The page's figures, with the page's clock when read (reading many starved pages one after another takes
    seconds, so each page's rates are over its own window)."""
    return page.evaluate("() => ({...window.overdriveStats, now_ms: Date.now()})")  # type: ignore[no-any-return]


def rate(after: dict[str, Any], before: dict[str, Any], key: str) -> float:
    return (after[key] - before[key]) * 1000 / max(1.0, after["now_ms"] - before["now_ms"])


def open_pages(browsers: Sequence[Any], url: str, n: int) -> list[Any]:
    """``n`` pages (each in its own context, so each is a separate viewer with its own cookie) spread over the
    browsers, each waited for until it shows its first picture."""
    pages = []
    for i in range(n):
        page = browsers[i // PAGES_PER_BROWSER].new_page(viewport={"width": 1280, "height": 720})
        page.goto(url)
        pages.append(page)
    for page in pages:
        page.wait_for_function("() => window.overdriveStats.frames >= 1", timeout=60_000)
    return pages


def close_pages(pages: Sequence[Any]) -> None:
    for page in pages:
        page.context.close()


def native_latency(procs: Procs, address: str, seconds: float, warmup: float) -> dict[str, Any]:
    """`overdrive view --headless` on the same stream: capture-to-decoded latency and received bit rate."""
    trace, out = procs.tmp / "native.trace", procs.tmp / "native.json"
    viewer, _ = procs.start(
        "native", "view", address, "--headless", "--duration", str(warmup + seconds), "--trace", str(trace),
        "--stats-json", str(out), "--no-record",
    )  # fmt: skip
    viewer.wait(warmup + seconds + 30)
    procs.stop(viewer)
    rows = [tuple(map(int, line.split())) for line in trace.read_text().splitlines()]
    t0 = rows[0][0] + int(warmup * 1e9) if rows else 0
    lat = sorted((r[0] - r[2]) / 1e6 for r in rows if r[3] and r[0] >= t0)
    return {
        "p50": percentile(lat, 0.5),
        "p99": percentile(lat, 0.99),
        "bytes_per_s": (json.loads(out.read_text()).get("bitrate") or 0) / 8,
    }


def percentile(values: Sequence[float], p: float) -> float | None:
    """The same rule as the page's (app.js ``percentile``), so both sides are read alike."""
    return values[min(len(values) - 1, math.floor(p * len(values)))] if values else None


def web_latency(browser: Any, url: str, seconds: float, warmup: float) -> dict[str, Any]:
    """One page: its time to first picture, then its own p50/p99 after ``warmup + seconds`` (its window is the
    last 300 pictures, 10 s at 30 fps, so with ``seconds`` >= 10 the warm-up is out of it)."""
    context = browser.new_context(viewport={"width": 1280, "height": 720})
    try:
        page = context.new_page()
        goto = time.monotonic()
        page.goto(url)
        page.wait_for_function("() => window.overdriveStats.first_frame_ms !== null", timeout=20_000)
        since_goto = (time.monotonic() - goto) * 1000
        page.wait_for_timeout(warmup * 1000)
        before = stats(page)
        page.wait_for_timeout(seconds * 1000)
        after = stats(page)
    finally:
        context.close()
    return {
        "first_ms": after["first_frame_ms"],
        "first_since_goto_ms": since_goto,
        "p50": after["latency_ms_p50"],
        "p99": after["latency_ms_p99"],
        "fps": rate(after, before, "frames"),
        "bytes_per_s": rate(after, before, "bytes"),
        "audio": after["audio"],
        "behind_ms": after["behind_s"] * 1000,
        "jumps": after["jumps"] - before["jumps"],
    }


def _cpu(proc: Any) -> float:
    try:
        t = proc.cpu_times()
        return float(t.user + t.system + t.children_user + t.children_system)
    except Exception:  # noqa: BLE001 - psutil.NoSuchProcess: a renderer that ended counts from then on as 0
        return 0.0


def browser_processes() -> list[Any]:
    """Chromium's processes (browser, renderers, GPU and utility), descendants of this script via playwright."""
    import psutil

    return [p for p in psutil.Process().children(recursive=True) if "chrom" in p.name().lower()]


def fan_out(browsers: Sequence[Any], url: str, gateway: subprocess.Popen[str], streamer_pid: int, n: int,
            seconds: float, warmup: float) -> dict[str, Any]:  # fmt: skip
    """``n`` pages at once: the gateway's CPU (cores) and RSS, each page's received rate, frame rate and latency,
    and what share of the machine's busy time the gateway, the browsers and the streamer took."""
    import psutil

    gw, st = psutil.Process(gateway.pid), psutil.Process(streamer_pid)
    pages = open_pages(browsers, url, n)
    try:
        time.sleep(warmup)
        chrome = browser_processes()
        before = [stats(p) for p in pages]
        machine0 = psutil.cpu_times()
        gw0, st0, br0, t0 = _cpu(gw), _cpu(st), sum(map(_cpu, chrome)), time.monotonic()
        time.sleep(seconds)
        gw1, st1, br1, t1 = _cpu(gw), _cpu(st), sum(map(_cpu, chrome)), time.monotonic()
        machine1 = psutil.cpu_times()
        after = [stats(p) for p in pages]
        rss = gw.memory_info().rss
    finally:
        close_pages(pages)
    wall = t1 - t0
    busy = sum(machine1) - sum(machine0) - (machine1.idle - machine0.idle) - (machine1.iowait - machine0.iowait)
    fps = sorted(rate(a, b, "frames") for a, b in zip(after, before, strict=True))
    received = sorted(rate(a, b, "bytes") for a, b in zip(after, before, strict=True))
    p50s = sorted(a["latency_ms_p50"] for a in after if a["latency_ms_p50"] is not None)
    return {
        "pages": n,
        "gateway_cores": (gw1 - gw0) / wall,
        "gateway_rss_mib": rss / 2**20,
        "browser_cores": (br1 - br0) / wall,
        "streamer_cores": (st1 - st0) / wall,
        "machine_cores": busy / wall,
        "fps_median": percentile(fps, 0.5),
        "fps_min": fps[0],
        "bytes_per_s_median": percentile(received, 0.5),
        "p50_median": percentile(p50s, 0.5),
        "skips": sum(a["skips"] - b["skips"] for a, b in zip(after, before, strict=True)),
    }


# --------------------------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------------------------
def median_of(runs: Sequence[dict[str, Any]], key: str) -> float | None:
    values = sorted(r[key] for r in runs if r.get(key) is not None)
    if not values:
        return None
    mid = len(values) // 2
    return float(values[mid]) if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def run(repeats: int, seconds: float, warmup: float, page_counts: Sequence[int], fan_seconds: float) -> dict[str, Any]:
    import psutil
    from playwright.sync_api import sync_playwright

    result: dict[str, Any] = {"repeats": repeats, "seconds": seconds, "fan_seconds": fan_seconds}
    with tempfile.TemporaryDirectory(prefix="bench-web-") as tmp, sync_playwright() as pw:
        env = {
            **os.environ,
            "OVERDRIVE_HOME": str(Path(tmp) / "home"),
            "OVERDRIVE_PASSWORD": "bench",
            "OVERDRIVE_NETWORK": "bench",
        }
        procs = Procs(env, Path(tmp))
        need = max(1, math.ceil(max(page_counts) / PAGES_PER_BROWSER))
        browsers = [pw.chromium.launch(executable_path=CHROMIUM) for _ in range(need)]
        try:
            for audio in (False, True):
                kind = "audio" if audio else "video"
                with stream_and_gateway(procs, audio) as (address, url, gateway, streamer_pid):
                    web, native = [], []
                    for i in range(repeats):
                        native.append(native_latency(procs, address, seconds, warmup))
                        web.append(web_latency(browsers[0], url, seconds, warmup))
                        print(f"{kind} #{i + 1}: web {web[-1]} native {native[-1]}", file=sys.stderr, flush=True)
                    result[kind] = {"web": web, "native": native}
                    if audio:
                        continue
                    rss_idle = psutil.Process(gateway.pid).memory_info().rss / 2**20
                    fans = []
                    for n in page_counts:
                        for i in range(repeats):
                            fans.append(fan_out(browsers, url, gateway, streamer_pid, n, fan_seconds, warmup))
                            print(f"{n} pages #{i + 1}: {fans[-1]}", file=sys.stderr, flush=True)
                    result["fan_out"] = fans
                    result["gateway_rss_idle_mib"] = rss_idle
        finally:
            for browser in browsers:
                browser.close()
            procs.close()
    return result


WEB_KEYS = ("p50", "p99", "first_ms", "first_since_goto_ms", "fps", "behind_ms")


def summary(raw: dict[str, Any]) -> dict[str, Any]:
    """Medians over the repeats: latency rows per kind, fan-out rows per page count."""
    s: dict[str, Any] = {}
    for kind in ("video", "audio"):
        web, native = raw[kind]["web"], raw[kind]["native"]
        s[kind] = {
            **{f"web_{k}": median_of(web, k) for k in WEB_KEYS},
            "web_bytes_per_s": median_of(web, "bytes_per_s"),
            "native_p50": median_of(native, "p50"),
            "native_p99": median_of(native, "p99"),
            "native_bytes_per_s": median_of(native, "bytes_per_s"),
            "audio": all(w["audio"] for w in web),
        }
    s["fan_out"] = [
        {"pages": n, **{k: median_of([r for r in raw["fan_out"] if r["pages"] == n], k) for k in raw["fan_out"][0]}}
        for n in sorted({r["pages"] for r in raw["fan_out"]})
    ]
    return s


def insane(raw: dict[str, Any]) -> list[str]:
    """Every missing or impossible figure of a run (the smoke's check)."""
    problems = []
    for kind in ("video", "audio"):
        for side in ("web", "native"):
            for i, r in enumerate(raw.get(kind, {}).get(side, [])):
                for key in ("p50", "p99", "bytes_per_s") + (("first_ms", "fps") if side == "web" else ()):
                    if not (r.get(key) or 0) > 0:
                        problems.append(f"{kind} {side} #{i + 1}: {key} is {r.get(key)!r}")
        if not raw.get(kind, {}).get("web"):
            problems.append(f"{kind}: no run")
        elif kind == "audio" and not all(r["audio"] for r in raw[kind]["web"]):
            problems.append("audio: the page did not play the stream's audio")
    if not raw.get("fan_out"):
        problems.append("fan-out: no run")
    for r in raw.get("fan_out", []):
        for key in ("gateway_cores", "gateway_rss_mib", "browser_cores", "fps_min", "bytes_per_s_median"):
            if not (r.get(key) or 0) > 0:
                problems.append(f"{r['pages']} pages: {key} is {r.get(key)!r}")
    return problems


def fmt(v: Any, spec: str = ".0f") -> str:
    return "–" if v is None else format(v, spec)


def met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def render(raw: dict[str, Any], write: bool = True) -> None:
    from benchlib import table, write_section

    s = summary(raw)
    lat_rows = []
    for kind, label in (("video", "video alone"), ("audio", "video + Opus test tone")):
        k = s[kind]
        ratio = k["web_p50"] / k["native_p50"] if k["web_p50"] and k["native_p50"] else None
        lat_rows.append(
            [
                label,
                fmt(k["web_p50"]),
                fmt(k["web_p99"]),
                fmt(k["native_p50"]),
                fmt(k["native_p99"]),
                fmt(ratio, ".1f") + "x",
                fmt(k["web_behind_ms"]),
                fmt(k["web_first_ms"]),
                fmt(k["web_first_since_goto_ms"]),
                fmt(k["web_fps"], ".1f"),
                fmt((k["web_bytes_per_s"] or 0) * 8 / 1e6, ".2f"),
                fmt((k["native_bytes_per_s"] or 0) * 8 / 1e6, ".2f"),
            ]
        )
    fan_rows = [
        [
            fmt(f["pages"]),
            fmt(f["gateway_cores"], ".3f"),
            fmt(f["gateway_rss_mib"], ".0f"),
            fmt(f["browser_cores"], ".2f"),
            fmt(f["streamer_cores"], ".2f"),
            fmt(f["machine_cores"], ".2f"),
            fmt(100 * f["gateway_cores"] / f["machine_cores"] if f["machine_cores"] else None),
            fmt(100 * f["browser_cores"] / f["machine_cores"] if f["machine_cores"] else None),
            fmt(f["fps_median"], ".1f"),
            fmt(f["fps_min"], ".1f"),
            fmt((f["bytes_per_s_median"] or 0) * 8 / 1e6, ".2f"),
            fmt(f["p50_median"]),
        ]
        for f in s["fan_out"]
    ]
    video, audio = s["video"], s["audio"]
    fifty = next((f for f in s["fan_out"] if f["pages"] == 50), None)
    first = max(v for v in (video["web_first_ms"], audio["web_first_ms"]) if v is not None)
    goto = max(v for v in (video["web_first_since_goto_ms"], audio["web_first_since_goto_ms"]) if v is not None)
    checks = [
        f"- latency p50 <= {GOALS['video_p50']:.0f} ms, video alone: "
        f"{met((video['web_p50'] or math.inf) <= GOALS['video_p50'])} ({fmt(video['web_p50'])} ms)",
        f"- latency p50 <= {GOALS['audio_p50']:.0f} ms with audio: "
        f"{met((audio['web_p50'] or math.inf) <= GOALS['audio_p50'])} ({fmt(audio['web_p50'])} ms)",
        f"- first picture within {GOALS['first_ms']:.0f} ms of the page loading: "
        f"{met(max(first, goto) <= GOALS['first_ms'])} (slower of the two kinds: {first:.0f} ms from the page's "
        f"script starting, {goto:.0f} ms from asking for the invite link)",
        "- 50 pages with at most half a core for the gateway: "
        + (
            f"{met(fifty['gateway_cores'] <= GOALS['gateway_cores_50'])} ({fifty['gateway_cores']:.3f} cores)"
            if fifty
            else "not measured in this run"
        ),
    ]
    body = (
        f"{raw['repeats']} repeats, medians; latency runs measure {raw['seconds']:g} s after a warm-up, fan-out runs "
        f"{raw['fan_seconds']:g} s.\n\n"
        + table(
            [
                "stream",
                "web p50 ms",
                "web p99 ms",
                "native p50 ms",
                "native p99 ms",
                "web/native p50",
                "page behind buffered end ms",
                "first picture ms (page)",
                "first picture ms (from goto)",
                "page fps",
                "page Mbit/s",
                "native Mbit/s",
            ],
            lat_rows,
        )
        + "\n"
        + table(
            [
                "pages",
                "gateway cores",
                "gateway RSS MiB",
                "browsers cores",
                "streamer cores",
                "machine busy cores",
                "gateway % of busy",
                "browsers % of busy",
                "page fps median",
                "page fps min",
                "Mbit/s per page",
                "page p50 ms median",
            ],
            fan_rows,
        )
        + f"\nGateway RSS with no page: {raw['gateway_rss_idle_mib']:.0f} MiB.\n\n**Goals (issue 13):**\n\n"
        + "\n".join(checks)
        + "\n\n"
        + (raw["note"] + "\n\n" if raw.get("note") else "")
        + NOTES
    )
    print(body)
    if write:
        write_section("web", "Browser gateway (scripts/bench_web.py)", body)


NOTES = """\
How it was measured: `overdrive stream --source testpattern` (1280x720, 30 fps, H.264, keyframe every second;
`--audio testtone` adds a 48 kHz Opus tone) publishes on loopback; `overdrive web` subscribes with CURVE and serves
headless Chromium pages (Debian's package under playwright). Page figures come from `window.overdriveStats`:
latency is capture to the picture's expected display time (`requestVideoFrameCallback`), the page's p50/p99 over
its last 300 pictures; "first picture (page)" counts from the page's script starting, "(from goto)" from the
harness asking for the invite link (the 303 to the cookie, the page and the WebSocket included). Page Mbit/s is
the WebSocket payload a page received. The baseline is the native viewer, `overdrive view --headless`, on the same
stream in the same run: capture to decoded picture (no display, so it has no vsync or compositor delay and no
audio buffer: the web/native ratio is the price of the browser path). Fan-out: pages in one Chromium process per
25 pages, each in its own context (its own viewer); CPU is `cpu_times` over the window as a fraction of one core
(the machine has 2), "machine busy" is all the machine's non-idle time, other helpers' work on this shared
machine included. Every page decodes 720p in software, so with many pages the browsers saturate both cores:
their frame rate and latency then measure the starved machine, not the gateway, and the gateway's own cost is the
figure that carries over to a real class (one browser per device).

Reading it: a page plays on the media timeline at rate 1, so its latency is how far its playhead sits behind live,
nearly the same for every picture (p99 close to p50); network and decoding jitter shows as stalls and jumps, not
as spread. "Page behind buffered end" is that distance inside the page (app.js `behind_s`): the rest of the
latency is delivery (capture, encode, the gateway hop) plus the display. With the Opus track, Chromium holds the
playhead 0.25-0.3 s behind the buffered end (its audio renderer wants that much ahead before it plays), just
under the page's catch-up threshold (`CATCH_UP = 0.3` s in app.js), so the page never speeds up to recover it:
that, not the gateway, is most of the audio row's latency, and it leaves little margin under its goal (a 3 s smoke
run and a diagnostic run saw 300-400 ms). Playing the audio outside the video's
MediaSource (its own element or Web Audio, accepting a small A/V offset) or a lower catch-up threshold when audio
is present are the ways to try. The gateway's cost is small and nearly flat in the number of pages: each
fragment is built once and the same bytes are queued to every browser, so a page costs one WebSocket write per
fragment; every page still received the whole stream (Mbit/s per page) when the starved browsers showed only a
few pictures per second.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per row (medians are reported)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per latency run")
    parser.add_argument("--fan-seconds", type=float, default=8.0, help="measured seconds per fan-out run")
    parser.add_argument("--smoke", action="store_true", help="each step once and small; check; write no docs")
    parser.add_argument("--render", action="store_true", help="only rewrite the docs from the last run's JSON")
    args = parser.parse_args()
    saved = ROOT / ".cache" / "bench_web.json"
    if args.render:
        render(json.loads(saved.read_text()))
        return
    if not Path(CHROMIUM).exists():
        sys.exit(f"bench_web needs Debian's chromium at {CHROMIUM} (scripts/provision)")
    if args.smoke:
        raw = run(1, 3.0, 1.0, (1, 2), 3.0)
        problems = insane(raw)
        if not problems:
            render(raw, write=False)
        for problem in problems:
            print(f"smoke: {problem}", file=sys.stderr)
        sys.exit(1 if problems else 0)
    raw = run(args.repeats, args.seconds, 2.0, (1, 10, 50), args.fan_seconds)
    saved.parent.mkdir(exist_ok=True)
    saved.write_text(json.dumps(raw, indent=1))
    problems = insane(raw)
    for problem in problems:
        print(f"bench_web: {problem}", file=sys.stderr)
    render(raw)


if __name__ == "__main__":
    main()
