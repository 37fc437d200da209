"""The opening exchange, as pure functions: hellos, token proofs, compatibility.

The token never crosses the wire: each side proves it holds the token with
an HMAC over both sides' fresh nonces. comm.py runs the exchange.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from shoal import __version__
from shoal.protocol.escape import peer_text
from shoal.protocol.limits import Limits
from shoal.protocol.messages import ROLES, Hello

PROTOCOL_VERSION = 4
NONCE_BYTES = 32
_PROOF_CONTEXT = b"shoal-handshake-v1"


def token_bytes(token: str | bytes | None) -> bytes | None:
    if token is None or token == "" or token == b"":
        return None
    return token.encode() if isinstance(token, str) else bytes(token)


def make_hello(role: str, name: str, token: bytes | None, limits: Limits) -> Hello:
    check_role(role)
    return Hello(
        protocol=PROTOCOL_VERSION,
        version=__version__,
        role=role,
        nonce=secrets.token_bytes(NONCE_BYTES),
        auth=token is not None,
        max_frames=limits.max_frames,
        max_header_bytes=limits.max_header_bytes,
        max_batch_bytes=limits.max_batch_bytes,
        name=name,
    )


def proof(token: bytes, prover: str, listener_nonce: bytes, connector_nonce: bytes) -> bytes:
    """HMAC-SHA256 by `prover` ("listener" or "connector") over both nonces."""
    msg = b"\0".join([_PROOF_CONTEXT, prover.encode(), listener_nonce, connector_nonce])
    return hmac.new(token, msg, hashlib.sha256).digest()


def proof_matches(expected: bytes, given: bytes) -> bool:
    return hmac.compare_digest(expected, given)


def check_role(role: str) -> None:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")


def describe(hello: Hello, address: str) -> str:
    role = hello.role if hello.role in ROLES else "peer"
    who = f"{role} {hello.name[:60]!r}" if hello.name else role
    return f"{who} at {address}"


def incompatibility(local: Hello, remote: Hello, remote_address: str) -> str | None:
    """Why these two hellos cannot talk, naming both versions; None when they can."""
    # The version comes first: a newer peer may add roles or change other fields.
    if remote.protocol != local.protocol:
        return (
            f"incompatible versions: this {local.role} speaks protocol {local.protocol} "
            f"(shoal {local.version}), the {describe(remote, remote_address)} speaks "
            f"protocol {remote.protocol} (shoal {peer_text(remote.version, 40)})"
        )
    if remote.role not in ROLES:
        return f"peer at {remote_address} claims unknown role {remote.role[:40]!r}"
    if len(remote.nonce) != NONCE_BYTES:
        return f"peer at {remote_address} sent a nonce of {len(remote.nonce)} bytes"
    if min(remote.max_frames, remote.max_header_bytes, remote.max_batch_bytes) < 1:
        return f"peer at {remote_address} advertised a non-positive limit"
    return None


def peer_limits(hello: Hello) -> Limits:
    """The limits the peer will enforce on what we send it."""
    return Limits(
        max_frames=min(hello.max_frames, 2**32 - 1),
        max_header_bytes=hello.max_header_bytes,
        max_batch_bytes=max(hello.max_batch_bytes, hello.max_header_bytes),
    )
