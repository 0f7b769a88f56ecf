"""Role keys: signatures, the mesh key file and identity proofs reject everything but the real key holder."""

from __future__ import annotations

from pathlib import Path

import pytest

from overdrive.bus.security import NodeIdentity
from overdrive.bus.signing import (
    MeshKey,
    Signer,
    Verifier,
    check_identity_proof,
    fingerprint,
    identity_proof,
    normalise_fingerprint,
    verify,
)
from overdrive.errors import ConfigError


def test_signature_binds_key_and_data() -> None:
    signer = Signer.generate()
    other = Signer.generate()
    sig = signer.sign(b"lecture frame")
    assert verify(signer.public, sig, b"lecture frame")
    assert Verifier(signer.public).verify(sig, b"lecture frame")
    assert not verify(signer.public, sig, b"lecture framf")
    assert not verify(other.public, sig, b"lecture frame")
    assert not verify(signer.public, sig[:-1], b"lecture frame")
    assert not verify(b"\0" * 5, sig, b"lecture frame")
    assert not Verifier(signer.public).verify(b"\0" * 64, b"lecture frame")


def test_identity_signer_is_stable_and_distinct() -> None:
    a, b = NodeIdentity.generate(), NodeIdentity.generate()
    assert Signer.for_identity(a).public == Signer.for_identity(a).public
    assert Signer.for_identity(a).public != Signer.for_identity(b).public
    assert fingerprint(Signer.for_identity(a).public) == Signer.for_identity(a).fingerprint


def test_fingerprint_parsing() -> None:
    assert normalise_fingerprint(" 3F2A 9C1B-07de:44a0 ") == "3f2a-9c1b-07de-44a0"
    for bad in ("", "3f2a", "3f2a-9c1b-07de-44ag", "3f2a-9c1b-07de-44a0-0000"):
        with pytest.raises(ConfigError):
            normalise_fingerprint(bad)


def test_mesh_key_round_trip_and_bad_files(tmp_path: Path) -> None:
    key = MeshKey.generate("lab")
    key.write(tmp_path / "mesh.key")
    assert (tmp_path / "mesh.key").stat().st_mode & 0o077 == 0
    again = MeshKey.from_file(tmp_path / "mesh.key")
    assert again.network == "lab" and again.signer.public == key.signer.public
    (tmp_path / "bad").write_text('{"kind": "overdrive-network-key", "network": "lab", "seed": "00"}')
    with pytest.raises(ConfigError, match="not an overdrive mesh key"):
        MeshKey.from_file(tmp_path / "bad")
    (tmp_path / "short").write_text('{"kind": "overdrive-mesh-key", "network": "lab", "seed": "00"}')
    with pytest.raises(ConfigError, match="damaged"):
        MeshKey.from_file(tmp_path / "short")
    with pytest.raises(ConfigError, match="cannot read"):
        MeshKey.from_file(tmp_path / "missing")


def test_identity_proof_cannot_be_relayed() -> None:
    holder, fetcher, relay = NodeIdentity.generate(), NodeIdentity.generate(), NodeIdentity.generate()
    proof = identity_proof(holder, fetcher.public, b"holder", b"nonce-1")
    assert check_identity_proof(fetcher, holder.public, b"holder", b"nonce-1", proof)
    assert not check_identity_proof(fetcher, holder.public, b"holder", b"nonce-2", proof)
    assert not check_identity_proof(fetcher, holder.public, b"streamer", b"nonce-1", proof)
    # A proof made for a relay does not convince the fetcher, and a relay cannot make one for the holder.
    relayed = identity_proof(holder, relay.public, b"holder", b"nonce-1")
    assert not check_identity_proof(fetcher, holder.public, b"holder", b"nonce-1", relayed)
    forged = identity_proof(relay, fetcher.public, b"holder", b"nonce-1")
    assert not check_identity_proof(fetcher, holder.public, b"holder", b"nonce-1", forged)
    assert not check_identity_proof(fetcher, b"short", b"holder", b"nonce-1", proof)
