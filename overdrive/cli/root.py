"""The ``overdrive`` command: a thin typer shell over the library.

It parses options, builds typed configs, calls the library and turns :class:`~overdrive.errors.OverdriveError`
into one clear line on stderr with a non-zero exit (2 for configuration mistakes, 1 otherwise). Feature commands
live in ``overdrive/cli/FEATURE.py`` and register themselves here.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from overdrive import __version__, paths
from overdrive.cli.helpstyle import App, TidyHelp
from overdrive.cli.options import shown
from overdrive.config import LOG_LEVELS, PASSWORD_ENV, GlobalOptions, check_keys, configure_logging, read_config_file
from overdrive.errors import ConfigError, OverdriveError

log = logging.getLogger(__name__)

os.environ.setdefault("OPENCV_LOG_LEVEL", "OFF")  # before cv2 loads: its own warnings are not one clear line


class _Group(TidyHelp, TyperGroup):
    """Root group: domain errors and usage mistakes become one line on stderr, never a traceback or a panel."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False  # usage errors come back here instead of being drawn in a box
        try:
            result = super().main(*args, **kwargs)
        except typer.Abort:  # before Exception, which it is too: a command's Abort, or an end of input (EOFError)
            typer.echo("overdrive: aborted", err=True)
            sys.exit(1)
        except Exception as exc:
            if not _is_usage_error(exc):
                raise
            code: int = exc.exit_code  # type: ignore[attr-defined]
            message = exc.format_message().strip()  # type: ignore[attr-defined]
            if type(exc).__name__ == "NoArgsIsHelpError":  # the help was shown; nothing else to say
                if message:
                    typer.echo(message, err=True)
                sys.exit(code)
            ctx = getattr(exc, "ctx", None)
            path = ctx.command_path if ctx is not None else "overdrive"
            source = _config_source(ctx, getattr(exc, "param", None))
            typer.echo(f"overdrive: error: {' '.join(message.split())} ({source}see '{path} --help')", err=True)
            sys.exit(code)
        sys.exit(result if isinstance(result, int) else 0)

    def invoke(self, ctx: Any) -> Any:
        ctx.meta[_COMMAND_ARGS] = list(ctx.args)  # click empties ctx.args before the root callback runs
        try:
            return super().invoke(ctx)
        except OverdriveError as exc:
            typer.echo(f"overdrive: error: {shown(str(exc))}", err=True)  # it may quote a peer's words
            log.debug("error detail", exc_info=True)
            raise typer.Exit(2 if isinstance(exc, ConfigError) else 1) from None
        except KeyboardInterrupt:
            typer.echo("overdrive: interrupted", err=True)
            raise typer.Exit(130) from None


_DISCOVERY_KEYS = ("discovery", "discovery_interfaces")
"""Top-level config keys with no global option: mDNS on or off, and on which interfaces."""

_COMMAND_ARGS = "overdrive.command_args"
"""``ctx.meta`` key: the arguments after the command's name, for the root callback to see a ``--help``."""


def _config_source(ctx: Any, param: Any) -> str:
    """``"set in config file PATH; "`` when the value ``param`` failed on came from the config file, else ``""``."""
    if ctx is None or param is None or not getattr(param, "name", None):
        return ""
    if getattr(ctx.get_parameter_source(param.name), "name", "") != "DEFAULT_MAP":
        return ""
    opts = ctx.find_root().obj
    return f"set in config file {shown(str(opts.config_file))}; " if isinstance(opts, GlobalOptions) else ""


def _is_usage_error(exc: BaseException) -> bool:
    """A parse-time mistake of typer's (no such option, missing argument, a value of the wrong type)."""
    return isinstance(getattr(exc, "exit_code", None), int) and callable(getattr(exc, "format_message", None))


app = App(
    cls=_Group,
    name="overdrive",
    help="LAN screen streaming, recording and peer file sharing on ZeroMQ, encrypted by default.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"overdrive {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    password: Annotated[
        str | None,
        typer.Option(
            envvar=PASSWORD_ENV, help="Network password (prefer the environment variable).", show_default=False
        ),
    ] = None,
    key_file: Annotated[
        Path | None, typer.Option(envvar="OVERDRIVE_KEY_FILE", help="Network key file from 'overdrive keygen'.")
    ] = None,
    network: Annotated[
        str, typer.Option(envvar="OVERDRIVE_NETWORK", help="Network name (salts the password).")
    ] = "overdrive",
    config: Annotated[
        Path | None, typer.Option("--config", envvar="OVERDRIVE_CONFIG", help="TOML config file.", show_default=False)
    ] = None,
    log_level: Annotated[
        str, typer.Option(envvar="OVERDRIVE_LOG_LEVEL", help=f"One of {', '.join(LOG_LEVELS)}.")
    ] = "warning",
    insecure: Annotated[
        bool, typer.Option("--insecure", help="No encryption or authentication. Benchmarks only.")
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """Global options; the config file fills in whatever the command line and environment leave unset."""
    config_path = config or paths.default_config_file()
    commands: dict[str, Any] = getattr(ctx.command, "commands", {})
    config_problem: str | None = None
    try:
        top = _read_config(ctx, config_path, required=config is not None, commands=commands)
    except ConfigError as exc:
        # a broken config file must not block reading the help, nor doctor, which reports it as a finding
        if ctx.invoked_subcommand != "doctor" and not _asks_help(ctx.meta.get(_COMMAND_ARGS, [])):
            raise
        top, config_problem = {}, str(exc)

    def pick(name: str, value: Any) -> Any:
        source = ctx.get_parameter_source(name)
        return top.get(name, value) if source is None or source.name == "DEFAULT" else value

    key_value = pick("key_file", key_file)
    opts = GlobalOptions(
        password=pick("password", password),
        key_file=Path(key_value) if key_value else None,
        network=pick("network", network),
        insecure=bool(pick("insecure", insecure)),
        log_level=str(pick("log_level", log_level)).lower(),
        discovery=bool(top.get("discovery", True)),
        discovery_interfaces=str(top.get("discovery_interfaces", "")),
        config_file=config_path,
        config_problem=config_problem,
    )
    configure_logging(opts.log_level)
    if ctx.invoked_subcommand not in ("keygen", "doctor"):  # doctor derives its own, leaving no cache behind
        opts.prefetch_key()
    ctx.obj = opts


def _read_config(ctx: typer.Context, path: Path, *, required: bool, commands: dict[str, Any]) -> dict[str, Any]:
    """The config file's top-level values; its command tables become ``ctx.default_map``. A mistake raises one
    ConfigError naming the file."""
    file_values = read_config_file(path, required=required)
    sections = {name: value for name, value in file_values.items() if isinstance(value, dict)}
    top = {name: value for name, value in file_values.items() if not isinstance(value, dict)}
    check_keys(path, "top level", top, {"password", "key_file", "network", "log_level", "insecure", *_DISCOVERY_KEYS})
    for key in ("insecure", "discovery"):  # bool("false") is True: a quoted value must not turn encryption off
        if key in top and not isinstance(top[key], bool):
            raise ConfigError(f"config file {path}: '{key}' must be true or false (no quotes), not {top[key]!r}")
    for name, section in sections.items():
        command = commands.get(name)
        if command is None:
            raise ConfigError(f"config file {path}: a [{name}] table, but there is no '{name}' command")
        params = _config_keys(command)
        check_keys(path, name, section, set(params))
        sections[name] = {params[key]: value for key, value in section.items()}
    ctx.default_map = sections
    return top


def _asks_help(args: list[str]) -> bool:
    """Whether the command line after the command's name asks for its help (options end at ``--``)."""
    for arg in args:
        if arg == "--":
            return False
        if arg in ("--help", "-h"):
            return True
    return False


def _config_keys(command: Any) -> dict[str, str]:
    """A command's parameters as a config table names them, mapped to the parameter each one fills: an option by
    its long name (``--json`` -> ``json``, dashes as underscores like :func:`read_config_file` leaves them), an
    argument by its name (``[share] folder = ...``)."""
    keys: dict[str, str] = {}
    for param in command.params:
        if not param.name or param.name == "help":
            continue
        longs = [o for o in param.opts if o.startswith("--")]
        key = longs[0][2:] if longs and getattr(param, "param_type_name", "") == "option" else param.name
        keys[key.replace("-", "_")] = param.name
    return keys


def _register_features() -> None:
    """Add every module's commands, in the order ``--help`` lists them (imported here, after ``app`` exists)."""
    from overdrive.cli import chat as chat_cli
    from overdrive.cli import demo as demo_cli
    from overdrive.cli import discover as discover_cli
    from overdrive.cli import doctor as doctor_cli
    from overdrive.cli import index as index_cli
    from overdrive.cli import keygen as keygen_cli
    from overdrive.cli import media as media_cli
    from overdrive.cli import transfer as transfer_cli
    from overdrive.cli import web as web_cli

    for feature in (
        keygen_cli,
        doctor_cli,
        demo_cli,
        media_cli,
        chat_cli,
        discover_cli,
        index_cli,
        transfer_cli,
        web_cli,
    ):
        feature.register(app)


_register_features()


def main() -> None:
    """Console entry point."""
    app(prog_name="overdrive")


if __name__ == "__main__":
    main()
