"""In-memory replication: records, clock, and many masters converging under loss, duplication and reordering."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from overdrive.errors import ProtocolError
from overdrive.files.model import FileInfo
from overdrive.files.names import check_wire_name as check_name
from overdrive.index.hlc import HybridClock, physical_ms
from overdrive.index.records import (
    Record,
    RecordRow,
    decode_rows,
    encode_rows,
    names_need_a_closer_look,
)
from overdrive.index.replication import Replica, ReplicationConfig
from overdrive.index.stores.memory import MemoryStore

HASH = "ab" * 32
HOLDERS = ["node" + c * 12 for c in "abcd"]


def make_record(**kw: object) -> Record:
    base: dict[str, object] = dict(
        name="a/b.txt",
        size=1,
        content_hash=HASH,
        holder=HOLDERS[0],
        address="127.0.0.1:7772",
        mtime_ns=1,
        origin="orig" + "a" * 12,
        seq=1,
        hlc=5,
    )
    base.update(kw)
    return Record(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "name", ["../x", "/abs", "a//b", "a/./b", "a/../b", "x/..", "a/", "nul\x00", "back\\slash", "", "é" * 2049]
)
def test_bad_names_are_refused_on_construction_and_decode(name: str) -> None:
    with pytest.raises((ValueError, msgspec.ValidationError)):
        make_record(name=name)
    good = msgspec.structs.astuple(make_record())
    with pytest.raises(ProtocolError):
        decode_rows(msgspec.msgpack.encode([good, (name, *good[1:])]))


_NAME_PARTS = st.sampled_from(["a", "b.txt", ".", "..", "", "/", "\\", "\x00", "\n", ".x", "x.", "é", " "])


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(_NAME_PARTS, max_size=6).map("".join), min_size=1, max_size=5))
def test_the_batch_name_screen_never_passes_a_bad_name(names: list[str]) -> None:
    # pages and msgpack batches check each name exactly only when this screen of the joined names says so
    bad = []
    for name in names:
        try:
            check_name(name)
        except ValueError:
            bad.append(name)
    if bad:
        assert names_need_a_closer_look("\n" + "\n".join(names) + "\n"), bad


def test_the_batch_name_screen_lets_plain_names_through() -> None:
    names = ["lectures/course 5/recording 12.mp4", "a.b/c..d/.hidden/x.", "notes.txt"]
    assert not names_need_a_closer_look("\n" + "\n".join(names) + "\n")


def test_good_names_in_many_scripts_survive_a_round_trip() -> None:
    names = ["lectures/week 1.mp4", "日本語/ファイル.txt", "ü ñ/é…/deep/er/still deeper/x", ".hidden", "a..b/c"]
    rows = [msgspec.structs.astuple(make_record(name=n, seq=i + 1)) for i, n in enumerate(names)]
    assert [r[0] for r in decode_rows(encode_rows(rows))] == names
    for n in names:
        assert check_name(n) == n


@pytest.mark.parametrize(
    "field_name, value",
    [("content_hash", "AB" * 32), ("content_hash", "ab"), ("holder", "UPPERCASEHOLDER1"), ("origin", "short")],
)
def test_bad_ids_and_hashes_are_refused(field_name: str, value: str) -> None:
    with pytest.raises((ValueError, msgspec.ValidationError)):
        make_record(**{field_name: value})
    row = list(msgspec.structs.astuple(make_record()))
    row[list(Record.__struct_fields__).index(field_name)] = value
    with pytest.raises(ProtocolError):
        decode_rows(msgspec.msgpack.encode([row]))


def test_hybrid_clock_is_monotonic_and_follows_observed_time() -> None:
    wall = [1_000_000]
    clock = HybridClock(wall=lambda: wall[0])
    a = clock.now()
    b = clock.now()
    assert b > a and physical_ms(b) == 1_000_000
    assert clock.observe((1_000_500 << 16) + 3)
    assert clock.now() > (1_000_500 << 16) + 3
    wall[0] -= 10_000  # our wall clock jumps back: stamps still increase
    assert clock.now() > b
    assert not clock.observe((wall[0] + 3_600_000) << 16)  # an hour ahead: refused


# -- a small simulated mesh --------------------------------------------------------------------------------------


@dataclass
class Sim:
    """N replicas over MemoryStores and a lossy, duplicating, reordering message pool."""

    n: int
    rng: random.Random
    replicas: list[Replica] = field(default_factory=list)
    pool: list[tuple[int, list[RecordRow]]] = field(default_factory=list)
    stamped: list[RecordRow] = field(default_factory=list)

    def __post_init__(self) -> None:
        base = time.time_ns() // 1_000_000
        for i in range(self.n):
            tick = [0]

            def wall(tick: list[int] = tick) -> int:
                tick[0] += self.rng.randint(0, 2)
                return base + tick[0]

            self.replicas.append(Replica(MemoryStore(f"m{i}"), ReplicationConfig(), HybridClock(wall=wall)))

    def write(self, at: int, holder: str, name: str, version: int, delete: bool) -> None:
        replica = self.replicas[at]
        if delete:
            rows = replica.stamp(holder, "127.0.0.1:7772", [], removed=[name])
        else:
            info = FileInfo(name=name, size=version, content_hash=f"{version:064x}", mtime_ns=version)
            rows = replica.stamp(holder, "127.0.0.1:7772", [info])
        replica.commit(rows)
        self.stamped.extend(rows)
        for dst in range(self.n):
            if dst != at:
                self.pool.append((dst, rows))

    def deliver(self, loss: float, dup: float) -> None:
        self.rng.shuffle(self.pool)
        pool, self.pool = self.pool, []
        for dst, rows in pool:
            if self.rng.random() < loss:
                continue
            copies = 2 if self.rng.random() < dup else 1
            for _ in range(copies):
                replica = self.replicas[dst]
                chunk = list(rows)
                self.rng.shuffle(chunk)
                replica.commit(replica.accept(chunk))

    def anti_entropy(self) -> int:
        """Vector catch-up then digest repair between every ordered pair until nothing changes; return rounds."""
        for rounds in range(1, 10):
            for a in self.replicas:
                for b in self.replicas:
                    if a is b:
                        continue
                    if a.behind(b.vector):
                        snapshot = dict(b.vector)
                        if self.rng.random() < 0.5:
                            for batch in b.serve_sync(a.vector):
                                a.merge(batch)
                        else:  # the same catch-up as snapshot pages
                            for page in b.serve_sync_pages(a.vector):
                                a.merge_page(page)
                        a.finish_sync(snapshot)
                    differ = Replica.differing(a.checksums(), b.checksums())
                    if differ:
                        for batch in b.bucket_rows(differ):
                            a.merge(batch)
                        for batch in a.bucket_rows(differ):
                            b.merge(batch)
            if self.converged():
                return rounds
        return -1

    def expected(self) -> dict[tuple[str, str], RecordRow]:
        """Last writer wins: per (holder, name), the row with the largest (hlc, origin) ever stamped."""
        best: dict[tuple[str, str], RecordRow] = {}
        for row in self.stamped:
            key = (row[3], row[0])
            if key not in best or (row[8], row[6]) > (best[key][8], best[key][6]):
                best[key] = row
        return best

    def converged(self) -> bool:
        first = self.replicas[0].store.data  # type: ignore[attr-defined]
        return all(r.store.data == first for r in self.replicas[1:])  # type: ignore[attr-defined]


ops = st.lists(
    st.tuples(
        st.integers(0, 4),  # replica
        st.sampled_from(HOLDERS),
        st.sampled_from(["a.txt", "d/b.txt", "d/e/c.txt"]),
        st.integers(1, 1000),
        st.booleans(),
        st.booleans(),  # deliver after this op
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=ops, seed=st.integers(0, 2**32), loss=st.sampled_from([0.0, 0.2, 0.6]), dup=st.sampled_from([0.0, 0.3]))
def test_masters_converge_whatever_the_network_does(
    ops: list[tuple[int, str, str, int, bool, bool]], seed: int, loss: float, dup: float
) -> None:
    sim = Sim(5, random.Random(seed))
    for at, holder, name, version, delete, deliver in ops:
        sim.write(at, holder, name, version, delete)
        if deliver:
            sim.deliver(loss, dup)
    sim.deliver(loss, dup)
    assert sim.anti_entropy() > 0, "replicas did not converge"
    expected = sim.expected()
    for replica in sim.replicas:
        assert replica.store.data == expected  # type: ignore[attr-defined]


def test_without_loss_live_forwarding_alone_converges_in_any_order() -> None:
    sim = Sim(4, random.Random(7))
    for i in range(200):
        sim.write(i % 4, HOLDERS[i % 3], f"f{i % 17}", i + 1, delete=i % 11 == 0)
    sim.deliver(loss=0.0, dup=0.5)
    assert sim.converged()
    assert sim.replicas[0].store.data == sim.expected()  # type: ignore[attr-defined]
    vectors = [r.vector for r in sim.replicas]
    assert all(v == vectors[0] for v in vectors)


def test_duplicates_are_dropped_by_origin_and_seq() -> None:
    sim = Sim(2, random.Random(1))
    sim.write(0, HOLDERS[0], "x", 1, delete=False)
    rows = sim.pool[0][1]
    b = sim.replicas[1]
    assert len(b.accept(rows)) == 1
    assert b.accept(rows) == []
    assert b.stats.duplicates == 1


def test_unchanged_files_are_not_stamped_again_and_full_sync_tombstones_the_rest() -> None:
    replica = Replica(MemoryStore())
    files = [FileInfo(name=f"f{i}", size=i, content_hash=f"{i:064x}", mtime_ns=i) for i in range(5)]
    replica.commit(replica.stamp(HOLDERS[0], "h:1", files))
    assert replica.stamp(HOLDERS[0], "h:1", files) == []
    rows = replica.stamp(HOLDERS[0], "h:1", files[:2], keep_only={"f0", "f1"})
    assert sorted(r[0] for r in rows) == ["f2", "f3", "f4"] and all(r[9] for r in rows)
    replica.commit(rows)
    assert replica.store.count() == 2


def test_old_tombstones_are_purged_and_not_resurrected_by_stale_deletes() -> None:
    replica = Replica(MemoryStore(), ReplicationConfig(tombstone_retention=1.0))
    info = FileInfo(name="x", size=1, content_hash=HASH, mtime_ns=1)
    replica.commit(replica.stamp(HOLDERS[0], "h:1", [info]))
    tomb = replica.stamp(HOLDERS[0], "h:1", [], removed=["x"])
    replica.commit(tomb)
    later = physical_ms(tomb[0][8]) + 5_000
    assert replica.purge(now_ms=later) == 1
    other = Replica(MemoryStore(), ReplicationConfig(tombstone_retention=1.0))
    assert other.accept(tomb, now_ms=later) == []
    assert other.stats.stale_tombstones == 1
