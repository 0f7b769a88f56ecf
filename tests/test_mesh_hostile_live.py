"""A hostile master holding the mesh key (a master's stolen laptop) on loopback, against a real Master: it proves
the key both ways, answers the master's link as a master, gossips 500 made-up masters and sends live rows from
10,001 made-up origins. The master dials a bounded few, knows only what answered, and its status still decodes.
The hostile stops by itself after a few seconds."""

from __future__ import annotations

import time

import zmq

from overdrive.bus.address import Endpoint
from overdrive.index.client import IndexClient
from overdrive.index.master import Master, MasterConfig
from overdrive.index.membership import MAX_CANDIDATES_PER_PEER
from overdrive.index.protocol import CODEC, VECTOR_LIMIT, MasterBeat, MeshHello, Updates
from overdrive.index.records import encode_rows
from overdrive.index.stores.memory import MemoryStore
from tests.conftest import TestNetwork
from tests.mesh_proofs import prove_over, server_proof
from tests.test_mesh_bounds import made_up

HOSTILE = "hostilehostileaa"


def test_a_hostile_master_cannot_poison_a_real_one(network: TestNetwork) -> None:
    config = MasterConfig(bind=Endpoint("127.0.0.1", 0), heartbeat=0.2, mesh_key=network.mesh_key)
    master = Master(network.bus(), MemoryStore(), config)
    master.start()
    bus = network.bus()
    listener = bus.server(zmq.ROUTER)
    dealer = bus.client(zmq.DEALER)
    try:
        at = bus.bind(listener, Endpoint("127.0.0.1", 0)).display
        assert master.endpoint is not None
        bus.connect(dealer, master.endpoint)
        assert prove_over(dealer, bus.node_id, HOSTILE, network.mesh_key)
        fakes = {made_up(i): f"127.0.0.1:{60000 + i}" for i in range(500)}
        beat = CODEC.encode(MasterBeat(origin=HOSTILE, address=at, vector={}, masters={HOSTILE: at, **fakes}, nodes=[]))
        rows = [
            (f"f{i}", 1, "ab" * 32, "nodeaaaaaaaaaaaa", "10.9.9.9:7772", 1, made_up(i), 1, 1 << 50, False)
            for i in range(VECTOR_LIMIT + 1)
        ]
        flood = CODEC.encode(Updates(origin=HOSTILE), encode_rows(rows))
        most_links = 0
        answered = 0
        end = time.monotonic() + 4.0
        next_beat = 0.0
        while time.monotonic() < end:
            now = time.monotonic()
            if now >= next_beat:
                next_beat = now + 0.2
                dealer.send_multipart(beat)
            if answered == 3:
                dealer.send_multipart(flood)
                answered += 1
            while listener.poll(20):  # the master's link to our address: answer as a master
                identity, *frames = listener.recv_multipart()
                message, _ = CODEC.decode(frames)
                if isinstance(message, MeshHello):
                    proof = server_proof(message, master.mesh.trust.node_id, HOSTILE, network.mesh_key)
                    listener.send_multipart([identity, *CODEC.encode(proof)])
                if isinstance(message, MasterBeat):
                    listener.send_multipart([identity, *beat])
                    answered += 1
            most_links = max(most_links, len(master.mesh.links))
        assert answered > 3, "the master dialled us and heard our answers"
        assert set(master.masters) == {master.origin, HOSTILE}, "only what answered is known"
        assert most_links <= 1 + MAX_CANDIDATES_PER_PEER
        assert master.stats.foreign_rows == VECTOR_LIMIT + 1
        with IndexClient(bus, [master.endpoint], timeout=3.0) as client:
            status = client.status()
        assert set(status.masters) == {master.origin, HOSTILE} and len(status.vector) <= 2
        assert master.running
    finally:
        dealer.close(linger=0)
        listener.close(linger=0)
        master.stop()
