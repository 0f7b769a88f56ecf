"""The chat of a recording: beside the MP4 as JSON lines and WebVTT, and inside it as a subtitle track.

A recording of a stream that has a chat (``StreamInfo.chat_port``) in which something was said gets, next to
``NAME.mp4``:

* ``NAME.chat.jsonl``: one JSON object per chat event, ``{"t": seconds, "seq", "name", "text", "kind", "host"}``,
  ``t`` on the recording's timeline (the stream clock minus the recording's first frame, like its video);
* ``NAME.vtt``: WebVTT, one cue per line (``name: text``, shown :data:`CUE_SECONDS` or until the next line), text
  escaped so a player shows it as the characters it is;

and a ``mov_text`` subtitle track titled "chat" in the MP4 (each sample shows the last :data:`SAMPLE_LINES` lines
until the next one or for :data:`CUE_SECONDS`). The track is muxed when the recording closes, all at once: muxing
samples as lines came hung libavformat inside ``mux`` (PyAV 18, fragmented MP4; seen with a sample a few hundred ms
behind the video and with one overlapping the next), while the same cues muxed at the end play back right. So a
recording cut short by a kill keeps its chat in the sidecars only. PyAV 18 cannot *encode* mov_text (its
encoder refuses to open without an ASS header: ``avcodec_open2("mov_text") -> InvalidDataError``), but muxing
ready-made 3GPP timed-text samples (a 2-byte big-endian length and UTF-8 text) into an
``add_mux_stream("mov_text")`` works, and ffmpeg and players read them back.

Both sidecars are written while recording as hidden ``.NAME.chat.jsonl.part`` / ``.NAME.vtt.part`` (each event
flushed whole, so a killed process leaves them readable) and renamed with the MP4 when it closes, or by
:func:`salvage_sidecars` when a cut-short recording is finished. :class:`CueTimeline` is the sans-IO part.
"""

from __future__ import annotations

import json
import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from overdrive.media.chat import line_text
from overdrive.media.protocol import ChatLine

CUE_SECONDS = 5.0
"""How long a chat line stays on screen in the subtitles (cut short by the next line)."""
SAMPLE_LINES = 3
"""Lines shown at once in the subtitle track."""
SIDECARS = (".chat.jsonl", ".vtt")
MAX_TRACK_CUES = 20_000
"""Cues kept for the subtitle track (about 4 MB; the room publishes at most 10 lines a second). Past that the
track stops; the sidecars go on."""
MAX_SAMPLE_BYTES = 0xFFFF
"""A timed-text sample's text length is 16 bits."""


@dataclass(frozen=True, slots=True)
class Cue:
    """``text`` shown from ``start_ms`` for ``duration_ms`` on the recording's timeline."""

    start_ms: int
    duration_ms: int
    text: str


class CueTimeline:
    """Turns chat lines into non-overlapping cues; each is final once the next line (or the end) is known."""

    def __init__(self, t0_ns: int) -> None:
        self.t0_ns = t0_ns
        self._recent: deque[str] = deque(maxlen=SAMPLE_LINES)
        self._held: tuple[int, str] | None = None  # (start_ms, text) of the cue still open
        self._last_ms = -1

    def position_ms(self, sent_ns: int) -> int:
        """Where a line sent at ``sent_ns`` goes: after the previous one, never before the start."""
        position = max(0, (sent_ns - self.t0_ns) // 1_000_000, self._last_ms + 1)
        self._last_ms = position
        return position

    def add(self, line: ChatLine) -> tuple[int, list[Cue]]:
        """Where ``line`` goes (ms) and the cue it ends (if any); ``line`` opens the next one."""
        start = self.position_ms(line.sent_ns)
        self._recent.append(line_text(line))
        done = self._close(start)
        self._held = (start, "\n".join(self._recent))
        return start, done

    @property
    def text(self) -> str:
        """The last lines, as a subtitle sample shows them."""
        return "\n".join(self._recent)

    def finish(self, end_ms: int | None) -> list[Cue]:
        """The last cue, cut at ``end_ms`` (the recording's end) if given."""
        return self._close(end_ms)

    def _close(self, end_ms: int | None) -> list[Cue]:
        held, self._held = self._held, None
        if held is None:
            return []
        start, text = held
        limit = start + int(CUE_SECONDS * 1000)
        end = limit if end_ms is None else min(limit, end_ms)
        return [Cue(start, max(1, end - start), text)]


def vtt_time(ms: int) -> str:
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    return f"{hours:02d}:{minutes:02d}:{rest // 1000:02d}.{rest % 1000:03d}"


def vtt_escape(text: str) -> str:
    """Cue text shown literally: markup characters as entities, no blank line (it would end the cue)."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return "\n".join(part for part in text.splitlines() if part.strip()) or " "


def tx3g_sample(text: str) -> bytes:
    """A 3GPP timed-text sample: 16-bit big-endian length, then the UTF-8 text."""
    data = text.encode("utf-8")[:MAX_SAMPLE_BYTES]
    return len(data).to_bytes(2, "big") + data


class ChatSidecars:
    """The ``.chat.jsonl`` and ``.vtt`` parts of one recording; :meth:`close` renames them next to the MP4."""

    def __init__(self, folder: Path, base: str, t0_ns: int) -> None:
        self.folder = folder
        self.base = base
        self.timeline = CueTimeline(t0_ns)
        self.lines = 0
        self._jsonl: IO[str] = part_path(folder, base, ".chat.jsonl").open("w", encoding="utf-8")
        self._vtt: IO[str] = part_path(folder, base, ".vtt").open("w", encoding="utf-8")
        self._vtt.write("WEBVTT\n\n")
        self._vtt.flush()
        self._cue_no = 0
        self.cues: list[Cue] = []
        """Every cue so far, for the subtitle track written when the recording closes."""

    def add(self, line: ChatLine) -> None:
        """Write one line (its cue is final once the next line comes)."""
        start, cues = self.timeline.add(line)
        record = {
            "t": start / 1000,
            "seq": line.seq,
            "name": line.name,
            "text": line.text,
            "kind": line.kind,
            "host": line.host,
        }
        self._jsonl.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._jsonl.flush()
        self._write_cues(cues)
        self.lines += 1

    def finish(self, end_ms: int | None) -> list[Cue]:
        """Write the last cue (cut at ``end_ms``) and close the parts (:func:`move_sidecars` then renames them);
        returns the cues for the subtitle track (at most :data:`MAX_TRACK_CUES`)."""
        try:
            self._write_cues(self.timeline.finish(end_ms))
        finally:
            self.abort()
        return self.cues

    def abort(self) -> None:
        """Close the parts as they are (idempotent)."""
        self._jsonl.close()
        self._vtt.close()

    def _write_cues(self, cues: list[Cue]) -> None:
        for cue in cues:
            if len(self.cues) < MAX_TRACK_CUES:
                self.cues.append(cue)
            self._cue_no += 1
            end = cue.start_ms + cue.duration_ms
            self._vtt.write(f"{self._cue_no}\n{vtt_time(cue.start_ms)} --> {vtt_time(end)}\n{vtt_escape(cue.text)}\n\n")
        if cues:
            self._vtt.flush()


def part_path(folder: Path, base: str, suffix: str) -> Path:
    return folder / f".{base}{suffix}.part"


def move_sidecars(folder: Path, base: str, final_mp4: Path) -> list[Path]:
    """Rename the sidecar parts of recording ``base`` to sit beside ``final_mp4`` (same name, their suffix)."""
    moved = []
    for suffix in SIDECARS:
        part = part_path(folder, base, suffix)
        if part.exists():
            target = final_mp4.with_name(final_mp4.name.removesuffix(".mp4") + suffix)
            if suffix == ".chat.jsonl":
                _cut_partial_line(part)
            os.replace(part, target)
            moved.append(target)
    return moved


def _cut_partial_line(path: Path) -> None:
    """Drop an unfinished last line (a process killed mid-write), so every line of the file parses."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        os.truncate(path, data.rfind(b"\n") + 1)


def salvage_sidecars(part_mp4: Path, final_mp4: Path | None) -> list[Path]:
    """After a cut-short ``.NAME.mp4.part`` became ``final_mp4``: its chat parts follow (or go, if it did not)."""
    base = part_mp4.name.removeprefix(".").removesuffix(".mp4.part")
    if final_mp4 is None:
        for suffix in SIDECARS:
            part_path(part_mp4.parent, base, suffix).unlink(missing_ok=True)
        return []
    return move_sidecars(part_mp4.parent, base, final_mp4)
