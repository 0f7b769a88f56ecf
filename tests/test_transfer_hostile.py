"""A hostile holder's own words in the fetcher's errors: escaped and bounded, never raw on the user's terminal."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import zmq

from overdrive.bus.address import Endpoint
from overdrive.bus.codec import PROTOCOL_VERSION, Frame
from overdrive.errors import TransferError
from overdrive.transfer.fetcher import SHOWN_DETAIL, FetchRequest, failed_reason, fetch
from overdrive.transfer.protocol import CODEC, Failed, Open, Refused
from overdrive.transfer.session import FetchConfig
from tests.conftest import TestNetwork

EVIL = "\x1b[2J\x1b]0;pwned\x07\u202e"


def test_a_failed_detail_is_escaped_and_bounded() -> None:
    reason = failed_reason(Failed(tid=1, reason="io-error", detail=EVIL + "y" * 500))
    assert reason.isprintable() and "\\x1b" in reason and "\\u202e" in reason
    assert len(reason) < SHOWN_DETAIL + 40


class OpenAnswerer:
    """A holder that answers every Open with ``answer(rid)`` (raw frames)."""

    def __init__(self, network: TestNetwork, answer: str) -> None:
        self.answer = answer
        bus = network.bus()
        self.sock = bus.server(zmq.ROUTER)
        self.endpoint = bus.bind(self.sock, Endpoint("127.0.0.1", 0))
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="open-answerer")
        self.thread.start()

    def frames(self, rid: int) -> list[Frame]:
        if self.answer == "refused":
            return CODEC.encode(Refused(rid=rid, reason="io-error", detail=EVIL + "x" * 400))
        return [msgspec.msgpack.encode((PROTOCOL_VERSION, {"t": EVIL, "rid": rid}))]  # an unknown tag

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.sock.poll(50):
                routing, *frames = self.sock.recv_multipart()
                msg, _ = CODEC.decode(frames)
                if isinstance(msg, Open):
                    self.sock.send_multipart([routing, *self.frames(msg.rid)])

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
