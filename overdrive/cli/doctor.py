"""``overdrive doctor``: one line per feature saying whether this machine can do it, and if not, why.

The report goes to stdout; the exit code is 0 when every check passed and 1 when one is missing. Doctor only
looks: it creates no file (no index database, backup folder or key cache).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import msgspec
import typer
from rich.markup import escape

from overdrive import paths
from overdrive.cli.options import console, markup_safe, options, print_json, report, shown
from overdrive.config import GlobalOptions
from overdrive.errors import OverdriveError


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor)


def doctor(
    ctx: typer.Context,
    db: Annotated[str | None, typer.Option(help="Index database URL to check (default: the local SQLite).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the checks as JSON.")] = False,
) -> None:
    """Check what this machine has for each feature: config file, keys, display, audio, codecs, database, backup
    folder. Prints the report on stdout; exits 0 when everything is there, 1 when something is MISSING."""
    results = run_checks(options(ctx), db=db)
    if as_json:
        print_json(results)
    else:
        width = max(len(r.name) for r in results)
        for r in results:
            mark = "[green]OK     [/]" if r.ok else "[red]MISSING[/]"
            report.print(f"{mark} {r.name.ljust(width)}  {escape(shown(r.detail))}")
    if not all(r.ok for r in results):
        raise typer.Exit(1)


class Check(msgspec.Struct, frozen=True):
    """The outcome of one check."""

    name: str
    ok: bool
    detail: str


def _zeromq() -> tuple[bool, str]:
    import zmq

    curve = zmq.has("curve")
    return curve, f"libzmq {zmq.zmq_version()}, pyzmq {zmq.__version__}, CURVE {'yes' if curve else 'NO'}"


def _display() -> tuple[bool, str]:
    if not os.environ.get("DISPLAY") and os.name == "posix":
        return False, "no DISPLAY: screen capture needs an X display (or use --source testpattern)"
    import mss

    with mss.MSS() as grabber:
        monitor = grabber.monitors[1]
        grabber.grab({"left": 0, "top": 0, "width": 16, "height": 16})
    return True, f"{os.environ.get('DISPLAY', 'screen')} {monitor['width']}x{monitor['height']}"


def _audio() -> tuple[bool, str]:
    import sounddevice as sd

    devices = sd.query_devices()
    inputs = sum(1 for d in devices if d["max_input_channels"] > 0)
    outputs = sum(1 for d in devices if d["max_output_channels"] > 0)
    ok = inputs > 0 and outputs > 0
    return ok, f"{inputs} input and {outputs} output device(s)" + ("" if ok else ": see 'overdrive devices'")


def _codecs() -> tuple[bool, str]:
    import av

    missing = []
    for name in ("libx264", "aac", "libopus", "h264"):
        try:
            av.codec.Codec(name, "w" if name != "h264" else "r")
        except Exception:  # noqa: BLE001 - PyAV raises several types for an absent codec
            missing.append(name)
    import cv2

    detail = f"PyAV {av.__version__}, OpenCV {cv2.__version__}"
    return not missing, detail + (f"; missing: {', '.join(missing)}" if missing else "; h264, aac, opus")


def _keys(opts: GlobalOptions) -> Callable[[], tuple[bool, str]]:
    def check() -> tuple[bool, str]:
        key = opts.network_key(cached=False)
        if key is None:
            return False, "--insecure: no encryption"
        return True, f"network {key.network!r}, key fingerprint {key.fingerprint}"

    return check


def _database(url: str | None) -> Callable[[], tuple[bool, str]]:
    def check() -> tuple[bool, str]:
        try:
            import overdrive.index.stores  # noqa: F401 - only whether this build has it
        except ModuleNotFoundError:
            return False, "index support is not installed in this build"
        from overdrive.index.stores import open_store, sqlite_path

        path = sqlite_path(url)
        if path is not None and not path.exists():  # opening it would create it: say where it will be instead
            return _creatable(path, f"SQLite {path}: not made yet (the first 'master' makes it)")
        store = open_store(url, waiting=lambda line: console.print(markup_safe(line), soft_wrap=True))
        try:
            return True, f"{store.describe()} reachable, {store.count()} record(s)"
        finally:
            store.close()

    return check


def _backup() -> tuple[bool, str]:
    folder = paths.backup_dir()
    if not folder.exists():
        return _creatable(folder, f"{folder}: not made yet (made on first use)")
    if not folder.is_dir():
        return False, f"{folder} is not a folder"
    if not os.access(folder, os.W_OK | os.X_OK):
        return False, f"{folder} is not writable"
    return True, f"{folder} writable, {_free(folder)}"


def _creatable(path: Path, detail: str) -> tuple[bool, str]:
    """Whether ``path`` (which does not exist yet) can be made: its nearest existing folder is writable."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        return False, f"{path} cannot be made: {parent} is not a writable folder"
    return True, f"{detail}, {_free(parent)}"


def _free(folder: Path) -> str:
    usage = os.statvfs(folder)
    return f"{usage.f_bavail * usage.f_frsize / 1e9:.1f} GB free"


def _config(opts: GlobalOptions) -> Callable[[], tuple[bool, str]]:
    def check() -> tuple[bool, str]:
        if opts.config_problem is not None:
            return False, opts.config_problem
        path = opts.config_file
        if path is None or not path.expanduser().exists():
            return True, f"none ({path} does not exist; every setting has its default)"
        return True, f"{path} read"

    return check


def _reason(exc: BaseException) -> str:
    """A failed check's cause as a person reads it: the message, not the exception's repr."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    if isinstance(exc, ImportError):
        return f"{exc.name or 'a module'} is not installed or cannot load ({exc})"
    text = " ".join(str(exc).split())
    return text or f"failed ({type(exc).__name__})"


def run_checks(opts: GlobalOptions, db: str | None = None) -> list[Check]:
    """Run every check; a check that raises is reported as missing with its reason."""
    checks: list[tuple[str, Callable[[], tuple[bool, str]]]] = [
        ("config file", _config(opts)),
        ("zeromq", _zeromq),
        ("network key", _keys(opts)),
        ("display", _display),
        ("audio", _audio),
        ("codecs", _codecs),
        ("database", _database(db)),
        ("backup folder", _backup),
    ]
    results = []
    for name, fn in checks:
        try:
            ok, detail = fn()
        except OverdriveError as exc:
            ok, detail = False, str(exc)
        except Exception as exc:  # noqa: BLE001 - doctor reports every failure as a line, never a traceback
            ok, detail = False, _reason(exc)
        results.append(Check(name=name, ok=ok, detail=detail.splitlines()[0] if detail else ""))
    return results
