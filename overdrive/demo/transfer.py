"""Demo step for peer file transfer: a stand-alone holder serves a folder, ``overdrive fetch --from`` gets a file.

It also shows the two refusals people should see: a traversal name and a wrong password.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from overdrive.demo.context import DemoContext, Step, console
from overdrive.files.model import hash_file

DEMO_SIZE = 64 << 20


def step_fetch_file(ctx: DemoContext) -> bool:
    """Serve a temp folder with a 64 MiB file and fetch it with --from: verified hash and MB/s."""
    console.rule("[bold]transfer: fetch a file from a peer, verified")
    shared = ctx.home / "transfer-shared"
    shared.mkdir(parents=True, exist_ok=True)
    source = shared / "lecture.bin"
    with source.open("wb") as fh:
        block = os.urandom(1 << 20)
        for n in range(DEMO_SIZE >> 20):
            fh.write(n.to_bytes(8, "little") + block[8:])
    digest = hash_file(source)
    holder = ctx.started("-m", "overdrive.transfer.folder", str(shared))
    if holder is None:
        return False
    address = holder.display
    out = ctx.home / "transfer-fetched"
    fetch = [sys.executable, "-m", "overdrive", "fetch", "lecture.bin", "--from", address, "--out", str(out)]
    done = subprocess.run([*fetch, "--json"], env=ctx.env(), capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        console.print(f"[red]fetch failed: {done.stderr.strip()}")
        return False
    result = json.loads(done.stdout)
    same = result["hash"] == digest == hash_file(out / "lecture.bin")
    console.print(
        f"fetched lecture.bin ({result['bytes']:,} bytes) from {address} in {result['seconds']:.2f} s, "
        f"{result['mb_per_s']:.0f} MB/s; BLAKE3 {result['hash'][:16]}… "
        f"{'matches the holder' if same else 'DOES NOT MATCH'}"
    )
    again = subprocess.run([*fetch, "--json"], env=ctx.env(), capture_output=True, text=True, timeout=60, check=False)
    present = again.returncode == 0 and json.loads(again.stdout)["already_present"]
    console.print(f"fetching it again: {'already here, nothing sent' if present else again.stderr.strip()}")
    ok = same and present
    hostile = [sys.executable, "-m", "overdrive", "fetch", "../../etc/passwd", "--from", address, "--out", str(out)]
    refused = subprocess.run(hostile, env=ctx.env(), capture_output=True, text=True, timeout=60, check=False)
    console.print(f"asking for ../../etc/passwd: {refused.stderr.strip() or 'NOT REFUSED'}")
    ok &= refused.returncode != 0
    wrong = {**ctx.env(), "OVERDRIVE_PASSWORD": "not-" + ctx.password}
    other = [*fetch[:-1], str(ctx.home / "transfer-denied")]
    denied = subprocess.run(other, env=wrong, capture_output=True, text=True, timeout=60, check=False)
    console.print(f"with a wrong password: {denied.stderr.strip() or 'NOT REFUSED'}")
    ok &= denied.returncode != 0 and "authentication failed" in denied.stderr
    return bool(ok)


STEPS: list[Step] = [step_fetch_file]
