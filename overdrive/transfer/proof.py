"""Holder proofs: a holder shows a fetcher that it is the node the index names for a copy, not just a password holder.

The network key lets anyone with the password run a file server the fetcher's CURVE handshake accepts, so the
connection alone says nothing about who serves. The fetcher's ``Open`` carries a fresh random challenge and its own
public key; the holder first checks that the key is the one of the connection the Open came on (so nobody can ask a
holder for a proof meant for someone else and pass it on), then answers with its own public key and
:func:`~overdrive.bus.signing.identity_proof` of the challenge, a MAC keyed by the X25519 secret the two identities
share: only the holder of that identity's secret can make it, and it convinces only this fetcher, for this Open.
The fetcher uses the holder only if the key hashes to a node id the index names for that copy (:func:`check`).

No sockets here: the share's :class:`~overdrive.transfer.serving.ServeCore` calls :func:`answer`, the fetcher's
:mod:`~overdrive.transfer.holders` calls :func:`challenge_open` and :func:`check`.
"""

from __future__ import annotations

import secrets

from zmq.utils import z85

from overdrive.bus.security import NodeIdentity, node_id_from_public
from overdrive.bus.signing import check_identity_proof, identity_proof
from overdrive.transfer.protocol import CHALLENGE_SIZE, Open, Opened

CONTEXT = b"overdrive-holder"
"""What a holder proof is for: a proof made for another purpose with the same identities does not check here."""


def raw_key(identity: NodeIdentity) -> bytes:
    """``identity``'s public key as the wire carries it (32 raw bytes, not Z85)."""
    return bytes(z85.decode(identity.public))


def challenge_open(identity: NodeIdentity, rid: int, name: str, content_hash: str, chunk_size: int) -> Open:
    """An Open that asks the holder to prove itself to ``identity`` (the fetcher's), with a fresh challenge."""
    return Open(
        rid=rid,
        name=name,
        content_hash=content_hash,
        chunk_size=chunk_size,
        challenge=secrets.token_bytes(CHALLENGE_SIZE),
        fetcher_key=raw_key(identity),
    )


def key_matches(peer: str, msg: Open) -> bool:
    """Whether the Open's fetcher key is that of ``peer``, the node id of the connection it came on (or it asked for
    no proof, so there is no key to check)."""
    return not msg.fetcher_key or node_id_from_public(msg.fetcher_key) == peer


def answer(identity: NodeIdentity, msg: Open) -> tuple[bytes, bytes]:
    """``Opened.holder_key`` and ``Opened.proof`` proving ``identity`` (the holder's) to the fetcher of ``msg``;
    empty if it asked for no proof. Call only when :func:`key_matches`."""
    if not msg.challenge:
        return b"", b""
    return raw_key(identity), identity_proof(identity, msg.fetcher_key, CONTEXT, msg.challenge)


def check(identity: NodeIdentity, opened: Opened, challenge: bytes, holders: frozenset[str]) -> str:
    """Why ``opened`` does not come from a holder the index names ("" when it does): its key must hash to one of
    ``holders`` (any when empty: an address the user gave, no index) and its proof must answer ``challenge`` to
    ``identity`` (the fetcher's)."""
    if not opened.proof:
        return "it gave no proof of its identity"
    node = node_id_from_public(opened.holder_key)
    if holders and node not in holders:
        return f"it is node {node}, and the index names {', '.join(sorted(holders))}"
    if not check_identity_proof(identity, opened.holder_key, CONTEXT, challenge, opened.proof):
        return f"its proof of being node {node} does not check"
    return ""
