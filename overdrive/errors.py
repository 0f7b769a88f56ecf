"""Every exception overdrive raises on purpose, in one place.

    OverdriveError                 base of everything below; the CLI prints it as one line
    ├── ConfigError                a bad option, config file, address or *Config value (a user mistake)
    ├── BusError                   ZeroMQ transport trouble
    │   ├── AuthError              the peer refused our credentials, or we refused theirs
    │   │   └── SilentPeerError     it took the connection and never answered (stopped, overloaded, or not overdrive)
    │   ├── UnreachableError        nothing answered in time
    │   │   └── HostNotFoundError   the host name does not resolve (waiting will not help)
    │   ├── WrongServiceError      the address is another kind of overdrive service (a stream, not a master)
    │   └── ProtocolError          peer input (a message, record rows, a snapshot page) that is not valid
    │       └── ForeignMessageError a well-formed message of another overdrive protocol (a fetch sent to a master)
    ├── MediaError                 capture, codec, playback or recording trouble
    ├── StoreError                 an index backend failed (database down, bad URL, ...)
    └── TransferError              a fetch or serve failed
        ├── IntegrityError         content did not match its hash
        └── UnsafePathError        a name that would escape its folder

Backend exceptions are translated at the boundary with ``raise ... from exc`` so the cause stays visible
in logs while users see one clear line. ``ValueError`` and ``TypeError`` are kept for local misuse (a bug of the
caller), so a handler that drops bad peer input with ``except ProtocolError`` never hides one of ours.
"""

from __future__ import annotations


class OverdriveError(Exception):
    """Base class of every error overdrive raises deliberately."""


class ConfigError(OverdriveError):
    """A user-supplied option, file or address is invalid."""


class BusError(OverdriveError):
    """Something went wrong on the ZeroMQ bus."""


class AuthError(BusError):
    """A CURVE handshake failed: wrong password or key, or a peer without encryption."""


class SilentPeerError(AuthError):
    """A peer took the connection but never completed the handshake: a stopped or overloaded process, or a service
    that is not overdrive's. Unlike a refusal, it may answer later."""


class UnreachableError(BusError):
    """A peer did not answer within the allowed time."""


class HostNotFoundError(UnreachableError):
    """A host name that does not resolve: unlike a peer that is not up yet, waiting for it will not help."""


class WrongServiceError(BusError):
    """The peer is an overdrive service, but not the kind asked for (a stream where a master was expected)."""


class ProtocolError(BusError):
    """Input from a peer is not valid: a malformed, oversized, unknown or wrong-version message, or bad record
    rows or snapshot pages inside one.

    Raised only for what came from a peer; local misuse raises ``ValueError``/``TypeError``.
    """


class ForeignMessageError(ProtocolError):
    """A valid envelope whose message is of another overdrive protocol (its tag is not one of this codec's): the
    peer is a client of another kind of service, which may be told what this one is (:mod:`overdrive.bus.kind`)."""

    def __init__(self, message: str, tag: str) -> None:
        super().__init__(message)
        self.tag = tag


class MediaError(OverdriveError):
    """Capture, encoding, playback or recording failed."""


class StoreError(OverdriveError):
    """An index store backend failed."""


class TransferError(OverdriveError):
    """A file transfer failed."""


class IntegrityError(TransferError):
    """Data did not match its expected content hash."""


class UnsafePathError(TransferError):
    """A file name would resolve outside the folder it must stay in."""
