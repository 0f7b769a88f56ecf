"""How every command's ``--help`` reads: typer's rich help writes ``<bool>`` after a flag (which takes no value)
and braces around a required argument in the usage line (``{FILE}``), where click's own convention is a bare
``FILE`` (required) and ``[FILE]`` (optional). :class:`TidyHelp` renders both the usual way."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import typer
from typer.core import TyperCommand, TyperOption

_BRACED = re.compile(r"^\{(.+)\}(\.\.\.)?$")
_LIST_TYPE = re.compile(r"^<list\[(\w+)\]>$")


class TidyHelp:
    """Mixin for a typer command or group class: flags show no value placeholder, required arguments no braces,
    repeated values the element type (``<path>...``)."""

    def get_params(self, ctx: Any) -> list[Any]:
        params: list[Any] = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
                param.metavar = ""  # the rich help shows the metavar instead of the type; a flag has no value
            display_type = getattr(param, "display_type", None)  # typer's parameters have it, click's do not
            listed = _LIST_TYPE.match((display_type(ctx) if display_type else None) or "")
            if listed:  # typer shows a list as <list[Path]>: the element's type, repeated, as click writes it
                shown = f"<{listed.group(1).lower()}>..."
                param.display_type_rich = lambda ctx, shown=shown: shown
        return params

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces: list[str] = super().collect_usage_pieces(ctx)  # type: ignore[misc]
        return [_BRACED.sub(r"\1\2", piece) for piece in pieces]


class Command(TidyHelp, TyperCommand):
    """The class of every overdrive command."""


class App(typer.Typer):
    """A typer app whose commands are :class:`Command` unless told otherwise."""

    def command(self, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:  # type: ignore[override]
        kwargs.setdefault("cls", Command)
        return super().command(*args, **kwargs)
