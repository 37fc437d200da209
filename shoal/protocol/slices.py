"""Decoding a large batch a slice at a time, so that no single step holds the loop.

`decode_in_slices` is a generator: it yields after each slice of at most
SLICE_ITEMS entries of a long array or map field, and returns the same
messages, validated the same way, as `codec.decode_batch`. The caller (Comm)
yields to the event loop at each step. Nothing here unpickles or allocates
beyond what the header's bytes already bound (its limits were checked when
the frames were read).
"""

from __future__ import annotations

import struct
from collections.abc import Generator, Sequence
from itertools import islice

import msgpack

from shoal.errors import ProtocolError
from shoal.protocol.codec import PayloadHook, decode_batch
from shoal.protocol.schema import Message, Parts, sliced_from_wire

# Headers at least this large are decoded in slices (a whole decode of one
# costs about 10 ms on a small VM, the length of one slice).
SLICED_HEADER_BYTES = 256 * 1024
# Entries of one array or map field decoded, or validated, per step.
SLICE_ITEMS = 10_000

_ARRAY16, _ARRAY32, _MAP16, _MAP32 = 0xDC, 0xDD, 0xDE, 0xDF
_U16, _U32 = struct.Struct(">H"), struct.Struct(">I")


def _long_container(header: memoryview, pos: int) -> tuple[bool, int] | None:
    """(is a map, its length) when the value at `pos` is an array or map long
    enough to be read in slices; None otherwise."""
    if pos + 5 > len(header):
        return None
    code = header[pos]
    if code == _ARRAY16 or code == _MAP16:
        n = _U16.unpack_from(header, pos + 1)[0]
    elif code == _ARRAY32 or code == _MAP32:
        n = _U32.unpack_from(header, pos + 1)[0]
    else:
        return None
    return (code == _MAP16 or code == _MAP32, n) if n > SLICE_ITEMS else None


def decode_in_slices(
    frames: Sequence[memoryview], allow_payloads: bool = True
) -> Generator[None, None, list[Message]]:
    """The messages of one batch, as decode_batch returns them, yielding between slices.

    Raises:
        ProtocolError: as decode_batch does (some reasons are worded differently).
    """
    header = memoryview(frames[0]).cast("B")
    if not header or not (0x91 <= header[0] <= 0x9F or header[0] in (_ARRAY16, _ARRAY32)):
        return decode_batch(frames, allow_payloads)  # short, or not even an array
    hook = PayloadHook(frames, allow_payloads)
    unpacker = msgpack.Unpacker(
        ext_hook=hook,
        use_list=False,
        raw=False,
        strict_map_key=False,
        max_buffer_size=max(len(header), 1024),
    )
    unpacker.feed(header)
    wires: list[object] = []
    try:
        count = unpacker.read_array_header()
        if count == 0:
            raise ProtocolError("header must be a non-empty array of messages")
        for _ in range(count):
            wire = yield from _read_message(unpacker, header)
            wires.append(wire)
    except ProtocolError:
        raise
    except Exception as exc:  # msgpack raises many types for malformed input
        raise ProtocolError(f"malformed header: {type(exc).__name__}: {exc}") from None
    if unpacker.tell() != len(header):
        raise ProtocolError("malformed header: ExtraData: bytes after the messages")
    hook.check_all_used()
    messages = []
    for wire in wires:
        messages.append((yield from sliced_from_wire(wire)))
    return messages


def _read_message(unpacker: msgpack.Unpacker, header: memoryview) -> Generator[None, None, object]:
    """One message's map, its long fields as Parts; anything else whole."""
    code = header[unpacker.tell()]
    if not (0x80 <= code <= 0x8F or code == _MAP16 or code == _MAP32):
        return unpacker.unpack()  # not a map: from_wire says so
    wire: dict[object, object] = {}
    for _ in range(unpacker.read_map_header()):
        name = unpacker.unpack()
        long = _long_container(header, unpacker.tell())
        if long is None:
            wire[name] = unpacker.unpack()
            continue
        is_map, n = long
        parts = Parts(is_map)
        if is_map:
            unpacker.read_map_header()
        else:
            unpacker.read_array_header()
        while n:
            take = min(n, SLICE_ITEMS)
            items = tuple(islice(unpacker, take * 2 if is_map else take))
            if len(items) < (take * 2 if is_map else take):
                raise ProtocolError("malformed header: the data ends inside an array")
            parts.append(dict(zip(items[::2], items[1::2], strict=True)) if is_map else items)
            n -= take
            yield
        wire[name] = parts
    return wire
