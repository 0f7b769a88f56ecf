"""Keys that prove a role, not just membership: signatures and identity proofs on top of the network key.

The network key admits every password holder, so it cannot tell the lecturer's stream from a student's, or a
real master from a student's. Three primitives close that gap (``cryptography`` supplies the curve arithmetic):

* :class:`Signer` is an Ed25519 key. A streamer signs every message with one derived from its node identity, so a
  viewer that pins the streamer's :func:`fingerprint` shows nothing else; masters share one made by
  ``overdrive keygen --mesh`` (a :class:`MeshKey`) and prove to each other that they hold it.
* :func:`identity_proof` / :func:`check_identity_proof` prove possession of a node identity's CURVE secret to one
  peer: a MAC keyed by the X25519 shared secret of the two identities, so it cannot be relayed to a third party.
* :func:`fingerprint` is the short form users compare by eye (``3f2a-9c1b-07de-44a0``).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from zmq.utils import z85

from overdrive.bus.security import KeyFile, NodeIdentity, read_key_file, write_key_file
from overdrive.errors import ConfigError

PUBLIC_SIZE = 32
SIGNATURE_SIZE = 64
PROOF_SIZE = 32
_MESH_KIND = "overdrive-mesh-key"


def fingerprint(public: bytes) -> str:
    """Sixteen hex digits of a public key's hash in groups of four, for comparing keys by eye."""
    digest = hashlib.sha256(b"overdrive/v1/fingerprint:" + public).hexdigest()[:16]
    return "-".join(digest[i : i + 4] for i in range(0, 16, 4))


def normalise_fingerprint(text: str) -> str:
    """Accept a fingerprint typed with or without dashes or spaces, in any case; ConfigError if malformed."""
    digits = "".join(ch for ch in text.lower() if ch not in "-: ")
    if len(digits) != 16 or any(ch not in "0123456789abcdef" for ch in digits):
        raise ConfigError(f"{text!r} is not a key fingerprint (16 hex digits, e.g. 3f2a-9c1b-07de-44a0)")
    return "-".join(digits[i : i + 4] for i in range(0, 16, 4))


def verify(public: bytes, signature: bytes, data: bytes) -> bool:
    """Whether ``signature`` is ``public``'s Ed25519 signature of ``data``; False for any malformed input."""
    if len(public) != PUBLIC_SIZE or len(signature) != SIGNATURE_SIZE:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True


class Verifier:
    """A parsed Ed25519 public key, for checking many signatures by one signer."""

    __slots__ = ("_key", "public")

    def __init__(self, public: bytes) -> None:
        if len(public) != PUBLIC_SIZE:
            raise ValueError("an Ed25519 public key is 32 bytes")
        self.public = public
        self._key = Ed25519PublicKey.from_public_bytes(public)

    def verify(self, signature: bytes, data: bytes) -> bool:
        if len(signature) != SIGNATURE_SIZE:
            return False
        try:
            self._key.verify(signature, data)
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True, slots=True, eq=False)
class Signer:
    """An Ed25519 signing key and its public half."""

    seed: bytes
    public: bytes
    _key: Ed25519PrivateKey

    @classmethod
    def from_seed(cls, seed: bytes) -> Signer:
        if len(seed) != 32:
            raise ValueError("an Ed25519 seed is 32 bytes")
        key = Ed25519PrivateKey.from_private_bytes(seed)
        return cls(seed, key.public_key().public_bytes_raw(), key)

    @classmethod
    def generate(cls) -> Signer:
        return cls.from_seed(Ed25519PrivateKey.generate().private_bytes_raw())

    @classmethod
    def for_identity(cls, identity: NodeIdentity) -> Signer:
        """The signing key of a node identity: derived from its CURVE secret, so there is no second key file."""
        seed = hashlib.blake2b(z85.decode(identity.secret), digest_size=32, person=b"od-sign-v1").digest()
        return cls.from_seed(seed)

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public)


class _MeshKeyFile(KeyFile):
    seed: str  # hex, 64 chars


@dataclass(frozen=True, slots=True)
class MeshKey:
    """The master credential: an Ed25519 key every master of one network holds and no student does."""

    network: str
    signer: Signer

    @classmethod
    def generate(cls, network: str) -> MeshKey:
        return cls(network, Signer.generate())

    @classmethod
    def from_file(cls, path: Path) -> MeshKey:
        data = read_key_file(path, _MeshKeyFile, _MESH_KIND, "mesh key")
        try:
            seed = bytes.fromhex(data.seed)
            return cls(data.network, Signer.from_seed(seed))
        except ValueError as exc:
            raise ConfigError(f"{path} holds a damaged mesh key") from exc

    def write(self, path: Path) -> None:
        """Save with mode 0600."""
        write_key_file(path, _MeshKeyFile(kind=_MESH_KIND, network=self.network, seed=self.signer.seed.hex()))

    @property
    def fingerprint(self) -> str:
        return self.signer.fingerprint


def _shared_key(secret_z85: bytes, peer_public: bytes, context: bytes) -> bytes:
    raw_peer = z85.decode(peer_public) if len(peer_public) == 40 else peer_public
    if len(raw_peer) != 32:
        raise ValueError("a CURVE public key is 32 bytes")
    private = X25519PrivateKey.from_private_bytes(z85.decode(secret_z85))
    shared = private.exchange(X25519PublicKey.from_public_bytes(raw_peer))
    return hashlib.blake2b(shared, digest_size=32, key=b"od-proof-v1", person=context[:16].ljust(16, b"\0")).digest()


def identity_proof(identity: NodeIdentity, peer_public: bytes, context: bytes, challenge: bytes) -> bytes:
    """Prove to the holder of ``peer_public`` that we hold ``identity``'s secret, for this ``challenge`` only."""
    return hmac.new(_shared_key(identity.secret, peer_public, context), challenge, hashlib.sha256).digest()


def check_identity_proof(
    identity: NodeIdentity, prover_public: bytes, context: bytes, challenge: bytes, proof: bytes
) -> bool:
    """Whether ``proof`` shows that the holder of ``prover_public`` answered our ``challenge``."""
    try:
        expected = identity_proof(identity, prover_public, context, challenge)
    except ValueError:
        return False
    return hmac.compare_digest(expected, proof)
