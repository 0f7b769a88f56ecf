"""Helpers shared by the benchmark scripts: machine description, medians, and writing docs/benchmarks.md.

Each benchmark owns one section of ``docs/benchmarks.md``, between ``<!-- BEGIN name -->`` and
``<!-- END name -->``, and replaces only that section, so benchmarks can run in any order.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import statistics
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
HEADER = (
    "# Benchmarks\n\n"
    "Every number here was measured by a script in `scripts/` on the machine named in its section, with the\n"
    "baseline measured in the same run. The machine is shared and noisy: figures are medians of repeated runs.\n"
    "\n"
    "Every benchmark also has a `--smoke` mode (`.venv/bin/python scripts/bench_stream.py --smoke`, likewise\n"
    "bench_audio, bench_index, bench_transfer, bench_stream_signing, bench_floods, bench_web): each step once and\n"
    "small, baselines included (imagezmq and vidgear\n"
    "come with the `bench` extra, which scripts/test installs), ratios against the baseline of the same run\n"
    "printed, no change to this file, and a non-zero exit when a result is missing or not sane. Its figures say\n"
    "nothing about speed. CI runs all of them through tests/test_bench_smoke.py (a few minutes), so a benchmark\n"
    "that no longer runs fails the test suite.\n"
)


def machine() -> str:
    """One line describing this machine, for the record."""
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        cpu = platform.processor() or "unknown CPU"
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB, Python {platform.python_version()}, {platform.system()}"


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_section(name: str, title: str, body: str) -> Path:
    """Replace (or append) this benchmark's section in docs/benchmarks.md, stamped with machine and date."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = (
        f"<!-- BEGIN {name} -->\n## {title}\n\n_Measured {stamp} on {machine()}._\n\n{body.strip()}\n"
        f"<!-- END {name} -->"
    )
    text = DOC.read_text() if DOC.exists() else HEADER
    pattern = re.compile(rf"<!-- BEGIN {re.escape(name)} -->.*?<!-- END {re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)
    return DOC
