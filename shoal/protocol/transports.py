"""Byte movers under a Comm: raw TCP sockets, TLS streams, in-process pairs.

A transport reads into the FrameDecoder it is given (large frames straight
into their own buffers) and calls `on_data()` after each read; it writes
lists of buffers without joining them. It knows nothing of messages.
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from collections.abc import Callable, Sequence
from itertools import islice

from shoal.errors import CommClosedError, ProtocolError
from shoal.protocol.frames import FrameDecoder

Buffer = bytes | bytearray | memoryview

# sendmsg takes at most IOV_MAX (1024 on Linux) buffers per call.
_IOV_BATCH = 512
# Reads into a large frame taken per readiness callback before yielding to
# other connections; a read of small messages always yields after it.
_READS_PER_WAKEUP = 16


def _byte_view(buf: Buffer) -> memoryview:
    view = memoryview(buf)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def _ignore_data() -> None:
    """No owner (yet, or any more) for incoming bytes."""


def _ignore_lost(exc: BaseException | None) -> None:
    """No owner (yet, or any more) to tell of the close."""


class Transport:
    """Base: flow control and the callbacks shared by every transport."""

    def __init__(self, decoder: FrameDecoder) -> None:
        self.decoder = decoder
        self.on_data: Callable[[], None] = _ignore_data
        self.on_lost: Callable[[BaseException | None], None] = _ignore_lost
        self.closed = False
        self.peer = ""
        self.local = ""
        self._drain_waiters: list[asyncio.Future[None]] = []

    # Subclasses implement these.
    def write(self, buffers: Sequence[Buffer]) -> None:
        raise NotImplementedError

    @property
    def write_buffer_size(self) -> int:
        raise NotImplementedError

    def pause_reading(self) -> None:
        raise NotImplementedError

    def resume_reading(self) -> None:
        raise NotImplementedError

    def _shut(self) -> None:
        raise NotImplementedError

    # Shared.
    async def drain(self, low: int = 0) -> None:
        """Wait until at most `low` bytes are waiting to be written."""
        while self.write_buffer_size > low:
            if self.closed:
                raise CommClosedError("connection closed while writing")
            fut = asyncio.get_running_loop().create_future()
            self._drain_waiters.append(fut)
            await fut

    async def finish(self) -> None:
        """Write out everything queued, then close."""
        await self.drain(0)
        self.lose(None)

    def _wake_drainers(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def _received(self) -> None:
        """Hand new bytes to the owner; a ProtocolError there is the peer's fault."""
        try:
            self.on_data()
        except ProtocolError as exc:
            self.lose(exc)

    def lose(self, exc: BaseException | None) -> None:
        """Close at once (nothing more is written) and report why, once."""
        if self.closed:
            return
        self.closed = True
        self._shut()
        self._wake_drainers()
        on_lost, self.on_lost = self.on_lost, _ignore_lost
        # The owner's callbacks are its bound methods: keeping them would make a
        # reference cycle holding a dead connection's buffers until the cyclic GC.
        self.on_data = _ignore_data
        on_lost(exc)


class SocketTransport(Transport):
    """A non-blocking TCP socket driven by the event loop's reader/writer callbacks.

    Writes go out with sendmsg straight from the caller's buffers; whatever
    the kernel does not take at once waits as memoryviews, never copied.
    """

    def __init__(self, sock: socket.socket, decoder: FrameDecoder) -> None:
        super().__init__(decoder)
        self._loop = asyncio.get_running_loop()
        self._sock = sock
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._fd = sock.fileno()
        self.peer = format_sockname(sock.getpeername())
        self.local = format_sockname(sock.getsockname())
        self._queue: deque[memoryview] = deque()
        self._queued = 0
        self._writer_on = False
        self._reading = True
        self._loop.add_reader(self._fd, self._on_readable)

    @property
    def write_buffer_size(self) -> int:
        return self._queued

    def pause_reading(self) -> None:
        if self._reading and not self.closed:
            self._reading = False
            self._loop.remove_reader(self._fd)

    def resume_reading(self) -> None:
        if not self._reading and not self.closed:
            self._reading = True
            self._loop.add_reader(self._fd, self._on_readable)

    def _on_readable(self) -> None:
        decoder = self.decoder
        for _ in range(_READS_PER_WAKEUP):
            buf = decoder.get_buffer()
            try:
                n = self._sock.recv_into(buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.lose(CommClosedError(f"connection to {self.peer} broke: {exc}"))
                return
            if n == 0:
                self.lose(None)
                return
            try:
                decoder.buffer_updated(n)
            except ProtocolError as exc:
                self.lose(exc)
                return
            self._received()
            # Read on only into a large frame, which is a copy, not parsing. After
            # a read of small messages (up to SCRATCH_BYTES of them to decode),
            # let the loop run the handlers and the other connections first.
            if (
                self.closed
                or not self._reading
                or n < buf.nbytes
                or not decoder.filling_large_frame
            ):
                return

    def write(self, buffers: Sequence[Buffer]) -> None:
        if self.closed:
            raise CommClosedError(f"connection to {self.peer} is closed")
        for buf in buffers:
            view = _byte_view(buf)
            if view.nbytes:
                self._queue.append(view)
                self._queued += view.nbytes
        if not self._writer_on:
            self._send_some()
            if self._queue and not self.closed:
                self._writer_on = True
                self._loop.add_writer(self._fd, self._on_writable)

    def _on_writable(self) -> None:
        self._send_some()
        if not self._queue and self._writer_on and not self.closed:
            self._writer_on = False
            self._loop.remove_writer(self._fd)

    def _send_some(self) -> None:
        queue = self._queue
        while queue:
            try:
                sent = self._sock.sendmsg(list(islice(queue, _IOV_BATCH)))
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self.lose(CommClosedError(f"connection to {self.peer} broke: {exc}"))
                return
            self._queued -= sent
            while sent:
                head = queue[0]
                if sent >= head.nbytes:
                    sent -= head.nbytes
                    queue.popleft()
                else:
                    queue[0] = head[sent:]
                    sent = 0
        if self._drain_waiters:  # each checks its own mark again
            self._wake_drainers()

    def _shut(self) -> None:
        if self._reading:
            self._loop.remove_reader(self._fd)
        if self._writer_on:
            self._loop.remove_writer(self._fd)
        self._queue.clear()
        self._queued = 0
        self._sock.close()


class _DecoderProtocol(asyncio.BufferedProtocol):
    """asyncio protocol feeding a FrameDecoder; used for TLS connections."""

    def __init__(self, owner: StreamTransport) -> None:
        self._owner = owner

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._owner.attach(transport)  # type: ignore[arg-type]

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._owner.decoder.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        owner = self._owner
        try:
            owner.decoder.buffer_updated(nbytes)
        except ProtocolError as exc:
            owner.lose(exc)
            return
        owner._received()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        owner = self._owner
        lost = CommClosedError(f"connection to {owner.peer} broke: {exc}") if exc else None
        owner.lose(lost)
        if owner._finished is not None and not owner._finished.done():
            owner._finished.set_result(None)
        # The last callback: break the transport <-> protocol cycle.
        self._owner = None  # type: ignore[assignment]

    def pause_writing(self) -> None:
        self._owner._paused = True

    def resume_writing(self) -> None:
        self._owner._paused = False
        self._owner._wake_drainers()


class StreamTransport(Transport):
    """An asyncio transport (TLS): encryption copies anyway, so writes may too."""

    def __init__(self, decoder: FrameDecoder) -> None:
        super().__init__(decoder)
        self.protocol = _DecoderProtocol(self)
        self._transport: asyncio.Transport | None = None
        self._paused = False
        self._finished: asyncio.Future[None] | None = None

    def attach(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        self.peer = format_sockname(peer) if peer else ""
        self.local = format_sockname(local) if local else ""

    @property
    def write_buffer_size(self) -> int:
        if self._transport is None or self.closed:
            return 0
        return self._transport.get_write_buffer_size()

    def write(self, buffers: Sequence[Buffer]) -> None:
        if self.closed or self._transport is None:
            raise CommClosedError(f"connection to {self.peer} is closed")
        self._transport.writelines(buffers)

    async def drain(self, low: int = 0) -> None:
        # The SSL transport reports its own high-water mark through pause/resume_writing.
        while self._paused:
            if self.closed:
                raise CommClosedError("connection closed while writing")
            fut = asyncio.get_running_loop().create_future()
            self._drain_waiters.append(fut)
            await fut

    async def finish(self) -> None:
        if self.closed or self._transport is None:
            return
        fut = asyncio.get_running_loop().create_future()
        self._finished = fut
        self._transport.close()  # flushes what is buffered, then connection_lost
        await fut

    def pause_reading(self) -> None:
        if self._transport is not None and not self.closed:
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._transport is not None and not self.closed:
            self._transport.resume_reading()

    def _shut(self) -> None:
        if self._transport is not None:
            self._transport.abort()


class InprocTransport(Transport):
    """One end of an in-process pair: bytes are copied into the peer's decoder."""

    def __init__(self, decoder: FrameDecoder, name: str) -> None:
        super().__init__(decoder)
        self._loop = asyncio.get_running_loop()
        self.other: InprocTransport | None = None
        self.peer = self.local = name
        self._reading = True
        self._pending: list[bytes | None] = []

    @property
    def write_buffer_size(self) -> int:
        return 0

    async def finish(self) -> None:
        # Bytes already written reach the peer before the close does (call_soon is FIFO).
        self.lose(None)

    def write(self, buffers: Sequence[Buffer]) -> None:
        if self.closed or self.other is None:
            raise CommClosedError(f"in-process connection {self.peer} is closed")
        data = b"".join(_byte_view(b) for b in buffers)
        self._loop.call_soon(self.other._deliver, data)

    def _deliver(self, data: bytes | None) -> None:
        """Take bytes from the other end; None is its close, queued behind its bytes."""
        if self.closed:
            return
        if not self._reading:
            self._pending.append(data)
            return
        if data is None:
            self.lose(None)
            return
        try:
            self.decoder.feed(data)
        except ProtocolError as exc:
            self.lose(exc)
            return
        self._received()

    def pause_reading(self) -> None:
        self._reading = False

    def resume_reading(self) -> None:
        self._reading = True
        while self._pending and self._reading and not self.closed:
            self._deliver(self._pending.pop(0))

    def _shut(self) -> None:
        other, self.other = self.other, None
        if other is not None:
            self._loop.call_soon(other._deliver, None)


def inproc_pair(a: FrameDecoder, b: FrameDecoder, name: str) -> tuple[InprocTransport, ...]:
    left, right = InprocTransport(a, name), InprocTransport(b, name)
    left.other, right.other = right, left
    return left, right


def format_sockname(addr: object) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        host, port = addr[0], addr[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(addr)
