"""Hostile messages for fuzzing overdrive's ports, drawn from hypothesis strategies (the harness that runs real
processes against them is tests/fuzztargets.py).

:func:`messages` gives, for a port speaking one codec: random frame lists; every message type of the codec with
hostile field values (at and past their bounds, wrong types, deep nesting and oversized declared lengths spliced in
as raw msgpack, fields left out, unknown ones added), wrong versions, wrong payload counts and oversized payloads;
deeply nested headers; and replays of honest messages (1 to 20 times). :func:`subscriptions` gives what a hostile
SUB can send a PUB. The per-type strategies are derived from ``msgspec.inspect.type_info``, so a new message type
or field is fuzzed without editing this file. :func:`examples` draws them with ``@given`` under a fixed seed, so a
run is reproduced by its seed.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgspec
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from hypothesis.errors import HypothesisWarning
from msgspec import inspect as mi

from overdrive.bus.codec import MAX_HEADER_BYTES, PROTOCOL_VERSION, Codec

BATCH = 20
"""Messages drawn per hypothesis example."""
ROUND = 25
"""Examples drawn per @given run: the drawn messages are held until sent, so a round is kept small."""
HOSTILE_INTS = [0, -1, 1, 255, 2**31, 2**32 + 1, 2**53 + 1, 2**63 - 1, -(2**63), 2**64 - 1]
HOSTILE_TEXT = [
    "", "*", "**", "[!a-z]*?", "../" * 40 + "etc/passwd", "/etc/passwd", "\x00", "\x1b[2J\x1b]0;x\x07\u202e",
    "a" * 16, "ab" * 32, "127.0.0.1:1", "[" * 300, "*?" * 2048, "é" * 2049, "\ud7ff" * 10, "CON", ".", "..",
]  # fmt: skip
HUGE_DECLARED = [  # msgpack headers claiming 4 GiB of array, map, str, bin, ext: refused before allocating
    b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xff", b"\xc6\xff\xff\xff\xff",
    b"\xc9\xff\xff\xff\xff\x01",
]  # fmt: skip


def nested(depth: int, kind: str = "array") -> bytes:
    """A msgpack value nested ``depth`` levels deep: one-element arrays (or one-entry maps) around a nil."""
    return (b"\x91" if kind == "array" else b"\x81\xa1k") * depth + b"\xc0"


DEEP = st.builds(lambda d, k: msgspec.Raw(nested(d, k)), st.integers(1, 120_000), st.sampled_from(["array", "map"]))
DECLARED = st.sampled_from([msgspec.Raw(h) for h in HUGE_DECLARED])
WRONG: st.SearchStrategy[Any] = st.one_of(
    st.none(), st.booleans(), st.sampled_from(HOSTILE_INTS), st.floats(), st.text(max_size=8),
    st.binary(max_size=8), DEEP, DECLARED, st.lists(st.integers(-9, 9), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(-9, 9), max_size=2),
)  # fmt: skip
"""A value of the wrong type for any field."""
WRONG_SMALL: st.SearchStrategy[Any] = st.one_of(
    st.none(), st.booleans(), st.sampled_from(HOSTILE_INTS), st.floats(), st.text(max_size=8), st.binary(max_size=8),
    DECLARED, st.builds(lambda d: msgspec.Raw(nested(d)), st.integers(1, 1_200)),
)  # fmt: skip
"""A wrong value small enough to repeat thousands of times in one container."""
MAX_FRAME = MAX_HEADER_BYTES + 1024
"""Longest header sent: past the codec's limit, yet no repeated deep value makes a gigabyte."""


def _encodable(ints: list[int]) -> list[int]:
    return [i for i in ints if -(2**63) <= i <= 2**64 - 1]


def _repeat(item: st.SearchStrategy[Any], counts: list[int]) -> st.SearchStrategy[list[Any]]:
    return st.builds(lambda x, n: [x] * n, item, st.sampled_from(counts))


def _many_keys(value: st.SearchStrategy[Any], counts: list[int], width: int) -> st.SearchStrategy[dict[str, Any]]:
    return st.builds(lambda v, n: {f"{i:0{width}d}": v for i in range(n)}, value, st.sampled_from(counts))


def _typed(t: Any, depth: int) -> st.SearchStrategy[Any]:
    if isinstance(t, mi.IntType):
        lo = t.ge if t.ge is not None else (t.gt + 1 if t.gt is not None else -(2**63))
        hi = t.le if t.le is not None else (t.lt - 1 if t.lt is not None else 2**64 - 1)
        return st.one_of(
            st.integers(lo, hi), st.integers(0, 8), st.sampled_from(_encodable([*HOSTILE_INTS, lo - 1, hi + 1]))
        )
    if isinstance(t, mi.FloatType):
        return st.floats()
    if isinstance(t, mi.BoolType):
        return st.booleans()
    if isinstance(t, mi.NoneType):
        return st.none()
    if isinstance(t, mi.StrType):
        sizes = [n for n in (t.min_length, t.max_length) if n is not None]
        edges = [s + d for s in sizes for d in (-1, 0, 1) if s + d >= 0]
        return st.one_of(
            st.text(max_size=24),
            st.sampled_from(HOSTILE_TEXT),
            st.builds(lambda c, n: c * n, st.sampled_from("a*?[é/f0"), st.sampled_from(edges or [0, 1, 5000])),
        )
    if isinstance(t, mi.BytesType | mi.ByteArrayType | mi.MemoryViewType):
        return st.binary(max_size=32)
    if isinstance(t, mi.ListType | mi.SetType | mi.FrozenSetType | mi.VarTupleType):
        item = hostile(t.item_type, depth + 1)
        counts = [n for n in (t.min_length, t.max_length, (t.max_length or 0) + 1, 1000) if n]
        return st.one_of(st.lists(item, max_size=4), _repeat(item, counts))
    if isinstance(t, mi.TupleType):
        return st.tuples(*(hostile(i, depth + 1) for i in t.item_types)).map(list)
    if isinstance(t, mi.DictType):
        value = hostile(t.value_type, depth + 1)
        counts = [n for n in (t.max_length, (t.max_length or 0) + 1, 2000) if n]
        width = 16 if isinstance(t.key_type, mi.StrType) and t.key_type.min_length == 16 else 1
        keys = st.one_of(_typed(t.key_type, depth + 1), st.sampled_from(HOSTILE_INTS), st.none())  # hashable
        return st.one_of(st.dictionaries(keys, value, max_size=4), _many_keys(value, counts, width))
    if isinstance(t, mi.StructType):
        return body(t, depth + 1)
    if isinstance(t, mi.UnionType):
        return st.one_of(*(hostile(u, depth + 1) for u in t.types))
    if isinstance(t, mi.LiteralType):
        return st.sampled_from(list(t.values))
    if isinstance(t, mi.EnumType):
        return st.sampled_from([m.value for m in t.cls])
    return WRONG


def hostile(t: Any, depth: int = 0) -> st.SearchStrategy[Any]:
    """Values for a field of type ``t``: mostly of its type, at and past its bounds; sometimes of a wrong type
    (deeply nested only in a top-level field, since values inside containers may be repeated thousands of times)."""
    wrong = WRONG if depth == 0 else WRONG_SMALL
    if depth > 4:
        return wrong
    typed = _typed(t, depth)
    return st.one_of(typed, typed, typed, typed, wrong)


def body(t: mi.StructType, depth: int = 0) -> st.SearchStrategy[Any]:
    """A struct as the encoder writes it (a map, or an array when array-like) with hostile field values, some
    fields left out and sometimes an unknown one added."""
    fields = {f.encode_name: hostile(f.type, depth) for f in t.fields}
    names = sorted(fields)

    def assemble(values: dict[str, Any], drop: set[str], extra: Any) -> Any:
        if t.array_like:
            return [values[f.encode_name] for f in t.fields if f.encode_name not in drop]
        out = {k: v for k, v in values.items() if k not in drop}
        if t.tag_field is not None:
            out[t.tag_field] = t.tag
        if extra is not None:
            out["zz"] = extra
        return out

    drops = st.sets(st.sampled_from(names), max_size=2) if names else st.just(set())
    return st.builds(assemble, st.fixed_dictionaries(fields), drops, st.one_of(st.none(), st.none(), WRONG))


@dataclass(frozen=True)
class Fuzz:
    """One hostile message: raw frames, or a body encoded late so a hostile server can echo a request's ref."""

    frames: tuple[bytes, ...] = ()
    body: Any = None
    version: int = PROTOCOL_VERSION
    payload: tuple[bytes, ...] = ()
    echo: bool = False
    repeat: int = 1

    def encode(self, refs: dict[str, int] | None = None) -> list[bytes]:
        if self.body is None:
            return list(self.frames)
        message = self.body
        if self.echo and refs and isinstance(message, dict):
            message = {**message, **{k: v for k, v in refs.items() if k in message}}
        return [msgspec.msgpack.encode((self.version, message))[:MAX_FRAME], *self.payload]


def _payload(max_payload: int) -> st.SearchStrategy[bytes]:
    return st.integers(0, 49).flatmap(
        lambda n: st.just(bytes(max_payload + 1)) if n == 0 and max_payload else st.binary(max_size=64)
    )


def typed_messages(codec: Codec) -> st.SearchStrategy[Fuzz]:  # type: ignore[type-arg]
    """Every message type of ``codec`` with hostile field values, versions and payload counts."""
    choices = []
    for message_type in codec.types:
        info = mi.type_info(message_type)
        assert isinstance(info, mi.StructType)
        right = message_type.payload_frames
        counts = st.one_of(st.just(right), st.just(right), st.just(right), st.integers(0, 3))
        payloads = counts.flatmap(lambda n, m=message_type.max_payload: st.lists(_payload(m), min_size=n, max_size=n))
        choices.append(
            st.builds(
                lambda b, v, p, e: Fuzz(body=b, version=v, payload=tuple(p), echo=e),
                body(info),
                st.sampled_from([PROTOCOL_VERSION] * 6 + [0, 2, -1, 2**64 - 1]),
                payloads,
                st.booleans(),
            )
        )
    return st.one_of(*choices)


RANDOM_FRAMES = st.lists(
    st.one_of(st.binary(max_size=96), st.binary(max_size=40).map(lambda b: b"\x92\x01" + b)), min_size=1, max_size=5
).map(lambda frames: Fuzz(frames=tuple(frames)))
DEEP_HEADERS = st.builds(
    lambda d, k, tail: Fuzz(frames=(b"\x92\x01" + nested(d, k), *tail)),
    st.integers(500, 120_000),
    st.sampled_from(["array", "map"]),
    st.lists(st.binary(max_size=8), max_size=2),
)


def messages(codec: Codec, honest: list[list[bytes]]) -> st.SearchStrategy[Fuzz]:  # type: ignore[type-arg]
    """Hostile messages for a port speaking ``codec``; ``honest`` are valid messages to replay (1 to 20 times)."""
    typed = typed_messages(codec)
    replays = st.builds(lambda f, n: Fuzz(frames=tuple(f), repeat=n), st.sampled_from(honest), st.integers(1, 20))
    return st.one_of(typed, typed, typed, typed, RANDOM_FRAMES, DEEP_HEADERS, replays)


def subscriptions() -> st.SearchStrategy[Fuzz]:
    """What a hostile SUB can send a PUB: (un)subscriptions, many distinct and up to 60 KB long, and junk."""
    prefix = st.one_of(
        st.binary(max_size=64),
        st.builds(lambda b, n: b + b"x" * n, st.binary(min_size=8, max_size=8), st.integers(1_000, 60_000)),
    )
    sub = st.builds(lambda flag, p: Fuzz(frames=(flag + p,)), st.sampled_from([b"\x01"] * 4 + [b"\x00"]), prefix)
    return st.one_of(sub, sub, sub, RANDOM_FRAMES)


FUZZ_SETTINGS = {
    "database": None,
    "deadline": None,
    "phases": [Phase.explicit, Phase.generate],  # no shrinking: a failure is a dead process, not a pure function
    "suppress_health_check": list(HealthCheck),
}


def examples(strategy: st.SearchStrategy[Fuzz], count: int, seed_value: int) -> Iterator[list[Fuzz]]:
    """Batches of hypothesis examples from ``strategy`` until ``count`` messages (replays counted) are drawn.

    Driven by ``@given`` with a fixed seed (not ``.example()``), so a run is reproduced by its seed.
    """
    batches: list[list[Fuzz]] = []
    drawn = 0
    round_ = 0
    while drawn < count:
        need = min(ROUND, max(1, (count - drawn + BATCH - 1) // BATCH))

        @seed(seed_value + round_)
        @settings(max_examples=need, **FUZZ_SETTINGS)  # type: ignore[arg-type]
        @given(st.lists(strategy, min_size=BATCH, max_size=BATCH))
        def draw(batch: list[Fuzz]) -> None:
            batches.append(batch)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", HypothesisWarning)  # the repr of these strategies is megabytes long
            draw()
        round_ += 1
        while batches and drawn < count:
            batch = batches.pop(0)
            drawn += sum(f.repeat for f in batch)
            yield batch
        batches.clear()
