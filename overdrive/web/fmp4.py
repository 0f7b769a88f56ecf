"""A small fragmented-MP4 writer for Media Source Extensions: one init segment per track, one fragment per frame.

H.264 is passed through (no re-encode): the init segment carries an ``avcC`` built from the stream's SPS/PPS, and
each access unit becomes one ``moof``+``mdat`` whose sample is the Annex B unit rewritten with 4-byte length
prefixes. Opus packets go the same way into an ``Opus``/``dOps`` track (one 20 ms packet per fragment).

Why not PyAV's ``mp4`` muxer with ``frag_keyframe+empty_moov``: it held each fragment until the next frame arrived,
which added a frame of latency (about 33 ms at 30 fps, measured in the issue that introduced this gateway, where
this writer played at capture-to-shown p50 40-80 ms). Here a fragment exists the moment its frame does.

Timestamps: a fragment's decode time (``tfdt``) is its capture time minus the track config's ``epoch_ns``, so the
same bytes serve a browser that joined at the start and one that joined late, and a page recovers each picture's
capture time from ``mediaTime`` (``epoch + mediaTime``). No B-frames (the encoder never makes them), so
presentation time equals decode time.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field

from overdrive.errors import ProtocolError

VIDEO_TIMESCALE = 90_000
AUDIO_TIMESCALE = 48_000
MAX_PARAMETER_SET = 1024

_START = re.compile(b"\x00\x00\x01")
_NAL_SPS, _NAL_PPS, _NAL_AUD = 7, 8, 9
_KEY_FLAGS = 0x02000000  # sample_depends_on=2 (an I picture), sync sample
_DELTA_FLAGS = 0x01010000  # sample_depends_on=1, sample_is_non_sync_sample
_MATRIX = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)


def split_annexb(data: bytes) -> list[bytes]:
    """The NAL units (without start codes) of an Annex B byte stream (emulation prevention keeps 00 00 01 out of
    a NAL unit's body, so every occurrence is a start code)."""
    starts = [m.end() for m in _START.finditer(data)]
    nals = []
    for i, start in enumerate(starts):
        end = starts[i + 1] - 3 if i + 1 < len(starts) else len(data)
        nal = data[start:end].rstrip(b"\x00")  # a 4-byte start code leaves one zero behind
        if nal:
            nals.append(nal)
    return nals


def to_length_prefixed(access_unit: bytes) -> bytes:
    """An Annex B access unit as an MP4 sample: each NAL unit behind a 4-byte length; parameter sets and access
    unit delimiters are dropped (the init segment's ``avcC`` holds the parameter sets)."""
    parts = []
    for nal in split_annexb(access_unit):
        if nal[0] & 0x1F in (_NAL_SPS, _NAL_PPS, _NAL_AUD):
            continue
        parts.append(struct.pack(">I", len(nal)))
        parts.append(nal)
    return b"".join(parts)


def _box(kind: bytes, *payload: bytes) -> bytes:
    body = b"".join(payload)
    return struct.pack(">I", 8 + len(body)) + kind + body


def _full(kind: bytes, version: int, flags: int, *payload: bytes) -> bytes:
    return _box(kind, struct.pack(">I", (version << 24) | flags), *payload)


@dataclass(frozen=True, slots=True, kw_only=True)
class VideoConfig:
    """An H.264 track as the page needs it: size, parameter sets, nominal rate, and the capture-time origin."""

    width: int
    height: int
    sps: bytes
    pps: bytes
    fps: float
    epoch_ns: int
    codec: str = field(init=False)
    """The MSE codec string from the SPS's profile, constraint and level bytes (``avc1.42C01F`` for 720p
    constrained baseline), never a fixed guess."""

    def __post_init__(self) -> None:
        if not (2 <= self.width <= 16384 and 2 <= self.height <= 16384):
            raise ProtocolError(f"video size {self.width}x{self.height} out of range")
        if not 0 < self.fps <= 1000:
            raise ProtocolError(f"frame rate {self.fps} out of range")
        for name, nal, kind in (("SPS", self.sps, _NAL_SPS), ("PPS", self.pps, _NAL_PPS)):
            if not 4 <= len(nal) <= MAX_PARAMETER_SET or nal[0] & 0x1F != kind:
                raise ProtocolError(f"not an H.264 {name}")
        object.__setattr__(self, "codec", "avc1." + self.sps[1:4].hex().upper())

    @classmethod
    def from_annexb(cls, extradata: bytes, *, width: int, height: int, fps: float, epoch_ns: int) -> VideoConfig:
        """The config for a stream whose extradata is SPS+PPS in Annex B (the first of each is used)."""
        sps = pps = b""
        for nal in split_annexb(extradata):
            if nal[0] & 0x1F == _NAL_SPS and not sps:
                sps = nal
            elif nal[0] & 0x1F == _NAL_PPS and not pps:
                pps = nal
        return cls(width=width, height=height, sps=sps, pps=pps, fps=fps, epoch_ns=epoch_ns)


@dataclass(frozen=True, slots=True, kw_only=True)
class AudioConfig:
    """An Opus track: channels, the encoder's pre-skip (0: none applied) and the capture-time origin."""

    channels: int
    epoch_ns: int
    pre_skip: int = 0
    sample_rate: int = 48_000
    codec: str = "opus"

    def __post_init__(self) -> None:
        if self.channels not in (1, 2):
            raise ProtocolError(f"Opus with {self.channels} channels is not supported here")
        if self.sample_rate != AUDIO_TIMESCALE:
            raise ProtocolError(f"Opus at {self.sample_rate} Hz is not supported here")


def _ticks(pts_ns: int, epoch_ns: int, timescale: int) -> int:
    return max(0, pts_ns - epoch_ns) * timescale // 1_000_000_000


def _ftyp() -> bytes:
    return _box(b"ftyp", b"iso5", struct.pack(">I", 512), b"iso5iso6mp41")


def _moov(
    track_id: int, timescale: int, handler: bytes, media_header: bytes, sample_entry: bytes, tkhd: bytes
) -> bytes:
    mvhd = _full(
        b"mvhd", 0, 0, struct.pack(">IIII", 0, 0, 1000, 0), struct.pack(">IH10x", 0x10000, 0x100), _MATRIX,
        bytes(24), struct.pack(">I", track_id + 1),
    )  # fmt: skip
    mdhd = _full(b"mdhd", 0, 0, struct.pack(">IIIIHH", 0, 0, timescale, 0, 0x55C4, 0))  # language "und"
    hdlr = _full(b"hdlr", 0, 0, bytes(4), handler, bytes(12), b"overdrive\x00")
    dinf = _box(b"dinf", _full(b"dref", 0, 0, struct.pack(">I", 1), _full(b"url ", 0, 1)))
    stbl = _box(
        b"stbl",
        _full(b"stsd", 0, 0, struct.pack(">I", 1), sample_entry),
        _full(b"stts", 0, 0, bytes(4)),
        _full(b"stsc", 0, 0, bytes(4)),
        _full(b"stsz", 0, 0, bytes(8)),
        _full(b"stco", 0, 0, bytes(4)),
    )
    trak = _box(b"trak", tkhd, _box(b"mdia", mdhd, hdlr, _box(b"minf", media_header, dinf, stbl)))
    trex = _full(b"trex", 0, 0, struct.pack(">IIIII", track_id, 1, 0, 0, 0))
    return _box(b"moov", mvhd, trak, _box(b"mvex", trex))


def _tkhd(track_id: int, volume: int, width: int, height: int) -> bytes:
    return _full(
        b"tkhd", 0, 0x7, struct.pack(">IIIII", 0, 0, track_id, 0, 0), bytes(8),
        struct.pack(">hhhH", 0, 0, volume, 0), _MATRIX, struct.pack(">II", width << 16, height << 16),
    )  # fmt: skip


def video_init(config: VideoConfig, track_id: int = 1) -> bytes:
    """The init segment (``ftyp``+``moov``) of an H.264 track."""
    avcc = _box(
        b"avcC",
        bytes((1, config.sps[1], config.sps[2], config.sps[3], 0xFF, 0xE1)),
        struct.pack(">H", len(config.sps)), config.sps, b"\x01", struct.pack(">H", len(config.pps)), config.pps,
    )  # fmt: skip
    entry = _box(
        b"avc1", bytes(6), struct.pack(">H", 1), bytes(16), struct.pack(">HH", config.width, config.height),
        struct.pack(">II", 0x480000, 0x480000), bytes(4), struct.pack(">H", 1), bytes(32),
        struct.pack(">Hh", 0x18, -1), avcc,
    )  # fmt: skip
    vmhd = _full(b"vmhd", 0, 1, bytes(8))
    tkhd = _tkhd(track_id, 0, config.width, config.height)
    return _ftyp() + _moov(track_id, VIDEO_TIMESCALE, b"vide", vmhd, entry, tkhd)


def audio_init(config: AudioConfig, track_id: int = 2) -> bytes:
    """The init segment of an Opus track (``Opus`` sample entry with its ``dOps`` box)."""
    dops = _box(b"dOps", struct.pack(">BBHIhB", 0, config.channels, config.pre_skip, config.sample_rate, 0, 0))
    entry = _box(
        b"Opus", bytes(6), struct.pack(">H", 1), bytes(8), struct.pack(">HHHH", config.channels, 16, 0, 0),
        struct.pack(">I", config.sample_rate << 16), dops,
    )  # fmt: skip
    smhd = _full(b"smhd", 0, 0, bytes(4))
    return _ftyp() + _moov(track_id, AUDIO_TIMESCALE, b"soun", smhd, entry, _tkhd(track_id, 0x100, 0, 0))


def _fragment(sequence: int, track_id: int, decode_time: int, duration: int, flags: int, sample: bytes) -> bytes:
    tfhd = _full(b"tfhd", 0, 0x020000, struct.pack(">I", track_id))  # default-base-is-moof
    tfdt = _full(b"tfdt", 1, 0, struct.pack(">Q", decode_time))
    # trun: data offset, duration, size, flags of one sample; its data offset counts from the moof's first byte
    trun_size = 12 + 4 + 4 + 12
    moof_size = 8 + 16 + 8 + len(tfhd) + len(tfdt) + trun_size
    trun = _full(
        b"trun", 0, 0x000701, struct.pack(">Ii", 1, moof_size + 8), struct.pack(">III", duration, len(sample), flags)
    )
    moof = _box(b"moof", _full(b"mfhd", 0, 0, struct.pack(">I", sequence)), _box(b"traf", tfhd, tfdt, trun))
    return moof + struct.pack(">I", 8 + len(sample)) + b"mdat" + sample


def video_fragment(config: VideoConfig, sequence: int, pts_ns: int, keyframe: bool, access_unit: bytes) -> bytes:
    """One ``moof``+``mdat`` holding one H.264 access unit (Annex B in), lasting one nominal frame."""
    duration = max(1, round(VIDEO_TIMESCALE / config.fps))
    decode_time = _ticks(pts_ns, config.epoch_ns, VIDEO_TIMESCALE)
    flags = _KEY_FLAGS if keyframe else _DELTA_FLAGS
    return _fragment(sequence, 1, decode_time, duration, flags, to_length_prefixed(access_unit))


def audio_fragment(config: AudioConfig, sequence: int, pts_ns: int, samples: int, packet: bytes) -> bytes:
    """One ``moof``+``mdat`` holding one Opus packet of ``samples`` samples (at 48 kHz)."""
    decode_time = _ticks(pts_ns, config.epoch_ns, AUDIO_TIMESCALE)
    return _fragment(sequence, 2, decode_time, samples, _KEY_FLAGS, packet)


__all__ = [
    "AudioConfig",
    "VideoConfig",
    "audio_fragment",
    "audio_init",
    "split_annexb",
    "to_length_prefixed",
    "video_fragment",
    "video_init",
]
