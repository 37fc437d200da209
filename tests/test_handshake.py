"""The pure handshake pieces: proofs and compatibility checks."""

from __future__ import annotations

import pytest

from shoal.protocol import handshake as hs
from shoal.protocol.limits import Limits


def hello(kind: str = "client", **changes):
    h = hs.make_hello(kind, "n", b"tok", Limits())
    for k, v in changes.items():
        setattr(h, k, v)
    return h


def test_hello_advertises_limits_and_a_fresh_nonce() -> None:
    a, b = hello(), hello()
    assert a.nonce != b.nonce and len(a.nonce) == hs.NONCE_BYTES
    assert (a.max_frames, a.max_batch_bytes) == (Limits().max_frames, Limits().max_batch_bytes)
    assert a.auth and not hs.make_hello("worker", "", None, Limits()).auth


def test_unknown_role_is_refused() -> None:
    with pytest.raises(ValueError):
        hs.make_hello("admin", "", None, Limits())
    assert "unknown role" in hs.incompatibility(hello(), hello("client", role="admin"), "x")


def test_proofs_depend_on_token_prover_and_both_nonces() -> None:
    base = hs.proof(b"t", "connector", b"L" * 32, b"C" * 32)
    assert len(base) == 32
    assert hs.proof_matches(base, hs.proof(b"t", "connector", b"L" * 32, b"C" * 32))
    for other in [
        hs.proof(b"u", "connector", b"L" * 32, b"C" * 32),
        hs.proof(b"t", "listener", b"L" * 32, b"C" * 32),
        hs.proof(b"t", "connector", b"M" * 32, b"C" * 32),
        hs.proof(b"t", "connector", b"L" * 32, b"D" * 32),
    ]:
        assert not hs.proof_matches(base, other)


def test_version_mismatch_names_both_versions() -> None:
    ours = hello("scheduler")
    other = hs.PROTOCOL_VERSION + 1
    theirs = hello("worker", protocol=other, version="9.9.9")
    reason = hs.incompatibility(ours, theirs, "tcp://10.0.0.1:5")
    assert f"protocol {hs.PROTOCOL_VERSION}" in reason and f"protocol {other}" in reason
    assert "shoal 0.1.0" in reason and "shoal 9.9.9" in reason
    assert "worker 'n' at tcp://10.0.0.1:5" in reason
    assert hs.incompatibility(ours, hello("worker"), "x") is None


def test_bad_nonce_and_limits_are_incompatible() -> None:
    assert "nonce" in hs.incompatibility(hello(), hello(nonce=b"short"), "x")
    assert "limit" in hs.incompatibility(hello(), hello(max_frames=0), "x")


def test_token_bytes() -> None:
    assert hs.token_bytes(None) is None and hs.token_bytes("") is None
    assert hs.token_bytes("é") == "é".encode()
    assert hs.token_bytes(b"\x00") == b"\x00"
