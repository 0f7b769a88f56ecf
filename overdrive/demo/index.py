"""``overdrive demo`` step for the index: two masters, a node sharing a folder, and ``ls`` through the other master."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from overdrive.bus.signing import MeshKey
from overdrive.demo.context import DemoContext, Step, console


def _started(ctx: DemoContext, *args: str) -> str | None:
    """Spawn ``overdrive ARGS`` and return the ``host:port`` its ready line gives (None if it died)."""
    endpoint = ctx.started(*args)
    return None if endpoint is None else endpoint.display


def step_index(ctx: DemoContext) -> bool:
    """Two masters replicate the index; a node shares a folder; ``ls`` on the other master lists its files."""
    console.rule("[bold]index: masters, a sharing node and ls")
    mesh_key = ctx.home / "mesh.key"  # the masters' credential: what `overdrive keygen --mesh` writes
    if not mesh_key.exists():
        MeshKey.generate(ctx.network).write(mesh_key)
    common = ("--bind", "tcp://127.0.0.1:0", "--stats", "0", "--mesh-key", str(mesh_key))
    first = _started(ctx, "master", *common, "--db", f"sqlite://{ctx.home / 'master1.db'}")
    if first is None:
        return False
    second = _started(ctx, "master", *common, "--db", f"sqlite://{ctx.home / 'master2.db'}", "--peers", first)
    if second is None:
        return False
    console.print(f"masters on {first} and {second} (the second knew only the first)")
    folder = ctx.home / "shared"
    (folder / "lectures" / "week 1").mkdir(parents=True, exist_ok=True)
    (folder / "lectures" / "week 1" / "notes – α.txt").write_text("attention is all you need\n")
    (folder / "lectures" / "slides.pdf").write_bytes(bytes(range(256)) * 64)
    (folder / "README.md").write_text("shared from the overdrive demo\n")
    node = _started(ctx, "share", str(folder), "--master", first, "--bind", "tcp://127.0.0.1:0")
    if node is None:
        return False
    console.print(f"node serving {folder} on {node}, registered with {first}")
    deadline = time.monotonic() + 15
    listed: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        run = subprocess.run(
            [sys.executable, "-m", "overdrive", "ls", "--json", "--master", second],
            env=ctx.env(),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if run.returncode == 0:
            listed = json.loads(run.stdout)
            if len(listed) == 3 and all(item["online"] for item in listed):
                break
        time.sleep(0.3)
    for item in listed:
        holders = ", ".join(f"{h['address']} ({'online' if h['online'] else 'offline'})" for h in item["holders"])  # type: ignore[attr-defined]
        console.print(f"  {item['name']}  {item['size']} B  {str(item['hash'])[:12]}  {holders}")
    ok = len(listed) == 3 and all(item["online"] for item in listed)
    console.print("ls through the second master shows all 3 files online" if ok else "[red]ls did not show the files")
    return ok


STEPS: list[Step] = [step_index]
