"""Regressions at the edges of the handshake, over every transport."""

from __future__ import annotations

import asyncio
import logging

import pytest

from shoal.errors import HandshakeError, MessageTooLarge
from shoal.protocol import frames
from shoal.protocol import handshake as hs
from shoal.protocol import messages as m
from shoal.protocol.comm import Comm, connect, listen
from shoal.protocol.limits import HANDSHAKE_LIMITS, Limits
from shoal.protocol.serialize import serialize

pytestmark = pytest.mark.timeout(30)

ADDRESSES = ["tcp://127.0.0.1:0", "inproc://"]


@pytest.mark.parametrize("address", ADDRESSES)
async def test_handler_may_send_at_once_even_large_payloads(address: str) -> None:
    """Bytes right behind the welcome are parsed under the full limits, not the handshake's."""

    async def eager(comm: Comm) -> None:
        big = serialize(b"x" * 100_000)
        comm.send(m.DataSent(data={"a": big, "b": serialize(1)}), m.GetData(keys=("k",)))
        comm.send(*[m.GetData(keys=(f"k{i}",)) for i in range(500)])
        await comm.read()

    async with await listen(address, eager, token="t") as listener:
        comm = await connect(listener.address, token="t")
        got: list[m.Message] = []
        async with asyncio.timeout(10):
            while len(got) < 502:
                got += await comm.read()
        assert isinstance(got[0], m.DataSent) and got[0].data["a"].nbytes > 100_000
        assert [g.keys for g in got[2:]] == [(f"k{i}",) for i in range(500)]
        await comm.close()


@pytest.mark.parametrize("address", ADDRESSES)
async def test_handler_that_returns_at_once_still_completes_the_handshake(address: str) -> None:
    async def brief(comm: Comm) -> None:
        comm.send(m.GetData(keys=("bye",)))

    async with await listen(address, brief) as listener:
        comm = await connect(listener.address)
        assert await comm.read() == [m.GetData(keys=("bye",))]
        with pytest.raises(Exception, match="closed"):
            async with asyncio.timeout(5):
                await comm.read()


async def test_unknown_role_is_refused_up_front() -> None:
    async def nothing(comm: Comm) -> None:
        return None

    with pytest.raises(ValueError, match="role must be one of"):
        await listen("tcp://127.0.0.1:0", nothing, role="bogus")
    async with await listen("tcp://127.0.0.1:0", nothing) as listener:
        with pytest.raises(ValueError, match="role must be one of"):
            await connect(listener.address, role="admin")
        comm = await connect(listener.address)  # the listener still serves
        await comm.close()


async def test_an_oversized_hello_fails_on_our_side_with_a_clear_error() -> None:
    async def nothing(comm: Comm) -> None:
        await comm.read()

    async with await listen("tcp://127.0.0.1:0", nothing) as listener:
        with pytest.raises(MessageTooLarge, match="hello message"):
            await connect(listener.address, name="n" * (HANDSHAKE_LIMITS.max_header_bytes + 10))


async def test_a_version_mismatch_names_both_versions(monkeypatch) -> None:
    async def nothing(comm: Comm) -> None:
        await comm.read()

    real = hs.make_hello

    def newer_client(role, name, token, limits):
        hello = real(role, name, token, limits)
        if role == "client":
            hello.protocol, hello.version = 99, "9.0.0"
        return hello

    async with await listen("tcp://127.0.0.1:0", nothing, name="sched") as listener:
        monkeypatch.setattr(hs, "make_hello", newer_client)
        with pytest.raises(HandshakeError) as info:
            await connect(listener.address)
    text = str(info.value)
    assert f"speaks protocol {hs.PROTOCOL_VERSION} (shoal 0.1.0)" in text
    assert "speaks protocol 99 (shoal 9.0.0)" in text


async def test_message_over_the_peers_limits_raises_at_send() -> None:
    async def nothing(comm: Comm) -> None:
        await comm.read()

    small = Limits(max_frames=4, max_header_bytes=1024, max_batch_bytes=64 * 1024)
    async with await listen("tcp://127.0.0.1:0", nothing, limits=small) as listener:
        comm = await connect(listener.address)
        with pytest.raises(MessageTooLarge, match="peer's limits"):
            comm.send(m.DataSent(data={"a": serialize(b"x" * 100_000)}))
        comm.send(m.GetData(keys=("still fine",)))
        assert (await comm.ping()) > 0
        await comm.close()


async def test_late_refusal_by_the_connector_is_logged_with_its_reason(caplog, monkeypatch) -> None:
    """A connector that rejects the listener's proof tells it why; the listener logs that."""

    async def keep(comm: Comm) -> None:
        await comm.read()

    real = hs.proof
    forged: list[str] = []

    def listener_forges_once(token, prover, listener_nonce, connector_nonce):
        if prover == "listener" and not forged:
            forged.append(prover)
            return b"\0" * 32
        return real(token, prover, listener_nonce, connector_nonce)

    caplog.set_level(logging.WARNING, "shoal.protocol")
    async with await listen("tcp://127.0.0.1:0", keep, token="right") as listener:
        monkeypatch.setattr(hs, "proof", listener_forges_once)
        with pytest.raises(HandshakeError, match="could not prove it holds the cluster token"):
            await connect(listener.address, token="right")
        deadline = asyncio.get_running_loop().time() + 5
        while "the peer refused the handshake" not in caplog.text:
            assert asyncio.get_running_loop().time() < deadline, caplog.text
            await asyncio.sleep(0.01)


def test_hold_stops_parsing_even_after_the_batch_is_popped() -> None:
    from shoal.protocol import codec

    def wire(msgs):
        return b"".join(bytes(b) for b in frames.encode_frames(codec.encode_batch(msgs)))

    decoder = frames.FrameDecoder(HANDSHAKE_LIMITS)
    decoder.hold = True
    decoder.feed(wire([m.Ping(id=1)]))
    assert len(decoder.pop()) == 1 and decoder.holding
    big = m.GetData(keys=tuple(f"key-{i}" for i in range(2000)))  # over the handshake limits
    decoder.feed(wire([big]))  # held, not parsed under the handshake limits
    assert not decoder.pop() and not decoder.idle
    decoder.limits, decoder.hold = Limits(), False
    decoder.resume()
    (batch,) = decoder.pop()
    assert codec.decode_batch(batch) == [big]
