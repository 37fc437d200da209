"""Address parsing."""

from __future__ import annotations

import pytest

from shoal.protocol.address import Address, parse_address


@pytest.mark.parametrize(
    "text, expected",
    [
        ("tcp://127.0.0.1:8786", Address("tcp", "127.0.0.1", 8786)),
        ("tls://sched.example:443", Address("tls", "sched.example", 443)),
        ("127.0.0.1:1", Address("tcp", "127.0.0.1", 1)),
        ("tcp://[::1]:5", Address("tcp", "::1", 5)),
        ("tcp://host", Address("tcp", "host", 0)),
        ("inproc://abc", Address("inproc", "abc", 0)),
    ],
)
def test_parse(text: str, expected: Address) -> None:
    assert parse_address(text) == expected


def test_format_roundtrips() -> None:
    for text in ["tcp://127.0.0.1:8786", "tls://[::1]:9", "inproc://x"]:
        assert str(parse_address(text)) == text


@pytest.mark.parametrize(
    "text", ["udp://h:1", "tcp://:5", "tcp://h:port", "tcp://h:70000", "tcp://[::1", "tcp://[::1]x"]
)
def test_malformed(text: str) -> None:
    with pytest.raises(ValueError):
        parse_address(text)


def test_loopback() -> None:
    assert parse_address("tcp://127.0.0.2:1").is_loopback
    assert parse_address("tcp://[::1]:1").is_loopback
    assert parse_address("tcp://localhost:1").is_loopback
    assert not parse_address("tcp://0.0.0.0:1").is_loopback
    assert not parse_address("tcp://10.1.2.3:1").is_loopback
    assert not parse_address("tcp://example.org:1").is_loopback
