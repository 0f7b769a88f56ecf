"""``overdrive web``: watch a stream in any browser, through a gateway that is the stream's viewer.

:func:`start_gateway` is shared with ``overdrive stream --web``: it starts the web server, prints the link as the
first line of stdout (and a QR code on a terminal), and makes SIGUSR1 rotate the invite token.
"""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING, Annotated

import typer

from overdrive import interrupts
from overdrive.bus.address import DEFAULT_STREAM_PORT, Endpoint
from overdrive.cli import discover
from overdrive.cli.options import console, options, warn_insecure
from overdrive.cli.run import Check, ready, run, watching

if TYPE_CHECKING:
    from overdrive.web.ports import ChatPort
    from overdrive.web.server import WebServer

Token = Annotated[
    str | None,
    typer.Option(
        help="Invite token for the link (16..128 of A-Z a-z 0-9 _ -); default: the stored one, else a new one.",
        show_default=False,
    ),
]
Rotate = Annotated[
    bool,
    typer.Option(
        "--rotate",
        help="Start with a new invite token (old links stop working). On a running gateway, SIGUSR1 does the same.",
    ),
]
MaxBrowsers = Annotated[int, typer.Option(help="Browsers served at once.")]


def web(
    ctx: typer.Context,
    stream: Annotated[
        str,
        typer.Argument(
            metavar="HOST[:PORT]", help=f"Streamer address HOST[:PORT] (default port {DEFAULT_STREAM_PORT})."
        ),
    ],
    bind: Annotated[str, typer.Option(help="Where browsers connect: [HOST:]PORT.")] = "0.0.0.0:8080",
    token: Token = None,
    rotate: Rotate = False,
    pin: Annotated[
        str | None,
        typer.Option(help="Pass on only a stream signed by the key with this fingerprint.", show_default=False),
    ] = None,
    max_browsers: MaxBrowsers = 100,
    no_discovery: discover.NoDiscovery = False,
) -> None:
    """Serve a stream to web browsers. The first line printed is the link to give viewers, with its invite token
    (on a terminal also a QR code). The network password stays here: browsers only get the picture and sound."""
    from overdrive.app.web import StreamToWeb, gateway_viewer_config, parse_bind
    from overdrive.app.web_chat import WebChat
    from overdrive.media.viewer import Viewer

    opts = options(ctx)
    parse_bind(bind, "--bind")  # a mistake is one line before anything starts
    config = gateway_viewer_config(stream, pin=pin)
    found = discover.settings(ctx, no_discovery)
    warn_insecure(opts)
    with opts.bus() as bus:
        viewer = Viewer(config, bus)
        chat = WebChat(bus, config.endpoint)
        server = start_gateway(bind, token=token, rotate=rotate, max_browsers=max_browsers, chat=chat)
        try:
            viewer.add_listener(StreamToWeb(server))
            viewer.add_listener(chat)

            def waiting() -> None:
                console.print(f"waiting for the stream at {config.endpoint.display}...")

            try:
                with interrupts.deferred() as check:
                    viewer.connect(check, waiting)
            except KeyboardInterrupt:
                console.print("stopped before the stream started")
                return
            viewer.start()

            def alive(_: Check) -> None:
                if not server.running:
                    raise typer.Exit(1)

            host, port = server.address or ("", 0)
            bound = Endpoint(host, port)
            announcer = discover.announce(found, bus, "web", f"web {bus.node_id[:6]}", bound)
            announce = ready("web", bound, f"stream {config.endpoint.display}")
            stop = [*discover.closing(announcer), viewer.stop, chat.close, server.stop]
            run(announce, watching("web", viewer, alive), stop=stop)
        finally:
            chat.close()
            server.stop()


def start_gateway(
    bind: str,
    *,
    token: str | None,
    rotate: bool,
    max_browsers: int = 100,
    name: str = "overdrive",
    option: str = "--bind",
    chat: ChatPort | None = None,
) -> WebServer:
    """Start the web server on ``bind`` ([HOST:]PORT), print its link (stdout; QR on a terminal's stderr), and
    rotate its token on SIGUSR1 (the new link is printed the same way). With ``chat`` the page has a chat box."""
    from overdrive.app.web import announce_url, invite_token, parse_bind, viewer_url
    from overdrive.web.access import Access
    from overdrive.web.gateway import Limits
    from overdrive.web.server import ServerConfig, WebServer

    host, port = parse_bind(bind, option)
    config = ServerConfig(host=host, port=port, limits=Limits(max_sessions=max_browsers), name=name)
    server = WebServer(config, Access(invite_token(token, rotate=rotate)), chat)
    bound = server.start()

    def rotated(new: str) -> None:
        console.print("new invite link (the old one and its viewers are cut off):", style="bold")
        announce_url(viewer_url(host, bound[1], new))

    server.on_rotate = rotated
    announce_url(viewer_url(host, bound[1], server.access.token))
    signal.signal(signal.SIGUSR1, lambda *_: server.request_rotate())
    return server


def register(app: typer.Typer) -> None:
    app.command()(web)
