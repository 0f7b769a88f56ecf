"""``overdrive demo``: the whole system on loopback (:mod:`overdrive.demo`)."""

from __future__ import annotations

from typing import Annotated

import typer

from overdrive.cli.options import options
from overdrive.errors import ConfigError


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)


def demo(
    ctx: typer.Context,
    seconds: Annotated[float, typer.Option(help="How long the streaming part runs (1..3600).")] = 5.0,
    keep: Annotated[
        bool, typer.Option("--keep", help="Keep the demo's home folder (recordings, index, logs) and print its path.")
    ] = False,
) -> None:
    """Run the whole system on loopback and print what happened (needs no display, sound card or network)."""
    from overdrive.demo import run_demo

    if not 1 <= seconds <= 3600:
        raise ConfigError(f"--seconds must be 1..3600, not {seconds:g}")
    ok = run_demo(options(ctx), seconds=seconds, keep=keep)
    if not ok:
        raise typer.Exit(1)
