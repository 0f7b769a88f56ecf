"""Codecs by name: one module per codec behind the small interfaces of :mod:`overdrive.media.codecs.base`."""

from __future__ import annotations

from overdrive.errors import ConfigError, MediaError
from overdrive.media.codecs.base import AudioDecoder, AudioEncoder, Decoder, Encoder
from overdrive.media.codecs.h264 import H264Decoder, H264Encoder
from overdrive.media.codecs.jpeg import JpegDecoder, JpegEncoder
from overdrive.media.codecs.opus import OpusDecoder, OpusEncoder
from overdrive.media.codecs.pcm import PcmDecoder, PcmEncoder


def make_encoder(
    codec: str,
    width: int,
    height: int,
    fps: float,
    *,
    bitrate: int = 0,
    quality: int = 80,
    keyframe_interval: float = 1.0,
) -> Encoder:
    if codec == "h264":
        return H264Encoder(width, height, fps, bitrate=bitrate, keyframe_interval=keyframe_interval)
    if codec == "jpeg":
        return JpegEncoder(quality)
    raise ConfigError(f"--codec must be h264 or jpeg, not {codec!r}")


def make_decoder(codec: str, extradata: bytes = b"") -> Decoder:
    if codec == "h264":
        return H264Decoder(extradata)
    if codec == "jpeg":
        return JpegDecoder()
    raise MediaError(f"unknown video codec {codec!r}")


def make_audio_encoder(codec: str, channels: int) -> AudioEncoder:
    if codec == "opus":
        return OpusEncoder(channels)
    if codec == "pcm":
        return PcmEncoder(channels)
    raise ConfigError(f"--audio-codec must be opus or pcm, not {codec!r}")


def make_audio_decoder(codec: str, channels: int) -> AudioDecoder:
    if codec == "opus":
        return OpusDecoder(channels)
    if codec == "pcm":
        return PcmDecoder(channels)
    raise MediaError(f"unknown audio codec {codec!r}")
