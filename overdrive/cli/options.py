"""Helpers shared by the command modules: the global options from the typer context, output, and JSON."""

from __future__ import annotations

import gc
import sys
from pathlib import Path
from typing import Any

import msgspec
import typer
from rich.console import Console
from rich.markup import escape

from overdrive import paths
from overdrive.bus.address import Endpoint, parse_endpoints
from overdrive.config import GlobalOptions
from overdrive.errors import ConfigError

console = Console(stderr=True, highlight=False, soft_wrap=True)  # a line stays one line (the terminal wraps it)
"""Human-facing output (status lines, progress, warnings) goes to stderr; stdout is for results and --json."""

report = Console(highlight=False, soft_wrap=True)
"""A command's result meant to be read or saved (``doctor``, ``devices``): stdout, so ``> report.txt`` keeps it."""


def options(ctx: typer.Context) -> GlobalOptions:
    """The global options parsed by the root callback."""
    root = ctx.find_root()
    if not isinstance(root.obj, GlobalOptions):
        raise RuntimeError("global options missing: command invoked outside the overdrive app")
    return root.obj


def shown(text: str) -> str:
    """``text`` (a file name or path from the network) made safe to print: every character Python does not call
    printable (controls, bidi and other format characters such as zero-width ones, line and paragraph separators,
    spaces other than the ASCII one, unassigned code points) as an escape (``\\x1b``, ``\\u202e``, ``\\u200b``), so a
    name can neither drive the terminal nor hide characters. Look-alike letters from other scripts stay as they
    are: ``--json`` gives the exact names."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def settle_heap() -> None:
    """Call once start-up is done, before a long-running loop (master, share, stream, view): collect once, then
    freeze what start-up left so the garbage collector's full passes never walk those objects again: a full pass
    over everything the CLI imported holds a master's loop for 50 to 120 ms."""
    gc.collect()
    gc.freeze()


def markup_safe(text: str) -> str:
    """``text`` from the network, for a rich markup string: :func:`shown`, with ``[`` escaped (``[/b]`` in a file
    name must print as itself, not be read as a closing tag)."""
    return escape(shown(text))


def endpoints(value: str, default_port: int, option: str) -> list[Endpoint]:
    """A comma-separated address list given to ``option``; an empty one is a usage error."""
    parsed = parse_endpoints(value, default_port)
    if not parsed:
        raise ConfigError(f"{option} needs at least one address: HOST[:PORT],...")
    return parsed


def expand_home(path: Path, what: str) -> Path:
    """``path`` with a leading ``~`` or ``~user`` expanded (quoted on the command line, or from a config file);
    a user with no home folder is a usage error naming ``what`` (the option or argument)."""
    try:
        return path.expanduser()
    except RuntimeError:  # '~nobody/x': no such user
        raise ConfigError(f"{what} {path}: no home folder for its '~' (no such user?)") from None


def writable_file(path: Path, what: str) -> Path:
    """``path`` (``~`` expanded) once it is known a file can be written there, checked before any work starts by
    writing to it (an existing file is only opened for appending; a new one is made and removed again), so a
    mistake is one line now rather than a lost result at the end: a usage error naming ``what`` (the option)."""
    path = expand_home(path, what)
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a folder; give a file name")
    existed = path.exists()
    try:
        with path.open("ab"):
            pass
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot write there: {exc.strerror}") from None
    if not existed:
        path.unlink(missing_ok=True)
    return path


SHARE_LOCK = "share.lock"
"""In the data folder: held by the running 'share', and naming the folders it shares, one a line (for 'fetch' to
point at)."""


def shared_folders() -> dict[str, Path]:
    """The folders this node shares (or last shared), from its share lock, by name prefix
    (:mod:`overdrive.files.folders`); empty if it never shared one."""
    try:
        text = (paths.data_dir() / SHARE_LOCK).read_text(encoding="utf-8", errors="surrogateescape")
    except OSError:
        return {}
    folders = [Path(line) for line in text.splitlines() if line.strip()]
    return {"": folders[0]} if len(folders) == 1 else {f.name: f for f in folders}


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
