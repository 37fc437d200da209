"""The handshake on live connections: cluster tokens, version checks, the one WARNING a
refused connection costs, and that nothing a stranger sends is unpickled."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import pytest

import shoal
from shoal.errors import HandshakeError
from shoal.protocol import handshake as hs
from shoal.protocol.address import parse_address
from shoal.protocol.codec import decode_batch, encode_batch
from shoal.protocol.comm import Comm, connect, listen
from shoal.protocol.frames import FrameDecoder, encode_frames
from shoal.protocol.limits import Limits
from shoal.protocol.messages import (
    Authenticate,
    DataSent,
    GetData,
    HandshakeFailed,
    Hello,
    Welcome,
)
from shoal.protocol.schema import Message
from shoal.protocol.serialize import Serialized, deserialize, serialize
from tests.payloads import UNPICKLED, SideEffect

pytestmark = pytest.mark.usefixtures("no_leaks")

WAIT_S = 10.0
TOKEN = "correct horse battery staple"

# -- a payload whose unpickling is visible -------------------------------------


@pytest.fixture
def unpickled() -> list[str]:
    """UNPICKLED, emptied before and after the test."""
    UNPICKLED.clear()
    yield UNPICKLED
    UNPICKLED.clear()


# -- helpers -------------------------------------------------------------------


class Served:
    """A handler that deserializes every payload it receives and counts connections."""

    def __init__(self) -> None:
        self.connections = 0

    async def __call__(self, comm: Comm) -> None:
        self.connections += 1
        while True:
            for msg in await comm.read():
                if isinstance(msg, DataSent):
                    for payload in msg.data.values():
                        deserialize(payload)
                comm.send(GetData(keys=("ack",)))


def warnings_logged(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.WARNING]


async def close_after_one_warning(listener, caplog: pytest.LogCaptureFixture) -> str:
    """Wait for the listener's first WARNING, close it, and return that WARNING's text.

    Closing waits for every handshake in flight, so no later warning can be missed:
    the caller then checks there was exactly one.
    """
    async with asyncio.timeout(WAIT_S):
        while not warnings_logged(caplog):
            await asyncio.sleep(0.005)
    await listener.close()
    return warnings_logged(caplog)[0].getMessage()


def wire(*msgs: Message) -> bytes:
    """The bytes of one batch holding `msgs`, as a peer would write them."""
    return b"".join(bytes(b) for b in encode_frames(encode_batch(msgs)))


async def raw_exchange(address: str, data: bytes) -> list[Message]:
    """Write `data` to a tcp listener and read until it closes; the messages it sent.

    Raises TimeoutError if the listener does not close the connection.
    """
    addr = parse_address(address)
    reader, writer = await asyncio.open_connection(addr.host, addr.port)
    try:
        writer.write(data)
        async with asyncio.timeout(WAIT_S):
            received = await reader.read()  # until EOF
    finally:
        writer.close()
        await writer.wait_closed()
    decoder = FrameDecoder(Limits())
    decoder.feed(received)
    assert decoder.idle, "the listener stopped in the middle of a batch"
    return [m for frames in decoder.pop() for m in decode_batch(frames)]


def raw_hello(**changes: object) -> Hello:
    return dataclasses.replace(hs.make_hello("client", "raw", None, Limits()), **changes)


@pytest.fixture
def caplog_shoal(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="shoal")
    return caplog


# -- tokens --------------------------------------------------------------------


async def test_right_token_is_accepted(bind: str, caplog_shoal) -> None:
    """Same token both sides: the handshake completes and messages flow."""
    served = Served()
    async with await listen(bind, served, token=TOKEN) as listener:
        comm = await connect(listener.address, token=TOKEN)
        try:
            comm.send(GetData(keys=("x",)))
            async with asyncio.timeout(WAIT_S):
                (reply,) = await comm.read()
        finally:
            await comm.close()
    assert reply.keys == ("ack",)
    assert comm.peer_role == "scheduler"
    assert served.connections == 1
    assert warnings_logged(caplog_shoal) == []


async def test_wrong_token_is_refused(bind: str, caplog_shoal) -> None:
    """The client learns its token is wrong; the listener logs one WARNING, no handler runs."""
    served = Served()
    async with await listen(bind, served, token=TOKEN) as listener:
        with pytest.raises(HandshakeError, match="refused the handshake: wrong cluster token"):
            await connect(listener.address, token="not the token")
        warning = await close_after_one_warning(listener, caplog_shoal)
    assert "wrong cluster token" in warning
    assert len(warnings_logged(caplog_shoal)) == 1
    assert served.connections == 0


async def test_missing_token_is_refused(bind: str, caplog_shoal) -> None:
    """A client without a token is told the listener requires one."""
    served = Served()
    async with await listen(bind, served, token=TOKEN) as listener:
        with pytest.raises(HandshakeError, match="requires a cluster token and none was given"):
            await connect(listener.address)
        warning = await close_after_one_warning(listener, caplog_shoal)
    assert "requires a cluster token" in warning
    assert len(warnings_logged(caplog_shoal)) == 1
    assert served.connections == 0


async def test_token_offered_to_a_listener_without_one_is_refused(bind: str, caplog_shoal) -> None:
    """A client with a token will not talk to a listener that uses none."""
    served = Served()
    async with await listen(bind, served) as listener:
        with pytest.raises(HandshakeError, match=r"a cluster token was given but .* does not use"):
            await connect(listener.address, token=TOKEN)
        warning = await close_after_one_warning(listener, caplog_shoal)
    assert "does not use one" in warning
    assert len(warnings_logged(caplog_shoal)) == 1
    assert served.connections == 0


async def test_client_refuses_a_listener_that_cannot_prove_the_token(caplog_shoal) -> None:
    """An impostor that welcomes anyone without the token's proof is refused by the client."""
    said: asyncio.Future[list[Message]] = asyncio.get_running_loop().create_future()

    async def impostor(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = FrameDecoder(Limits())
        heard: list[Message] = []
        writer.write(wire(hs.make_hello("scheduler", "impostor", b"guess", Limits())))
        while chunk := await reader.read(65536):  # until the client hangs up
            decoder.feed(chunk)
            for frames in decoder.pop():
                msgs = decode_batch(frames)
                heard.extend(msgs)
                if isinstance(msgs[0], Hello):
                    writer.write(wire(Welcome(proof=b"\0" * 32)))
        said.set_result(heard)
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(impostor, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(HandshakeError, match="could not prove it holds the cluster token"):
            await connect(f"tcp://127.0.0.1:{port}", token=TOKEN, timeout=WAIT_S)
        async with asyncio.timeout(WAIT_S):
            heard = await said
    finally:
        server.close()
        await server.wait_closed()
    assert [type(m) for m in heard] == [Hello, Authenticate, HandshakeFailed]
    assert "could not prove" in heard[2].reason


# -- versions ------------------------------------------------------------------


async def test_newer_client_is_refused_naming_both_versions(
    bind: str, caplog_shoal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client speaking another protocol version gets a HandshakeError naming both sides'
    protocol and shoal versions; the listener logs it once."""
    real_make_hello = hs.make_hello

    def make_hello(role: str, name: str, token: bytes | None, limits: Limits) -> Hello:
        hello = real_make_hello(role, name, token, limits)
        if role == "client":
            hello = dataclasses.replace(hello, protocol=hs.PROTOCOL_VERSION + 1, version="9.9.9")
        return hello

    monkeypatch.setattr(hs, "make_hello", make_hello)
    async with await listen(bind, Served()) as listener:
        with pytest.raises(HandshakeError) as refused:
            await connect(listener.address)
        warning = await close_after_one_warning(listener, caplog_shoal)
    ours, theirs = hs.PROTOCOL_VERSION + 1, hs.PROTOCOL_VERSION
    for text in (str(refused.value), warning):
        assert f"protocol {ours} (shoal 9.9.9)" in text
        assert f"protocol {theirs} (shoal {shoal.__version__})" in text
    assert len(warnings_logged(caplog_shoal)) == 1


async def test_listener_refuses_raw_hello_of_another_version(caplog_shoal) -> None:
    """A raw Hello of protocol N+1 gets HandshakeFailed naming both versions, then EOF."""
    served = Served()
    hello = raw_hello(protocol=hs.PROTOCOL_VERSION + 1, version="9.9.9")
    async with await listen("tcp://127.0.0.1:0", served) as listener:
        received = await raw_exchange(listener.address, wire(hello))
        warning = await close_after_one_warning(listener, caplog_shoal)
    assert [type(m) for m in received] == [Hello, HandshakeFailed]
    reason = received[1].reason
    for text in (reason, warning):
        assert f"protocol {hs.PROTOCOL_VERSION} (shoal {shoal.__version__})" in text
        assert f"protocol {hs.PROTOCOL_VERSION + 1} (shoal 9.9.9)" in text
    assert len(warnings_logged(caplog_shoal)) == 1
    assert served.connections == 0


# -- nothing is unpickled before the handshake ----------------------------------


async def test_side_effect_payload_is_unpickled_after_the_handshake(unpickled) -> None:
    """Control for the tests below: once handshaken, the handler does unpickle the payload."""
    async with await listen("tcp://127.0.0.1:0", Served(), token=TOKEN) as listener:
        comm = await connect(listener.address, token=TOKEN)
        try:
            comm.send(DataSent(data={"x": serialize(SideEffect())}))
            async with asyncio.timeout(WAIT_S):
                await comm.read()
        finally:
            await comm.close()
    assert unpickled == ["unpickled"]


def _inline_payload() -> Serialized:
    payload = serialize(SideEffect())
    assert payload.inline  # travels inside the msgpack header
    return payload


def _framed_payload() -> Serialized:
    payload = serialize(SideEffect())
    return Serialized(payload.typename, [payload.frames[0], b"\0" * 1000])  # frames of its own


PRE_HANDSHAKE = {
    "inline payload instead of hello": lambda: wire(DataSent(data={"x": _inline_payload()})),
    "framed payload instead of hello": lambda: wire(DataSent(data={"x": _framed_payload()})),
    "payload batched with the hello": lambda: wire(
        raw_hello(), DataSent(data={"x": _inline_payload()})
    ),
    "payload instead of authenticate": lambda: wire(
        raw_hello(auth=True), DataSent(data={"x": _inline_payload()})
    ),
}


@pytest.mark.parametrize("sent", PRE_HANDSHAKE.values(), ids=PRE_HANDSHAKE.keys())
@pytest.mark.parametrize("token", [None, TOKEN], ids=["no-token", "token"])
async def test_payload_before_handshake_is_never_unpickled(
    sent, token: str | None, unpickled: list[str], caplog_shoal
) -> None:
    """A payload sent before the handshake completes closes the connection, unread."""
    served = Served()
    async with await listen("tcp://127.0.0.1:0", served, token=token) as listener:
        received = await raw_exchange(listener.address, sent())
        warning = await close_after_one_warning(listener, caplog_shoal)
    assert not any(isinstance(m, Welcome) for m in received)
    assert unpickled == []
    assert served.connections == 0
    assert len(warnings_logged(caplog_shoal)) == 1
    assert warning  # one WARNING naming the peer and the reason
    assert "127.0.0.1" in warning


async def test_listener_serves_after_refusals(caplog_shoal) -> None:
    """Refused handshakes of every kind leave the listener serving a good client."""
    served = Served()
    async with await listen("tcp://127.0.0.1:0", served, token=TOKEN) as listener:
        for bad_token in ("wrong", None):
            with pytest.raises(HandshakeError):
                await connect(listener.address, token=bad_token)
        await raw_exchange(listener.address, wire(DataSent(data={"x": _inline_payload()})))
        comm = await connect(listener.address, token=TOKEN)
        try:
            async with asyncio.timeout(WAIT_S):
                await comm.ping()
        finally:
            await comm.close()
    assert served.connections == 1
