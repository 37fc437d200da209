"""Framing: a batch is a list of byte frames, frame 0 the msgpack header.

On the wire a batch is: u32 frame count, one u64 length per frame (all
little-endian), then the frames back to back. The decoder checks every count
and length against `Limits` before it allocates, accepts bytes in any chunks,
and lets a large frame be received straight into its own buffer.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from shoal.errors import LimitExceeded, ProtocolError
from shoal.protocol.limits import Limits

_COUNT = struct.Struct("<I")
COUNT_BYTES = _COUNT.size
LENGTH_BYTES = 8

# Frames at least this large are allocated with numpy.empty (no zero-fill,
# pages mapped lazily) and received into directly rather than through the
# scratch buffer.
DIRECT_MIN = 64 * 1024
SCRATCH_BYTES = 256 * 1024

Buffer = bytes | bytearray | memoryview


def frame_prefix(lengths: Sequence[int]) -> bytes:
    """The count and length table that precede the frames of one batch."""
    n = len(lengths)
    return struct.pack(f"<I{n}Q", n, *lengths)


def encode_frames(frames: Sequence[Buffer]) -> list[Buffer]:
    """Buffers to write, in order, for one batch. The frames are not copied."""
    lengths = [memoryview(f).nbytes for f in frames]
    return [frame_prefix(lengths), *frames]


def _scratch_bytes(limits: Limits) -> int:
    """Enough scratch for one whole batch under `limits`, at most SCRATCH_BYTES."""
    largest = COUNT_BYTES + LENGTH_BYTES * limits.max_frames + limits.max_batch_bytes
    return min(SCRATCH_BYTES, largest)


def _allocate(nbytes: int) -> memoryview:
    if nbytes >= DIRECT_MIN:
        # Imported here, not at the top: numpy takes 150-250 ms to import, which every
        # process paid at start-up (workers, scheduler, clients) before its first large
        # frame, if it ever gets one. Such a frame is usually an array that needs numpy
        # to unpickle anyway.
        import numpy as np

        # numpy's stubs give ndarray its __buffer__ only from Python 3.12 on.
        return memoryview(np.empty(nbytes, dtype=np.uint8))  # type: ignore[arg-type]
    return memoryview(bytearray(nbytes))


class FrameDecoder:
    """Incremental batch decoder, driven by `feed` or by get_buffer/buffer_updated.

    `feed(data)` copies arbitrary chunks in. `get_buffer()` + `buffer_updated(n)`
    is the receive path of a socket: while a large frame is being filled the
    buffer returned is that frame's own memory, so its bytes are never copied.
    Completed batches (lists of writable memoryviews) are taken with `pop()`.
    After a ProtocolError the decoder is broken and must be dropped.
    """

    __slots__ = (
        "_batches",
        "_broken",
        "_counted",
        "_cur",
        "_cur_off",
        "_direct",
        "_frames",
        "_held",
        "_lengths",
        "_limits",
        "_need",
        "_partial",
        "_scratch",
        "_stopped",
        "hold",
    )

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        # Sized to what the limits allow: a stranger, under the handshake limits,
        # costs 4 KiB here rather than 256.
        self._scratch = memoryview(bytearray(_scratch_bytes(limits)))
        self._batches: list[list[memoryview]] = []
        self._broken = False
        self._direct = False
        # With `hold` set, parsing stops after each completed batch and the
        # rest waits in `_held` until `resume()`: the handshake uses this so
        # that bytes after it are parsed under the limits it establishes.
        self.hold = False
        self._stopped = False
        self._held = bytearray()
        self._reset()

    def _reset(self) -> None:
        self._partial = bytearray()  # count or length table being assembled
        self._need = COUNT_BYTES
        self._counted = False
        self._lengths: list[int] | None = None
        self._frames: list[memoryview] = []
        self._cur: memoryview | None = None
        self._cur_off = 0

    @property
    def limits(self) -> Limits:
        return self._limits

    @limits.setter
    def limits(self, limits: Limits) -> None:
        """New limits apply from the next count or length read; the scratch grows to suit."""
        self._limits = limits
        if self._scratch.nbytes < _scratch_bytes(limits):
            self._scratch = memoryview(bytearray(_scratch_bytes(limits)))

    # -- receive paths -------------------------------------------------------

    def get_buffer(self) -> memoryview:
        """Writable memory for the next bytes from the peer."""
        self._direct = self.filling_large_frame
        if self._direct:
            return self._cur[self._cur_off :]  # type: ignore[index]
        return self._scratch

    def buffer_updated(self, nbytes: int) -> None:
        """`nbytes` were written at the start of the last `get_buffer()`."""
        if self._direct:
            self._direct = False
            self._cur_off += nbytes
            if self._cur_off == self._cur.nbytes:  # type: ignore[union-attr]
                self._frame_done()
        else:
            self._consume(self._scratch[:nbytes])

    def feed(self, data: Buffer) -> None:
        """Take any chunk of bytes (copied)."""
        self._consume(memoryview(data).cast("B"))

    def resume(self) -> None:
        """Parse bytes held back by `hold` (with the current limits and hold flag)."""
        self._stopped = False
        held, self._held = self._held, bytearray()
        if held:
            self._consume(memoryview(held))

    @property
    def filling_large_frame(self) -> bool:
        """True when the next `get_buffer()` is a large frame's own memory.

        Bytes received there are only stored, not parsed: a transport may read
        on without holding up the event loop.
        """
        cur = self._cur
        return cur is not None and cur.nbytes - self._cur_off >= DIRECT_MIN

    @property
    def holding(self) -> bool:
        """True when parsing stopped after a batch in hold mode, until `resume()`."""
        return self._stopped

    def pop(self) -> list[list[memoryview]]:
        """The batches completed so far, oldest first; each a list of frames."""
        batches, self._batches = self._batches, []
        return batches

    @property
    def idle(self) -> bool:
        """True between batches: no partial batch is buffered."""
        return not self._counted and not self._partial and not self._held

    # -- parsing ---------------------------------------------------------------

    def _consume(self, data: memoryview) -> None:
        if self._broken:
            raise ProtocolError("decoder used after a protocol error")
        try:
            self._consume_unchecked(data)
        except ProtocolError:
            self._broken = True
            raise

    def _consume_unchecked(self, data: memoryview) -> None:
        pos, end = 0, data.nbytes
        while pos < end:
            if self._stopped:
                self._held += data[pos:]
                return
            cur = self._cur
            if cur is not None:
                take = min(cur.nbytes - self._cur_off, end - pos)
                cur[self._cur_off : self._cur_off + take] = data[pos : pos + take]
                self._cur_off += take
                pos += take
                if self._cur_off == cur.nbytes:
                    self._frame_done()
                continue
            take = min(self._need - len(self._partial), end - pos)
            self._partial += data[pos : pos + take]
            pos += take
            if len(self._partial) == self._need:
                if not self._counted:
                    self._got_count()
                else:
                    self._got_lengths()

    def _got_count(self) -> None:
        (count,) = _COUNT.unpack(self._partial)
        if count == 0:
            raise ProtocolError("batch declares zero frames; a batch has at least a header")
        if count > self.limits.max_frames:
            raise LimitExceeded(
                f"batch declares {count} frames, over the limit of {self.limits.max_frames}"
            )
        self._partial = bytearray()
        self._need = count * LENGTH_BYTES
        self._counted = True

    def _got_lengths(self) -> None:
        count = self._need // LENGTH_BYTES
        lengths = list(struct.unpack(f"<{count}Q", self._partial))
        self._partial = bytearray()
        header = lengths[0]
        if header == 0:
            raise ProtocolError("header frame is empty")
        if header > self.limits.max_header_bytes:
            raise LimitExceeded(
                f"header frame of {header} bytes is over the limit of "
                f"{self.limits.max_header_bytes}"
            )
        total = sum(lengths)
        if total > self.limits.max_batch_bytes:
            raise LimitExceeded(
                f"batch of {total} bytes is over the limit of {self.limits.max_batch_bytes}"
            )
        self._lengths = lengths
        self._next_frame()

    def _next_frame(self) -> None:
        lengths = self._lengths
        assert lengths is not None
        while len(self._frames) < len(lengths):
            nbytes = lengths[len(self._frames)]
            if nbytes:
                # The header is parsed and dropped, never handed out as a user's buffer,
                # so it needs no numpy (a zero-filled bytearray costs little beside parsing).
                self._cur = _allocate(nbytes) if self._frames else memoryview(bytearray(nbytes))
                self._cur_off = 0
                return
            self._frames.append(memoryview(bytearray(0)))
        self._batches.append(self._frames)
        self._stopped = self.hold
        self._reset()

    def _frame_done(self) -> None:
        self._frames.append(self._cur)  # type: ignore[arg-type]
        self._cur = None
        self._cur_off = 0
        self._next_frame()
