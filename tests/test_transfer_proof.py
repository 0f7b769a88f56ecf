"""Holder proofs: a fetcher uses only a holder that proves to be the node the index names for the copy.

In memory against :class:`ServeCore` (wrong proof, a proof relayed from another fetcher, an Open whose key is not
its connection's, a holder that is not the node the record names), then live on loopback: password holders serving
garbage under an honest record's name and hash, next to the honest holder.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from overdrive.app.fetch import fetch_by_name, find_holders
from overdrive.bus.address import Endpoint
from overdrive.bus.security import NodeIdentity
from overdrive.bus.sockets import Bus
from overdrive.errors import TransferError
from overdrive.files.model import FileInfo, hash_file
from overdrive.files.scanner import FolderScanner
from overdrive.index.client import IndexClient
from overdrive.index.master import Master, MasterConfig
from overdrive.index.stores.memory import MemoryStore
from overdrive.transfer import proof
from overdrive.transfer.fetcher import FetchRequest, fetch
from overdrive.transfer.protocol import CODEC, MIN_CHUNK, Open, Opened, Refused
from overdrive.transfer.server import FileServer
from overdrive.transfer.serving import ServeCore, ServerConfig
from tests.conftest import TestNetwork

NAME = "lecture.bin"
SIZE = 5 * MIN_CHUNK + 77


@pytest.fixture
def core(tmp_path: Path) -> ServeCore:
    folder = tmp_path / "shared"
    folder.mkdir()
    (folder / NAME).write_bytes(os.urandom(SIZE))
    return ServeCore(folder, FolderScanner(folder).scan(), ServerConfig(chunk_size=MIN_CHUNK), NodeIdentity.generate())


def _open(core: ServeCore, connection: NodeIdentity, msg: Open) -> Opened | Refused:
    """What ``core`` answers ``msg`` coming on a connection authenticated as ``connection``."""
    (reply,) = core.handle(connection.node_id, CODEC.encode(msg), now=0.0)
    answer, _ = CODEC.decode(reply)
    assert isinstance(answer, (Opened, Refused)), answer
    return answer


def test_the_holder_proves_to_be_the_node_the_index_names(core: ServeCore) -> None:
    fetcher = NodeIdentity.generate()
    msg = proof.challenge_open(fetcher, 1, NAME, "", 0)
    opened = _open(core, fetcher, msg)
    assert isinstance(opened, Opened)
    assert proof.check(fetcher, opened, msg.challenge, frozenset({core.identity.node_id})) == ""
    assert proof.check(fetcher, opened, msg.challenge, frozenset()) == ""  # --from: any proven identity


def test_a_wrong_proof_is_refused(core: ServeCore) -> None:
    fetcher = NodeIdentity.generate()
    msg = proof.challenge_open(fetcher, 1, NAME, "", 0)
    opened = _open(core, fetcher, msg)
    assert isinstance(opened, Opened)
    holders = frozenset({core.identity.node_id})
    forged = Opened(**{**_fields(opened), "proof": bytes(32)})
    assert "does not check" in proof.check(fetcher, forged, msg.challenge, holders)
    stale = proof.challenge_open(fetcher, 2, NAME, "", 0).challenge  # a proof answers one challenge only
    assert "does not check" in proof.check(fetcher, opened, stale, holders)
    unproven = Opened(**{**_fields(opened), "proof": b"", "holder_key": b""})
    assert "no proof" in proof.check(fetcher, unproven, msg.challenge, holders)


def test_a_proof_relayed_from_another_fetcher_is_refused(core: ServeCore) -> None:
    """A password holder in the middle asks the real holder with the victim's challenge on its own connection, and
    hands the (genuine) answer on: it was made for the relay's key, so it does not check for the victim."""
    victim, relay = NodeIdentity.generate(), NodeIdentity.generate()
    asked = proof.challenge_open(victim, 1, NAME, "", 0)
    relayed = Open(rid=1, name=NAME, content_hash="", challenge=asked.challenge, fetcher_key=proof.raw_key(relay))
    opened = _open(core, relay, relayed)
    assert isinstance(opened, Opened)
    assert proof.check(relay, opened, asked.challenge, frozenset({core.identity.node_id})) == ""
    assert "does not check" in proof.check(victim, opened, asked.challenge, frozenset({core.identity.node_id}))


def test_an_open_whose_key_is_not_its_connections_is_refused(core: ServeCore) -> None:
    """The relay cannot ask with the victim's key either: the holder checks it against the connection."""
    victim, relay = NodeIdentity.generate(), NodeIdentity.generate()
    answer = _open(core, relay, proof.challenge_open(victim, 1, NAME, "", 0))
    assert isinstance(answer, Refused) and answer.reason == "wrong-key"
    assert core.open_transfers == 0
    assert isinstance(_open(core, victim, proof.challenge_open(victim, 2, NAME, "", 0)), Opened)


def test_a_holder_that_is_not_the_node_the_record_names_is_refused(core: ServeCore) -> None:
    fetcher = NodeIdentity.generate()
    msg = proof.challenge_open(fetcher, 1, NAME, "", 0)
    opened = _open(core, fetcher, msg)
    assert isinstance(opened, Opened)
    named = NodeIdentity.generate().node_id
    why = proof.check(fetcher, opened, msg.challenge, frozenset({named}))
    assert why == f"it is node {core.identity.node_id}, and the index names {named}"


def _fields(opened: Opened) -> dict[str, object]:
    return {f: getattr(opened, f) for f in opened.__struct_fields__}


# -- live ------------------------------------------------------------------------------------------------------


def _serve(bus: Bus, folder: Path, catalogue: dict[str, FileInfo]) -> FileServer:
    server = FileServer(bus, folder, Endpoint("127.0.0.1", 0), catalogue, ServerConfig(chunk_size=MIN_CHUNK))
    server.start()
    return server


def test_impostors_serving_garbage_under_an_honest_record_are_dropped(
    network: TestNetwork, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two password holders register the honest file's name and hash under their own node ids and serve garbage
    (more of them than honest holders, so their table is tried first): the fetch drops them at the whole-file hash
    and ends byte-identical from the honest holder."""
    honest_dir = tmp_path / "honest"
    honest_dir.mkdir()
    (honest_dir / NAME).write_bytes(os.urandom(SIZE))
    info = FolderScanner(honest_dir).scan()[NAME]
    master = Master(network.bus(), MemoryStore(), MasterConfig(bind=Endpoint("127.0.0.1", 0)))
    master.start()
    assert master.endpoint is not None
    servers = []
    try:
        honest_bus = network.bus()
        servers.append(_serve(honest_bus, honest_dir, {NAME: info}))
        liars = []
        junk = os.urandom(SIZE)  # the same garbage from both, so their table is the one most holders serve
        for n in range(2):
            folder = tmp_path / f"impostor{n}"
            folder.mkdir()
            garbage = folder / NAME
            garbage.write_bytes(junk)
            # its catalogue claims the honest hash with the garbage's own size and mtime, so it serves it as that
            claim = FileInfo(name=NAME, size=SIZE, content_hash=info.content_hash, mtime_ns=garbage.stat().st_mtime_ns)
            bus = network.bus()
            servers.append(_serve(bus, folder, {NAME: claim}))
            liars.append((bus, claim, servers[-1].endpoint.display))
        with IndexClient(honest_bus, [master.endpoint]) as client:
            client.register([info], servers[0].endpoint.display)
        for bus, claim, address in liars:
            with IndexClient(bus, [master.endpoint]) as client:
                client.register([claim], address)
        fetcher = network.bus()
        deadline = time.monotonic() + 10
        while len(find_holders(fetcher, [master.endpoint], NAME).sources) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        out = tmp_path / "out"
        with caplog.at_level(logging.WARNING, logger="overdrive.transfer"):
            result, _ = fetch_by_name(fetcher, [master.endpoint], NAME, out, register=False)
        assert (out / NAME).read_bytes() == (honest_dir / NAME).read_bytes()
        assert hash_file(out / NAME) == info.content_hash
        assert result.sources == [servers[0].endpoint.display]
        impostors = [r.getMessage() for r in caplog.records if "not the holder it claims to be" in r.getMessage()]
        assert impostors and all(address in impostors[0] for _, _, address in liars), impostors
        assert not (out / f"{NAME}.part").exists()
    finally:
        for server in servers:
            server.stop()
        master.stop()


def test_a_password_holder_cannot_pose_as_the_holder_the_index_names(
    network: TestNetwork, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A server with the password at a holder's address, with the right file even, is not that holder: skipped with
    one warning, and with nobody else the fetch fails with one line naming why."""
    folder = tmp_path / "shared"
    folder.mkdir()
    (folder / NAME).write_bytes(os.urandom(SIZE))
    impostor = _serve(network.bus(), folder, FolderScanner(folder).scan())
    try:
        named = NodeIdentity.generate().node_id
        request = FetchRequest(
            name=NAME,
            sources=(impostor.endpoint,),
            dest_dir=tmp_path / "out",
            holders={impostor.endpoint: frozenset({named})},
        )
        with caplog.at_level(logging.WARNING, logger="overdrive.transfer"), pytest.raises(TransferError) as caught:
            fetch(network.bus(), request)
        assert str(caught.value) == (
            f"no holder of {NAME!r} proved to be the node the index names: {impostor.endpoint.display}: "
            f"it is node {impostor.core.identity.node_id}, and the index names {named}"
        )
        warned = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warned) == 1 and "not the holder it claims to be" in warned[0].getMessage()
        assert not (tmp_path / "out" / NAME).exists()
    finally:
        impostor.stop()
