"""tls:// on loopback with a throwaway CA: round trips, token plus TLS, mutual TLS, and
peers whose certificates do not chain to the CA."""

from __future__ import annotations

import asyncio
import logging
import ssl

import numpy as np
import pytest

from shoal.errors import CommClosedError, HandshakeError
from shoal.protocol.comm import Comm, connect, listen
from shoal.protocol.messages import DataSent
from shoal.protocol.serialize import deserialize, serialize
from shoal.protocol.tls import TLSConfig
from tests.certs import PKI

pytestmark = pytest.mark.usefixtures("no_leaks")

WAIT_S = 10.0
BIND = "tls://127.0.0.1:0"
# What a refused TLS peer sees, depending on which side notices first: a verification
# error from its own handshake, or its connection dropped by the listener.
TLS_REFUSALS = (ssl.SSLError, CommClosedError, ConnectionError)


def server_tls(pki: PKI, **options: object) -> TLSConfig:
    return TLSConfig(ca=pki.ca, cert=pki.server.cert, key=pki.server.key, **options)


def client_tls(pki: PKI, with_cert: bool = False, **options: object) -> TLSConfig:
    if with_cert:
        return TLSConfig(ca=pki.ca, cert=pki.client.cert, key=pki.client.key, **options)
    return TLSConfig(ca=pki.ca, **options)


def warnings_logged(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.WARNING]


async def echo_arrays(comm: Comm) -> None:
    """Handler: answer a DataSent of arrays with the same arrays doubled."""
    while True:
        for msg in await comm.read():
            doubled = {k: serialize(deserialize(v) * 2) for k, v in msg.data.items()}
            comm.send(DataSent(data=doubled, request_id=msg.request_id))


async def round_trip(comm: Comm) -> None:
    """Send arrays small and large through `comm` and check the doubled answers."""
    arrays = {"small": np.arange(10), "large": np.arange(3_000_000, dtype=np.float64)}
    comm.send(DataSent(data={k: serialize(v) for k, v in arrays.items()}, request_id=5))
    async with asyncio.timeout(WAIT_S):
        (reply,) = await comm.read()
    assert reply.request_id == 5
    for key, arr in arrays.items():
        np.testing.assert_array_equal(deserialize(reply.data[key]), arr * 2)


async def good_client_is_served(address: str, tls: TLSConfig, token: str | None = None) -> None:
    comm = await connect(address, tls=tls, token=token)
    try:
        assert comm.peer_address.startswith("tls://127.0.0.1:")
        await round_trip(comm)
    finally:
        await comm.close()


async def test_round_trip_over_tls(pki: PKI) -> None:
    """Payloads, small and 24 MB, cross a TLS connection and come back."""
    async with await listen(BIND, echo_arrays, tls=server_tls(pki)) as listener:
        assert listener.address.startswith("tls://127.0.0.1:")
        await good_client_is_served(listener.address, client_tls(pki))


async def test_round_trip_with_hostname_check(pki: PKI) -> None:
    """With check_hostname the server certificate's IP SAN must match 127.0.0.1; it does."""
    async with await listen(BIND, echo_arrays, tls=server_tls(pki)) as listener:
        await good_client_is_served(listener.address, client_tls(pki, check_hostname=True))


async def test_token_and_tls_together(pki: PKI) -> None:
    """A token over TLS: the right token is served, a wrong one refused."""
    async with await listen(BIND, echo_arrays, tls=server_tls(pki), token="t0k") as listener:
        await good_client_is_served(listener.address, client_tls(pki), token="t0k")
        with pytest.raises(HandshakeError, match="wrong cluster token"):
            await connect(listener.address, tls=client_tls(pki), token="other")


async def test_tls_address_needs_tls_config(pki: PKI) -> None:
    """tls:// without a TLSConfig is a ValueError on both sides, before any socket opens."""
    with pytest.raises(ValueError, match="needs a TLSConfig"):
        await listen(BIND, echo_arrays)
    async with await listen(BIND, echo_arrays, tls=server_tls(pki)) as listener:
        with pytest.raises(ValueError, match="needs a TLSConfig"):
            await connect(listener.address)


async def test_plain_tcp_client_cannot_talk_to_tls_listener(pki: PKI) -> None:
    """A tcp:// client at a TLS port is cut at the handshake timeout; TLS clients are served."""
    tls = server_tls(pki)
    async with await listen(BIND, echo_arrays, tls=tls, handshake_timeout=0.5) as listener:
        port = listener.address.rsplit(":", 1)[1]
        # Each side waits for the other's first bytes until the listener gives up.
        with pytest.raises(CommClosedError):
            await connect(f"tcp://127.0.0.1:{port}", timeout=WAIT_S)
        await good_client_is_served(listener.address, client_tls(pki))


async def test_mutual_tls(pki: PKI, other_pki: PKI) -> None:
    """With require_client_cert, clients without a certificate, or with one from another CA,
    are refused; a client with a certificate from the cluster CA is served."""
    tls = server_tls(pki, require_client_cert=True)
    async with await listen(BIND, echo_arrays, tls=tls) as listener:
        with pytest.raises(TLS_REFUSALS):
            await connect(listener.address, tls=client_tls(pki), timeout=WAIT_S)
        stranger = TLSConfig(ca=pki.ca, cert=other_pki.client.cert, key=other_pki.client.key)
        with pytest.raises(TLS_REFUSALS):
            await connect(listener.address, tls=stranger, timeout=WAIT_S)
        await good_client_is_served(listener.address, client_tls(pki, with_cert=True))
        assert len(listener.comms) == 0


async def test_refused_client_certificate_logs_one_warning(
    pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    """A client refused for lacking a certificate costs one WARNING naming the peer."""
    caplog.set_level(logging.DEBUG, logger="shoal")
    tls = server_tls(pki, require_client_cert=True)
    async with await listen(BIND, echo_arrays, tls=tls) as listener:
        with pytest.raises(TLS_REFUSALS):
            await connect(listener.address, tls=client_tls(pki), timeout=WAIT_S)
        async with asyncio.timeout(WAIT_S):  # the listener may notice after the client
            while not any(r.name == "shoal.protocol.comm" for r in caplog.records):
                await asyncio.sleep(0.005)
    refusals = warnings_logged(caplog)
    assert len(refusals) == 1
    assert "127.0.0.1" in refusals[0].getMessage()
    assert "certificate" in refusals[0].getMessage()


async def test_client_trusting_another_ca_fails(pki: PKI, other_pki: PKI) -> None:
    """A client that trusts a different CA rejects the server's certificate; the
    listener still serves a good client afterwards."""
    async with await listen(BIND, echo_arrays, tls=server_tls(pki)) as listener:
        with pytest.raises(ssl.SSLCertVerificationError):
            await connect(listener.address, tls=client_tls(other_pki), timeout=WAIT_S)
        await good_client_is_served(listener.address, client_tls(pki))


async def test_listener_close_closes_tls_connections(pki: PKI) -> None:
    """listener.close() ends live TLS connections; the client's read raises CommClosedError."""
    ready = asyncio.Event()

    async def handler(comm: Comm) -> None:
        ready.set()
        await comm.read()

    listener = await listen(BIND, handler, tls=server_tls(pki))
    try:
        comm = await connect(listener.address, tls=client_tls(pki))
        async with asyncio.timeout(WAIT_S):
            await ready.wait()
    finally:
        await listener.close()
    try:
        with pytest.raises(CommClosedError):
            async with asyncio.timeout(WAIT_S):
                await comm.read()
    finally:
        comm.abort()
    with pytest.raises(OSError):
        await connect(listener.address, tls=client_tls(pki), timeout=WAIT_S)
