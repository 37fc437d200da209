"""Opening connections: `connect()` and `listen()` over tcp://, tls:// and inproc://.

Each returns or hands over a `Comm` (shoal.protocol.connection) only after
the handshake succeeded. A listener serves every connection on its own: a
failed handshake or bad bytes cost that one connection, never the listener.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable

from shoal.errors import CommClosedError, ProtocolError
from shoal.protocol import handshake as hs
from shoal.protocol.address import Address, parse_address
from shoal.protocol.connection import (
    HANDSHAKE_TIMEOUT_S,
    Comm,
    connector_handshake,
    listener_handshake,
)
from shoal.protocol.escape import peer_text
from shoal.protocol.frames import FrameDecoder
from shoal.protocol.limits import DEFAULT_LIMITS, HANDSHAKE_LIMITS, Limits
from shoal.protocol.refusals import RefusalLog, Summary
from shoal.protocol.tls import TLSConfig
from shoal.protocol.tokens import Keyring
from shoal.protocol.transports import (
    SocketTransport,
    StreamTransport,
    format_sockname,
    inproc_pair,
)

__all__ = ["Comm", "Listener", "connect", "listen"]

log = logging.getLogger(__name__)

Handler = Callable[[Comm], Awaitable[None]]
# Told of each refusal logged in full and each count of those left out (for an
# audit log): an event name and its fields, plain data with no secret in it.
EventHook = Callable[[str, dict[str, object]], None]

# -- refusals ----------------------------------------------------------------------


class RefusalReporter:
    """Logs refusals (of connections, of HTTP requests) as `log` (a RefusalLog)
    decides: a few per host and window in full, then one count when the window
    ends (a timer: even if nobody is refused then). `on_event`, if given, hears
    of each line: `full_event` with the caller's fields and the reason,
    `count_event` with the host, count, seconds and last reason."""

    def __init__(
        self, on_event: EventHook | None, full_event: str, count_event: str, log: RefusalLog
    ) -> None:
        self.on_event, self.full_event, self.count_event = on_event, full_event, count_event
        self.log = log
        self._timer: asyncio.TimerHandle | None = None

    def refused(self, peer: str, line: str, fields: dict[str, object]) -> None:
        """A refusal of `peer` (scheme://host:port or host) for `line`."""
        line = peer_text(line, 1000)  # reasons quote what the peer sent
        host = _host_of(peer)
        full, summaries = self.log.refused(host, line, time.monotonic())
        if full:
            log.warning("%s", line)
            if self.on_event is not None:
                self.on_event(self.full_event, {**fields, "reason": line})
        self._summarised(summaries)
        if self.log.pending and self._timer is None:
            self._arm()

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.log.window_s, self._due)

    def _due(self) -> None:
        self._timer = None
        self._summarised(self.log.expire(time.monotonic()))
        if self.log.pending:
            self._arm()

    def _summarised(self, summaries: list[Summary]) -> None:
        for summary in summaries:
            log.warning("%s", summary)
            if self.on_event is not None:
                self.on_event(
                    self.count_event,
                    {
                        "host": summary.host,
                        "count": summary.count,
                        "seconds": round(summary.seconds, 3),
                        "last_reason": summary.last_reason,
                    },
                )

    def close(self) -> None:
        """Summarise every open window (the listener stops)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._summarised(self.log.close(time.monotonic()))


def _host_of(peer: str) -> str:
    """The host part of scheme://host:port (an IPv6 host keeps its colons)."""
    return peer.rsplit(":", 1)[0] if peer.count(":") > 1 else peer


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
            await connector_handshake(comm, role, name, secret)
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
        try:
            return await _wrap(
                sock,
                addr.scheme,
                tls,
                limits,
                server_side=False,
                host=addr.host,
                ssl_timeout=timeout,
            )
        except BaseException:
            # A peer that resets the connection at once (a listener going away as
            # it accepts) fails getpeername() in the transport: close the socket.
            sock.close()
            raise
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

    A failed handshake or bad bytes cost that one connection (one WARNING, a
    few per host and window, then a count); an exception in `handler` is logged
    with its traceback. `on_event`, if given, hears of each refusal logged in
    full and of each count of those left out. `close()` stops
    accepting, cancels the handlers and closes their connections.
    """

    def __init__(
        self,
        address: Address,
        handler: Handler,
        role: str,
        name: str,
        keyring: Keyring | None,
        tls: TLSConfig | None,
        limits: Limits,
        handshake_timeout: float,
        sock: socket.socket | None = None,
        on_event: EventHook | None = None,
    ) -> None:
        self._bind = address
        self._given = sock
        self.address = str(address)
        self._handler = handler
        self._role, self._name, self.keyring = role, name, keyring
        self._tls, self._limits = tls, limits
        self._handshake_timeout = handshake_timeout
        self._sock: socket.socket | None = None
        self._serving: asyncio.Task[None] | None = None
        self._group: asyncio.TaskGroup | None = None
        self.comms: set[Comm] = set()
        self.refusals = RefusalReporter(
            on_event, "connection-refused", "connections-refused", RefusalLog()
        )

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
            sock = self._given or socket.create_server(
                (bind.host, bind.port), family=family, backlog=1024
            )
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
            sock = self._sock
            if sock is None:  # inproc: connections arrive through _accept_inproc
                await asyncio.Event().wait()
                return
            while True:
                try:
                    conn, _ = await loop.sock_accept(sock)
                except OSError as exc:  # out of file descriptors, say: keep listening
                    log.warning("accept on %s failed: %s", self.address, exc)
                    await asyncio.sleep(0.1)
                    continue
                group.create_task(self._handle(conn=conn))

    async def _handle(self, comm: Comm | None = None, conn: socket.socket | None = None) -> None:
        """Handshake (TLS included) under one deadline, then run the handler."""
        if comm is not None:
            peer = comm.peer_address
        else:
            assert conn is not None
            peer = _peer_of(conn, self._bind.scheme)
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
                    await listener_handshake(comm, self._role, self._name, self.keyring)
            except ProtocolError as exc:
                self._log_refusal(peer, f"refused connection from {peer}: {exc}")
                return
            except TimeoutError:
                timeout = self._handshake_timeout
                self._log_refusal(peer, f"handshake with {peer} timed out after {timeout:.1f} s")
                return
            except ssl.SSLError as exc:  # a certificate refused either way: the peer's fault
                self._log_refusal(peer, f"refused TLS connection from {peer}: {exc}")
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

    async def serving(self) -> None:
        """Wait while the listener accepts connections; return once close() stopped it.

        Raises:
            Exception: the bug that stopped its accept loop, for its owner to treat
                as its own internal error.
        """
        serving = self._serving
        if serving is None:
            return
        await asyncio.wait({serving})  # not `await serving`: a cancelled waiter leaves it be
        if not serving.cancelled():
            serving.result()

    def _log_refusal(self, peer: str, line: str) -> None:
        """One WARNING per refusal, up to a few per host and window; then a count."""
        self.refusals.refused(peer, line, {"peer": peer})

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
        self.refusals.close()

    async def __aenter__(self) -> Listener:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def check_tls_required(addr: Address, require_tls: bool, who: str) -> None:
    """With `require_tls`, a tcp:// address is refused (inproc:// never leaves
    the process).

    Raises:
        PermissionError: naming the address and `who` requires TLS.
    """
    if require_tls and addr.scheme == "tcp":
        raise PermissionError(
            f"{who} requires TLS (--require-tls) and refuses the plain address {addr}: "
            "use tls:// with a certificate"
        )


def _peer_of(conn: socket.socket, scheme: str) -> str:
    try:
        return f"{scheme}://{format_sockname(conn.getpeername())}"
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
    keyring: Keyring | None = None,
    tls: TLSConfig | None = None,
    limits: Limits = DEFAULT_LIMITS,
    handshake_timeout: float = HANDSHAKE_TIMEOUT_S,
    allow_insecure: bool = False,
    require_tls: bool = False,
    sock: socket.socket | None = None,
    on_event: EventHook | None = None,
) -> Listener:
    """Listen at `address` (port 0 picks a free port: read `Listener.address`).

    Returns once the listener accepts connections. `sock`, a socket already
    bound and listening at `address`, is used instead of binding one. A peer
    must prove it holds `token` (which then has the admin role) or one of the
    tokens of `keyring` (each with its role); `Comm.token` says which.

    Raises:
        PermissionError: a non-loopback address without a token, unless
            `allow_insecure`: anyone who reaches the port could run code; or a
            tcp:// address with `require_tls`.
        ValueError: both `token` and `keyring`.
        OSError: the address cannot be bound.
    """
    addr = parse_address(address)
    hs.check_role(role)
    secret = hs.token_bytes(token)
    if secret is not None:
        if keyring is not None:
            raise ValueError("give a token or a keyring, not both")
        keyring = Keyring.single(secret)
    check_tls_required(addr, require_tls, f"this {role}")
    if keyring is None and not addr.is_loopback and not allow_insecure:
        raise PermissionError(
            f"refusing to listen on {addr} without a cluster token: anyone who can reach "
            "the port could run code here. Set a token, or allow insecure listening explicitly."
        )
    listener = Listener(
        addr, handler, role, name, keyring, tls, limits, handshake_timeout, sock, on_event
    )
    await listener._start()
    return listener
