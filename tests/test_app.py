"""The composition layer as a program uses it: a sharing node, and a fetch by name through the index."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest

from overdrive.app.fetch import fetch_by_name, find_holders
from overdrive.app.share import SharingNode
from overdrive.bus.address import Endpoint
from overdrive.files.model import hash_file
from overdrive.files.scanner import FolderScanner
from overdrive.index.client import IndexClient
from overdrive.index.master import Master, MasterConfig
from overdrive.index.stores.memory import MemoryStore
from tests.conftest import TestNetwork


def test_a_program_shares_a_folder_and_fetches_by_name_without_signal_handlers(
    network: TestNetwork, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, out = tmp_path / "shared", tmp_path / "out"
    (folder / "docs").mkdir(parents=True)
    (folder / "docs" / "a.bin").write_bytes(b"overdrive " * 10_000)
    out.mkdir()
    master = Master(network.bus(), MemoryStore(), MasterConfig(bind=Endpoint("127.0.0.1", 0)))
    master.start()
    assert master.endpoint is not None
    scanner = FolderScanner(folder, cache_file=tmp_path / "cache.msgpack")
    scanner.scan()
    share = SharingNode(network.bus(), scanner, (master.endpoint,), Endpoint("127.0.0.1", 0), watch=False)
    installed: list[Any] = []
    real_signal = signal.signal
    try:
        share.start()
        assert share.node is not None and share.node.registered.wait(10)
        holders = find_holders(network.bus(), [master.endpoint], "docs/a.bin")
        assert holders.name == "docs/a.bin" and holders.versions == 1
        assert holders.sources == (share.bound,) and holders.content_hash == hash_file(folder / "docs" / "a.bin")
        monkeypatch.setattr(signal, "signal", lambda *a: installed.append(a) or real_signal(*a))
        result, registered = fetch_by_name(network.bus(), [master.endpoint], "docs/a.bin", out, advertise="127.0.0.1:9")
        assert installed == [], "a library fetch must leave signal handling to the program"
        assert (out / "docs" / "a.bin").read_bytes() == (folder / "docs" / "a.bin").read_bytes()
        assert result.hash == holders.content_hash
        assert registered is not None and registered.outcome == "registered", registered
        with IndexClient(network.bus(), [master.endpoint]) as client:
            deadline = time.monotonic() + 10
            while len(client.lookup("docs/a.bin")) < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert {e.address for e in client.lookup("docs/a.bin")} == {share.address, "127.0.0.1:9"}
    finally:
        share.stop()
        master.stop()
