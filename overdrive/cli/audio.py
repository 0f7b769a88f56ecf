"""``overdrive devices`` plus the audio/recording glue that ``overdrive stream`` and ``overdrive view`` call."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from overdrive.cli.options import console, print_json, report
from overdrive.errors import MediaError


def list_devices() -> dict[str, Any]:
    """PortAudio inputs/outputs and, when a PulseAudio/PipeWire server answers, its sources and sinks."""
    from overdrive.media.audio.devices import _pactl, pulse_default

    try:
        import sounddevice as sd

        raw = [dict(d) for d in sd.query_devices()]
        default_in, default_out = sd.default.device
    except (OSError, ImportError) as exc:
        raise MediaError(f"cannot list audio devices: {exc} (is libportaudio2 installed?)") from exc
    devices = [
        {
            "index": i,
            "name": d["name"],
            "hostapi": sd.query_hostapis(d["hostapi"])["name"],
            "inputs": d["max_input_channels"],
            "outputs": d["max_output_channels"],
            "default_samplerate": d["default_samplerate"],
            "default_input": i == default_in,
            "default_output": i == default_out,
        }
        for i, d in enumerate(raw)
    ]
    pulse: dict[str, Any] | None = None
    if _pactl("info") is not None:
        sources = [
            line.split("\t")[1] for line in (_pactl("list", "short", "sources") or "").splitlines() if "\t" in line
        ]
        sinks = [line.split("\t")[1] for line in (_pactl("list", "short", "sinks") or "").splitlines() if "\t" in line]
        sink = pulse_default("sink")
        pulse = {
            "default_sink": sink,
            "default_source": pulse_default("source"),
            "system_audio": f"{sink}.monitor" if sink else None,
            "sources": sources,
            "sinks": sinks,
        }
    return {"devices": devices, "pulse": pulse}


def devices(
    json_out: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")] = False,
) -> None:
    """List audio inputs and outputs (for --mic DEVICE), and what --audio system would capture."""
    info = list_devices()
    if json_out:
        print_json(info)
        return
    if not info["devices"]:
        report.print("no PortAudio devices")
    for d in info["devices"]:
        marks = ("  [bold]default input[/]" if d["default_input"] else "") + (
            "  [bold]default output[/]" if d["default_output"] else ""
        )
        report.print(f"{d['index']:3d}  {d['name']}  ({d['hostapi']}, {d['inputs']} in, {d['outputs']} out){marks}")
    pulse = info["pulse"]
    if pulse is None:
        report.print("no PulseAudio/PipeWire server: --audio system is not available (use --audio mic or none)")
        return
    report.print(f"PulseAudio/PipeWire: system audio = {pulse['system_audio']}")
    for name in pulse["sources"]:
        report.print(f"  source  {name}   (--mic pulse:{name})")
    for name in pulse["sinks"]:
        report.print(f"  sink    {name}   (PULSE_SINK={name} for playback)")


class MediaExtras:
    """Audio capture/playback and the recorder attached to one Streamer or Viewer; ``close()`` finishes them."""

    def __init__(self) -> None:
        self.capture: Any = None
        self.player: Any = None
        self.recorder: Any = None

    def close(self) -> None:
        if self.capture is not None:
            self.capture.close()
        if self.player is not None:
            self.player.close()
        if self.recorder is not None:
            for done in self.recorder.close():
                console.print(f"recorded {done.path} ({done.frames} frames, {done.audio_chunks} audio chunks)")
                for wav in done.wavs:
                    console.print(f"recorded {wav}")
            if self.recorder.errors:
                console.print(f"[yellow]recording had {self.recorder.errors} error(s); see the log[/]")


def stream_extras(
    streamer: Any, *, audio: str, mic: str | None, audio_codec: str, record: bool, backup: Path | None, wav: bool
) -> MediaExtras:
    """Hook ``--audio`` capture and the local recording into a Streamer (before it starts)."""
    from overdrive.media.audio.capture import attach_audio
    from overdrive.media.recorder import attach_recorder
    from overdrive.paths import backup_dir

    extras = MediaExtras()
    extras.capture = attach_audio(streamer, audio, mic=mic, codec=audio_codec)
    if record:
        extras.recorder = attach_recorder(streamer, backup or backup_dir(), wav=wav)
    return extras


def view_extras(viewer: Any, *, play: bool, record: bool, backup: Path | None, wav: bool) -> MediaExtras:
    """Hook audio playback (unless muted) and the local recording into a Viewer (before it runs)."""
    from overdrive.media.audio.playback import AudioPlayer
    from overdrive.media.recorder import attach_recorder
    from overdrive.paths import backup_dir

    extras = MediaExtras()
    if play:
        player = AudioPlayer()
        try:
            player.open()
        except MediaError as exc:
            console.print(f"[yellow]no sound: {exc}[/]")
        else:
            extras.player = player
            viewer.add_listener(player)
    if record:
        extras.recorder = attach_recorder(viewer, backup or backup_dir(), wav=wav)
    return extras


def register(app: typer.Typer) -> None:
    app.command()(devices)
