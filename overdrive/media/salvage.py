"""Finishing a recording that was cut short: a killed process, a closed terminal, a full disk.

Recordings are fragmented MP4 (``ftyp``, ``moov``, then one ``moof`` + ``mdat`` pair per keyframe interval, see
:mod:`~overdrive.media.mux`), so everything up to the last complete fragment plays. :func:`salvage` walks the
top-level boxes, cuts the file after the last complete fragment (dropping a fragment whose data was cut mid-NAL)
and renames it to a visible name. It works in place and needs no free space, so it also finishes the file on a
full disk.

While a recording is written its ``.part`` file holds an exclusive ``flock`` (:func:`hold`); the kernel drops it
when the process ends in any way, so :func:`recover` (run when ``stream`` or ``view`` starts) finishes only the
parts nobody is writing, and never one of a recorder running next door in the same backup folder.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

PART_SUFFIX = ".mp4.part"
RECOVERED = " (recovered)"
_HEADER = struct.Struct(">I4s")


@dataclass(frozen=True, slots=True)
class Salvaged:
    """What became of one partial recording: ``path`` is the playable file, or None when nothing could play."""

    part: Path
    path: Path | None
    seconds: float


def hold(part: Path) -> BinaryIO:
    """Open ``part`` and take the writer's lock on it; keep the returned handle open while writing."""
    handle = part.open("rb")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise
    return handle


def playable_end(path: Path) -> int:
    """Offset just after the last complete fragment (or 0 when not even one fragment was written)."""
    size = path.stat().st_size
    end = offset = 0
    seen_moov = False
    pending_moof = False
    with path.open("rb") as f:
        while offset + _HEADER.size <= size:
            f.seek(offset)
            length, kind = _HEADER.unpack(f.read(_HEADER.size))
            if length == 1:  # 64-bit size follows
                raw = f.read(8)
                if len(raw) < 8:
                    break
                length = struct.unpack(">Q", raw)[0]
            elif length == 0:  # "to the end of the file": only a box still being written says that
                break
            if length < _HEADER.size or offset + length > size:
                break  # cut inside this box
            offset += length
            if kind == b"moov":
                seen_moov = True
            elif kind == b"moof":
                pending_moof = True
            elif kind == b"mdat" and pending_moof and seen_moov:
                pending_moof = False
                end = offset
    return end


def visible_name(part: Path, suffix: str = "") -> Path:
    """``.NAME.mp4.part`` -> ``NAME{suffix}.mp4`` (or ``NAME{suffix} 2.mp4`` ... if that exists)."""
    base = part.name
    if base.startswith("."):
        base = base[1:]
    base = base.removesuffix(PART_SUFFIX)
    for n in range(1, 1000):
        candidate = part.with_name(f"{base}{suffix}{'' if n == 1 else f' {n}'}.mp4")
        if not candidate.exists():
            return candidate
    return part.with_name(f"{base}{suffix} {os.getpid()}.mp4")


def salvage(part: Path, suffix: str = "") -> Salvaged:
    """Cut ``part`` after its last complete fragment and rename it visibly; remove it if nothing in it plays."""
    from overdrive.media.chat_record import salvage_sidecars

    end = playable_end(part)
    if end == 0:
        part.unlink(missing_ok=True)
        salvage_sidecars(part, None)
        return Salvaged(part, None, 0.0)
    if end < part.stat().st_size:
        os.truncate(part, end)
    final = visible_name(part, suffix)
    os.replace(part, final)
    salvage_sidecars(part, final)  # the chat beside it keeps its name
    return Salvaged(part, final, duration(final))


def duration(path: Path) -> float:
    """Seconds of video in a finished recording (0.0 if it cannot be read)."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            last = 0
            for packet in container.demux(stream):
                if packet.pts is not None and packet.duration is not None:
                    last = max(last, packet.pts + packet.duration)
            return float(last * stream.time_base) if stream.time_base else 0.0
    except (av.error.FFmpegError, IndexError, OSError):
        return 0.0


def recover(folder: Path) -> list[Salvaged]:
    """Finish every partial recording in ``folder`` that no running recorder holds."""
    done: list[Salvaged] = []
    try:
        parts = sorted(p for p in folder.glob(f".*{PART_SUFFIX}") if p.is_file())
    except OSError:
        return done
    for part in parts:
        try:
            handle = hold(part)
        except OSError:
            continue  # being written right now (or unreadable): not ours to touch
        try:
            done.append(salvage(part, RECOVERED))
        except OSError as exc:
            log.warning("cannot recover %s: %s", part, exc)
        finally:
            handle.close()
    return done
