"""The transfer protocol in memory: ServeCore and FetchSession talking through the codec, no sockets."""

from __future__ import annotations

import errno
import logging
import os
import tracemalloc
from pathlib import Path

import blake3
import pytest

from overdrive.bus.codec import Codec, Message
from overdrive.bus.kind import WrongService
from overdrive.errors import TransferError
from overdrive.files import names
from overdrive.files.model import FileInfo
from overdrive.files.scanner import FolderScanner
from overdrive.transfer.holders import failed_reason, stall_error
from overdrive.transfer.partial import PartialFile
from overdrive.transfer.protocol import (
    CODEC,
    DIGEST_SIZE,
    MAX_CHUNK,
    MAX_CHUNKS,
    MIN_CHUNK,
    Chunk,
    Close,
    Failed,
    Open,
    Opened,
    Read,
    Refused,
    Working,
)
from overdrive.transfer.serving import ServeCore, ServerConfig
from overdrive.transfer.session import (
    MAX_INFLIGHT,
    MAX_INFLIGHT_BYTES,
    MAX_WINDOW,
    FetchConfig,
    FetchSession,
    Plan,
)

CHUNK = MIN_CHUNK


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "shared"
    root.mkdir()
    (root / "data.bin").write_bytes(os.urandom(10 * CHUNK + 123))
    (root / "empty.bin").write_bytes(b"")
    return root


def _core(folder: Path, **config: int) -> tuple[ServeCore, dict[str, FileInfo]]:
    catalogue = FolderScanner(folder).scan()
    return ServeCore(folder, catalogue, ServerConfig(chunk_size=CHUNK, **config)), catalogue  # type: ignore[arg-type]


def _ask(core: ServeCore, peer: str, msg: Message, *payload: bytes) -> tuple[Message, list[memoryview]]:
    replies = core.handle(peer, CODEC.encode(msg, *payload), now=0.0)  # type: ignore[arg-type]
    assert len(replies) == 1
    return CODEC.decode(replies[0])


def _open(
    core: ServeCore, catalogue: dict[str, FileInfo], name: str = "data.bin", peer: str = "p"
) -> tuple[Opened, Plan]:
    entry = catalogue.get(name)
    assert entry is not None
    reply, payload = _ask(core, peer, Open(rid=1, name=name, content_hash=entry.content_hash))
    assert isinstance(reply, Opened), reply
    return reply, Plan.from_opened(reply, payload[0])


def _pump(
    core: ServeCore,
    session: FetchSession,
    tids: dict[str, int],
    store: bytearray,
    outstanding: list[tuple[str, int]] | None = None,
) -> None:
    """Run the session against ``core`` until it finishes or stalls; every source is the same core."""
    now = 0.0
    while not session.finished and not session.stalled:
        requests = (outstanding or []) + session.requests(now)
        outstanding = None
        assert requests, "session asked for nothing but is not finished"
        for source, index in requests:
            (frames,) = core.handle("p", CODEC.encode(Read(tid=tids[source], index=index)), now)
            reply, payload = CODEC.decode(frames)
            if isinstance(reply, Chunk) and session.received(source, reply.index, payload[0]):
                offset = reply.index * session.plan.chunk_size
                store[offset : offset + len(payload[0])] = payload[0]
                session.written(reply.index)
            elif isinstance(reply, Failed):
                session.fail(source, reply.reason)


def test_open_read_close_round_trip(folder: Path) -> None:
    core, catalogue = _core(folder)
    opened, plan = _open(core, catalogue)
    data = (folder / "data.bin").read_bytes()
    assert opened.size == len(data) and plan.chunks == 11 and opened.content_hash == blake3.blake3(data).hexdigest()
    store = bytearray(opened.size)
    session = FetchSession(plan, ["p"], config=FetchConfig(window=3))
    _pump(core, session, {"p": opened.tid}, store)
    assert bytes(store) == data
    assert core.stats.chunks_sent == 11 and core.stats.bytes_sent == len(data)
    assert core.handle("p", CODEC.encode(Close(tid=opened.tid)), 0.0) == []
    assert core.open_transfers == 0 and core.stats.closed == 1


def test_empty_file(folder: Path) -> None:
    core, catalogue = _core(folder)
    _, plan = _open(core, catalogue, "empty.bin")
    session = FetchSession(plan, ["p"])
    assert session.finished and session.requests(0.0) == []


def test_window_is_the_credit(folder: Path) -> None:
    core, catalogue = _core(folder)
    _, plan = _open(core, catalogue)
    session = FetchSession(plan, ["a", "b"], config=FetchConfig(window=2))
    first = session.requests(0.0)
    assert len(first) == 4 and {s for s, _ in first} == {"a", "b"}
    assert session.requests(0.0) == []  # no credit left until a chunk arrives
    source, index = first[0]
    offset, length = plan.chunk_range(index)
    data = (folder / "data.bin").read_bytes()[offset : offset + length]
    assert session.received(source, index, data)
    session.written(index)
    assert session.requests(0.0) == [(source, 4)]


def test_total_inflight_is_capped_over_many_sources(tmp_path: Path) -> None:
    root = tmp_path / "many"
    root.mkdir()
    (root / "f.bin").write_bytes(os.urandom(200 * CHUNK))
    core, catalogue = _core(root)
    _, plan = _open(core, catalogue, "f.bin")
    sources = [f"s{i}" for i in range(10)]
    session = FetchSession(plan, sources, config=FetchConfig(window=16, max_inflight=MAX_WINDOW))
    first = session.requests(0.0)
    assert len(first) == MAX_WINDOW and len({s for s, _ in first}) == 10  # spread over all, capped in total
    assert len(FetchSession(plan, sources, config=FetchConfig(window=16)).requests(0.0)) == MAX_INFLIGHT
    session.fail("s0", "gone")
    assert len(session.requests(0.0)) == sum(1 for s, _ in first if s == "s0")  # freed credit is reused


def test_failed_source_chunks_go_to_the_others(folder: Path) -> None:
    core, catalogue = _core(folder)
    opened, plan = _open(core, catalogue)
    session = FetchSession(plan, ["a", "b"], config=FetchConfig(window=4))
    sent = session.requests(0.0)
    lost = sorted(i for s, i in sent if s == "a")
    session.fail("a", "disconnected")
    assert session.stats.reassigned == len(lost)
    store = bytearray(opened.size)
    _pump(core, session, {"a": opened.tid, "b": opened.tid}, store, [r for r in sent if r[0] == "b"])
    assert bytes(store) == (folder / "data.bin").read_bytes()
    assert session.received_by("a") == 0 and session.received_by("b") == plan.chunks


def test_timeouts_fail_a_silent_source(folder: Path) -> None:
    core, catalogue = _core(folder)
    _, plan = _open(core, catalogue)
    session = FetchSession(plan, ["a", "b"], config=FetchConfig(window=2, request_timeout=5))
    session.requests(0.0)
    assert session.check_timeouts(4.0) == []
    assert sorted(session.check_timeouts(6.0)) == ["a", "b"]
    assert session.stalled and "no answer" in session.failures["a"]


def test_wrong_chunk_is_rejected_and_the_source_dropped(folder: Path) -> None:
    core, catalogue = _core(folder)
    _, plan = _open(core, catalogue)
    session = FetchSession(plan, ["a", "b"], config=FetchConfig(window=1))
    (src, index), (other, other_index) = session.requests(0.0)
    assert not session.received(src, index, b"\0" * plan.chunk_range(index)[1])
    assert session.stats.rejected == 1 and "does not match" in session.failures[src]
    assert not session.received(other, 99, b"x") and session.stats.unexpected == 1  # never asked for
    offset, length = plan.chunk_range(other_index)
    assert session.received(other, other_index, (folder / "data.bin").read_bytes()[offset : offset + length])
    session.written(other_index)
    assert session.requests(0.0) == [(other, index)]  # the rejected chunk is asked again elsewhere


def test_resume_asks_only_for_missing_chunks(folder: Path) -> None:
    core, catalogue = _core(folder)
    _, plan = _open(core, catalogue)
    session = FetchSession(plan, ["a"], done=range(0, 8), config=FetchConfig(window=16))
    assert sorted(i for _, i in session.requests(0.0)) == [8, 9, 10]


def test_rate_limit_spaces_requests(folder: Path) -> None:
    core, catalogue = _core(folder)
    _, plan = _open(core, catalogue)
    session = FetchSession(plan, ["a"], config=FetchConfig(window=32, rate_limit=CHUNK))  # one chunk per second
    assert len(session.requests(0.0)) == 1
    assert session.requests(0.5) == []
    assert len(session.requests(1.01)) == 1


def test_refusals(folder: Path) -> None:
    core, catalogue = _core(folder, max_transfers_per_peer=2, max_transfers=4)
    entry = catalogue.get("data.bin")
    assert entry is not None
    h = entry.content_hash
    cases = [
        (Open(rid=1, name="missing.bin", content_hash=h), "not-found"),
        (Open(rid=2, name="data.bin", content_hash="0" * 64), "changed"),
        (Open(rid=3, name="../data.bin", content_hash=h), "unsafe"),
    ]
    for msg, reason in cases:
        reply, _ = _ask(core, "p", msg)
        assert isinstance(reply, Refused) and reply.reason == reason, reply
    _open(core, catalogue, peer="p")
    _open(core, catalogue, peer="p")
    reply, _ = _ask(core, "p", Open(rid=9, name="data.bin", content_hash=h))
    assert isinstance(reply, Refused) and reply.reason == "busy"
    _open(core, catalogue, peer="q")  # another peer has its own allowance


def test_catalogue_entry_without_matching_file_is_refused(folder: Path) -> None:
    core, catalogue = _core(folder)
    catalogue["ghost.bin"] = FileInfo(name="ghost.bin", size=5, content_hash="a" * 64, mtime_ns=0)
    catalogue["data.bin"] = FileInfo(name="data.bin", size=1, content_hash="b" * 64, mtime_ns=0)  # stale size/hash
    for name, content_hash in (("ghost.bin", "a" * 64), ("data.bin", "b" * 64)):
        reply, _ = _ask(core, "p", Open(rid=1, name=name, content_hash=content_hash))
        assert isinstance(reply, Refused) and reply.reason in ("not-found", "changed"), reply


def test_a_file_the_holder_cannot_read_is_an_io_error_not_missing(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """chmod 000 on a shared file (EACCES; faked, as tests may run as root) was refused as 'not-found', and the
    fetcher said the file was not on a holder that lists it."""
    core, catalogue = _core(folder)
    entry = catalogue.get("data.bin")
    assert entry is not None

    def unreadable(shared: Path, name: str) -> tuple[int, os.stat_result]:
        exc = PermissionError(errno.EACCES, "Permission denied")
        raise names._open_error(name, exc) from exc

    monkeypatch.setattr(names, "open_shared", unreadable)
    reply, _ = _ask(core, "p", Open(rid=1, name="data.bin", content_hash=entry.content_hash))
    assert isinstance(reply, Refused) and reply.reason == "io-error" and "Permission denied" in reply.detail, reply


def test_file_changed_while_served(folder: Path) -> None:
    core, catalogue = _core(folder)
    opened, _ = _open(core, catalogue)
    with (folder / "data.bin").open("r+b") as fh:
        fh.write(b"tampered")
    reply, _ = _ask(core, "p", Read(tid=opened.tid, index=3))
    assert isinstance(reply, Failed) and reply.reason == "changed"
    assert core.stats.changed == 1 and core.open_transfers == 0


def test_reads_are_bound_to_their_peer_and_range(folder: Path) -> None:
    core, catalogue = _core(folder)
    opened, _ = _open(core, catalogue, peer="alice")
    reply, _ = _ask(core, "mallory", Read(tid=opened.tid, index=0))
    assert isinstance(reply, Failed) and reply.reason == "unknown-transfer"
    reply, _ = _ask(core, "alice", Read(tid=opened.tid, index=11))
    assert isinstance(reply, Failed) and reply.reason == "bad-index"
    reply, _ = _ask(core, "alice", Read(tid=opened.tid + 1, index=0))
    assert isinstance(reply, Failed) and reply.reason == "unknown-transfer"


class Junk(Message, tag="junk", frozen=True):
    x: int


@pytest.mark.parametrize(
    "frames",
    [
        [b""],
        [b"\xff\xff\xff"],
        [b"\x92\x01\x81\xa1t\xa4read"],  # read without fields
        [CODEC.encode(Read(tid=1, index=0))[0], b"extra payload"],
        CODEC.encode(Chunk(tid=1, index=0), b"server does not take chunks"),
        [b"\x92\x02\xc0"],  # wrong protocol version
    ],
)
def test_malformed_requests_are_dropped_and_counted(folder: Path, frames: list[bytes]) -> None:
    core, _ = _core(folder)
    assert core.handle("p", frames, 0.0) == []
    assert core.stats.malformed == 1


def test_a_message_of_another_protocol_is_counted_and_answered_once_with_what_this_is(folder: Path) -> None:
    core, _ = _core(folder)
    replies = core.handle("p", Codec(Junk).encode(Junk(x=1)), 0.0)
    assert [CODEC.decode(r)[0] for r in replies] == [WrongService(kind="share")]
    assert core.stats.malformed == 1


def test_idle_transfers_expire(folder: Path) -> None:
    core, catalogue = _core(folder)
    _open(core, catalogue)
    core.expire(10.0)
    assert core.open_transfers == 1
    core.expire(1000.0)
    assert core.open_transfers == 0 and core.stats.expired == 1


def test_plan_rejects_a_short_checksum_table() -> None:
    opened = Opened(rid=1, tid=1, size=3 * CHUNK, chunk_size=CHUNK, mtime_ns=0, content_hash="a" * 64)
    for size in (2 * DIGEST_SIZE, 4 * DIGEST_SIZE, 3 * 32):  # short, long, an older version's 32-byte digests
        with pytest.raises(TransferError, match="checksum"):
            Plan.from_opened(opened, b"\0" * size)
    assert Plan.from_opened(opened, b"\0" * (3 * DIGEST_SIZE)).chunks == 3


def test_working_notice_before_building_a_big_files_table(folder: Path) -> None:
    """A file at least ``working_notice`` big gets Working (with its size) before its chunk table is built, the
    first time only: a cached table is answered at once."""
    core, catalogue = _core(folder, working_notice=CHUNK)
    entry = catalogue.get("data.bin")
    assert entry is not None
    for rid in (1, 2):
        replies = [
            CODEC.decode(r)[0]
            for r in core.handle("p", CODEC.encode(Open(rid=rid, name="data.bin", content_hash="")), 0.0)
        ]
        kinds = [type(r) for r in replies]
        if rid == 1:
            assert kinds == [Working, Opened] and replies[0] == Working(rid=1, size=entry.size), replies
        else:
            assert kinds == [Opened], replies
    small, _ = _core(folder)  # default notice size: small files get no notice
    (reply,) = small.handle("p", CODEC.encode(Open(rid=1, name="data.bin", content_hash="")), 0.0)
    assert isinstance(CODEC.decode(reply)[0], Opened)


def test_a_state_file_that_cannot_be_saved_leaves_no_temp_file_and_no_warning(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Disk full while saving NAME.part.state: the empty NAME.part.state.tmp is removed, the earlier state stays
    (resume still works), and nothing is logged on top of the fetch's own one-line disk-full error."""
    core, catalogue = _core(folder)
    _, plan = _open(core, catalogue)
    partial = PartialFile(tmp_path / "data.bin", "data.bin")
    partial.open(plan)
    partial.save_state([(0, 2)], force=True)
    saved = partial.state_path.read_bytes()

    def full_disk(path: Path, data: bytes) -> int:
        path.touch()  # the file is created, then the write fails
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    with caplog.at_level(logging.INFO):
        partial.save_state([(0, 3)], force=True)
    partial.close()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("data.bin")) == [
        "data.bin.part",
        "data.bin.part.state",
    ]
    assert partial.state_path.read_bytes() == saved
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_a_fresh_partial_file_has_its_state_file_from_the_start(folder: Path, tmp_path: Path) -> None:
    """A disk that fills before the first periodic state save must not lose the chunks on disk: the next run
    finds the state (version, size, chunking) and re-checks every range of NAME.part that holds data."""
    core, catalogue = _core(folder)
    _, plan = _open(core, catalogue)
    partial = PartialFile(tmp_path / "data.bin", "data.bin")
    assert partial.open(plan) == []
    state = partial.saved_state()
    assert state is not None and state.content_hash == plan.content_hash and state.done == []
    data = (folder / "data.bin").read_bytes()
    with partial.part.open("r+b") as fh:  # two chunks written, never recorded
        fh.write(data[: 2 * CHUNK])
    partial.close()
    again = PartialFile(tmp_path / "data.bin", "data.bin")
    assert again.open(plan) == [0, 1]
    again.close()


def test_a_changed_file_is_one_sentence_naming_the_file_and_holder(folder: Path) -> None:
    core, catalogue = _core(folder)
    _, plan = _open(core, catalogue)
    session = FetchSession(plan, ["10.0.0.7:7772", "10.0.0.8:7772"])
    session.fail("10.0.0.7:7772", failed_reason(Failed(tid=1, reason="changed", detail="'data.bin' changed")))
    session.fail("10.0.0.8:7772", "disconnected")
    message = str(stall_error(session, "data.bin"))
    assert message.startswith("'data.bin' changed on its holder 10.0.0.7:7772 while it was being fetched (and ")
    assert message.count("changed") == 1 and "10.0.0.8:7772: disconnected" in message, message


def test_a_huge_claimed_file_costs_one_byte_per_chunk_and_bounded_requests() -> None:
    """A holder's Open reply decides the chunk count and size: the session's bookkeeping for 1M chunks stays
    small (no list of every index), and with 16 MiB chunks only MAX_INFLIGHT_BYTES are asked for at once."""
    plan = Plan(MAX_CHUNKS * MAX_CHUNK, MAX_CHUNK, "ab" * 32, bytes(DIGEST_SIZE) * MAX_CHUNKS)
    tracemalloc.start()
    try:
        session = FetchSession(plan, ["a", "b"], config=FetchConfig(window=MAX_WINDOW, max_inflight=MAX_WINDOW))
        asked = session.requests(0.0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"{peak} bytes for the session of a 1M-chunk file"
    assert len(asked) * MAX_CHUNK <= MAX_INFLIGHT_BYTES and asked == [("a", 0)]


def test_done_ranges_and_requeued_chunks(folder: Path) -> None:
    core, catalogue = _core(folder)
    _, plan = _open(core, catalogue)  # 11 chunks
    session = FetchSession(plan, ["a"], done=[0, 1, 5], config=FetchConfig(window=3))
    assert session.done_ranges() == [(0, 2), (5, 6)]
    assert [i for _, i in session.requests(0.0)] == [2, 3, 4]
    session.fail("a", "gone")
    assert session.stalled and session.done_ranges() == [(0, 2), (5, 6)]
    again = FetchSession(plan, ["a", "b"], done=[0, 1, 5], config=FetchConfig(window=2))
    asked = again.requests(0.0)
    assert sorted(i for _, i in asked) == [2, 3, 4, 6]
    of_a = [i for source, i in asked if source == "a"]
    of_b = [i for source, i in asked if source == "b"]
    again.fail("a", "gone")
    data = (folder / "data.bin").read_bytes()

    def deliver(*indices: int) -> None:
        for index in indices:
            offset, length = plan.chunk_range(index)
            assert again.received("b", index, data[offset : offset + length])
            again.written(index)

    deliver(*of_b)
    assert [i for _, i in again.requests(0.0)] == sorted(of_a)  # a's chunks go back to b first, lowest first
    deliver(*of_a)
    assert [i for _, i in again.requests(0.0)] == [7, 8]
    assert again.done_ranges() == [(0, 7)]
