"""``overdrive demo``: the whole system on loopback (:mod:`overdrive.demo`)."""

from __future__ import annotations

from typing import Annotated

import typer

from overdrive.cli.options import options


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)


def demo(
    ctx: typer.Context,
    seconds: Annotated[float, typer.Option(help="How long the streaming part runs.")] = 5.0,
) -> None:
    """Run the whole system on loopback and print what happened (needs no display, sound card or network)."""
    from overdrive.demo import run_demo

    ok = run_demo(options(ctx), seconds=seconds)
    if not ok:
        raise typer.Exit(1)
