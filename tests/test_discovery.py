"""The pure discovery core: announcements typed and bounded, the network tag, candidates and the stream choice."""

from __future__ import annotations

import ipaddress
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overdrive.bus import discovery
from overdrive.bus.discovery import (
    MAX_ADDRESSES,
    MAX_CANDIDATES,
    MAX_NAME,
    MAX_TXT_TOTAL,
    Announcement,
    Directory,
    choose_stream,
    network_tag,
    parse_announcement,
    pick_address,
)
from overdrive.bus.security import NetworkKey
from overdrive.errors import ProtocolError

TAG = network_tag(b"A" * 40)
OTHER = network_tag(b"B" * 40)


def announcement(name: str = "lecture", node: str = "abcdefghijklmnop", tag: str = TAG, **kw: object) -> Announcement:
    fields: dict[str, object] = {
        "role": "stream",
        "name": name,
        "node_id": node,
        "fingerprint": "0123-4567-89ab-cdef",
        "tag": tag,
        "addresses": ("10.0.0.5",),
        "port": 7770,
        "codec": "h264",
        "fps": 30.0,
        "instance": f"{name} {node[:8]}-7770._od-stream._tcp.local.",
    }
    fields.update(kw)
    return Announcement(**fields)  # type: ignore[arg-type]


def wire(a: Announcement) -> dict[bytes, bytes | None]:
    return {k.encode(): v.encode() for k, v in a.txt().items()}


def test_an_announcement_survives_its_txt_record() -> None:
    a = announcement()
    assert parse_announcement("stream", a.instance, [b"\x0a\x00\x00\x05"], 7770, wire(a)) == a


def test_the_network_tag_comes_from_the_stretched_secret_and_hides_name_and_password() -> None:
    key = NetworkKey.from_password("correct horse", "lab")
    tag = network_tag(key.server_secret)
    assert tag == network_tag(NetworkKey.from_password("correct horse", "lab").server_secret)
    assert tag != network_tag(NetworkKey.from_password("correct horse!", "lab").server_secret)
    assert tag != network_tag(NetworkKey.from_password("correct horse", "lab2").server_secret)
    assert len(tag) == 16 and "lab" not in tag
    assert network_tag(None) == "insecure"


def test_the_instance_label_fits_a_dns_label_and_is_unique_per_node_and_port() -> None:
    long = announcement(name="é" * 32)  # 64 bytes of UTF-8
    assert len(long.label().encode()) <= 63
    assert long.label().endswith(" abcdefgh-7770")
    assert announcement(port=7780).label() != announcement().label()
    assert announcement(node="zyxwvutsrqponmlk").label() != announcement().label()


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({b"v": b"2"}, "version"),
        ({b"id": b"ABCDEFGHIJKLMNOP"}, "node id"),
        ({b"fp": b"0123456789abcdef"}, "fingerprint"),
        ({b"net": b"lab"}, "tag"),
        ({b"name": b""}, "name"),
        ({b"name": "\u202e".encode()}, "name"),
        ({b"name": b"x" * (MAX_NAME + 1)}, "name"),
        ({b"name": b"\xff\xfe"}, "UTF-8"),
        ({b"fps": b"nan"}, "fps"),
        ({b"fps": b"fast"}, "fps"),
        ({b"codec": b"H264; rm -rf"}, "codec"),
        ({b"name": None}, "name"),
        ({b"x" * 10: b"y" * 97}, "too long"),
        ({f"k{i}".encode(): b"" for i in range(12)}, "too many"),
    ],
)
def test_malformed_announcements_are_refused(change: dict[bytes, bytes | None], problem: str) -> None:
    txt = {**wire(announcement()), **change}
    with pytest.raises(ProtocolError, match=problem):
        parse_announcement("stream", "x", ["10.0.0.5"], 7770, txt)


@pytest.mark.parametrize(
    "addresses", [[], ["224.0.0.251"], ["0.0.0.0"], ["255.255.255.255"], ["fe80::1"], ["240.0.0.1"], [b"\x00"]]
)
def test_an_announcement_needs_a_usable_ipv4_address(addresses: list[str | bytes]) -> None:
    with pytest.raises(ProtocolError, match="address"):
        parse_announcement("stream", "x", addresses, 7770, wire(announcement()))


def test_addresses_are_deduplicated_and_capped() -> None:
    many = [f"10.0.0.{i}" for i in range(1, 20)]
    parsed = parse_announcement("stream", "x", ["10.0.0.1", *many], 7770, wire(announcement()))
    assert parsed.addresses == tuple(many[:MAX_ADDRESSES])


@pytest.mark.parametrize("port", [0, 65536, -1])
def test_the_port_must_be_a_port(port: int) -> None:
    with pytest.raises(ProtocolError, match="port"):
        parse_announcement("stream", "x", ["10.0.0.5"], port, wire(announcement()))


TXT = st.dictionaries(
    st.binary(min_size=1, max_size=12),
    st.none() | st.binary(max_size=120),
    max_size=16,
)
ADDRESSES = st.lists(st.binary(min_size=4, max_size=4) | st.text(max_size=20), max_size=8)


def _valid(a: Announcement) -> None:
    assert a.name and len(a.name.encode()) <= MAX_NAME and a.name.isprintable()
    assert 1 <= len(a.addresses) <= MAX_ADDRESSES
    assert all(not ipaddress.IPv4Address(x).is_multicast for x in a.addresses)
    assert 1 <= a.port <= 65535 and math.isfinite(a.fps)
    assert sum(len(k) + len(v) for k, v in a.txt().items()) <= MAX_TXT_TOTAL


@settings(max_examples=300, deadline=None)
@given(txt=TXT, addresses=ADDRESSES, port=st.integers(-5, 70000))
def test_arbitrary_records_give_a_valid_announcement_or_protocol_error(
    txt: dict[bytes, bytes | None], addresses: list[bytes | str], port: int
) -> None:
    try:
        _valid(parse_announcement("stream", "x", addresses, port, txt))
    except ProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from([b"v", b"id", b"fp", b"net", b"name", b"codec", b"fps"]), value=st.none() | st.binary())
def test_one_corrupted_field_gives_a_valid_announcement_or_protocol_error(key: bytes, value: bytes | None) -> None:
    txt = {**wire(announcement()), key: value}
    try:
        _valid(parse_announcement("stream", "x", ["10.0.0.5"], 7770, txt))
    except ProtocolError:
        pass


def test_the_directory_is_bounded() -> None:
    directory = Directory()
    nodes = [f"{i:02d}".translate(str.maketrans("0123456789", "abcdefghij")) * 8 for i in range(100)]
    for node in nodes:
        directory.add(announcement(node=node, instance=node))
    assert len(directory) == discovery.MAX_ENTRIES and directory.dropped == 100 - discovery.MAX_ENTRIES
    assert directory.add(announcement(node=nodes[0], instance=nodes[0], name="renamed"))  # an update still lands
    directory.remove(nodes[0])
    assert len(directory) == discovery.MAX_ENTRIES - 1


def test_candidates_are_this_network_only_not_ourselves_and_capped() -> None:
    directory = Directory()
    nodes = [c * 16 for c in "abcdefgh"]
    for node in nodes:
        directory.add(announcement(node=node, instance=node, role="master"))
    directory.add(announcement(node="z" * 16, instance="other", role="master", tag=OTHER))
    found = directory.candidates("master", TAG, exclude="a" * 16)
    assert [a.node_id for a in found] == nodes[1 : 1 + MAX_CANDIDATES]
    assert directory.candidates("stream", TAG) == []


def test_the_only_stream_of_this_network_is_chosen() -> None:
    ours, theirs = announcement(), announcement(name="next door", node="z" * 16, tag=OTHER)
    choice = choose_stream([theirs, ours], TAG)
    assert (choice.chosen, choice.problem, choice.others) == (ours, "", 1)


def test_a_stream_of_another_network_is_never_chosen() -> None:
    choice = choose_stream([announcement(tag=OTHER)], TAG)
    assert (choice.chosen, choice.problem, choice.others) == (None, "none", 1)
    assert choose_stream([announcement(tag=OTHER)], TAG, "lecture").chosen is None


def test_several_streams_need_a_pick_by_name_node_id_or_fingerprint() -> None:
    lecture = announcement()
    lab = announcement(name="lab", node="qrstuvwxyz234567", fingerprint="ffff-eeee-dddd-cccc")
    assert choose_stream([lecture, lab], TAG).problem == "several"
    assert choose_stream([lecture, lab], TAG, "lab").chosen == lab
    assert choose_stream([lecture, lab], TAG, "qrst").chosen == lab
    assert choose_stream([lecture, lab], TAG, "FFFFEEEEDDDDCCCC").chosen == lab
    assert choose_stream([lecture, lab], TAG, "qrs").problem == "no-match"  # a prefix needs four characters
    twins = [lecture, announcement(node="qrstuvwxyz234567")]
    assert choose_stream(twins, TAG, "lecture").problem == "several"


def test_the_address_on_a_local_network_is_dialled_first() -> None:
    local = [ipaddress.IPv4Network("192.168.1.0/24")]
    assert pick_address(["10.8.0.2", "192.168.1.20"], local) == "192.168.1.20"
    assert pick_address(["10.8.0.2", "172.16.0.1"], local) == "10.8.0.2"
