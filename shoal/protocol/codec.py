"""Messages <-> batches: msgpack header in frame 0, payload buffers in frames 1..n.

A payload (`Serialized`) in a message becomes a msgpack extension value in
the header: small ones carry their pickle stream inline (ext 1), others
reference the next frames of the batch in order (ext 2). Nothing here
unpickles.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence

import msgpack

from shoal.errors import ProtocolError
from shoal.protocol import messages as _catalogue  # noqa: F401  (registers every op)
from shoal.protocol.schema import Message, from_wire
from shoal.protocol.serialize import Serialized

EXT_INLINE = 1  # data: msgpack [typename: str, pickle: bin]
EXT_FRAMES = 2  # data: msgpack [typename: str, nframes: uint]; takes the next nframes frames

Buffer = bytes | bytearray | memoryview


class EncodedMessage:
    """One message packed: its msgpack bytes and the payload frames it references."""

    __slots__ = ("frames", "header", "nbytes")

    def __init__(self, header: bytes, frames: list[Buffer]) -> None:
        self.header = header
        self.frames = frames
        nbytes = len(header)
        for f in frames:
            nbytes += memoryview(f).nbytes
        self.nbytes = nbytes


class _Unpackable(Exception):
    """A value that is neither msgpack-native nor a payload; args[0] is the value."""


class _Packers(threading.local):
    """This thread's reusable Packers.

    Making a Packer allocates its 256 KiB buffer, which costs more than
    packing a small message, and a Packer is not thread-safe: so each thread
    keeps its own.
    """

    def __init__(self) -> None:
        # The payload frames of the message being packed; None between messages,
        # so that no payload stays referenced from here after it was sent.
        self.frames: list[Buffer] | None = None
        self.header = msgpack.Packer(default=self._payload_ref, use_bin_type=True)
        self.ext = msgpack.Packer(use_bin_type=True)

    def _payload_ref(self, obj: object) -> object:
        if type(obj) is Serialized:
            if obj.inline:
                return _ext((EXT_INLINE, self.ext.pack([obj.typename, obj.frames[0]])))
            assert self.frames is not None
            self.frames.extend(obj.frames)
            return _ext((EXT_FRAMES, self.ext.pack([obj.typename, len(obj.frames)])))
        raise _Unpackable(obj)


def _ext(code_and_data: tuple[int, bytes]) -> msgpack.ExtType:
    """msgpack.ExtType without its checks in Python, which cost more than packing
    a small payload: the code and the bytes are ours and right."""
    return tuple.__new__(msgpack.ExtType, code_and_data)


_packers = _Packers()


def encode_message(msg: Message) -> EncodedMessage:
    """Pack one message; payload buffers are referenced, not copied."""
    packers = _packers
    frames: list[Buffer] = []
    packers.frames = frames
    try:
        header = packers.header.pack(msg.to_wire())
    except _Unpackable as exc:
        bad = type(exc.args[0]).__name__
        raise TypeError(f"cannot put a {bad} in a message (in {msg.op})") from None
    finally:
        packers.frames = None
    return EncodedMessage(header, frames)


_ARRAY_PACKER = msgpack.Packer()


def batch_frames(encoded: Sequence[EncodedMessage]) -> list[Buffer]:
    """The frames of one batch holding these messages, header first."""
    header = _ARRAY_PACKER.pack_array_header(len(encoded)) + b"".join(e.header for e in encoded)
    frames: list[Buffer] = [header]
    for e in encoded:
        frames.extend(e.frames)
    return frames


def encode_batch(messages: Sequence[Message]) -> list[Buffer]:
    """The frames of one batch holding these messages."""
    return batch_frames([encode_message(m) for m in messages])


def _unpack_ext_data(data: bytes) -> tuple[object, ...]:
    try:
        value = msgpack.unpackb(data, use_list=False, raw=False)
    except Exception as exc:
        raise ProtocolError(f"malformed payload reference: {exc}") from None
    if type(value) is not tuple or len(value) != 2 or type(value[0]) is not str:
        raise ProtocolError("malformed payload reference")
    return value


class PayloadHook:
    """msgpack's ext_hook for one batch: builds each payload, taking its frames in order."""

    __slots__ = ("allow_payloads", "cursor", "frames")

    def __init__(self, frames: Sequence[memoryview], allow_payloads: bool) -> None:
        self.frames = frames
        self.allow_payloads = allow_payloads
        self.cursor = 1  # the next frame a framed payload takes

    def __call__(self, code: int, data: bytes) -> Serialized:
        if not self.allow_payloads:
            raise ProtocolError("payloads are not allowed before the handshake completes")
        if code != EXT_INLINE and code != EXT_FRAMES:
            raise ProtocolError(f"unknown extension type {code}")
        name, second = _unpack_ext_data(data)
        # One string per type name, however many payloads name it: a graph's
        # tasks all carry the same one, and a scheduler keeps them all.
        typename = sys.intern(name)  # type: ignore[call-overload]
        if code == EXT_INLINE:
            if type(second) is not bytes:
                raise ProtocolError("inline payload must carry bytes")
            return Serialized(typename, (second,))
        frames, cursor = self.frames, self.cursor
        if type(second) is not int or second < 1 or cursor + second > len(frames):
            raise ProtocolError(
                f"payload references {second!r} frames but the batch has "
                f"{len(frames) - cursor} left"
            )
        self.cursor = cursor + second
        return Serialized(typename, frames[cursor : cursor + second])

    def check_all_used(self) -> None:
        """Raises ProtocolError when frames are left that no payload referenced."""
        if self.cursor != len(self.frames):
            raise ProtocolError(
                f"batch has {len(self.frames)} frames but its header references {self.cursor}"
            )


def decode_batch(frames: Sequence[memoryview], allow_payloads: bool = True) -> list[Message]:
    """Validate and build the messages of one batch.

    Raises:
        ProtocolError: a malformed header, an unknown or invalid message, a
            payload reference that does not match the frames, or any payload
            at all when `allow_payloads` is false (before the handshake).
    """
    hook = PayloadHook(frames, allow_payloads)
    try:
        wires = msgpack.unpackb(
            frames[0], ext_hook=hook, use_list=False, raw=False, strict_map_key=False
        )
    except ProtocolError:
        raise
    except Exception as exc:  # msgpack raises many types for malformed input
        raise ProtocolError(f"malformed header: {type(exc).__name__}: {exc}") from None
    if type(wires) is not tuple or not wires:
        raise ProtocolError("header must be a non-empty array of messages")
    hook.check_all_used()
    return [from_wire(w) for w in wires]
