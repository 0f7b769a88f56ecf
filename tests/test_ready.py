"""The one ready line every long-lived overdrive process prints: scripts and people read the same line."""

from __future__ import annotations

import pytest

from overdrive.bus.address import Endpoint
from overdrive.bus.ready import Ready, parse_ready


def test_a_ready_line_reads_back_as_what_was_announced() -> None:
    ready = Ready("master", Endpoint("127.0.0.1", 7771), ("origin ABC", "peers a:1, b:2"))
    line = ready.line()
    assert line == "overdrive: master ready on tcp://127.0.0.1:7771 (origin ABC; peers a:1, b:2)"
    assert parse_ready(line + "\n") == ready
    assert line.split()[4] == "tcp://127.0.0.1:7771"  # what a shell script takes


def test_details_are_optional_and_ipv6_addresses_survive() -> None:
    ready = Ready("share", Endpoint("::1", 0))
    assert ready.line() == "overdrive: share ready on tcp://[::1]:0"
    assert parse_ready(ready.line()) == ready


@pytest.mark.parametrize(
    "line", ["", "listening 127.0.0.1:7771", "port 7772", "overdrive: error: no such file", "overdrive: x ready on"]
)
def test_any_other_line_is_not_a_ready_line(line: str) -> None:
    with pytest.raises(ValueError, match="not an overdrive ready line"):
        parse_ready(line)


def test_a_detail_cannot_break_the_one_line() -> None:
    with pytest.raises(ValueError, match="printable"):
        Ready("share", Endpoint("127.0.0.1", 1), ("name\nforged",))
