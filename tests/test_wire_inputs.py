"""What a peer sends is refused at decode where it has no meaning: NaN and the
infinities in every field that holds a number (durations, sizes, resources,
CPU), named by message and field."""

from __future__ import annotations

import math
import typing

import pytest

from shoal.errors import ProtocolError
from shoal.protocol import messages  # noqa: F401  (registers every op)
from shoal.protocol.schema import REGISTRY, from_wire
from shoal.protocol.serialize import serialize

PAYLOAD = serialize(1, "arguments")
BAD = [math.nan, math.inf, -math.inf]

# (a valid message on the wire, a function putting `x` into one numeric field, where)
FIELDS = [
    (
        {"op": "register-worker", "name": "w", "address": "tcp://a:1", "nthreads": 1},
        lambda w, x: w.update(resources={"GPU": x}),
        "register-worker.resources",
    ),
    (
        {"op": "compute-task", "key": "k", "func": PAYLOAD, "args": PAYLOAD},
        lambda w, x: w.update(timeout=x),
        "compute-task.timeout",
    ),
    (
        {"op": "task-finished", "key": "k", "nbytes": 1, "typename": "int", "duration": 0.0},
        lambda w, x: w.update(duration=x),
        "task-finished.duration",
    ),
    (
        {"op": "task-erred", "key": "k", "typename": "E", "message": "", "traceback": ""},
        lambda w, x: w.update(duration=x),
        "task-erred.duration",
    ),
    (
        {"op": "data-fetched", "nbytes": 1, "duration": 0.5},
        lambda w, x: w.update(duration=x),
        "data-fetched.duration",
    ),
    ({"op": "heartbeat"}, lambda w, x: w.update(cpu=x), "heartbeat.cpu"),
    ({"op": "retire-worker"}, lambda w, x: w.update(timeout=x), "retire-worker.timeout"),
    (
        {"op": "retire-workers", "workers": ("w",)},
        lambda w, x: w.update(timeout=x),
        "retire-workers.timeout",
    ),
    (
        {"op": "heartbeat"},
        lambda w, x: w.update(devices=({"memory_used": x, "memory_total": 1.0},)),
        "heartbeat.devices",
    ),
    (
        {"op": "tasks-stalled", "keys": ("k",), "count": 1, "waited": 10.0, "workers": 1},
        lambda w, x: w.update(waited=x),
        "tasks-stalled.waited",
    ),
    (
        {"op": "tasks-stalled", "keys": ("k",), "count": 1, "waited": 10.0, "workers": 1},
        lambda w, x: w.update(resources={"GPU": x}),
        "tasks-stalled.resources",
    ),
    (
        {
            "op": "submit-graph",
            "keys": ("k",),
            "funcs": (PAYLOAD,),
            "func": (0,),
            "args": (PAYLOAD,),
            "deps": ((),),
            "wanted": ("k",),
        },
        lambda w, x: w.update(resources={0: {"GPU": x}}),
        "submit-graph.resources",
    ),
    (
        {
            "op": "submit-graph",
            "keys": ("k",),
            "funcs": (PAYLOAD,),
            "func": (0,),
            "args": (PAYLOAD,),
            "deps": ((),),
            "wanted": ("k",),
        },
        lambda w, x: w.update(timeout={0: x}),
        "submit-graph.timeout",
    ),
    ({"op": "retire-worker"}, lambda w, x: w.update(timeout=x), "retire-worker.timeout"),
    (
        {"op": "retire-workers", "workers": ("w",)},
        lambda w, x: w.update(timeout=x),
        "retire-workers.timeout",
    ),
]


def test_the_table_covers_every_float_field() -> None:
    declared = {
        f"{op}.{name}"
        for op, cls in REGISTRY.items()
        for name, hint in typing.get_type_hints(cls).items()
        if name in cls._fields and "float" in str(hint)
    }
    assert declared == {where for _, _, where in FIELDS}


@pytest.mark.parametrize("bad", BAD, ids=repr)
@pytest.mark.parametrize(("wire", "put", "where"), FIELDS, ids=[f[2] for f in FIELDS])
def test_non_finite_numbers_are_refused_by_field(wire, put, where, bad) -> None:
    good = dict(wire)
    from_wire(good)  # the message itself is valid
    put(good, 1.5)
    from_wire(good)  # and so is a finite number in the field
    put(good, bad)
    with pytest.raises(ProtocolError, match=rf"{where}: expected a finite number"):
        from_wire(good)


@pytest.mark.parametrize(("wire", "put", "where"), FIELDS, ids=[f[2] for f in FIELDS])
def test_negative_numbers_are_refused_by_field(wire, put, where) -> None:
    good = dict(wire)
    put(good, 0.0)
    from_wire(good)  # zero is a number like any other
    put(good, -0.5)
    with pytest.raises(ProtocolError, match=rf"{where}: expected a number at least 0"):
        from_wire(good)


@pytest.mark.parametrize(
    ("wire", "field", "where"),
    [
        (
            {"op": "register-worker", "name": "w", "address": "tcp://a:1", "nthreads": 1},
            "memory_limit",
            "register-worker.memory_limit",
        ),
        (
            {"op": "task-finished", "key": "k", "nbytes": 1, "typename": "int", "duration": 0.0},
            "nbytes",
            "task-finished.nbytes",
        ),
        ({"op": "heartbeat"}, "memory", "heartbeat.memory"),
        ({"op": "get-data", "keys": ("k",)}, "request_id", "get-data.request_id"),
    ],
)
def test_negative_counts_and_sizes_are_refused(wire, field, where) -> None:
    good = dict(wire)
    from_wire(good)
    good[field] = -1
    with pytest.raises(ProtocolError, match=rf"{where}: expected an int at least 0, got -1"):
        from_wire(good)


def test_priorities_may_be_negative() -> None:
    wire = {
        "op": "submit-graph",
        "keys": ("k",),
        "funcs": (PAYLOAD,),
        "func": (0,),
        "args": (PAYLOAD,),
        "deps": ((),),
        "wanted": ("k",),
        "priority": (-5,),
    }
    assert from_wire(wire).priority == (-5,)
