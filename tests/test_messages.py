"""Every message type round-trips; malformed messages raise ProtocolError."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal.errors import ProtocolError
from shoal.protocol import codec, frames
from shoal.protocol import messages as m
from shoal.protocol.limits import DEFAULT_LIMITS
from shoal.protocol.schema import REGISTRY, from_wire
from tests.strategies import any_message, message_strategy


def roundtrip(msgs: list) -> list:
    decoder = frames.FrameDecoder(DEFAULT_LIMITS)
    for buf in frames.encode_frames(codec.encode_batch(msgs)):
        decoder.feed(buf)
    (batch,) = decoder.pop()
    return codec.decode_batch(batch)


def header_of(*wires: dict) -> list[memoryview]:
    return [memoryview(msgpack.packb(list(wires), use_bin_type=True))]


def test_catalogue_names_follow_the_house_rules() -> None:
    assert {"hello", "authenticate", "welcome", "handshake-failed"} <= set(REGISTRY)
    for op, cls in REGISTRY.items():
        assert cls.op == op
        assert op == op.lower() and " " not in op
        assert cls.__doc__, f"{cls.__name__} has no docstring"


@pytest.mark.parametrize("cls", sorted(REGISTRY.values(), key=lambda c: c.op), ids=lambda c: c.op)
# Messages with many payload columns (submit-graph) draw large examples by design.
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.data_too_large])
@given(data=st.data())
def test_every_message_type_roundtrips(cls, data) -> None:
    msg = data.draw(message_strategy(cls))
    (back,) = roundtrip([msg])
    assert type(back) is cls
    assert back == msg


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.data_too_large])
@given(msgs=st.lists(any_message, min_size=1, max_size=8))
def test_batches_of_mixed_messages_roundtrip(msgs) -> None:
    assert roundtrip(msgs) == msgs


def test_unknown_op_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="unknown message op 'launch-missiles'"):
        codec.decode_batch(header_of({"op": "launch-missiles"}))
    with pytest.raises(ProtocolError, match="unknown message op"):
        codec.decode_batch(header_of({"id": 1}))
    with pytest.raises(ProtocolError, match="unknown message op 7"):
        codec.decode_batch(header_of({"op": 7}))


def test_missing_field_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="ping: missing field"):
        codec.decode_batch(header_of({"op": "ping"}))


@pytest.mark.parametrize(
    "wire, where",
    [
        ({"op": "ping", "id": "1"}, "ping.id: expected int, got str"),
        ({"op": "ping", "id": True}, "ping.id: expected int, got bool"),
        ({"op": "ping", "id": 1.5}, "ping.id: expected int, got float"),
        ({"op": "hello-not"}, "unknown message op"),
        ({"op": "get-data", "keys": "abc"}, "get-data.keys: expected array"),
        ({"op": "get-data", "keys": [True]}, "expected key"),
        ({"op": "get-data", "keys": [None]}, "expected key"),
        ({"op": "get-data", "keys": [[]]}, "expected key"),
        ({"op": "get-data", "keys": [["a", ()]]}, "expected key"),
        ({"op": "get-data", "keys": [["a", float("nan")]]}, "expected key"),
        ({"op": "get-data", "keys": [["a", [[[[[[[[["deep"]]]]]]]]]]]}, "expected key"),
        ({"op": "get-data", "keys": [["a", None]]}, "expected key"),
        ({"op": "data-sent", "data": {"k": 1}}, "data-sent.data: expected payload"),
        ({"op": "data-sent", "data": []}, "expected map"),
        ({"op": "close", "reason": b"bytes"}, "close.reason: expected str"),
        ({"op": "authenticate", "proof": "text"}, "authenticate.proof: expected bytes"),
    ],
)
def test_wrong_field_type_is_a_protocol_error(wire: dict, where: str) -> None:
    with pytest.raises(ProtocolError, match=where.replace(".", r"\.").replace("(", r"\(")):
        codec.decode_batch(header_of(wire))


def test_every_dask_key_form_roundtrips() -> None:
    """str, bytes, int (negative too), finite float, tuples of them, nested (as
    task-based shuffles name their keys)."""
    keys = ("x", b"raw", 7, -3, 2.5, ("x", 1), ("shuffle-group-ab", 2, (3, 7)), (("a", 1), b"z"))
    (msg,) = roundtrip([m.GetData(keys=keys, request_id=1)])
    assert msg.keys == keys
    assert [type(k) for k in msg.keys] == [type(k) for k in keys]
    (msg,) = roundtrip([m.ReleaseFutures(keys=(("s", (1, (2, (3,)))),))])
    assert msg.keys == (("s", (1, (2, (3,)))),)


def test_unknown_fields_are_ignored_and_defaults_filled() -> None:
    (msg,) = codec.decode_batch(header_of({"op": "get-data", "keys": ["a"], "added": {"x": 1}}))
    assert msg == m.GetData(keys=("a",), request_id=0)


def test_float_fields_accept_ints() -> None:
    from shoal.protocol.schema import compile_type

    check = compile_type(float)
    assert check(3, "x") == 3.0 and type(check(3, "x")) is float
    with pytest.raises(ProtocolError):
        check(True, "x")


def test_optional_fields() -> None:
    from shoal.protocol.schema import compile_type

    check = compile_type(int | None)
    assert check(None, "x") is None
    assert check(5, "x") == 5
    with pytest.raises(ProtocolError):
        check("5", "x")


def test_header_must_be_a_non_empty_array_of_maps() -> None:
    for bad in [msgpack.packb({"op": "ping", "id": 1}), msgpack.packb([]), msgpack.packb([1])]:
        with pytest.raises(ProtocolError):
            codec.decode_batch([memoryview(bad)])


def test_from_wire_needs_a_map() -> None:
    with pytest.raises(ProtocolError, match="must be a map"):
        from_wire(["ping", 1])


def test_garbage_msgpack_is_a_protocol_error() -> None:
    for bad in [b"\xc1", b"\x92\x01", b"\xdd\xff\xff\xff\xff", b"\x91\x81\x80\x01", b"\x93" * 3000]:
        with pytest.raises(ProtocolError):
            codec.decode_batch([memoryview(bad)])


def test_declaring_an_op_twice_fails() -> None:
    from shoal.protocol.schema import Message, message

    with pytest.raises(TypeError, match="declared twice"):

        @message("ping")
        class Again(Message):
            id: int


def test_a_value_msgpack_cannot_pack_fails_clearly_and_leaves_the_encoder_clean() -> None:
    with pytest.raises(TypeError, match="cannot put a set in a message \\(in get-data\\)"):
        codec.encode_message(m.GetData(keys=({1, 2},)))
    assert codec.encode_message(m.Ping(id=5)).header == msgpack.packb({"op": "ping", "id": 5})


def test_encoding_from_several_threads_at_once() -> None:
    import threading

    from shoal.protocol.serialize import serialize

    results: dict[int, list[m.Message]] = {}

    def work(n: int) -> None:
        msgs = [m.DataSent(data={("k", i): serialize(b"v" * i)}, request_id=n) for i in range(300)]
        results[n] = roundtrip(msgs)
        assert results[n] == msgs

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(results) == [0, 1, 2, 3]
