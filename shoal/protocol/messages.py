"""The message catalogue: every message shoal sends, declared once.

Requests are named in the imperative, reports in the past tense. A field
added later must have a default, so an older peer's messages still decode.
The handshake messages (the first group) are frozen: every protocol version
must be able to read them, so that a mismatch can be reported clearly.
docs/protocol.md describes each one.
"""

from __future__ import annotations

from shoal.protocol.schema import Key, Message, message
from shoal.protocol.serialize import Serialized

ROLES = ("scheduler", "worker", "client")

# -- handshake (frozen across protocol versions) ------------------------------


@message("hello")
class Hello(Message):
    """First message each way: who I am, what I speak, my nonce and my limits."""

    protocol: int
    version: str
    role: str
    nonce: bytes
    auth: bool
    max_frames: int
    max_header_bytes: int
    max_batch_bytes: int
    name: str = ""


@message("authenticate")
class Authenticate(Message):
    """The connecting side's proof that it holds the cluster token."""

    proof: bytes


@message("welcome")
class Welcome(Message):
    """The listening side accepts; with a token, it proves it holds it too."""

    proof: bytes = b""


@message("handshake-failed")
class HandshakeFailed(Message):
    """Either side refuses the handshake; the connection closes after it."""

    reason: str


# -- connection ---------------------------------------------------------------


@message("ping")
class Ping(Message):
    """Ask the peer to answer with a Pong carrying the same id."""

    id: int


@message("pong")
class Pong(Message):
    """Answer to a Ping."""

    id: int


@message("close")
class Close(Message):
    """The sender closes the connection on purpose; `reason` says why."""

    reason: str = ""


# -- data ----------------------------------------------------------------------


@message("get-data")
class GetData(Message):
    """Ask the peer for the values of these keys."""

    keys: tuple[Key, ...]
    request_id: int = 0


@message("data-sent")
class DataSent(Message):
    """Values for keys, as payloads; `missing` lists the keys the sender lacks."""

    data: dict[Key, Serialized]
    request_id: int = 0
    missing: tuple[Key, ...] = ()
