"""``overdrive stream`` and ``overdrive view``: thin shells over :class:`Streamer` and :class:`Viewer`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from overdrive import interrupts
from overdrive.bus.address import DEFAULT_STREAM_PORT, Endpoint
from overdrive.cli import audio as audio_cli
from overdrive.cli import chat as chat_cli
from overdrive.cli import discover
from overdrive.cli import web as web_cli
from overdrive.cli.audio import stream_extras, view_extras
from overdrive.cli.options import console, options, shown, warn_insecure, writable_file
from overdrive.cli.run import ready, run

if TYPE_CHECKING:
    from collections.abc import Callable

    from overdrive.bus.sockets import Bus
    from overdrive.media.streamer import Streamer, StreamerConfig


# Recording options shared by `stream` and `view`.
NoRecord = Annotated[bool, typer.Option("--no-record", help="Do not record the stream locally.")]
Backup = Annotated[
    Path | None, typer.Option(help="Folder for recordings (default: the backup folder).", show_default=False)
]
Wav = Annotated[bool, typer.Option("--wav", help="Also write each audio track as WAV.")]


def stream(
    ctx: typer.Context,
    source: Annotated[
        str,
        typer.Option(
            help="What to capture: screen, testpattern, webcam[:N] (camera N) or webcam:PATH (device or video file)."
        ),
    ] = "screen",
    monitor: Annotated[int, typer.Option(help="Monitor to capture (1 = first, 0 = all of them).")] = 1,
    region: Annotated[str | None, typer.Option(help="Capture only X,Y,W,H of the monitor.", show_default=False)] = None,
    pip: Annotated[
        str | None,
        typer.Option(
            help="Draw webcam[:N|:PATH] picture-in-picture in the bottom-right corner of the source.",
            show_default=False,
        ),
    ] = None,
    fps: Annotated[float, typer.Option(help="Target frames per second.")] = 30.0,
    scale: Annotated[str, typer.Option(help="Output size: a factor (0.5) or WxH (1280x720).")] = "1",
    codec: Annotated[str, typer.Option(help="Video codec: h264 or jpeg.")] = "h264",
    bitrate: Annotated[int, typer.Option(help="H.264 target bitrate in bit/s (0 = constant quality).")] = 0,
    quality: Annotated[int, typer.Option(help="JPEG quality 1..100.")] = 80,
    bind: Annotated[str, typer.Option(help="Address to publish on.")] = f"tcp://0.0.0.0:{DEFAULT_STREAM_PORT}",
    duration: Annotated[float | None, typer.Option(help="Stop after this many seconds.", show_default=False)] = None,
    name: Annotated[str, typer.Option(help="Stream name shown to viewers.")] = "overdrive",
    audio: Annotated[
        str,
        typer.Option(
            help="Audio: auto (system audio if it can be captured, else none), system (what this machine plays; "
            "an error if it cannot be captured), mic, both, none or testtone."
        ),
    ] = "auto",
    mic: Annotated[
        str | None, typer.Option(help="Microphone: index, name or pulse:SOURCE (see `overdrive devices`).")
    ] = None,
    audio_codec: Annotated[str, typer.Option(help="Audio codec on the wire: opus or pcm.")] = "opus",
    no_chat: Annotated[bool, typer.Option("--no-chat", help="Offer viewers no chat.")] = False,
    no_record: NoRecord = False,
    backup: Backup = None,
    wav: Wav = False,
    web: Annotated[
        str | None,
        typer.Option(
            metavar="[HOST:]PORT",
            help="Also serve the stream to web browsers here (see `overdrive web`).",
            show_default=False,
        ),
    ] = None,
    token: web_cli.Token = None,
    rotate: web_cli.Rotate = False,
    advertise: discover.Advertise = None,
    no_discovery: discover.NoDiscovery = False,
) -> None:
    """Capture the screen (or a test pattern or webcam), encode it and publish it to viewers on the LAN."""
    from overdrive.media.streamer import Streamer, StreamerConfig, StreamerStats

    opts = options(ctx)
    codec, audio, audio_codec = codec.lower(), audio.lower(), audio_codec.lower()  # choices: any case
    config = StreamerConfig(
        source=source,
        monitor=monitor,
        region=region,
        pip=pip,
        fps=fps,
        scale=scale,
        codec=codec,
        bitrate=bitrate,
        quality=quality,
        bind=bind,
        duration=duration,
        name=name,
    )
    _check_source(config)
    found = discover.settings(ctx, no_discovery)
    warn_insecure(opts)
    with opts.bus() as bus:
        streamer = Streamer(config, bus)
        chat = None if no_chat else chat_cli.stream_chat(streamer, bus)  # before stream_extras: it is recorded
        gateway = (
            _web(streamer, bus, web, token=token, rotate=rotate, name=name, chat=chat is not None)
            if web is not None
            else None
        )
        extras = stream_extras(
            streamer, audio=audio, mic=mic, audio_codec=audio_codec, record=not no_record, backup=backup, wav=wav
        )
        endpoint = streamer.bind()
        announcer = discover.announce(found, bus, "stream", name, endpoint, advertise, codec=codec, fps=fps)

        def status(stats: StreamerStats) -> None:
            if console.is_terminal:
                console.print(
                    f"\r{stats.width}x{stats.height} {stats.fps:5.1f} fps {stats.bitrate / 1e6:6.2f} Mbit/s "
                    f"{stats.frames_sent} frames sent",
                    end="",
                )

        announce = ready(
            "stream",
            endpoint,
            f"stream {streamer.stream_id}",
            f"source {source}",
            f"codec {codec}",
            f"key {streamer.signer.fingerprint}",
            f"chat port {chat.port}" if chat is not None else "",
        )
        run(
            announce,
            lambda _: streamer.run(status),
            stop=[*discover.closing(announcer), streamer.stop, extras.close, *([gateway] if gateway else [])],
            request_stop=streamer.request_stop,
        )
        stats = streamer.stats
        if console.is_terminal:
            console.print()
        console.print(
            f"sent {stats.frames_sent} frames ({stats.keyframes_sent} keyframes), "
            f"{stats.bytes_sent / 1e6:.1f} MB at {stats.width}x{stats.height}"
        )
        extras.check()


def _web(
    streamer: Streamer, bus: Bus, bind: str, *, token: str | None, rotate: bool, name: str, chat: bool
) -> Callable[[], None]:
    """The browser gateway inside the streamer (``--web``): its link is the first line printed. The pages' chat
    joins the streamer's own room through its chat port, like any viewer's, so the room's rules (names, rates,
    presence, timeouts) are the same for browsers as for everyone and the streamer needs no second way in."""
    from overdrive.app.web import StreamToWeb
    from overdrive.app.web_chat import WebChat

    port = WebChat(bus, _local(streamer.bind())) if chat else None
    server = web_cli.start_gateway(bind, token=token, rotate=rotate, name=name, option="--web", chat=port)
    streamer.add_listener(StreamToWeb(server))
    if port is None:
        return server.stop
    streamer.add_listener(port)

    def close() -> None:
        port.close()
        server.stop()

    return close


def _local(endpoint: Endpoint) -> Endpoint:
    """The streamer's own endpoint as this machine reaches it (a wildcard bind is reached on loopback)."""
    return Endpoint("127.0.0.1", endpoint.port) if endpoint.host in ("0.0.0.0", "*", "") else endpoint


def _check_source(config: StreamerConfig) -> None:
    """Build the picture source and open it once, so that a wrong ``--source``, ``--monitor``, ``--region`` or
    ``--pip``, a missing display or camera is one line before anything starts; the streamer then opens it again."""
    from overdrive.media.sources import Region, make_source

    source = make_source(
        config.source,
        monitor=config.monitor,
        region=Region.parse(config.region) if config.region else None,
        pip=config.pip,
        pattern_size=config.pattern_size,
    )
    source.open()
    source.close()


def view(
    ctx: typer.Context,
    host: Annotated[
        str | None,
        typer.Argument(
            metavar="HOST[:PORT]",
            help=f"Streamer address HOST[:PORT] (default port {DEFAULT_STREAM_PORT}); without it, the only live "
            "stream of this network found on the LAN.",
            show_default=False,
        ),
    ] = None,
    headless: Annotated[bool, typer.Option("--headless", help="Show no window (receive and measure only).")] = False,
    duration: Annotated[float | None, typer.Option(help="Stop after this many seconds.", show_default=False)] = None,
    stats_json: Annotated[
        Path | None,
        typer.Option(
            help="Write frames, gaps, fps, latency and bitrate to this JSON file at exit.", show_default=False
        ),
    ] = None,
    overlay: Annotated[
        bool, typer.Option("--overlay", help="Start with the fps/latency overlay on (key 'o' toggles it).")
    ] = False,
    trace: Annotated[Path | None, typer.Option(hidden=True, help="Per-frame timing log (tests).")] = None,
    mute: Annotated[bool, typer.Option("--mute", help="Do not play the audio (--headless implies it).")] = False,
    pin: Annotated[
        str | None,
        typer.Option(
            help="Show only a stream signed by the key with this fingerprint (the streamer prints it: key ...). "
            "Without it, the first stream's key is trusted for this session.",
            show_default=False,
        ),
    ] = None,
    wait: Annotated[
        float | None,
        typer.Option(
            help="Give up if the stream has not started after this many seconds (default: wait until it does).",
            show_default=False,
        ),
    ] = None,
    once: Annotated[
        bool, typer.Option("--once", help="Exit when the stream ends instead of waiting for it to start again.")
    ] = False,
    name: Annotated[
        str | None, typer.Option(help="Your name in the chat (default: your user name).", show_default=False)
    ] = None,
    no_record: NoRecord = False,
    backup: Backup = None,
    wav: Wav = False,
    stream_name: discover.StreamName = None,
    no_discovery: discover.NoDiscovery = False,
) -> None:
    """Watch a stream: join at the next keyframe, decode and show it ('q' quits, 'o' overlay, 'f' fullscreen).

    A viewer started before the stream waits for it; when the stream ends its recording is finished and the
    viewer waits for it to start again (into a new recording), or exits with --once."""
    from overdrive.media.protocol import StreamInfo
    from overdrive.media.viewer import Viewer, ViewerConfig

    opts = options(ctx)
    if stats_json is not None:
        stats_json = writable_file(stats_json, "--stats-json")
    if host is None:
        host, pin, wait = discover.join_target(ctx, no_discovery, stream_name, pin, wait)
    config = ViewerConfig(
        host=host,
        headless=headless,
        duration=duration,
        stats_json=stats_json,
        overlay=overlay,
        trace=trace,
        pin=pin,
        wait=wait,
        once=once,
    )
    warn_insecure(opts)
    with opts.bus() as bus:
        viewer = Viewer(config, bus)
        extras = view_extras(viewer, play=not (mute or headless), record=not no_record, backup=backup, wav=wav)
        chat = chat_cli.view_chat(viewer, bus, config.endpoint.host, name)

        def waiting() -> None:
            console.print(f"waiting for the stream at {config.endpoint.display}...")

        try:
            with interrupts.deferred() as check:
                viewer.connect(check, waiting)
        except KeyboardInterrupt:
            chat.close()
            extras.close()
            console.print("stopped before the stream started")
            return
        except BaseException:
            chat.close()
            extras.close()
            raise

        def joined(info: StreamInfo) -> None:
            console.print(f"stream {shown(info.name)!r} started ({info.video.width}x{info.video.height})")

        def ended(info: StreamInfo, reason: str) -> None:
            after = "" if once else "; waiting for it to start again"
            console.print(f"stream {shown(info.name)!r} ended: {reason}{after}")

        viewer.on_join, viewer.on_end = joined, ended
        waiting_for = f"a stream signed by {config.pin}" if config.pin else "stream info"
        announce = ready("view", config.endpoint, f"connected, waiting for {waiting_for} and a keyframe")
        # viewer.run writes --stats-json on the way out, also on Ctrl-C / SIGTERM / SIGHUP
        run(
            announce,
            lambda _: viewer.run(),
            stop=[viewer.stop, chat.close, extras.close],
            request_stop=viewer.request_stop,
        )
        s = viewer.stats_dict()
        p50 = s["latency_ms"]["p50"]
        console.print(
            f"received {s['frames_received']} frames, shown {s['frames_shown']}, gaps {s['gaps']}, "
            f"fps {s['fps'] or 0:.1f}, latency p50 {p50 or 0:.0f} ms, malformed {s['malformed']}, forged {s['forged']}"
        )
        extras.check()


def register(app: typer.Typer) -> None:
    app.command()(stream)
    app.command()(view)
    audio_cli.register(app)
