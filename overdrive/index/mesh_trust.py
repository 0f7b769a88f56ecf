"""Masters prove the mesh key to each other before they are masters to each other (sans-IO).

The network password admits every student, so it cannot make anyone a master. The admin makes a mesh key
(``overdrive keygen --mesh``, a :class:`~overdrive.bus.signing.MeshKey`) and gives it to the masters only. Each link
(a dialer's DEALER to a server's ROUTER) starts with a handshake, in both directions over that one connection::

    dialer -> server   MeshHello(origin, nonce_d)
    server -> dialer   MeshProof(origin, nonce_s, sign(transcript("server", ...)))
    dialer -> server   MeshProof(origin, nonce_s, sign(transcript("dialer", ...)))

A transcript (:func:`transcript`) holds a domain label, the role, the network name, both fresh nonces, the dialer's
node id and the signer's origin. The dialer's node id is channel binding: the server takes it from the connection's
ZAP User-Id, the dialer from its own identity, so a student relaying proofs between two honest masters fails both
ways (each honest master sees the student's own node id, never the other master's).

A server knows a dialer as a master by its node id (only that id's secret key holder can open such a connection);
a dialer knows the master behind a link by the link. Until then nothing but the handshake passes on that link or
from that connection: master messages from an unproven connection are dropped and counted (``stats.unproven``),
and a heartbeat is answered ``MeshHello`` (after a restart the server has forgotten the dialer's proof: the dialer
proves itself again). A master without a mesh key runs solo: it refuses every handshake and every master message.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgspec

from overdrive.bus.codec import Message
from overdrive.bus.signing import MeshKey, Verifier
from overdrive.index.membership import MAX_MASTERS
from overdrive.index.protocol import Announce, Lookup, MasterBeat, MeshHello, MeshProof, NodeBeat, StatusQuery

if TYPE_CHECKING:
    from overdrive.index.mesh import Mesh, Peer, Send

log = logging.getLogger(__name__)

DOMAIN = b"overdrive/v1/mesh-proof"
NONCE_SIZE = 32
HELLO_RETRY = 2.0
"""Seconds a dialer waits for the server's proof before it says hello again (with a new nonce); also the least
time between two restarts of one link's handshake when a server asks for one."""
MAX_CHALLENGES = 64
"""Handshakes a server has under way (one per dialer node id); beyond that the oldest is forgotten (its dialer
says hello again)."""
MAX_PROVEN = 2 * MAX_MASTERS
"""Node ids a server knows as proven masters; beyond that the one proven longest ago is forgotten (it proves
itself again when asked)."""
NO_MESH_KEY = (
    "masters need a mesh key to join each other: run `overdrive keygen --mesh FILE` once and pass "
    "--mesh-key FILE to every master"
)
NODE_MESSAGES = (Announce, NodeBeat, Lookup, StatusQuery)
"""What any password holder may send a master; everything else is master traffic."""


def transcript(role: bytes, network: str, dialer_nonce: bytes, server_nonce: bytes, dialer: str, origin: str) -> bytes:
    """What a proof signs: unambiguous (a msgpack array), so no field can be shifted into another."""
    return msgspec.msgpack.encode([DOMAIN, role, network, dialer_nonce, server_nonce, dialer, origin])


@dataclass(slots=True)
class LinkProof:
    """The handshake on one of our links: our nonce, when we said hello, and the origin proven ("" until then)."""

    nonce: bytes
    sent: float
    origin: str = ""


@dataclass(slots=True)
class Challenge:
    """A handshake a dialer started on our ROUTER: its nonce and ours."""

    dialer_nonce: bytes
    server_nonce: bytes


@dataclass(slots=True)
class MeshTrust:
    """Who has proven the mesh key: our links (by address) and connections to our ROUTER (by node id)."""

    key: MeshKey | None
    node_id: str
    """Our own node id: the dialer's part of the channel binding."""
    nonce: Callable[[int], bytes] = os.urandom
    links: dict[str, LinkProof] = field(default_factory=dict)
    challenges: dict[str, Challenge] = field(default_factory=dict)
    proven: dict[str, str] = field(default_factory=dict)
    """Proven dialers: node id -> origin."""
    catch_up: bool = True
    """A master given peers catches up from the first link proven (the Clone pattern: without waiting for a beat)."""
    _verifier: Verifier | None = None

    def __post_init__(self) -> None:
        if self.key is not None:
            self._verifier = Verifier(self.key.signer.public)

    def sign(self, role: bytes, dialer_nonce: bytes, server_nonce: bytes, dialer: str, origin: str) -> bytes:
        assert self.key is not None
        return self.key.signer.sign(transcript(role, self.key.network, dialer_nonce, server_nonce, dialer, origin))

    def check(self, proof: MeshProof, role: bytes, dialer_nonce: bytes, server_nonce: bytes, dialer: str) -> bool:
        if self._verifier is None:
            return False
        data = transcript(role, self.key.network if self.key else "", dialer_nonce, server_nonce, dialer, proof.origin)
        return self._verifier.verify(proof.signature, data)

    def link_origin(self, address: str) -> str:
        """The origin proven on our link to ``address``; "" if none."""
        proof = self.links.get(address)
        return proof.origin if proof else ""

    def may_send(self, send: Send) -> bool:
        """Nothing but the handshake goes out on a link before the master there has proven the mesh key."""
        if send.peer.identity is not None or isinstance(send.message, (MeshHello, MeshProof)):
            return True
        return bool(self.link_origin(send.peer.address))

    def forget_link(self, address: str) -> None:
        self.links.pop(address, None)


def hello(mesh: Mesh, address: str, now: float) -> None:
    """Start (or start again) the handshake on our link to ``address``."""
    nonce = mesh.trust.nonce(NONCE_SIZE)
    mesh.trust.links[address] = LinkProof(nonce, now)
    mesh.send_link(address, MeshHello(origin=mesh.origin, nonce=nonce))


def tend(mesh: Mesh, now: float) -> None:
    """Say hello on every link that has not (or not lately) and is still unproven."""
    if mesh.trust.key is None:
        return
    for address in mesh.links:
        proof = mesh.trust.links.get(address)
        if proof is None or (not proof.origin and now - proof.sent >= HELLO_RETRY):
            hello(mesh, address, now)


def admit(mesh: Mesh, peer: Peer, message: Message, now: float) -> bool:
    """Whether ``message`` from ``peer`` goes on to the mesh's transitions: node messages and the handshake from
    anyone; master messages only from proven masters, and a heartbeat only under the origin its sender proved."""
    trust = mesh.trust
    if isinstance(message, (MeshHello, MeshProof)):
        return True
    if peer.identity is not None:
        if isinstance(message, NODE_MESSAGES):
            return True
        origin = trust.proven.get(peer.node, "")
        if not origin:
            _unproven(mesh, f"{type(message).__name__} from {peer.node or 'a connection'}, not a proven master")
            if trust.key is not None and isinstance(message, MasterBeat):  # a master that proved itself to our
                mesh.send(peer, MeshHello(origin=mesh.origin, nonce=bytes(NONCE_SIZE)))  # previous incarnation
            return False
    else:
        origin = trust.link_origin(peer.address)
        if not origin:
            _unproven(mesh, f"{type(message).__name__} on the unproven link to {peer.address}")
            return False
    if isinstance(message, MasterBeat) and message.origin != origin:
        _unproven(mesh, f"a heartbeat as {message.origin} from the master proven as {origin}")
        return False
    return True


def _unproven(mesh: Mesh, reason: str) -> None:
    mesh.stats.unproven += 1
    mesh.reject(reason)


def hello_received(mesh: Mesh, peer: Peer, message: MeshHello, payload: list[memoryview], now: float) -> None:
    trust = mesh.trust
    if trust.key is None:
        _unproven(mesh, f"a mesh handshake from {peer.node or peer.address}: this master has no mesh key")
        return
    if peer.identity is None:  # the server asks us to prove ourselves again (it restarted, or forgot us)
        proof = trust.links.get(peer.address)
        if proof is not None and now - proof.sent >= HELLO_RETRY:
            hello(mesh, peer.address, now)
        return
    challenges = trust.challenges
    challenges.pop(peer.node, None)
    while len(challenges) >= MAX_CHALLENGES:
        del challenges[next(iter(challenges))]
    server_nonce = trust.nonce(NONCE_SIZE)
    challenges[peer.node] = Challenge(message.nonce, server_nonce)
    signature = trust.sign(b"server", message.nonce, server_nonce, peer.node, mesh.origin)
    mesh.send(peer, MeshProof(origin=mesh.origin, nonce=server_nonce, signature=signature))


def proof_received(mesh: Mesh, peer: Peer, message: MeshProof, payload: list[memoryview], now: float) -> None:
    trust = mesh.trust
    if peer.identity is not None:  # the dialer's proof, answering our challenge
        challenge = trust.challenges.pop(peer.node, None)
        if challenge is None or not trust.check(
            message, b"dialer", challenge.dialer_nonce, challenge.server_nonce, peer.node
        ):
            _unproven(mesh, f"a mesh proof from {peer.node} that does not hold")
            return
        trust.proven.pop(peer.node, None)
        while len(trust.proven) >= MAX_PROVEN:
            del trust.proven[next(iter(trust.proven))]
        trust.proven[peer.node] = message.origin
        log.info("master %s: %s (node %s) proved the mesh key", mesh.origin, message.origin, peer.node)
        return
    link = trust.links.get(peer.address)
    if link is None or link.origin or not trust.check(message, b"server", link.nonce, message.nonce, trust.node_id):
        _unproven(mesh, f"a mesh proof on the link to {peer.address} that does not hold")
        return
    link.origin = message.origin
    signature = trust.sign(b"dialer", link.nonce, message.nonce, trust.node_id, mesh.origin)
    mesh.send_link(peer.address, MeshProof(origin=mesh.origin, nonce=message.nonce, signature=signature))
    if trust.catch_up and mesh.config.peers and not mesh.sync_active(now):
        trust.catch_up = False
        mesh.start_sync(peer.address, "@" + peer.address, now)
