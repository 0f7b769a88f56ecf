"""The error contract of overdrive.errors: peer input raises ProtocolError, a bad setting ConfigError, and local
misuse ValueError/TypeError, so a bug of ours is never mistaken for a peer's bad message."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from overdrive.bus.address import Endpoint
from overdrive.errors import ConfigError, ProtocolError
from overdrive.index.mesh import MasterConfig, Mesh, Peer
from overdrive.index.node import NodeConfig
from overdrive.index.pages import decode_page, encode_page
from overdrive.index.protocol import Ack, SyncDone, Updates
from overdrive.index.records import decode_rows, encode_rows
from overdrive.index.replication import ReplicationConfig
from overdrive.index.stores.memory import MemoryStore
from overdrive.media.streamer import StreamerConfig
from overdrive.media.viewer import ViewerConfig
from overdrive.transfer.serving import ServerConfig
from overdrive.transfer.session import FetchConfig
from overdrive.web.fmp4 import AudioConfig, VideoConfig
from tests import mesh_proofs

PACKAGE = Path(__file__).resolve().parent.parent / "overdrive"
MASTER = (Endpoint("127.0.0.1", 1),)

BAD_CONFIGS: dict[str, list[Callable[[], object]]] = {
    "ReplicationConfig": [
        lambda: ReplicationConfig(tombstone_retention=0),
        lambda: ReplicationConfig(batch=0),
    ],
    "ServerConfig": [
        lambda: ServerConfig(chunk_size=1000),
        lambda: ServerConfig(max_transfers_per_peer=0),
        lambda: ServerConfig(idle_timeout=0),
        lambda: ServerConfig(table_workers=0),
    ],
    "MasterConfig": [lambda: MasterConfig(heartbeat=0), lambda: MasterConfig(master_timeout=0.1)],
    "NodeConfig": [
        lambda: NodeConfig(masters=(), address="x:1"),
        lambda: NodeConfig(masters=MASTER, address="x:1", poll=0),
    ],
    "StreamerConfig": [lambda: StreamerConfig(fps=0), lambda: StreamerConfig(codec="nope")],
    "ViewerConfig": [lambda: ViewerConfig(host="127.0.0.1", connect_timeout=0)],
    "FetchConfig": [
        lambda: FetchConfig(window=0),
        lambda: FetchConfig(max_inflight=0),
        lambda: FetchConfig(max_inflight_bytes=0),
        lambda: FetchConfig(request_timeout=0),
        lambda: FetchConfig(rate_limit=-1),
    ],
}
UNCHECKED_CONFIGS = {"RecordConfig"}
"""Config classes with no value that can be wrong (a folder and a flag)."""
PEER_CONFIGS: dict[str, list[Callable[[], object]]] = {
    "VideoConfig": [lambda: VideoConfig(width=1, height=720, sps=b"", pps=b"", fps=30.0, epoch_ns=0)],
    "AudioConfig": [lambda: AudioConfig(channels=3, epoch_ns=0)],
}
"""The web gateway's track descriptions: built from what the stream says, so a bad value is a ProtocolError."""


@pytest.mark.parametrize(
    "make",
    [pytest.param(make, id=f"{name}-{i}") for name, makes in BAD_CONFIGS.items() for i, make in enumerate(makes)],
)
def test_a_bad_config_value_raises_config_error(make: Callable[[], object]) -> None:
    with pytest.raises(ConfigError):
        make()


@pytest.mark.parametrize(
    "make",
    [pytest.param(make, id=f"{name}-{i}") for name, makes in PEER_CONFIGS.items() for i, make in enumerate(makes)],
)
def test_a_bad_track_from_the_stream_raises_protocol_error(make: Callable[[], object]) -> None:
    with pytest.raises(ProtocolError):
        make()


def test_every_config_class_is_checked_above() -> None:
    found = {m for f in PACKAGE.rglob("*.py") for m in re.findall(r"^class (\w+Config)\b", f.read_text(), re.M)}
    assert found == set(BAD_CONFIGS) | UNCHECKED_CONFIGS | set(PEER_CONFIGS)


GOOD_ROW = ("a.txt", 1, "ab" * 32, "a" * 16, "127.0.0.1:1", 0, "b" * 16, 1, 1, False)


@pytest.mark.parametrize(
    "rows",
    [
        [(*GOOD_ROW[:2], "AB" * 32, *GOOD_ROW[3:])],  # a hash that is not lowercase hex
        [(*GOOD_ROW[:3], "UPPERCASEHOLDER1", *GOOD_ROW[4:])],
        [("../escape", *GOOD_ROW[1:])],
        [("é/../x", *GOOD_ROW[1:])],  # non-ASCII: checked name by name
        [GOOD_ROW[:5]],  # too few fields
    ],
)
def test_malformed_wire_records_raise_protocol_error_not_value_error(rows: list[tuple[object, ...]]) -> None:
    data = msgspec.msgpack.encode(rows)
    with pytest.raises(ProtocolError):
        decode_rows(data)
    with pytest.raises(ProtocolError):
        decode_rows(data[:-1])  # truncated
    assert not issubclass(ProtocolError, ValueError)  # so `except ValueError` can never swallow one, nor the reverse


def test_a_malformed_snapshot_page_raises_protocol_error() -> None:
    good = encode_page([GOOD_ROW])  # type: ignore[list-item]
    for bad in (b"not a database", good[:100], good.replace(b"ab" * 32, b"AB" * 32)):
        with pytest.raises(ProtocolError):
            decode_page(bad)
        with pytest.raises(ProtocolError):
            MemoryStore().apply_page(bad, 0)


PEER = Peer.link("127.0.0.1:7771")


def test_a_master_drops_and_counts_bad_peer_input() -> None:
    mesh = Mesh(MemoryStore(), now=0.0)
    bad_rows = msgspec.msgpack.encode([("../escape", *GOOD_ROW[1:])])
    for message, payload in [
        (Updates(origin="b" * 16), [memoryview(bad_rows)]),
        (SyncDone(ref=7, batches=1, vector={}), []),  # a sync we never asked for
        (Ack(ref=1), []),  # a reply meant for clients
    ]:
        before = mesh.stats.dropped
        mesh.step(PEER, message, payload, 1.0)
        assert mesh.stats.dropped == before + 1, message


def test_a_bug_in_a_master_handler_propagates_and_is_not_counted_as_a_dropped_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mesh = Mesh(MemoryStore(), MasterConfig(mesh_key=mesh_proofs.KEY), now=0.0, node_id="m" * 16)

    def broken(rows: object) -> list[object]:
        raise ValueError("a bug of ours")

    peer = Peer.routed(b"\0b", "d" * 16)
    mesh_proofs.prove_to(mesh, peer, "b" * 16, 0.5)  # only proven masters' updates reach the handler
    mesh.masters["b" * 16] = "127.0.0.1:7771"  # only known masters originate live rows
    monkeypatch.setattr(mesh.replica, "accept", broken)
    with pytest.raises(ValueError, match="a bug of ours"):
        mesh.step(peer, Updates(origin="b" * 16), [memoryview(encode_rows([GOOD_ROW]))], 1.0)  # type: ignore[list-item]
    assert mesh.stats.dropped == 0
