"""Who may speak for a stream: the streamer signs every message, a viewer believes one key.

The network key admits every password holder, so it cannot tell the lecturer's stream from a student's. So every
stream message goes out as ``[topic, header, *payload, signature]``: the last frame is the streamer's Ed25519
signature (:class:`~overdrive.bus.signing.Signer`) over a domain-separated BLAKE2b digest of all frames before it,
each length-prefixed so frames cannot be re-split. Any message type, including ones added later, is covered with
no code of its own, and an XSUB/XPUB relay forwards it unchanged. Signing a digest keeps payload frames zero-copy
and hashes a large keyframe once (BLAKE2b) instead of twice (Ed25519's SHA-512). ``StreamInfo.signer`` carries
the public key; the viewer shows its :func:`~overdrive.bus.signing.fingerprint`.

:class:`StreamTrust` is the viewer's policy, without sockets: nothing counts until a ``StreamInfo`` signed by the
key it carries, and, with a pin, whose fingerprint is the pin; from then on only that key. Without a pin the first
such key is trusted for the session (trust on first use) and the user is told its fingerprint to compare.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from overdrive.bus.codec import Frame
from overdrive.bus.signing import PUBLIC_SIZE, Signer, Verifier, fingerprint, normalise_fingerprint
from overdrive.media.protocol import CODEC, TOPICS, StreamInfo, StreamMessage

DOMAIN = b"overdrive/v1/stream-message\0"
MAX_WARNED = 16
"""Foreign keys warned about once each; past that, more are refused silently (still counted)."""


def _view(frame: Frame) -> memoryview:
    return memoryview(frame if isinstance(frame, (bytes, bytearray, memoryview)) else frame.buffer)


def signed_bytes(frames: Sequence[Frame]) -> bytes:
    """What the streamer signs for ``frames`` (topic, header, payload): the domain and a digest of them all."""
    digest = hashlib.blake2b(digest_size=64, person=b"od-stream-v1")
    digest.update(len(frames).to_bytes(4, "big"))
    for frame in frames:
        view = _view(frame)
        digest.update(view.nbytes.to_bytes(8, "big"))
        digest.update(view)
    return DOMAIN + digest.digest()


def seal(signer: Signer, frames: Sequence[Frame]) -> list[Frame]:
    """``frames`` (topic, header, payload) followed by their signature."""
    return [*frames, signer.sign(signed_bytes(frames))]


def sealed(signer: Signer, message: StreamMessage, payload: bytes = b"") -> list[Frame]:
    """The frames to publish for ``message``: topic, header, payload (if the type takes one), signature."""
    body = CODEC.encode(message, payload) if message.payload_frames else CODEC.encode(message)
    return seal(signer, [TOPICS[type(message)], *body])


class Verdict(enum.Enum):
    """What :class:`StreamTrust` says about one message."""

    TRUSTED = "trusted"
    UNVERIFIED = "unverified"  # no trusted key yet (a frame before the first info): dropped, not an attack
    FORGED = "forged"  # missing or wrong signature, or signed by a key this viewer does not trust
    REPLAYED = "replayed"  # a validly signed info of an older stream of the trusted key


@dataclass(frozen=True, slots=True)
class Decision:
    """A verdict and, at most once per key, a line to tell the user."""

    verdict: Verdict
    notice: str | None = None


class StreamTrust:
    """The viewer's trust in one streamer key; pure bookkeeping (no I/O, no clock)."""

    def __init__(self, pin: str | None = None) -> None:
        self.pin = normalise_fingerprint(pin) if pin is not None else None
        self.key: Verifier | None = None
        self._stream: tuple[str, int] | None = None  # (stream_id, started_ns) of the newest trusted stream
        self._warned: set[bytes] = set()

    @property
    def fingerprint(self) -> str | None:
        return fingerprint(self.key.public) if self.key is not None else None

    def check(self, frames: Sequence[Frame]) -> Verdict:
        """Whether ``[topic, header, *payload, signature]`` is signed by the trusted key (a StreamInfo that is not
        may still be :meth:`offer`-ed once decoded)."""
        if len(frames) < 3:
            return Verdict.FORGED  # no signature frame at all
        if self.key is None:
            return Verdict.UNVERIFIED
        if not self.key.verify(bytes(_view(frames[-1])), signed_bytes(frames[:-1])):
            return Verdict.FORGED
        return Verdict.TRUSTED

    def offer(self, info: StreamInfo, frames: Sequence[Frame], verdict: Verdict) -> Decision:
        """A decoded StreamInfo and :meth:`check`'s verdict on it: adopt its key if it may speak for the stream,
        and refuse an older stream of the trusted key (a replay)."""
        if verdict is not Verdict.TRUSTED:
            decision = self._adopt(info, frames)
            if decision.verdict is not Verdict.TRUSTED:
                return decision
        else:
            decision = Decision(Verdict.TRUSTED)
        if self._stream is not None and info.stream_id != self._stream[0] and info.started_ns <= self._stream[1]:
            return Decision(Verdict.REPLAYED)
        self._stream = (info.stream_id, info.started_ns)
        return decision

    def _adopt(self, info: StreamInfo, frames: Sequence[Frame]) -> Decision:
        if len(info.signer) != PUBLIC_SIZE or len(frames) < 3:
            return Decision(Verdict.FORGED)
        try:
            candidate = Verifier(info.signer)
        except ValueError:  # not a point on the curve
            return Decision(Verdict.FORGED)
        if not candidate.verify(bytes(_view(frames[-1])), signed_bytes(frames[:-1])):
            return Decision(Verdict.FORGED)
        seen = fingerprint(info.signer)
        if self.pin is not None and seen != self.pin:
            why = f"not the pinned {self.pin}; still waiting for it"
        elif self.key is not None:
            why = f"this session trusts {self.fingerprint} (restart the viewer to accept another streamer)"
        else:
            self.key = candidate
            if self.pin is not None:
                return Decision(Verdict.TRUSTED)
            return Decision(
                Verdict.TRUSTED,
                f"stream {info.name!r} is signed by {seen}: compare this with the fingerprint on the lecturer's "
                f"screen, or pass --pin {seen}",
            )
        if info.signer in self._warned or len(self._warned) >= MAX_WARNED:
            return Decision(Verdict.FORGED)
        self._warned.add(info.signer)
        return Decision(Verdict.FORGED, f"refusing stream {info.name!r} signed by {seen}: {why}")
