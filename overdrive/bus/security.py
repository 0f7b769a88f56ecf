"""Keys: the network key every listening socket uses, and each node's own identity.

* :class:`NetworkKey` is the shared secret of one overdrive network. It is stretched from the password with scrypt
  (salted with the network name), or read from a key file made by ``overdrive keygen``. Its CURVE *server*
  keypair is used by every listening socket; a client must know the server public key to complete a handshake,
  so only password holders can connect. The password itself never crosses the wire.
* :class:`NodeIdentity` is a node's own CURVE keypair, made on first use and kept with mode 0600. Servers learn the
  sender's node id from the ZAP User-Id of its connection, so no peer can speak for another node id.

What a password holder can still do: anyone who knows the password can derive the server secret key and so run a
server the others will trust, and can read traffic it takes part in. An eavesdropper who records handshakes can
guess weak passwords offline; the scrypt cost (about 0.25 s per guess here) is the only defence, so use a strong
password or a key file.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import msgspec
import zmq
from zmq.utils import z85

from overdrive import paths
from overdrive.errors import ConfigError

# scrypt cost: n=2**16, r=8 takes ~0.25 s and 64 MiB on the reference 2-core machine.
SCRYPT_N = 1 << 16
SCRYPT_R = 8
SCRYPT_P = 1
_SALT_PREFIX = b"overdrive/v1/network:"


class KeyFile(msgspec.Struct, forbid_unknown_fields=True):
    """What every key file holds first: its kind, so one kind of key is never read as another."""

    kind: str
    network: str


KeyRecord = TypeVar("KeyRecord", bound=KeyFile)


def read_key_file(path: Path, record: type[KeyRecord], kind: str, what: str) -> KeyRecord:
    """The ``record`` in the key file at ``path`` if it holds a key of ``kind``, else a ConfigError naming the
    file (``what`` names the key for the user: "key", "mesh key")."""
    try:
        data = msgspec.json.decode(path.read_bytes(), type=record)
    except OSError as exc:
        raise ConfigError(f"cannot read {what} file {path}: {exc.strerror}") from exc
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{path} is not an overdrive {what} file: {exc}") from exc
    if data.kind != kind:
        raise ConfigError(f"{path} is not an overdrive {what} file (kind {data.kind!r})")
    return data


def write_key_file(path: Path, record: KeyFile) -> None:
    """Save ``record`` as JSON with mode 0600."""
    paths.write_private(path, msgspec.json.format(msgspec.json.encode(record)) + b"\n")


class _KeyFile(KeyFile):
    secret: str  # Z85, 40 chars


_NETWORK_KIND = "overdrive-network-key"


def _check_z85_secret(secret: bytes) -> None:
    if len(secret) != 40:
        raise ConfigError("a CURVE secret key must be 40 Z85 characters")


def derive_secret(password: str, network: str) -> bytes:
    """Stretch ``password`` into a Z85 CURVE secret key (slow on purpose)."""
    raw = hashlib.scrypt(
        password.encode(),
        salt=_SALT_PREFIX + network.encode(),
        n=SCRYPT_N,
        r=SCRYPT_R,
        p=SCRYPT_P,
        maxmem=256 << 20,
        dklen=32,
    )
    return bytes(z85.encode(raw))


@dataclass(frozen=True, slots=True)
class NetworkKey:
    """The CURVE server keypair shared by every member of one network."""

    network: str
    server_secret: bytes
    server_public: bytes

    @classmethod
    def from_secret(cls, network: str, secret: bytes) -> NetworkKey:
        """Build from a Z85 secret key."""
        _check_z85_secret(secret)
        return cls(network, secret, zmq.curve_public(secret))

    @classmethod
    def from_password(cls, password: str, network: str, cache: Path | None = None) -> NetworkKey:
        """Derive the key from ``password``; reuse a per-user cached derivation when ``cache`` is given."""
        if not password:
            raise ConfigError("the network password is empty")
        if not network:
            raise ConfigError("the network name is empty")
        if cache is None:
            return cls.from_secret(network, derive_secret(password, network))
        entry = cache / _cache_name(password, network, cache)
        try:
            secret = entry.read_bytes()
            return cls.from_secret(network, secret)
        except (OSError, ConfigError):
            pass
        secret = derive_secret(password, network)
        try:
            paths.write_private(entry, secret)
        except OSError:
            pass  # a read-only cache only costs time
        return cls.from_secret(network, secret)

    @classmethod
    def generate(cls, network: str) -> NetworkKey:
        """A random network key, for ``overdrive keygen``."""
        _, secret = zmq.curve_keypair()
        return cls.from_secret(network, secret)

    @classmethod
    def from_file(cls, path: Path) -> NetworkKey:
        """Read a key file written by :meth:`write`."""
        data = read_key_file(path, _KeyFile, _NETWORK_KIND, "key")
        return cls.from_secret(data.network, data.secret.encode())

    def write(self, path: Path) -> None:
        """Save as a key file with mode 0600."""
        write_key_file(path, _KeyFile(kind=_NETWORK_KIND, network=self.network, secret=self.server_secret.decode()))

    @property
    def fingerprint(self) -> str:
        """A short, safe-to-show digest of the public key, so users can compare keys by eye."""
        return hashlib.sha256(self.server_public).hexdigest()[:16]


def _cache_name(password: str, network: str, cache: Path) -> str:
    """Name of a cache entry: a keyed hash, so the folder listing reveals nothing cheap to brute-force."""
    pepper_file = cache / "pepper"
    try:
        pepper = pepper_file.read_bytes()
    except OSError:
        pepper = secrets.token_bytes(32)
        try:
            paths.write_private(pepper_file, pepper)
        except OSError:
            pass
    digest = hmac.new(pepper, f"{network}\0{password}".encode(), hashlib.sha256).hexdigest()
    return f"netkey-{digest[:32]}"


def node_id_from_public(public: bytes) -> str:
    """Node id for a Z85 CURVE public key: 16 lowercase base32 characters of its hash."""
    raw = z85.decode(public) if len(public) == 40 else public
    digest = hashlib.blake2b(raw, digest_size=10).digest()
    return base64.b32encode(digest).decode().lower()


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    """This node's own CURVE keypair and the node id derived from it."""

    public: bytes
    secret: bytes

    @property
    def node_id(self) -> str:
        return node_id_from_public(self.public)

    @classmethod
    def generate(cls) -> NodeIdentity:
        public, secret = zmq.curve_keypair()
        return cls(public, secret)

    @classmethod
    def load_or_create(cls, path: Path) -> NodeIdentity:
        """Load the identity at ``path``, creating it (mode 0600) on first use."""
        try:
            secret = path.read_bytes().strip()
        except FileNotFoundError:
            identity = cls.generate()
            try:
                paths.write_private(path, identity.secret + b"\n")
            except OSError as exc:
                raise ConfigError(
                    f"cannot write node identity {path}: {exc.strerror} (is OVERDRIVE_HOME writable?)"
                ) from exc
            return identity
        except OSError as exc:
            raise ConfigError(f"cannot read node identity {path}: {exc.strerror}") from exc
        if len(secret) != 40:
            raise ConfigError(f"{path} is not a node identity file (delete it to make a new one)")
        if os.name == "posix" and path.stat().st_mode & 0o077:
            raise ConfigError(f"{path} is readable by others; run: chmod 600 {path}")
        return cls(zmq.curve_public(secret), secret)
