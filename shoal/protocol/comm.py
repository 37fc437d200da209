"""Connections: `connect()` and `listen()` over tcp://, tls:// and inproc://.

A Comm exists for the caller only after the handshake succeeded; until then
the peer may send only tiny handshake batches and no payloads, so nothing is
unpickled and little is allocated for a stranger. Bad bytes from a peer close
its connection with one WARNING; the listener goes on serving everyone else.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable

from shoal.errors import CommClosedError, HandshakeError, ProtocolError
from shoal.protocol import handshake as hs
from shoal.protocol.address import Address, parse_address
from shoal.protocol.batched import Outbox
from shoal.protocol.codec import decode_batch
from shoal.protocol.frames import FrameDecoder
from shoal.protocol.limits import DEFAULT_LIMITS, HANDSHAKE_LIMITS, Limits
from shoal.protocol.messages import (
    Authenticate,
    Close,
    HandshakeFailed,
    Hello,
    Ping,
    Pong,
    Welcome,
)
from shoal.protocol.schema import Message
from shoal.protocol.tls import TLSConfig
from shoal.protocol.transports import (
    SocketTransport,
    StreamTransport,
    Transport,
    format_sockname,
    inproc_pair,
)

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 5.0
# drain() waits while more than this many bytes are queued for the socket.
WRITE_HIGH_WATER = 4 * 1024 * 1024
# Reading pauses while this many received messages wait for read().
INBOX_HIGH_WATER = 100_000

_HANDSHAKE_TYPES = (Hello, Authenticate, Welcome, HandshakeFailed)


def _ignore_write_error(exc: BaseException) -> None:
    """Installed once a Comm is closed: nothing more is written, nothing to report."""


Handler = Callable[["Comm"], Awaitable[None]]


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
        self._loop = asyncio.get_running_loop()
        self._inbox: deque[Message] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._closed_exc: CommClosedError | None = None
        self._handshaken = False
        self._pings: dict[int, asyncio.Future[None]] = {}
        self._ping_ids = itertools.count(1)
        self._outbox = Outbox(transport.write, HANDSHAKE_LIMITS)
        self._peer_limits = HANDSHAKE_LIMITS
        self._outbox.on_error = self._write_failed
        transport.decoder.hold = True
        transport.on_data = self._on_data
        transport.on_lost = self._on_lost

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<Comm {self.local_address} -> {self.peer_role} {self.peer_address} {state}>"

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

        Raises:
            CommClosedError: the connection is closed and nothing is left to read.
        """
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
        msgs = list(self._inbox)
        self._inbox.clear()
        if self._handshaken and not self.closed:
            self.transport.resume_reading()
        return msgs

    def _on_data(self) -> None:
        """Decode completed batches; a ProtocolError here closes the connection."""
        handshaken = self._handshaken
        for frames in self.transport.decoder.pop():
            for msg in decode_batch(frames, allow_payloads=handshaken):
                if handshaken:
                    cls = type(msg)
                    if cls is Ping:
                        self._outbox.put(Pong(id=msg.id))
                        continue
                    if cls is Pong:
                        fut = self._pings.get(msg.id)
                        if fut is not None and not fut.done():
                            fut.set_result(None)
                        continue
                    if cls is Close:
                        self._set_closed(f"closed by the peer: {msg.reason or 'no reason given'}")
                        self.transport.lose(None)
                        return
                    if cls is HandshakeFailed:
                        raise HandshakeError(f"the peer refused the handshake: {msg.reason}")
                    if cls in _HANDSHAKE_TYPES:
                        raise ProtocolError(f"unexpected {msg.op} after the handshake")
                self._inbox.append(msg)
        if not handshaken and self.transport.decoder.holding:
            self.transport.pause_reading()
        elif len(self._inbox) > INBOX_HIGH_WATER:
            self.transport.pause_reading()
        self._wake()

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
        for fut in self._pings.values():
            if not fut.done():
                fut.set_exception(self._closed_error())
        # Nothing more will be written: let the outbox forget us (a bound method of
        # ours there is a reference cycle that only the cyclic GC could break).
        self._outbox.on_error = _ignore_write_error
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
        return self._inbox.popleft()

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
            raise ProtocolError(f"unexpected {self._inbox[0].op} during the handshake")
        self._handshaken = True
        self._outbox.limits = self._peer_limits
        decoder = self.transport.decoder
        decoder.limits = self.limits
        decoder.hold = False
        decoder.resume()
        self.transport._received()
        self.transport.resume_reading()


async def _connector_handshake(comm: Comm, role: str, name: str, token: bytes | None) -> None:
    hello = hs.make_hello(role, name, token, comm.limits)
    theirs = await comm._next_handshake_message()
    if isinstance(theirs, HandshakeFailed):
        raise HandshakeError(f"{comm.peer_address} refused the connection: {theirs.reason}")
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
        raise HandshakeError(f"the {peer} refused the handshake: {reply.reason}")
    if not isinstance(reply, Welcome):
        raise ProtocolError(f"expected welcome from {comm.peer_address}, got {reply.op}")
    if token is not None:
        expected = hs.proof(token, "listener", theirs.nonce, hello.nonce)
        if not hs.proof_matches(expected, reply.proof):
            reason = f"the {peer} could not prove it holds the cluster token: its token differs"
            await comm._refuse(reason)
            raise HandshakeError(reason)
    comm._handshake_done()


async def _listener_handshake(comm: Comm, role: str, name: str, token: bytes | None) -> None:
    hello = hs.make_hello(role, name, token, comm.limits)
    comm._outbox.put(hello)
    theirs = await comm._next_handshake_message()
    if isinstance(theirs, HandshakeFailed):
        raise HandshakeError(f"the peer gave up the handshake: {theirs.reason}")
    if not isinstance(theirs, Hello):
        raise ProtocolError(f"expected hello, got {theirs.op}")
    peer = hs.describe(theirs, comm.peer_address)
    reason = hs.incompatibility(hello, theirs, comm.peer_address)
    if reason is None and token is not None and not theirs.auth:
        reason = f"missing cluster token: this {role} requires one and the {peer} gave none"
    if reason is None and token is None and theirs.auth:
        reason = f"the {peer} offers a cluster token but this {role} does not use one"
    if reason is None and token is not None:
        auth = await comm._next_handshake_message()
        if not isinstance(auth, Authenticate):
            raise ProtocolError(f"expected authenticate, got {auth.op}")
        expected = hs.proof(token, "connector", hello.nonce, theirs.nonce)
        if not hs.proof_matches(expected, auth.proof):
            reason = f"wrong cluster token from the {peer}"
    if reason is not None:
        await comm._refuse(reason)
        raise HandshakeError(reason)
    comm._accept_peer(theirs)
    own_proof = b"" if token is None else hs.proof(token, "listener", hello.nonce, theirs.nonce)
    comm._outbox.put(Welcome(proof=own_proof))
    comm._outbox.flush()  # alone: the connector parses it under the handshake limits
    comm._handshake_done()


# -- connect ----------------------------------------------------------------------


async def connect(
    address: str,
    *,
    role: str = "client",
    name: str = "",
    token: str | bytes | None = None,
    tls: TLSConfig | None = None,
    limits: Limits = DEFAULT_LIMITS,
    timeout: float = HANDSHAKE_TIMEOUT_S,
) -> Comm:
    """Open a connection and complete the handshake within `timeout` seconds.

    Raises:
        HandshakeError: wrong or missing token, or incompatible versions; the
            message names both sides' versions.
        OSError / TimeoutError: nothing answered at `address`.
        ValueError: a malformed address, or tls:// without a TLSConfig.
    """
    addr = parse_address(address)
    hs.check_role(role)
    secret = hs.token_bytes(token)
    comm: Comm | None = None
    try:
        async with asyncio.timeout(timeout):
            if addr.scheme == "inproc":
                comm = _inproc_connect(addr, limits)
            else:
                comm = await _tcp_connect(addr, tls, limits, timeout)
            await _connector_handshake(comm, role, name, secret)
    except BaseException:
        if comm is not None:
            comm.abort("handshake did not complete")
        raise
    return comm


async def _tcp_connect(
    addr: Address, tls: TLSConfig | None, limits: Limits, timeout: float
) -> Comm:
    if addr.scheme == "tls" and tls is None:
        raise ValueError(f"{addr} needs a TLSConfig (tls=)")
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(addr.host, addr.port, type=socket.SOCK_STREAM)
    error: OSError | None = None
    for family, kind, proto, _, sockaddr in infos:
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, sockaddr)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        except BaseException:
            sock.close()
            raise
        return await _wrap(
            sock, addr.scheme, tls, limits, server_side=False, host=addr.host, ssl_timeout=timeout
        )
    raise error or OSError(f"could not resolve {addr}")


async def _wrap(
    sock: socket.socket,
    scheme: str,
    tls: TLSConfig | None,
    limits: Limits,
    server_side: bool,
    host: str = "",
    ssl_timeout: float = HANDSHAKE_TIMEOUT_S,
) -> Comm:
    decoder = FrameDecoder(HANDSHAKE_LIMITS)
    if scheme != "tls":
        return Comm(SocketTransport(sock, decoder), scheme, limits)
    assert tls is not None
    stream = StreamTransport(decoder)
    loop = asyncio.get_running_loop()
    if server_side:
        await loop.connect_accepted_socket(
            lambda: stream.protocol,
            sock,
            ssl=tls.server_context(),
            ssl_handshake_timeout=ssl_timeout,
        )
    else:
        await loop.create_connection(
            lambda: stream.protocol,
            sock=sock,
            ssl=tls.client_context(),
            server_hostname=host,
            ssl_handshake_timeout=ssl_timeout,
        )
    return Comm(stream, scheme, limits)


# -- listen -----------------------------------------------------------------------

_INPROC: dict[str, Listener] = {}
_inproc_ids = itertools.count(1)


class Listener:
    """Accepts connections, runs the handshake, and hands each Comm to `handler`.

    A failed handshake or bad bytes cost that one connection (one WARNING);
    an exception in `handler` is logged with its traceback. `close()` stops
    accepting, cancels the handlers and closes their connections.
    """

    def __init__(
        self,
        address: Address,
        handler: Handler,
        role: str,
        name: str,
        token: bytes | None,
        tls: TLSConfig | None,
        limits: Limits,
        handshake_timeout: float,
    ) -> None:
        self._bind = address
        self.address = str(address)
        self._handler = handler
        self._role, self._name, self._token = role, name, token
        self._tls, self._limits = tls, limits
        self._handshake_timeout = handshake_timeout
        self._sock: socket.socket | None = None
        self._serving: asyncio.Task[None] | None = None
        self._group: asyncio.TaskGroup | None = None
        self.comms: set[Comm] = set()

    async def _start(self) -> None:
        bind = self._bind
        if bind.scheme == "inproc":
            name = bind.host or f"{self._role}-{next(_inproc_ids)}"
            if name in _INPROC:
                raise OSError(f"inproc://{name} is already listening")
            self._bind = Address("inproc", name, 0)
            self.address = str(self._bind)
            _INPROC[name] = self
        else:
            if bind.scheme == "tls":
                if self._tls is None:
                    raise ValueError(f"{bind} needs a TLSConfig (tls=)")
                self._tls.server_context()  # fail now, not on the first connection
            family = socket.AF_INET6 if ":" in bind.host else socket.AF_INET
            sock = socket.create_server((bind.host, bind.port), family=family, backlog=1024)
            sock.setblocking(False)
            self._sock = sock
            port = sock.getsockname()[1]
            self._bind = Address(bind.scheme, bind.host, port)
            self.address = str(self._bind)
        started = asyncio.get_running_loop().create_future()
        self._serving = asyncio.create_task(self._serve(started), name=f"listen {self.address}")
        await started

    async def _serve(self, started: asyncio.Future[None]) -> None:
        loop = asyncio.get_running_loop()
        async with asyncio.TaskGroup() as group:
            self._group = group
            started.set_result(None)
            if self._sock is None:
                await asyncio.Event().wait()  # inproc: connections arrive through _accept_inproc
            while True:
                try:
                    conn, _ = await loop.sock_accept(self._sock)
                except OSError as exc:  # out of file descriptors, say: keep listening
                    log.warning("accept on %s failed: %s", self.address, exc)
                    await asyncio.sleep(0.1)
                    continue
                group.create_task(self._handle_socket(conn))

    async def _handle_socket(self, conn: socket.socket) -> None:
        await self._handle(conn=conn)

    async def _handle(self, comm: Comm | None = None, conn: socket.socket | None = None) -> None:
        """Handshake (TLS included) under one deadline, then run the handler."""
        peer = comm.peer_address if comm is not None else _peer_of(conn, self._bind.scheme)
        try:
            try:
                async with asyncio.timeout(self._handshake_timeout):
                    if comm is None:
                        assert conn is not None
                        comm = await _wrap(
                            conn,
                            self._bind.scheme,
                            self._tls,
                            self._limits,
                            True,
                            ssl_timeout=self._handshake_timeout,
                        )
                    await _listener_handshake(comm, self._role, self._name, self._token)
            except ProtocolError as exc:
                log.warning("refused connection from %s: %s", peer, exc)
                return
            except TimeoutError:
                log.warning(
                    "handshake with %s timed out after %.1f s", peer, self._handshake_timeout
                )
                return
            except ssl.SSLError as exc:  # a certificate refused either way: the peer's fault
                log.warning("refused TLS connection from %s: %s", peer, exc)
                return
            except (CommClosedError, OSError) as exc:
                log.debug("connection from %s ended during the handshake: %s", peer, exc)
                return
            self.comms.add(comm)
            try:
                await self._handler(comm)
            except CommClosedError:
                return  # the peer went away; that is the handler's normal end
            except Exception:  # shell boundary: one handler's bug must not stop the listener
                log.error("handler for %s on %s failed", peer, self.address, exc_info=True)
                return
            await comm.close()  # the handler is done: deliver what it sent, then close
        finally:
            if comm is not None:
                self.comms.discard(comm)
                comm.abort("listener done with it")
            elif conn is not None:
                conn.close()

    def _accept_inproc(self, comm: Comm) -> None:
        if self._group is None:
            raise ConnectionRefusedError(f"{self.address} is not serving")
        self._group.create_task(self._handle(comm=comm))

    async def close(self) -> None:
        """Stop accepting; cancel every handler; close every connection."""
        if self._bind.scheme == "inproc":
            _INPROC.pop(self._bind.host, None)
        if self._serving is not None:
            self._serving.cancel()
            try:
                await self._serving
            except asyncio.CancelledError:
                pass
            self._serving = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def __aenter__(self) -> Listener:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _peer_of(conn: socket.socket | None, scheme: str) -> str:
    try:
        return f"{scheme}://{format_sockname(conn.getpeername())}"  # type: ignore[union-attr]
    except OSError:
        return "an unknown peer"


def _inproc_connect(addr: Address, limits: Limits) -> Comm:
    listener = _INPROC.get(addr.host)
    if listener is None:
        raise ConnectionRefusedError(f"nothing listens at {addr}")
    ours, theirs = inproc_pair(
        FrameDecoder(HANDSHAKE_LIMITS), FrameDecoder(HANDSHAKE_LIMITS), addr.host
    )
    listener._accept_inproc(Comm(theirs, "inproc", listener._limits))
    return Comm(ours, "inproc", limits)


async def listen(
    address: str,
    handler: Handler,
    *,
    role: str = "scheduler",
    name: str = "",
    token: str | bytes | None = None,
    tls: TLSConfig | None = None,
    limits: Limits = DEFAULT_LIMITS,
    handshake_timeout: float = HANDSHAKE_TIMEOUT_S,
    allow_insecure: bool = False,
) -> Listener:
    """Listen at `address` (port 0 picks a free port: read `Listener.address`).

    Returns once the listener accepts connections.

    Raises:
        PermissionError: a non-loopback address without a token, unless
            `allow_insecure`: anyone who reaches the port could run code.
        OSError: the address cannot be bound.
    """
    addr = parse_address(address)
    hs.check_role(role)
    secret = hs.token_bytes(token)
    if secret is None and not addr.is_loopback and not allow_insecure:
        raise PermissionError(
            f"refusing to listen on {addr} without a cluster token: anyone who can reach "
            "the port could run code here. Set a token, or allow insecure listening explicitly."
        )
    listener = Listener(addr, handler, role, name, secret, tls, limits, handshake_timeout)
    await listener._start()
    return listener
