"""User data: code by value, buffers out of band, errors that name the type."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from shoal.errors import SerializationError
from shoal.protocol import codec, frames
from shoal.protocol import messages as m
from shoal.protocol.limits import Limits
from shoal.protocol.serialize import INLINE_MAX, Serialized, deserialize, serialize
from tests.payloads import UNPICKLED, SideEffect


def test_lambdas_and_closures_travel_by_value() -> None:
    offset = 41
    fn = deserialize(serialize(lambda x: x + offset))
    assert fn(1) == 42

    def outer():
        counter = [0]

        def inner():
            counter[0] += 1
            return counter[0]

        return inner

    inner = deserialize(serialize(outer()))
    assert (inner(), inner()) == (1, 2)


def test_numpy_buffers_are_referenced_not_copied() -> None:
    arr = np.arange(100_000, dtype="f8")
    payload = serialize(arr)
    assert len(payload.frames) == 2
    assert np.shares_memory(np.frombuffer(payload.frames[1], dtype="f8"), arr)
    assert payload.typename == "numpy.ndarray"
    assert not payload.inline


def test_received_arrays_are_writable_and_equal() -> None:
    arr = np.arange(50_000, dtype="i4").reshape(250, 200)
    msg = m.DataSent(data={"x": serialize(arr), "y": serialize({"nested": [arr[:3], "s"]})})
    decoder = frames.FrameDecoder(Limits())
    for buf in frames.encode_frames(codec.encode_batch([msg])):
        decoder.feed(buf)
    (batch,) = decoder.pop()
    (back,) = codec.decode_batch(batch)
    got = deserialize(back.data["x"])
    assert got.flags.writeable and np.array_equal(got, arr)
    got[0, 0] = -1  # writable in place
    nested = deserialize(back.data["y"])
    assert np.array_equal(nested["nested"][0], arr[:3]) and nested["nested"][1] == "s"


def test_non_contiguous_arrays_still_work() -> None:
    arr = np.arange(100).reshape(10, 10)[:, ::2]
    assert np.array_equal(deserialize(serialize(arr)), arr)


def test_small_payloads_travel_inline() -> None:
    assert serialize(5).inline
    assert not Serialized("bytes", [b"x" * (INLINE_MAX + 1)]).inline
    enc = codec.encode_message(m.DataSent(data={"a": serialize(5)}))
    assert enc.frames == []


def test_unpicklable_object_names_its_type_and_role() -> None:
    with pytest.raises(SerializationError, match=r"argument 1 of task 'f'.*_thread\.lock"):
        serialize({"lock": threading.Lock()}, what="argument 1 of task 'f'")
    with pytest.raises(SerializationError) as info:
        serialize(threading.Lock(), what="result of 'x'")
    assert "result of 'x' of type _thread.lock" in str(info.value)
    assert info.value.__cause__ is not None


class Unloadable:
    def __reduce__(self):
        return (_missing_module_import, ())


def _missing_module_import():
    raise ModuleNotFoundError("No module named 'gone'")


def test_undeserializable_payload_names_its_type_and_role() -> None:
    payload = serialize(Unloadable())
    with pytest.raises(SerializationError) as info:
        deserialize(payload, what="result of task 'y'")
    text = str(info.value)
    assert "result of task 'y'" in text
    assert "tests.test_serialize.Unloadable" in text
    assert "No module named 'gone'" in text


def test_garbage_pickle_is_a_serialization_error() -> None:
    with pytest.raises(SerializationError, match="of type mystery"):
        deserialize(Serialized("mystery", [b"\x80\x05garbage"]))


def test_payloads_route_opaquely_without_unpickling() -> None:
    """A scheduler-like relay decodes and re-encodes payloads without running them."""
    UNPICKLED.clear()
    calls = UNPICKLED
    original = m.DataSent(data={"k": serialize(SideEffect()), "n": serialize(np.ones(20_000))})
    relay = frames.FrameDecoder(Limits())
    for buf in frames.encode_frames(codec.encode_batch([original])):
        relay.feed(buf)
    (forwarded,) = codec.decode_batch(relay.pop()[0])
    assert calls == []
    final = frames.FrameDecoder(Limits())
    for buf in frames.encode_frames(codec.encode_batch([forwarded])):
        final.feed(buf)
    (received,) = codec.decode_batch(final.pop()[0])
    assert received == original
    deserialize(received.data["k"])
    assert calls == ["unpickled"]


def test_serialized_needs_a_stream() -> None:
    with pytest.raises(ValueError):
        Serialized("x", [])


def test_decoded_type_names_are_one_string_per_name() -> None:
    # A scheduler keeps a payload per task and a type name per result: equal
    # names decode to one string, and payload frames are a tuple.
    from shoal.protocol import messages as m
    from shoal.protocol.codec import decode_batch, encode_batch

    name = "package.module." + "Type" * 3
    sent = [
        m.TaskFinished(key=f"k{i}", nbytes=1, typename=name, duration=0.0, value=v)
        for i, v in enumerate([serialize(i) for i in range(3)])
    ]
    got = decode_batch([memoryview(f) for f in encode_batch(sent)])
    assert len({id(msg.typename) for msg in got}) == 1
    assert len({id(msg.value.typename) for msg in got}) == 1
    assert all(type(msg.value.frames) is tuple for msg in got)
