"""One connection: the Comm object, its handshake run, reading, sending, closing.

A Comm is handed to callers only after the handshake succeeded; until then
the peer may send only tiny handshake batches and no payloads. Bad bytes
close this one connection with one WARNING line.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Sequence
from typing import cast

from shoal.errors import CommClosedError, HandshakeError, ProtocolError
from shoal.protocol import handshake as hs
from shoal.protocol.batched import Outbox
from shoal.protocol.codec import Buffer, decode_batch
from shoal.protocol.escape import peer_text
from shoal.protocol.limits import HANDSHAKE_LIMITS, Limits
from shoal.protocol.messages import (
    Authenticate,
    Close,
    HandshakeFailed,
    Hello,
    Ping,
    Pong,
    Welcome,
)
from shoal.protocol.permissions import ADMIN, Role
from shoal.protocol.schema import Message
from shoal.protocol.slices import SLICED_HEADER_BYTES, decode_in_slices
from shoal.protocol.tokens import Keyring, Token
from shoal.protocol.transports import Transport

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 5.0
# drain() waits while more than this many bytes are queued for the socket.
WRITE_HIGH_WATER = 4 * 1024 * 1024
# Reading pauses while this many received messages wait for read().
INBOX_HIGH_WATER = 100_000
# Back-pressure on a peer that sends requests and does not read the answers.
# Above QUEUE_HIGH_WATER bytes queued for the socket, reading from the peer
# pauses: its requests wait in the kernel, so it cannot make us queue more than
# the answers to what we had read. Reading resumes at QUEUE_LOW_WATER. A peer
# that lets the queue stay above the mark and takes no byte of it for
# STALL_TIMEOUT_S is disconnected with that reason.
QUEUE_HIGH_WATER = 8 * 1024 * 1024
QUEUE_LOW_WATER = 1024 * 1024
STALL_TIMEOUT_S = 30.0
BACKLOG_CHECK_S = 0.1

_HANDSHAKE_TYPES = (Hello, Authenticate, Welcome, HandshakeFailed)


class _Undecoded:
    """A large batch waiting in the inbox: read() decodes it in slices, in its turn."""

    __slots__ = ("frames",)

    def __init__(self, frames: list[memoryview]) -> None:
        self.frames = frames


def _ignore_write_error(exc: BaseException) -> None:
    """Installed once a Comm is closed: nothing more is written, nothing to report."""


def _drop_writes(buffers: Sequence[Buffer]) -> None:
    """Installed once a Comm is closed, in place of its bound `_write` (a cycle)."""
    raise CommClosedError("the connection is closed")


class Comm:
    """One authenticated connection to a peer, carrying batches of messages.

    `send()` queues messages; all sent during one event-loop tick leave in one
    write. `read()` returns every message received since the last call. Pings
    are answered here and never reach `read()`.
    """

    def __init__(self, transport: Transport, scheme: str, limits: Limits) -> None:
        self.transport = transport
        self.limits = limits
        self.peer_address = f"{scheme}://{transport.peer}"
        self.local_address = f"{scheme}://{transport.local}"
        self.peer_role = ""
        self.peer_name = ""
        self.peer_version = ""
        # On a listener's side, the token the peer proved it holds (its role and
        # name); None without tokens, where every peer may do everything.
        self.token: Token | None = None
        self._loop = asyncio.get_running_loop()
        self._inbox: deque[Message | _Undecoded] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._closed_exc: CommClosedError | None = None
        self._handshaken = False
        self._pings: dict[int, asyncio.Future[None]] = {}
        self._ping_ids = itertools.count(1)
        # Bytes queued for the socket: the most seen (for tests and metrics), and
        # while over QUEUE_HIGH_WATER the timer that watches the peer read them.
        self.queued_peak = 0
        self._backlog: asyncio.TimerHandle | None = None
        self._backlog_size = 0
        self._backlog_since = 0.0
        self._outbox = Outbox(self._write, HANDSHAKE_LIMITS)
        self._peer_limits = HANDSHAKE_LIMITS
        self._outbox.on_error = self._write_failed
        transport.decoder.hold = True
        transport.on_data = self._on_data
        transport.on_lost = self._on_lost

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<Comm {self.local_address} -> {self.peer_role} {self.peer_address} {state}>"

    @property
    def access(self) -> Role:
        """The role of the peer's token (admin where the listener uses no token)."""
        return ADMIN if self.token is None else self.token.role

    @property
    def token_name(self) -> str:
        return "" if self.token is None else self.token.name

    @property
    def closed(self) -> bool:
        return self._closed_exc is not None

    # -- sending -------------------------------------------------------------

    def send(self, *msgs: Message) -> None:
        """Queue messages for this tick's batch.

        Raises:
            CommClosedError: the connection is closed.
            MessageTooLarge: one message alone is over the peer's limits.
        """
        if self._closed_exc is not None:
            raise self._closed_error()
        for msg in msgs:
            self._outbox.put(msg)

    async def drain(self) -> None:
        """Write out what is queued and wait while the socket buffer is over its mark.

        Raises:
            CommClosedError: the connection closed first.
        """
        self._outbox.flush()
        await self.transport.drain(WRITE_HIGH_WATER)
        if self._closed_exc is not None:
            raise self._closed_error()

    async def ping(self) -> float:
        """Round-trip time to the peer, in seconds.

        Raises:
            CommClosedError: the connection closed first.
        """
        ping_id = next(self._ping_ids)
        fut = self._loop.create_future()
        self._pings[ping_id] = fut
        start = time.perf_counter()
        try:
            self.send(Ping(id=ping_id))
            await fut
        finally:
            self._pings.pop(ping_id, None)
        return time.perf_counter() - start

    # -- receiving -----------------------------------------------------------

    async def read(self) -> list[Message]:
        """Every message received since the last call, at least one, in order.

        A large batch (a header of SLICED_HEADER_BYTES or more) is decoded here
        a slice at a time, yielding to the event loop between slices, so that
        other connections are served meanwhile; messages received after it
        wait for their turn.

        Raises:
            CommClosedError: the connection is closed and nothing is left to read.
        """
        msgs: list[Message] = []
        while not msgs:
            while not self._inbox:
                if self._closed_exc is not None:
                    raise self._closed_error()
                if self._waiter is not None:
                    raise RuntimeError("only one coroutine may read a Comm at a time")
                self._waiter = self._loop.create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
            inbox = self._inbox
            if type(inbox[0]) is _Undecoded:
                msgs = await self._decode_large(inbox.popleft().frames)  # type: ignore[union-attr]
            else:
                while inbox and type(inbox[0]) is not _Undecoded:
                    msgs.append(inbox.popleft())  # type: ignore[arg-type]
        if self._handshaken and not self.closed and self._backlog is None:
            self.transport.resume_reading()
        return msgs

    async def _decode_large(self, frames: list[memoryview]) -> list[Message]:
        """The messages of one large batch (maybe none: only pings), decoded in slices.

        Raises:
            CommClosedError: the connection closed meanwhile, or the batch was
                malformed (the connection is then closed with that reason).
        """
        steps = decode_in_slices(frames)
        msgs = []
        try:
            while True:
                try:
                    next(steps)
                except StopIteration as done:
                    decoded: list[Message] = done.value
                    break
                await asyncio.sleep(0)
                if self.closed:
                    steps.close()
                    raise self._closed_error()
            for msg in decoded:
                if not self._connection_message(msg):
                    msgs.append(msg)
                elif self.closed:
                    break
        except ProtocolError as exc:  # the peer's fault, as in _on_data
            self._inbox.clear()  # nothing the peer sent after bad bytes is read
            self.transport.lose(exc)
            raise self._closed_error() from None
        return msgs

    def _connection_message(self, msg: Message) -> bool:
        """Handle a message of the connection itself (ping, pong, close); False for others.

        Raises:
            HandshakeError / ProtocolError: a handshake message after the handshake.
        """
        cls = type(msg)
        if cls is Ping:
            self._outbox.put(Pong(id=cast(Ping, msg).id))
            return True
        if cls is Pong:
            fut = self._pings.get(cast(Pong, msg).id)
            if fut is not None and not fut.done():
                fut.set_result(None)
            return True
        if cls is Close:
            text = cast(Close, msg).reason
            reason = peer_text(text) if text else "no reason given"
            self._set_closed(f"closed by the peer: {reason}")
            self.transport.lose(None)
            return True
        if cls is HandshakeFailed:
            text = cast(HandshakeFailed, msg).reason
            raise HandshakeError(f"the peer refused the handshake: {peer_text(text)}")
        if cls in _HANDSHAKE_TYPES:
            raise ProtocolError(f"unexpected {msg.op} after the handshake")
        return False

    def _on_data(self) -> None:
        """Decode completed batches; a ProtocolError here closes the connection."""
        handshaken = self._handshaken
        inbox = self._inbox
        for frames in self.transport.decoder.pop():
            if handshaken and frames[0].nbytes >= SLICED_HEADER_BYTES:
                inbox.append(_Undecoded(frames))  # decoded in slices by read()
                continue
            for msg in decode_batch(frames, allow_payloads=handshaken):
                if handshaken and self._connection_message(msg):
                    if self.closed:
                        return
                    continue
                inbox.append(msg)
        if not handshaken and self.transport.decoder.holding:
            self.transport.pause_reading()
        elif len(inbox) > INBOX_HIGH_WATER:
            self.transport.pause_reading()
        self._wake()

    # -- back-pressure -------------------------------------------------------

    def _write(self, buffers: Sequence[Buffer]) -> None:
        transport = self.transport
        transport.write(buffers)
        queued = transport.write_buffer_size
        if queued > self.queued_peak:
            self.queued_peak = queued
        if queued > QUEUE_HIGH_WATER and self._backlog is None and self._handshaken:
            transport.pause_reading()
            self._backlog_size, self._backlog_since = queued, self._loop.time()
            self._backlog = self._loop.call_later(BACKLOG_CHECK_S, self._check_backlog)

    def _check_backlog(self) -> None:
        """While over the mark: resume reading once the peer took enough; cut off
        a peer that took nothing for STALL_TIMEOUT_S."""
        self._backlog = None
        if self.closed:
            return
        queued, now = self.transport.write_buffer_size, self._loop.time()
        if queued <= QUEUE_LOW_WATER:
            if len(self._inbox) <= INBOX_HIGH_WATER:
                self.transport.resume_reading()
            return
        if queued < self._backlog_size:  # it reads, slowly: that is allowed
            self._backlog_size, self._backlog_since = queued, now
        elif now - self._backlog_since >= STALL_TIMEOUT_S:
            reason = (
                f"the peer read nothing for {now - self._backlog_since:.0f} s "
                f"while {queued} bytes waited for it"
            )
            log.warning("disconnecting %s: %s", self.peer_address, reason)
            self.abort(reason)
            return
        self._backlog = self._loop.call_later(BACKLOG_CHECK_S, self._check_backlog)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- closing -------------------------------------------------------------

    def _closed_error(self) -> CommClosedError:
        """A fresh error saying why the comm closed. Raising the one stored instance
        again and again would grow its traceback with every raise and keep each
        raising frame, with its locals, alive as long as the comm."""
        assert self._closed_exc is not None
        return CommClosedError(*self._closed_exc.args)

    def _set_closed(self, reason: str) -> None:
        if self._closed_exc is None:
            self._closed_exc = CommClosedError(f"connection to {self.peer_address} {reason}")

    def _on_lost(self, exc: BaseException | None) -> None:
        # A close on purpose (ours, or the peer's Close message) set the reason already.
        if self._closed_exc is None:
            if exc is None and not self.transport.decoder.idle:
                exc = ProtocolError("connection closed in the middle of a batch")
            if isinstance(exc, ProtocolError):
                log.warning("closing connection from %s: %s", self.peer_address, exc)
            self._set_closed(f"closed: {exc}" if exc is not None else "was closed")
        if self._backlog is not None:
            self._backlog.cancel()
            self._backlog = None
        for fut in self._pings.values():
            if not fut.done():
                fut.set_exception(self._closed_error())
        # Nothing more will be written: let the outbox forget us (a bound method of
        # ours there is a reference cycle that only the cyclic GC could break).
        self._outbox.on_error = _ignore_write_error
        self._outbox._write = _drop_writes
        self._wake()

    def _write_failed(self, exc: BaseException) -> None:
        if not isinstance(exc, CommClosedError):
            log.error("writing to %s failed", self.peer_address, exc_info=exc)
        self.transport.lose(exc)

    def abort(self, reason: str = "aborted") -> None:
        """Close at once; queued messages are dropped."""
        self._set_closed(f"closed locally: {reason}")
        self.transport.lose(None)

    async def close(self, reason: str = "") -> None:
        """Tell the peer why, write out what is queued, and close."""
        if self.closed:
            return
        if self._handshaken:
            self._outbox.put(Close(reason=reason))
        self._outbox.flush()
        self._set_closed(f"closed locally{': ' + reason if reason else ''}")
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self.transport.finish()
        except (TimeoutError, CommClosedError):
            pass  # the peer stopped reading; nothing more to say to it
        self.transport.lose(None)

    # -- handshake -----------------------------------------------------------

    async def _next_handshake_message(self) -> Message:
        while not self._inbox:
            if self._closed_exc is not None:
                raise self._closed_error()
            if self.transport.decoder.holding:
                self.transport.decoder.resume()
                self.transport._received()
                continue
            self.transport.resume_reading()
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        msg = self._inbox.popleft()
        assert isinstance(msg, Message), "batches are decoded in slices only after the handshake"
        return msg

    def _accept_peer(self, hello: Hello) -> None:
        self.peer_role, self.peer_name, self.peer_version = hello.role, hello.name, hello.version
        self._peer_limits = hs.peer_limits(hello)

    async def _refuse(self, reason: str) -> None:
        # The peer is still under the handshake limits: keep the reason short.
        self._outbox.put(HandshakeFailed(reason=reason[:1000]))
        self._outbox.flush()
        try:
            async with asyncio.timeout(1.0):
                await self.transport.finish()
        except (TimeoutError, CommClosedError):
            pass
        self.transport.lose(None)

    def _handshake_done(self) -> None:
        if self._inbox:
            first = self._inbox[0]
            what = first.op if isinstance(first, Message) else "batch"
            raise ProtocolError(f"unexpected {what} during the handshake")
        self._handshaken = True
        self._outbox.limits = self._peer_limits
        decoder = self.transport.decoder
        decoder.limits = self.limits
        decoder.hold = False
        decoder.resume()
        self.transport._received()
        self.transport.resume_reading()


async def connector_handshake(comm: Comm, role: str, name: str, token: bytes | None) -> None:
    hello = hs.make_hello(role, name, token, comm.limits)
    theirs = await comm._next_handshake_message()
    if isinstance(theirs, HandshakeFailed):
        raise HandshakeError(
            f"{comm.peer_address} refused the connection: {peer_text(theirs.reason)}"
        )
    if not isinstance(theirs, Hello):
        raise ProtocolError(f"expected hello from {comm.peer_address}, got {theirs.op}")
    peer = hs.describe(theirs, comm.peer_address)
    reason = hs.incompatibility(hello, theirs, comm.peer_address)
    if reason is None and theirs.auth and token is None:
        reason = f"the {peer} requires a cluster token and none was given"
    if reason is None and token is not None and not theirs.auth:
        reason = f"a cluster token was given but the {peer} does not use one"
    if reason is not None:
        await comm._refuse(reason)
        raise HandshakeError(reason)
    comm._accept_peer(theirs)
    if token is None:
        comm.send(hello)
    else:
        own_proof = hs.proof(token, "connector", theirs.nonce, hello.nonce)
        comm.send(hello, Authenticate(proof=own_proof))
    reply = await comm._next_handshake_message()
    if isinstance(reply, HandshakeFailed):
        raise HandshakeError(f"the {peer} refused the handshake: {peer_text(reply.reason)}")
    if not isinstance(reply, Welcome):
        raise ProtocolError(f"expected welcome from {comm.peer_address}, got {reply.op}")
    if token is not None:
        expected = hs.proof(token, "listener", theirs.nonce, hello.nonce)
        if not hs.proof_matches(expected, reply.proof):
            reason = f"the {peer} could not prove it holds the cluster token: its token differs"
            await comm._refuse(reason)
            raise HandshakeError(reason)
    comm._handshake_done()


async def listener_handshake(comm: Comm, role: str, name: str, keyring: Keyring | None) -> None:
    """The listener's side; with a keyring, the connector's proof must match one of
    its tokens, which becomes `comm.token` (the connection's role and name)."""
    # make_hello reads only whether there is a token: its hello says auth = True.
    hello = hs.make_hello(role, name, b"" if keyring is not None else None, comm.limits)
    comm._outbox.put(hello)
    theirs = await comm._next_handshake_message()
    if isinstance(theirs, HandshakeFailed):
        raise HandshakeError(f"the peer gave up the handshake: {peer_text(theirs.reason)}")
    if not isinstance(theirs, Hello):
        raise ProtocolError(f"expected hello, got {theirs.op}")
    peer = hs.describe(theirs, comm.peer_address)
    reason = hs.incompatibility(hello, theirs, comm.peer_address)
    if reason is None and keyring is not None and not theirs.auth:
        reason = f"missing cluster token: this {role} requires one and the {peer} gave none"
    if reason is None and keyring is None and theirs.auth:
        reason = f"the {peer} offers a cluster token but this {role} does not use one"
    token = None
    if reason is None and keyring is not None:
        auth = await comm._next_handshake_message()
        if not isinstance(auth, Authenticate):
            raise ProtocolError(f"expected authenticate, got {auth.op}")
        token = keyring.match(
            lambda secret: hs.proof(secret, "connector", hello.nonce, theirs.nonce), auth.proof
        )
        if token is None:
            reason = f"wrong cluster token from the {peer}"
    if reason is not None:
        await comm._refuse(reason)
        raise HandshakeError(reason)
    comm._accept_peer(theirs)
    comm.token = token
    own_proof = (
        b"" if token is None else hs.proof(token.secret, "listener", hello.nonce, theirs.nonce)
    )
    comm._outbox.put(Welcome(proof=own_proof))
    comm._outbox.flush()  # alone: the connector parses it under the handshake limits
    comm._handshake_done()
