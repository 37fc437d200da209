"""The batch decoder: any chunking gives the same batches; garbage gives ProtocolError."""

from __future__ import annotations

import struct
import subprocess
import sys
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.errors import LimitExceeded, ProtocolError
from shoal.protocol import codec, frames
from shoal.protocol import messages as m
from shoal.protocol.limits import HANDSHAKE_LIMITS, KiB, Limits, MiB
from shoal.protocol.serialize import Serialized
from tests.strategies import any_message


def wire(msgs: list) -> bytes:
    return b"".join(bytes(b) for b in frames.encode_frames(codec.encode_batch(msgs)))


def decode_all(data: bytes, splits: list[int]) -> list[list[bytes]]:
    decoder = frames.FrameDecoder(Limits())
    pos = 0
    for cut in [*sorted(splits), len(data)]:
        decoder.feed(data[pos:cut])
        pos = cut
    assert decoder.idle
    return [[bytes(f) for f in batch] for batch in decoder.pop()]


SAMPLE = [
    m.Ping(id=1),
    m.DataSent(data={"a": Serialized("x", [b"p" * 100, b"\x00" * 70_000, b""])}),
    m.GetData(keys=(("k", 1), "j")),
]


def test_prefix_layout() -> None:
    data = wire([m.Ping(id=1)])
    (count,) = struct.unpack_from("<I", data)
    (length,) = struct.unpack_from("<Q", data, 4)
    assert count == 1
    assert length == len(data) - 12


def test_one_byte_at_a_time_gives_the_same_batches() -> None:
    data = wire(SAMPLE) + wire([m.Pong(id=2)])
    whole = decode_all(data, [])
    assert len(whole) == 2
    assert decode_all(data, list(range(1, len(data)))) == whole


@settings(max_examples=200, deadline=None)
@given(msgs=st.lists(any_message, min_size=1, max_size=5), data=st.data())
def test_random_splits_give_the_same_batches(msgs, data) -> None:
    stream = wire(msgs) + wire(msgs[::-1])
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=30))
    batches = decode_all(stream, cuts)
    assert batches == decode_all(stream, [])
    assert codec.decode_batch([memoryview(f) for f in batches[0]]) == msgs


def test_socket_path_receives_large_frames_in_place() -> None:
    """get_buffer hands out the frame's own memory once a large frame starts."""
    data = wire([*SAMPLE, m.DataSent(data={"b": Serialized("y", [b"q", b"\x01" * 300_000])})])
    decoder = frames.FrameDecoder(Limits())
    scratch = decoder.get_buffer().obj
    pos, direct = 0, 0
    while pos < len(data):
        buf = decoder.get_buffer()
        n = min(len(buf), len(data) - pos, 10_000)
        if buf.obj is not scratch:
            direct += n
        buf[:n] = data[pos : pos + n]
        decoder.buffer_updated(n)
        pos += n
    # All but the tail under DIRECT_MIN (and the chunk that began the frame) went in place.
    assert direct >= 300_000 - frames.DIRECT_MIN - 10_000
    (batch,) = decoder.pop()
    assert [bytes(f) for f in batch] == decode_all(data, [])[0]
    assert all(not f.readonly for f in batch)


def test_each_frame_has_its_own_buffer() -> None:
    decoder = frames.FrameDecoder(Limits())
    payload = Serialized("x", [b"s", b"1" * 90_000, b"2" * 90_000])
    decoder.feed(wire([m.DataSent(data={"a": payload})]))
    (batch,) = decoder.pop()
    one, two = batch[2], batch[3]
    assert one.obj is not two.obj
    one[0] = ord("z")
    assert bytes(two[:1]) == b"2"


@pytest.mark.parametrize(
    "prefix, error",
    [
        (struct.pack("<I", 0), "zero frames"),
        (struct.pack("<I", 70_000), "70000 frames, over the limit of 65536"),
        (struct.pack("<IQ", 1, 0), "header frame is empty"),
        (struct.pack("<IQ", 1, 65 * MiB), "over the limit"),
        (struct.pack("<IQQ", 2, 10, 2**63), "over the limit"),
        (struct.pack("<IQQ", 2, 10, 2**64 - 1), "over the limit"),
    ],
)
def test_counts_and_lengths_are_checked_before_allocation(prefix: bytes, error: str) -> None:
    decoder = frames.FrameDecoder(Limits())
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError, match=error):
            decoder.feed(prefix)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 * MiB


def test_limit_errors_are_limit_exceeded() -> None:
    decoder = frames.FrameDecoder(HANDSHAKE_LIMITS)
    with pytest.raises(LimitExceeded):
        decoder.feed(struct.pack("<IQ", 1, 5 * KiB))


def test_decoder_stays_broken_after_an_error() -> None:
    decoder = frames.FrameDecoder(Limits())
    with pytest.raises(ProtocolError):
        decoder.feed(struct.pack("<I", 0))
    with pytest.raises(ProtocolError, match="after a protocol error"):
        decoder.feed(wire([m.Ping(id=1)]))


@settings(max_examples=300, deadline=None)
@given(garbage=st.binary(max_size=2000), data=st.data())
def test_random_bytes_give_protocol_error_or_need_more(garbage: bytes, data) -> None:
    """Whatever arrives, the decoder asks for more, or decodes, or raises ProtocolError."""
    limits = Limits(max_frames=16, max_header_bytes=4 * KiB, max_batch_bytes=64 * KiB)
    decoder = frames.FrameDecoder(limits)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(garbage)), max_size=10)))
    tracemalloc.start()
    try:
        pos = 0
        for cut in [*cuts, len(garbage)]:
            decoder.feed(garbage[pos:cut])
            pos = cut
            for batch in decoder.pop():
                codec.decode_batch(batch)
    except ProtocolError:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    # The scratch buffer exists already; beyond it nothing may exceed the batch limit.
    assert peak < limits.max_batch_bytes + 64 * KiB


def test_hold_stops_after_each_batch_until_resumed() -> None:
    decoder = frames.FrameDecoder(HANDSHAKE_LIMITS)
    decoder.hold = True
    big = m.GetData(keys=tuple(f"key-{i}" for i in range(2000)))
    decoder.feed(wire([m.Ping(id=1)]) + wire([big]))
    (first,) = decoder.pop()
    assert codec.decode_batch(first) == [m.Ping(id=1)]
    assert decoder.holding and not decoder.pop()
    decoder.limits = Limits()
    decoder.hold = False
    decoder.resume()
    (second,) = decoder.pop()
    assert codec.decode_batch(second) == [big]
    assert not decoder.holding and decoder.idle


def test_truncated_batch_leaves_decoder_not_idle() -> None:
    decoder = frames.FrameDecoder(Limits())
    data = wire([m.Ping(id=1)])
    decoder.feed(data[:-1])
    assert not decoder.idle and not decoder.pop()
    decoder.feed(data[-1:])
    assert decoder.idle and len(decoder.pop()) == 1


@pytest.mark.parametrize(
    "build, error",
    [
        (lambda: [b"\x91\x82\xa2op\xa4ping\xa2id\xc7\x03\x02\x92\xa1x\x05"], "references"),
        (lambda: [b"\x91\x81\xa2op\xc7\x01\x09\x00", b"extra"], "malformed|unknown ext"),
    ],
)
def test_payload_references_must_match_the_frames(build, error: str) -> None:
    with pytest.raises(ProtocolError):
        codec.decode_batch([memoryview(f) for f in build()])


def test_frames_left_unreferenced_are_an_error() -> None:
    header = codec.encode_batch([m.Ping(id=1)])[0]
    with pytest.raises(ProtocolError, match="batch has 2 frames but its header references 1"):
        codec.decode_batch([memoryview(header), memoryview(b"stray")])


def test_payloads_are_refused_before_the_handshake() -> None:
    batch = codec.encode_batch([m.DataSent(data={"a": Serialized("int", [b"x"])})])
    with pytest.raises(ProtocolError, match="not allowed before the handshake"):
        codec.decode_batch([memoryview(batch[0])], allow_payloads=False)


@pytest.mark.timeout(60)
def test_numpy_is_imported_only_for_a_large_buffer_frame() -> None:
    # numpy costs 150-250 ms and about 15 MB to import: starting a process and reading
    # control messages, large headers included, go without it.
    code = """
import sys
import shoal.client.client, shoal.deploy.cli, shoal.scheduler.server, shoal.worker.server
from shoal.protocol import codec, frames, messages
from shoal.protocol.limits import Limits
print('numpy' in sys.modules)
keys = tuple(f"key-{i:06d}" for i in range(20_000))
header = frames.encode_frames(codec.encode_batch([messages.GetData(keys=keys, request_id=1)]))
decoder = frames.FrameDecoder(Limits())
decoder.feed(b"".join(bytes(b) for b in header))
assert len(decoder.pop()) == 1 and len(header[1]) > frames.DIRECT_MIN
print('numpy' in sys.modules)
decoder.feed(b"".join(bytes(b) for b in frames.encode_frames([b"h", bytes(frames.DIRECT_MIN)])))
(batch,) = decoder.pop()
print('numpy' in sys.modules, type(batch[1].obj).__name__)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=50)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False", "True", "ndarray"]


def test_a_large_frame_arrives_in_a_numpy_buffer() -> None:
    import numpy as np

    view = frames._allocate(frames.DIRECT_MIN)
    assert isinstance(view.obj, np.ndarray)
    assert view.nbytes == frames.DIRECT_MIN
