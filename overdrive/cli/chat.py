"""``overdrive chat``: say something in a stream's chat, raise a hand, or follow the chat from a shell."""

from __future__ import annotations

import getpass
import sys
import threading
from typing import TYPE_CHECKING, Annotated

import typer

from overdrive import interrupts
from overdrive.bus.address import DEFAULT_STREAM_PORT, parse_endpoint
from overdrive.cli.options import console, options, print_json, shown, warn_insecure
from overdrive.errors import ConfigError, MediaError, UnreachableError

if TYPE_CHECKING:
    from overdrive.bus.address import Endpoint
    from overdrive.bus.sockets import Bus
    from overdrive.media.chat_client import ChatFeed
    from overdrive.media.chat_server import ChatServer
    from overdrive.media.chat_view import ViewerChat
    from overdrive.media.protocol import ChatLine, Presence, StreamInfo
    from overdrive.media.streamer import Streamer
    from overdrive.media.viewer import Viewer

MAX_HELD = 100
"""Live lines held while the history is on its way."""
INFO_WAIT = 5.0
"""Seconds to wait for the stream's signed info (which says where its chat listens)."""


def default_name() -> str:
    """The user's login name, the chat name when none is given."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "guest"


def chat(
    ctx: typer.Context,
    stream: Annotated[
        str, typer.Argument(metavar="HOST[:PORT]", help=f"The stream's address (default port {DEFAULT_STREAM_PORT}).")
    ],
    say: Annotated[str | None, typer.Option(help="Send this line, then exit.", show_default=False)] = None,
    hand: Annotated[bool, typer.Option("--hand", help="Raise a hand (with --say: after the line).")] = False,
    follow: Annotated[bool, typer.Option("--follow", help="Print chat lines as they come, until Ctrl-C.")] = False,
    json: Annotated[bool, typer.Option("--json", help="With --follow: one JSON object per line on stdout.")] = False,
    name: Annotated[
        str | None, typer.Option(help="Your name in the chat (default: your user name).", show_default=False)
    ] = None,
    pin: Annotated[
        str | None,
        typer.Option(help="Talk only to a stream signed by the key with this fingerprint.", show_default=False),
    ] = None,
) -> None:
    """Send a line to a stream's chat (--say), raise a hand (--hand), or follow the chat (--follow [--json]).

    --hand and --follow stay in the chat (the streamer counts you) until Ctrl-C, which lowers the hand. --say
    alone exits 0 once the streamer accepted the line, and non-zero with the reason (too long, rate limited, no
    chat at that address) otherwise."""
    from overdrive.media.chat import check_text

    if not (say is not None or hand or follow):
        raise ConfigError("say what? give --say TEXT, --hand or --follow")
    if json and not follow:
        raise ConfigError("--json goes with --follow")
    if say is not None:
        try:
            say = check_text(say)
        except ValueError as exc:
            raise ConfigError(f"--say: {exc}") from None
    opts = options(ctx)
    endpoint = parse_endpoint(stream, DEFAULT_STREAM_PORT)
    warn_insecure(opts)
    with opts.bus() as bus:
        _chat(bus, endpoint, pin, say, hand, follow, json, name if name is not None else default_name())


def _chat(
    bus: Bus, endpoint: Endpoint, pin: str | None, say: str | None, hand: bool, follow: bool, json: bool, name: str
) -> None:
    from overdrive.media.chat_client import ChatClient, ChatFeed, chat_endpoint

    feed = ChatFeed(bus, endpoint, pin)
    printer = _Printer(json)
    feed.on_line = printer.line
    if follow:
        feed.on_presence = printer.presence
    feed.start()
    try:
        info = _wait_info(feed, endpoint)
        client = ChatClient(bus, chat_endpoint(endpoint, info))
        client.start()
        try:
            staying = follow or hand  # a participant (presence, join and leave lines), not a one-off line
            reply = client.join(name, kind="native" if staying else "cli").result()
            if follow:
                printer.go_live(reply.history)
            if say is not None:
                sent = client.say(say).result()
                console.print(f"sent as {shown(sent.name)!r} (line {sent.seq})")
            if hand:
                client.hand(True).result()
                console.print(f"hand raised as {shown(reply.name)!r} (Ctrl-C lowers it)")
            if staying:
                if follow:
                    console.print(f"following the chat of {shown(info.name)!r} as {shown(reply.name)!r}")
                _wait(feed)
            client.leave().result()
        finally:
            client.stop()
    finally:
        feed.stop()


def _wait(feed: ChatFeed) -> None:
    """Until Ctrl-C (or SIGTERM), or the feed stops."""
    with interrupts.deferred() as check:
        try:
            while feed.running:
                interrupts.sleep(0.5, check)
        except KeyboardInterrupt:
            pass


def _wait_info(feed: ChatFeed, endpoint: Endpoint) -> StreamInfo:
    if not feed.has_info.wait(INFO_WAIT) or feed.info is None:
        raise UnreachableError(f"no stream info from {endpoint.display} in {INFO_WAIT:g} s (is it a stream?)")
    if not feed.info.chat_port:
        raise MediaError(f"the stream at {endpoint.display} has no chat")
    return feed.info


class _Printer:
    """Chat lines on stdout (text or JSON), presence changes on stderr; lines before the history are held."""

    def __init__(self, json: bool) -> None:
        from overdrive.media.chat_client import LineOrder

        self.json = json
        self.order = LineOrder()
        self.live = threading.Event()
        self._lock = threading.Lock()
        self._held: list[ChatLine] = []
        self._last_presence: tuple[int, tuple[str, ...], tuple[str, ...]] | None = None

    def line(self, line: ChatLine) -> None:
        with self._lock:
            if not self.live.is_set():
                if len(self._held) < MAX_HELD:
                    self._held.append(line)
                return
            self._emit(line)

    def go_live(self, history: tuple[ChatLine, ...]) -> None:
        """Print the history the join brought, then the lines held meanwhile, then every line as it comes."""
        with self._lock:
            for line in [*history, *self._held]:
                self._emit(line)
            self._held.clear()
            self.live.set()

    def _emit(self, line: ChatLine) -> None:
        from overdrive.media.chat import line_text

        if not self.order.fresh(line):
            return
        if self.json:
            print_json(
                {
                    "seq": line.seq,
                    "sent_ns": line.sent_ns,
                    "name": line.name,
                    "text": line.text,
                    "kind": line.kind,
                    "host": line.host,
                    "member": line.member,
                }
            )
        else:
            sys.stdout.write(shown(line_text(line)) + "\n")
            sys.stdout.flush()

    def presence(self, presence: Presence) -> None:
        if self.json:
            return
        seen = (presence.count, presence.names, presence.hands)
        if seen == self._last_presence:
            return
        self._last_presence = seen
        hands = f"; hands up: {', '.join(presence.hands)}" if presence.hands else ""
        console.print(f"{presence.count} watching: {shown(', '.join(presence.names))}{hands}", markup=False)


def print_line(line: ChatLine) -> None:
    """A chat line on the terminal (stderr): one line, name: text, every character visible as itself."""
    from overdrive.media.chat import line_text

    console.print(f"chat: {shown(line_text(line))}", markup=False, highlight=False)


def print_presence(presence: Presence) -> None:
    hands = f"; hands up: {', '.join(presence.hands)}" if presence.hands else ""
    console.print(f"chat: {presence.count} watching: {shown(', '.join(presence.names))}{hands}", markup=False)


def stream_chat(streamer: Streamer, bus: Bus) -> ChatServer:
    """Give a streamer its chat, shown on its terminal (lines as they come, presence when it changes)."""
    from overdrive.media.chat_server import attach_chat
    from overdrive.media.chat_view import chat_events

    server = attach_chat(streamer, bus)
    last: list[tuple[int, tuple[str, ...], tuple[str, ...]]] = []

    def presence(snapshot: Presence) -> None:
        seen = (snapshot.count, snapshot.names, snapshot.hands)
        if last != [seen] and (last or snapshot.count):  # nothing to say before the first viewer
            last[:] = [seen]
            print_presence(snapshot)

    streamer.add_listener(chat_events(print_line, presence))
    return server


def view_chat(viewer: Viewer, bus: Bus, host: str, name: str | None) -> ViewerChat:
    """Join the chat of what ``viewer`` watches as ``name`` (default: the user name); lines on the terminal."""
    from overdrive.media.chat_view import ViewerChat

    chat = ViewerChat(bus, host, name if name is not None else default_name(), on_line=print_line)
    viewer.add_listener(chat)
    return chat


def register(app: typer.Typer) -> None:
    app.command()(chat)
