"""Coalescing: messages sent during one event-loop tick leave in one write.

There is no fixed delay: the first message of a tick schedules a flush with
`call_soon`, so an idle link sends at once and a busy one batches. A flush
splits into several batches where the peer's advertised limits require.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from shoal.errors import MessageTooLarge
from shoal.protocol.codec import Buffer, EncodedMessage, batch_frames, encode_message
from shoal.protocol.frames import encode_frames
from shoal.protocol.limits import Limits
from shoal.protocol.schema import Message

# Room for the msgpack array header in front of the messages.
_ARRAY_HEADER_MAX = 5


class Outbox:
    """Encodes each message when it is put, writes them all at the end of the tick."""

    __slots__ = ("_loop", "_pending", "_scheduled", "_write", "limits", "on_error")

    def __init__(self, write: Callable[[Sequence[Buffer]], None], limits: Limits) -> None:
        self._loop = asyncio.get_running_loop()
        self._write = write
        self.limits = limits  # the peer's: what it will accept from us
        self._pending: list[EncodedMessage] = []
        self._scheduled = False
        self.on_error: Callable[[BaseException], None] = lambda exc: None

    def put(self, msg: Message) -> None:
        """Queue one message; errors in encoding it raise here, in the caller.

        Raises:
            MessageTooLarge: the message alone is over the peer's limits.
        """
        encoded = encode_message(msg)
        limits = self.limits
        if (
            len(encoded.frames) + 1 > limits.max_frames
            or len(encoded.header) + _ARRAY_HEADER_MAX > limits.max_header_bytes
            or encoded.nbytes + _ARRAY_HEADER_MAX > limits.max_batch_bytes
        ):
            raise MessageTooLarge(
                f"{msg.op} message of {encoded.nbytes} bytes in {len(encoded.frames) + 1} "
                f"frames is over the peer's limits ({limits})"
            )
        self._pending.append(encoded)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def flush(self) -> None:
        """Write everything queued now, in as few batches as the limits allow."""
        self._scheduled = False
        pending, self._pending = self._pending, []
        if not pending:
            return
        try:
            for group in self._groups(pending):
                self._write(encode_frames(batch_frames(group)))
        except Exception as exc:  # shell boundary: the connection reports it
            self.on_error(exc)

    def _groups(self, pending: list[EncodedMessage]) -> list[list[EncodedMessage]]:
        limits = self.limits
        groups: list[list[EncodedMessage]] = []
        group: list[EncodedMessage] = []
        nframes, header, total = 1, _ARRAY_HEADER_MAX, _ARRAY_HEADER_MAX
        for enc in pending:
            if group and (
                nframes + len(enc.frames) > limits.max_frames
                or header + len(enc.header) > limits.max_header_bytes
                or total + enc.nbytes > limits.max_batch_bytes
            ):
                groups.append(group)
                group, nframes, header, total = [], 1, _ARRAY_HEADER_MAX, _ARRAY_HEADER_MAX
            group.append(enc)
            nframes += len(enc.frames)
            header += len(enc.header)
            total += enc.nbytes
        groups.append(group)
        return groups
