"""A hostile holder's own words in the fetcher's errors: escaped and bounded, never raw on the user's terminal."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest
import zmq

from overdrive.bus.address import Endpoint
from overdrive.bus.codec import PROTOCOL_VERSION, Frame
from overdrive.errors import TransferError
from overdrive.files.scanner import FolderScanner
from overdrive.transfer import proof
from overdrive.transfer.fetcher import FetchRequest, FetchResult, fetch
from overdrive.transfer.holders import SHOWN_DETAIL, failed_reason
from overdrive.transfer.protocol import CODEC, DIGEST_SIZE, MAX_CHUNK, Failed, Open, Opened, Refused, Working
from overdrive.transfer.server import FileServer
from overdrive.transfer.session import FetchConfig
from tests.conftest import TestNetwork

EVIL = "\x1b[2J\x1b]0;pwned\x07\u202e"
HASH = "ab" * 32


def test_a_failed_detail_is_escaped_and_bounded() -> None:
    reason = failed_reason(Failed(tid=1, reason="io-error", detail=EVIL + "y" * 500))
    assert reason.isprintable() and "\\x1b" in reason and "\\u202e" in reason
    assert len(reason) < SHOWN_DETAIL + 40


class OpenAnswerer:
    """A holder that answers every Open with ``answer(rid)`` (raw frames)."""

    def __init__(self, network: TestNetwork, answer: str) -> None:
        self.answer = answer
        bus = self.bus = network.bus()
        self.sock = bus.server(zmq.ROUTER)
        self.endpoint = bus.bind(self.sock, Endpoint("127.0.0.1", 0))
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="open-answerer")
        self.thread.start()

    def frames(self, msg: Open) -> list[Frame]:
        rid = msg.rid
        if self.answer == "working":  # claims a 1 TiB table build, and never answers
            return CODEC.encode(Working(rid=rid, size=1 << 40))
        if self.answer == "too-big":  # the version asked for, 10 TB big
            key, made = proof.answer(self.bus.security.identity, msg)  # a holder the index names, lying about size
            opened = Opened(rid=rid, tid=1, size=10**13, chunk_size=MAX_CHUNK, mtime_ns=1, content_hash=HASH,
                            holder_key=key, proof=made)  # fmt: skip
            return CODEC.encode(opened, bytes(opened.chunks * DIGEST_SIZE))
        if self.answer == "refused":
            return CODEC.encode(Refused(rid=rid, reason="io-error", detail=EVIL + "x" * 400))
        return [msgspec.msgpack.encode((PROTOCOL_VERSION, {"t": EVIL, "rid": rid}))]  # an unknown tag

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.sock.poll(50):
                routing, *frames = self.sock.recv_multipart()
                msg, _ = CODEC.decode(frames)
                if isinstance(msg, Open):
                    self.sock.send_multipart([routing, *self.frames(msg)])

    def close(self) -> None:
        self._stop.set()
        self.thread.join(10)
        self.sock.close(linger=0)


@pytest.fixture(params=["refused", "bad-tag"])
def answerer(request: pytest.FixtureRequest, network: TestNetwork) -> Iterator[OpenAnswerer]:
    holder = OpenAnswerer(network, request.param)
    yield holder
    holder.close()


def test_a_holders_words_in_an_open_error_are_escaped(
    network: TestNetwork, answerer: OpenAnswerer, tmp_path: Path
) -> None:
    request = FetchRequest(name="f.bin", sources=(answerer.endpoint,), dest_dir=tmp_path / "out",
                           config=FetchConfig(request_timeout=30))  # fmt: skip
    with pytest.raises(TransferError) as caught:
        fetch(network.bus(), request)
    message = str(caught.value)
    assert message.isprintable() and "\\x1b" in message, message
    assert "x" * (SHOWN_DETAIL + 1) not in message


def _in_thread(run: Callable[[], FetchResult]) -> FetchResult | Exception:
    """``run()``'s result or error, or a test failure if it is not over within a minute."""
    outcome: list[FetchResult | Exception] = []

    def target() -> None:
        try:
            outcome.append(run())
        except Exception as exc:  # noqa: BLE001 - handed to the test, which checks it
            outcome.append(exc)

    thread = threading.Thread(target=target, name="fetch", daemon=True)
    thread.start()
    thread.join(60)
    if not outcome:
        pytest.fail("the fetch waited on a holder that only says Working")
    return outcome[0]


def test_a_holder_that_only_says_working_does_not_hold_up_the_others(network: TestNetwork, tmp_path: Path) -> None:
    """Working buys a holder time only while no other holder is ready: then it gets the plain open timeout."""
    folder = tmp_path / "shared"
    folder.mkdir()
    (folder / "f.bin").write_bytes(os.urandom(3 << 20))
    stalling = OpenAnswerer(network, "working")
    honest = FileServer(network.bus(), folder, Endpoint("127.0.0.1", 0), FolderScanner(folder).scan())
    honest.start()
    try:
        request = FetchRequest(name="f.bin", sources=(stalling.endpoint, honest.endpoint), dest_dir=tmp_path / "out",
                               config=FetchConfig(request_timeout=5))  # fmt: skip
        result = _in_thread(lambda: fetch(network.bus(), request))
    finally:
        stalling.close()
        honest.stop()
    assert isinstance(result, FetchResult), result
    assert result.sources == [honest.endpoint.display]
    assert (tmp_path / "out" / "f.bin").read_bytes() == (folder / "f.bin").read_bytes()


def test_a_working_claim_counts_for_no_more_than_the_indexed_size(network: TestNetwork, tmp_path: Path) -> None:
    """A sole holder claiming a 1 TiB table build for a file the index says is 1 MB is given up after
    --timeout plus what 1 MB takes, not after an hour."""
    stalling = OpenAnswerer(network, "working")
    try:
        request = FetchRequest(name="f.bin", sources=(stalling.endpoint,), dest_dir=tmp_path / "out", size=1_000_000,
                               config=FetchConfig(request_timeout=1))  # fmt: skip
        result = _in_thread(lambda: fetch(network.bus(), request))
    finally:
        stalling.close()
    assert isinstance(result, TransferError) and "still building the file's chunk table" in str(result), result


def test_a_holder_claiming_another_size_than_the_index_is_not_used(network: TestNetwork, tmp_path: Path) -> None:
    """One content hash has one size: a holder that opens the indexed version with a size of its own is lying, and
    is given up with that reason (not with a disk-space error about its claim)."""
    lying = OpenAnswerer(network, "too-big")
    try:
        request = FetchRequest(name="f.bin", sources=(lying.endpoint,), dest_dir=tmp_path / "out", size=1_000_000,
                               content_hash=HASH, config=FetchConfig(request_timeout=30))  # fmt: skip
        with pytest.raises(TransferError, match="says the file is 10,000,000,000,000 bytes, the index 1,000,000"):
            fetch(network.bus(), request)
    finally:
        lying.close()
    assert not (tmp_path / "out").exists()
