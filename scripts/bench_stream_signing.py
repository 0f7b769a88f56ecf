#!/usr/bin/env python3
"""Benchmark what signing costs a stream: per-message time signed against unsigned, at 1080p frame sizes.

Real 1920x1080 test-pattern frames are encoded with overdrive's own encoders (an H.264 keyframe and P-frames,
and a JPEG at quality 80); for each kind of message the run times, per message, the streamer's side (header
encoding, plus the digest and Ed25519 signature when signed: :func:`overdrive.media.trust.sealed`) and the
viewer's side (header decoding, plus the check against the trusted key: :meth:`StreamTrust.check`). The unsigned
figures are the baseline, measured in the same run; the report gives both and their ratio, and the signed cost as
a share of one core at 30 fps.

Usage: ``.venv/bin/python scripts/bench_stream_signing.py [--rounds 400]``. ``--smoke`` runs a few rounds,
checks that signed messages verify and tampered ones do not, and exits non-zero if not (CI:
tests/test_bench_smoke.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from overdrive.bus.signing import Signer
from overdrive.media.codecs import make_encoder
from overdrive.media.protocol import CODEC, TOPICS, StreamInfo, StreamMessage, VideoFrame, VideoTrackInfo
from overdrive.media.sources import TestPattern
from overdrive.media.trust import StreamTrust, Verdict, sealed

W, H = 1920, 1080


def samples(signer: Signer) -> list[tuple[str, StreamMessage, bytes]]:
    """A StreamInfo, an H.264 keyframe, a median H.264 P-frame and a JPEG of real 1080p content (the test pattern
    compresses far better than a real screen), and keyframes of the sizes real 1080p screens give (256 KiB, 1 MiB)."""
    pattern = TestPattern(W, H, started_ns=10**18)
    h264 = make_encoder("h264", W, H, 30.0, bitrate=0, quality=80, keyframe_interval=1.0)
    packets = []
    for i in range(12):
        pts = pattern.started_ns + i * 33_333_333
        packets.extend(h264.encode(pattern.grab(pts, i), pts))
    h264.close()
    key = next(p for p in packets if p.keyframe)
    deltas = sorted((p for p in packets if not p.keyframe), key=lambda p: len(p.data))
    delta = deltas[len(deltas) // 2]
    jpeg = make_encoder("jpeg", W, H, 30.0, bitrate=0, quality=80, keyframe_interval=1.0)
    (picture,) = jpeg.encode(pattern.grab(pattern.started_ns, 0), pattern.started_ns)
    jpeg.close()

    def frame(seq: int, packet: Any, codec: Any) -> VideoFrame:
        return VideoFrame(stream_id="bench", seq=seq, pts_ns=packet.pts_ns, keyframe=packet.keyframe, codec=codec)

    info = StreamInfo(
        stream_id="bench",
        name="bench",
        started_ns=1,
        sent_ns=1,
        video=VideoTrackInfo(codec="h264", width=W, height=H, fps=30.0, extradata=b"\x00" * 40),
        signer=signer.public,
    )
    return [
        ("info", info, b""),
        ("h264 keyframe", frame(1, key, "h264"), key.data),
        ("h264 p-frame", frame(2, delta, "h264"), delta.data),
        ("jpeg q80", frame(3, picture, "jpeg"), picture.data),
        ("screen keyframe", frame(4, key, "h264"), os.urandom(256 << 10)),
        ("busy screen keyframe", frame(5, key, "h264"), os.urandom(1 << 20)),
    ]


def per_call(fn: Callable[[], object], rounds: int) -> float:
    """Median of five runs of ``rounds`` calls, in microseconds per call."""
    runs = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(rounds):
            fn()
        runs.append((time.perf_counter() - t0) / rounds * 1e6)
    return sorted(runs)[2]


def unsigned(message: StreamMessage, payload: bytes) -> list[Any]:
    body = CODEC.encode(message, payload) if message.payload_frames else CODEC.encode(message)
    return [TOPICS[type(message)], *body]


def measure(rounds: int) -> list[dict[str, Any]]:
    signer = Signer.generate()
    trust = StreamTrust()
    info_frames: list[Any] = []
    rows = []
    for label, message, payload in samples(signer):
        if isinstance(message, StreamInfo):
            info_frames = sealed(signer, message)
            trust.offer(message, info_frames, trust.check(info_frames))
        plain = unsigned(message, payload)
        signed = sealed(signer, message, payload)
        send_plain = per_call(lambda m=message, p=payload: unsigned(m, p), rounds)
        send_signed = per_call(lambda m=message, p=payload: sealed(signer, m, p), rounds)
        recv_plain = per_call(lambda f=plain: CODEC.decode(f[1:]), rounds)

        def recv_checked(f: list[Any] = signed) -> object:
            if trust.check(f) is not Verdict.TRUSTED:
                raise AssertionError("a signed message did not verify")
            return CODEC.decode(f[1:-1])

        recv_signed = per_call(recv_checked, rounds)
        tampered = [*signed[:-2], bytes(signed[-2][:-1]) + b"\x00" if payload else signed[-2], signed[-1][::-1]]
        rows.append(
            {
                "message": label,
                "bytes": sum(len(f) for f in plain),
                "send_us": (send_plain, send_signed),
                "recv_us": (recv_plain, recv_signed),
                "ok": trust.check(signed) is Verdict.TRUSTED and trust.check(tampered) is Verdict.FORGED,
            }
        )
    return rows


def render(rows: list[dict[str, Any]]) -> None:
    print("| message (1080p) | bytes | streamer µs unsigned / signed (ratio) | viewer µs unsigned / signed (ratio) |")
    print("|---|---:|---:|---:|")
    for r in rows:
        (sp, ss), (rp, rs) = r["send_us"], r["recv_us"]
        print(
            f"| {r['message']} | {r['bytes']:,} | {sp:.1f} / {ss:.1f} ({ss / sp:.0f}x) | "
            f"{rp:.1f} / {rs:.1f} ({rs / rp:.0f}x) |"
        )
    delta = next(r for r in rows if r["message"] == "h264 p-frame")
    added = delta["recv_us"][1] - delta["recv_us"][0]
    print(
        f"\nviewer: signing adds {added:.0f} µs per H.264 P-frame, {added * 30 / 1e4:.2f}% of one core at 30 fps; "
        f"streamer adds {delta['send_us'][1] - delta['send_us'][0]:.0f} µs"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=400, help="calls per timed run")
    parser.add_argument("--smoke", action="store_true", help="a few rounds; check, exit non-zero on a failure")
    args = parser.parse_args()
    rows = measure(10 if args.smoke else args.rounds)
    render(rows)
    bad = [r["message"] for r in rows if not r["ok"]]
    if bad:
        print(f"FAILED: signatures wrong for {', '.join(bad)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
