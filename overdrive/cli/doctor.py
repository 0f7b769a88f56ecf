"""``overdrive doctor``: one line per feature saying whether this machine can do it, and if not, why."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Annotated

import msgspec
import typer

from overdrive import paths
from overdrive.cli.options import console, options, print_json
from overdrive.config import GlobalOptions
from overdrive.errors import OverdriveError


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor)


def doctor(
    ctx: typer.Context,
    db: Annotated[str | None, typer.Option(help="Index database URL to check (default: the local SQLite).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the checks as JSON.")] = False,
) -> None:
    """Check what this machine has for each feature: display, audio, codecs, database, keys."""
    results = run_checks(options(ctx), db=db)
    if as_json:
        print_json(results)
        return
    width = max(len(r.name) for r in results)
    for r in results:
        mark = "[green]OK     [/]" if r.ok else "[red]MISSING[/]"
        console.print(f"{mark} {r.name.ljust(width)}  {r.detail}", soft_wrap=True)


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
        key = opts.network_key()
        if key is None:
            return False, "--insecure: no encryption"
        return True, f"network {key.network!r}, key fingerprint {key.fingerprint}"

    return check


def _database(url: str | None) -> Callable[[], tuple[bool, str]]:
    def check() -> tuple[bool, str]:
        try:
            from overdrive.index.stores import open_store
        except ModuleNotFoundError:
            return False, "index support is not installed in this build"
        store = open_store(url)
        try:
            return True, f"{store.describe()} reachable, {store.count()} record(s)"
        finally:
            store.close()

    return check


def _backup() -> tuple[bool, str]:
    folder = paths.backup_dir()
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / ".overdrive-doctor"
    probe.write_bytes(b"")
    probe.unlink()
    usage = os.statvfs(folder)
    free = usage.f_bavail * usage.f_frsize / 1e9
    return True, f"{folder} writable, {free:.1f} GB free"


def run_checks(opts: GlobalOptions, db: str | None = None) -> list[Check]:
    """Run every check; a check that raises is reported as missing with its reason."""
    checks: list[tuple[str, Callable[[], tuple[bool, str]]]] = [
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
            ok, detail = False, f"{type(exc).__name__}: {exc}".strip()
        results.append(Check(name=name, ok=ok, detail=detail.splitlines()[0] if detail else ""))
    return results
