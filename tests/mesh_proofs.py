"""The other end of the mesh-key handshake (:mod:`overdrive.index.mesh_trust`), for tests that drive one Mesh core
in memory and play its peer masters by hand. Real signatures with a real key: nothing is bypassed."""

from __future__ import annotations

import zmq

from overdrive.bus.signing import MeshKey, Verifier
from overdrive.index.mesh import Action, Mesh, Peer, Send
from overdrive.index.mesh_trust import NONCE_SIZE, transcript
from overdrive.index.protocol import CODEC, MeshHello, MeshProof

KEY = MeshKey.generate("overdrive")
"""The mesh key of in-memory tests."""
DIALER_NONCE = b"d" * NONCE_SIZE
SERVER_NONCE = b"s" * NONCE_SIZE


def sign(key: MeshKey, role: bytes, dialer_nonce: bytes, server_nonce: bytes, dialer: str, origin: str) -> bytes:
    return key.signer.sign(transcript(role, key.network, dialer_nonce, server_nonce, dialer, origin))


def server_proof(hello: MeshHello, dialer: str, origin: str, key: MeshKey = KEY) -> MeshProof:
    """The server's answer, as the master ``origin``, to ``hello`` from the dialer with node id ``dialer``."""
    signature = sign(key, b"server", hello.nonce, SERVER_NONCE, dialer, origin)
    return MeshProof(origin=origin, nonce=SERVER_NONCE, signature=signature)


def prove_to(mesh: Mesh, peer: Peer, origin: str, now: float, key: MeshKey = KEY) -> list[Action]:
    """Dial ``mesh`` as the master ``origin`` on connection ``peer`` (its ``node`` the dialer's node id) and prove
    ``key``; returns the mesh's other actions of the meanwhile."""
    mesh.step(peer, MeshHello(origin=origin, nonce=DIALER_NONCE), [], now)
    actions = mesh.outbox(now, serve=False)
    answer = next(a.message for a in actions if isinstance(a, Send) and isinstance(a.message, MeshProof))
    assert isinstance(answer, MeshProof)
    signature = sign(key, b"dialer", DIALER_NONCE, answer.nonce, peer.node, origin)
    mesh.step(peer, MeshProof(origin=origin, nonce=answer.nonce, signature=signature), [], now)
    return [a for a in actions if not (isinstance(a, Send) and isinstance(a.message, MeshProof))]


def answer_link(
    mesh: Mesh, actions: list[Action], address: str, origin: str, now: float, key: MeshKey = KEY
) -> list[Action]:
    """Answer, as the master ``origin`` at ``address``, the hello ``mesh`` sent on its link there (in ``actions``);
    returns ``actions`` without that hello, then what the mesh does next (its own proof first)."""
    hello = next(
        a for a in actions if isinstance(a, Send) and a.peer == Peer.link(address) and isinstance(a.message, MeshHello)
    )
    assert isinstance(hello.message, MeshHello)
    mesh.step(Peer.link(address), server_proof(hello.message, mesh.trust.node_id, origin, key), [], now)
    return [a for a in actions if a is not hello] + mesh.outbox(now, serve=False)


def prove_over(sock: zmq.Socket, node_id: str, origin: str, key: MeshKey, timeout: float = 10.0) -> bool:  # type: ignore[type-arg]
    """Prove ``key`` as the master ``origin`` over a real DEALER connected to a master (``node_id``: the identity
    it connected with); False if the master did not answer with a proof that holds."""
    sock.send_multipart(CODEC.encode(MeshHello(origin=origin, nonce=DIALER_NONCE)))
    if not sock.poll(int(timeout * 1000)):
        return False
    answer, _ = CODEC.decode(sock.recv_multipart())
    if not isinstance(answer, MeshProof):
        return False
    good = Verifier(key.signer.public).verify(
        answer.signature, transcript(b"server", key.network, DIALER_NONCE, answer.nonce, node_id, answer.origin)
    )
    signature = sign(key, b"dialer", DIALER_NONCE, answer.nonce, node_id, origin)
    sock.send_multipart(CODEC.encode(MeshProof(origin=origin, nonce=answer.nonce, signature=signature)))
    return good
