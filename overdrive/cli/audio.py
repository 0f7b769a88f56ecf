"""``overdrive devices`` plus the audio/recording glue that ``overdrive stream`` and ``overdrive view`` call."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from overdrive.cli.options import console, print_json, report, shown
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
            self.recorder.close()  # each finished file was reported as it closed (recording_event)
            if self.recorder.errors:
                console.print(f"[yellow]recording had {self.recorder.errors} error(s); see the messages above[/]")

    def check(self) -> None:
        """After the command's own last line: MediaError (exit 1) if recording stopped for lack of space."""
        recorder = self.recorder
        if recorder is not None and recorder.no_space:
            raise MediaError(
                f"recording stopped {recorder.no_space} time(s) for lack of space in {recorder.config.backup_dir}; "
                "what was written before is kept"
            )


def recording_event(event: Any) -> None:
    """One line for each recording that closes, stops on a full disk, or resumes (from the recorder's thread)."""
    from overdrive.media.recorder import Finished, NoSpace

    if isinstance(event, Finished):
        console.print(f"recorded {event.path} ({event.frames} frames, {event.audio_chunks} audio chunks)")
        for wav in event.wavs:
            console.print(f"recorded {wav}")
    elif isinstance(event, NoSpace):
        kept = f"; kept {event.kept}" if event.kept else ""
        console.print(
            f"[yellow]recording stopped: no space left in {event.folder}{kept}; "
            "it resumes into a new file when space is free again[/]"
        )
    else:
        console.print(f"space is free again: recording to {event.path}")


def start_recording(target: Any, backup: Path | None, wav: bool) -> Any:
    """Check the backup folder, finish recordings earlier runs left behind, then record ``target``."""
    from overdrive.media.recorder import attach_recorder, check_backup
    from overdrive.media.salvage import recover
    from overdrive.paths import backup_dir

    folder = backup or backup_dir()
    check_backup(folder)
    for done in recover(folder):
        name = shown(done.part.name)
        if done.path is None:
            console.print(f"removed {name}: an interrupted recording with nothing playable in it")
        else:
            console.print(f"recovered an interrupted recording: {done.path} ({done.seconds:.1f} s)")
    return attach_recorder(target, folder, wav=wav, on_event=recording_event)


def stream_extras(
    streamer: Any, *, audio: str, mic: str | None, audio_codec: str, record: bool, backup: Path | None, wav: bool
) -> MediaExtras:
    """Hook ``--audio`` capture and the local recording into a Streamer (before it starts)."""
    from overdrive.media.audio.capture import attach_audio

    extras = MediaExtras()
    recorder = start_recording(streamer, backup, wav) if record else None  # folder checked before any device
    try:
        extras.capture = attach_audio(streamer, audio, mic=mic, codec=audio_codec)
    except BaseException:
        if recorder is not None:
            recorder.close()
        raise
    extras.recorder = recorder
    return extras


def view_extras(viewer: Any, *, play: bool, record: bool, backup: Path | None, wav: bool) -> MediaExtras:
    """Hook audio playback (unless muted) and the local recording into a Viewer (before it runs)."""
    from overdrive.media.audio.playback import AudioPlayer

    extras = MediaExtras()
    if record:
        extras.recorder = start_recording(viewer, backup, wav)  # folder checked before any device
    if play:
        player = AudioPlayer()
        try:
            player.open()
        except MediaError as exc:
            console.print(f"[yellow]no sound: {exc}[/]")
        else:
            extras.player = player
            viewer.add_listener(player)
    return extras


def register(app: typer.Typer) -> None:
    app.command()(devices)
