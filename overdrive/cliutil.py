"""Helpers shared by the command modules: the global options from the typer context, output, and JSON."""

from __future__ import annotations

import sys
from typing import Any

import msgspec
import typer
from rich.console import Console

from overdrive.config import GlobalOptions

console = Console(stderr=True, highlight=False)
"""Human-facing output (status lines, progress, warnings) goes to stderr; stdout is for results and --json."""


def options(ctx: typer.Context) -> GlobalOptions:
    """The global options parsed by the root callback."""
    root = ctx.find_root()
    if not isinstance(root.obj, GlobalOptions):
        raise RuntimeError("global options missing: command invoked outside the overdrive app")
    return root.obj


def print_json(value: Any) -> None:
    """Write ``value`` to stdout as one JSON document (msgspec handles Structs, dataclasses, paths)."""
    sys.stdout.write(msgspec.json.encode(value, enc_hook=str).decode() + "\n")
    sys.stdout.flush()


def warn_insecure(opts: GlobalOptions) -> None:
    if opts.insecure:
        console.print(
            "[bold red]WARNING: --insecure: no encryption and no authentication. "
            "Anyone on the network can read and inject. For benchmarks only.[/]"
        )
