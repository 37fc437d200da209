"""Addresses: `tcp://host:port`, `tls://host:port`, `inproc://name`."""

from __future__ import annotations

import ipaddress
from typing import NamedTuple

SCHEMES = ("tcp", "tls", "inproc")


class Address(NamedTuple):
    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        if self.scheme == "inproc":
            return f"inproc://{self.host}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        if self.scheme == "inproc" or self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def parse_address(text: str, default_port: int = 0) -> Address:
    """Parse an address; a missing scheme means tcp, a missing port `default_port`.

    Raises:
        ValueError: for an unknown scheme or a malformed host or port.
    """
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "tcp", text
    if scheme not in SCHEMES:
        raise ValueError(f"unknown address scheme {scheme!r} in {text!r} (use tcp, tls or inproc)")
    if scheme == "inproc":
        return Address("inproc", rest, 0)
    if rest.startswith("["):
        host, bracket, tail = rest[1:].partition("]")
        if not bracket or (tail and not tail.startswith(":")):
            raise ValueError(f"malformed IPv6 address {text!r}")
        port_text = tail[1:]
    else:
        host, _, port_text = rest.rpartition(":") if ":" in rest else (rest, "", "")
    if not host:
        raise ValueError(f"address {text!r} has no host")
    if not port_text:
        return Address(scheme, host, default_port)
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"port in {text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} in {text!r} is out of range")
    return Address(scheme, host, port)
