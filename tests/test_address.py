"""Address parsing: the forms users type, and clear errors for the rest."""

from __future__ import annotations

import pytest

from overdrive.bus.address import Endpoint, parse_endpoint, parse_endpoints
from overdrive.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("example", Endpoint("example", 7)),
        ("10.0.0.2:9000", Endpoint("10.0.0.2", 9000)),
        ("tcp://10.0.0.2:9000", Endpoint("10.0.0.2", 9000)),
        ("tcp://host", Endpoint("host", 7)),
        ("[::1]:5000", Endpoint("::1", 5000)),
        ("[::1]", Endpoint("::1", 7)),
        ("::1", Endpoint("::1", 7)),
        ("  host:1 ", Endpoint("host", 1)),
    ],
)
def test_valid_forms(text: str, expected: Endpoint) -> None:
    assert parse_endpoint(text, 7) == expected


@pytest.mark.parametrize("text", ["", "host:port", "host:70000", "udp://h:1", "[::1:5", "a b:1", "h:-1", "/x:1"])
def test_invalid_forms(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_endpoint(text, 7)


def test_zmq_form_and_lists() -> None:
    assert str(Endpoint("::1", 5)) == "tcp://[::1]:5"
    assert Endpoint("h", 5).display == "h:5"
    assert parse_endpoints("a:1, b", 2) == [Endpoint("a", 1), Endpoint("b", 2)]
    assert parse_endpoints(["a:1,b:2", "c"], 3) == [Endpoint("a", 1), Endpoint("b", 2), Endpoint("c", 3)]
