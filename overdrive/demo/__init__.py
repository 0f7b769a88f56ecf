"""``overdrive demo``: run the system on loopback in child processes and report what happened.

Each step is a function of a :class:`~overdrive.demo.context.DemoContext` returning True on success: the bus
(:mod:`.bus`), then media (:mod:`.media`, :mod:`.audio`), the index (:mod:`.index`) and transfer (:mod:`.transfer`).
The demo uses a fresh ``OVERDRIVE_HOME`` and random password, so it never touches the user's keys, index or backup
folder.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from pathlib import Path

from overdrive.config import GlobalOptions
from overdrive.demo.context import DemoContext, Step, console
from overdrive.errors import OverdriveError


def all_steps() -> list[Step]:
    """The bus step, then each feature's ``STEPS`` (imported late: ``python -m overdrive.demo echo-server`` needs
    none of them)."""
    from overdrive.demo import index as index_demo
    from overdrive.demo import media as media_demo
    from overdrive.demo import transfer as transfer_demo
    from overdrive.demo.bus import step_secure_echo

    return [step_secure_echo, *media_demo.STEPS, *index_demo.STEPS, *transfer_demo.STEPS]


def run_demo(opts: GlobalOptions, seconds: float = 5.0, keep: bool = False) -> bool:
    """Run every step; print a summary; return True when all succeeded. The scratch home is removed at the end
    unless ``keep``."""
    home = tempfile.mkdtemp(prefix="overdrive-demo-")
    try:
        ctx = DemoContext(Path(home), secrets.token_urlsafe(12), "demo", seconds)
        console.print(f"demo home {home}, network 'demo', random password")
        results: list[tuple[str, bool]] = []
        try:
            for step in all_steps():
                try:
                    ok = step(ctx)
                except OverdriveError as exc:
                    console.print(f"[red]{step.__name__}: {exc}")
                    ok = False
                results.append((step.__name__.removeprefix("step_"), ok))
        finally:
            ctx.stop_all()
    finally:
        if not keep:
            shutil.rmtree(home, ignore_errors=True)
    console.rule("[bold]summary")
    for name, ok in results:
        console.print(f"{'[green]OK  ' if ok else '[red]FAIL'}[/] {name}")
    if keep:
        console.print(f"kept the demo home: {home}")
    return all(ok for _, ok in results)
