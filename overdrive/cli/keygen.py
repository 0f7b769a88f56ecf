"""``overdrive keygen``: make a network key file, or (``--mesh``) the masters' mesh key."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from overdrive.cli.options import console, expand_home, options
from overdrive.errors import ConfigError


def register(app: typer.Typer) -> None:
    app.command("keygen")(keygen)


def keygen(
    ctx: typer.Context,
    out: Annotated[Path, typer.Argument(metavar="FILE", help="Where to write the key file (mode 0600).")],
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
    mesh: Annotated[
        bool, typer.Option("--mesh", help="Make the masters' mesh key instead: give it to masters only (--mesh-key).")
    ] = False,
) -> None:
    """Make a random network key file; give it to every member, use it with --key-file."""
    from overdrive.bus.security import NetworkKey
    from overdrive.bus.signing import MeshKey

    opts = options(ctx)
    out = expand_home(out, "FILE")
    if out.is_dir():
        raise ConfigError(f"{out} is a folder; give the key file's name, e.g. {out / 'network.key'}")
    if out.exists() and not force:
        raise ConfigError(f"{out} exists; pass --force to overwrite it")
    if mesh:
        mesh_key = MeshKey.generate(opts.network)
        mesh_key.write(out)
        console.print(
            f"wrote mesh key for [bold]{opts.network}[/] to {out} (fingerprint {mesh_key.fingerprint}); "
            "give it to every master, never to students"
        )
        return
    key = NetworkKey.generate(opts.network)
    try:
        key.write(out)
    except OSError as exc:
        raise ConfigError(f"cannot write the key file {out}: {exc.strerror}") from None
    console.print(f"wrote network key for [bold]{opts.network}[/] to {out} (fingerprint {key.fingerprint})")
