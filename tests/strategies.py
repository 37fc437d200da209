"""Hypothesis strategies built from the message declarations themselves.

A message added to the catalogue is covered by the round-trip tests without
anyone writing a strategy for it.
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, get_args, get_origin

from hypothesis import strategies as st

from shoal.protocol.schema import REGISTRY, Message, _KeyMarker, _NameMarker, _SignedMarker
from shoal.protocol.serialize import Serialized

small_ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)
counts = st.integers(min_value=0, max_value=2**64 - 1)  # every int field but priorities
keys = st.one_of(
    st.text(max_size=20),
    st.tuples(st.text(max_size=10)).flatmap(
        lambda head: st.lists(st.one_of(st.text(max_size=5), small_ints), max_size=3).map(
            lambda rest: (*head, *rest)
        )
    ),
)
payloads = st.one_of(
    st.binary(max_size=64).map(lambda b: Serialized("bytes", [b])),
    st.lists(st.binary(max_size=64), min_size=1, max_size=4).map(
        lambda frames: Serialized("numpy.ndarray", frames)
    ),
    st.binary(min_size=17 * 1024, max_size=17 * 1024).map(lambda b: Serialized("big", [b])),
)


# Plain msgpack data, as a field typed Any carries it (arrays decode as tuples).
plain_data = st.recursive(
    st.one_of(
        st.none(), st.booleans(), small_ints, st.floats(allow_nan=False), st.text(max_size=10)
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(st.text(max_size=5), inner, max_size=3),
    ),
    max_leaves=8,
)


def strategy_for(tp: object) -> st.SearchStrategy[Any]:
    simple = {
        str: st.text(max_size=30),
        bytes: st.binary(max_size=40),
        int: counts,
        bool: st.booleans(),
        float: st.floats(min_value=0.0, allow_nan=False, allow_infinity=False),
        Serialized: payloads,
        Any: plain_data,
    }
    if tp in simple:
        return simple[tp]
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated and _KeyMarker in args[1:]:
        return keys
    if origin is Annotated and _SignedMarker in args[1:]:
        return small_ints
    if origin is Annotated and _NameMarker in args[1:]:
        return simple[str]
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*[strategy_for(a) if a is not type(None) else st.none() for a in args])
    if origin is tuple and args[-1:] == (Ellipsis,):
        return st.lists(strategy_for(args[0]), max_size=3).map(tuple)
    if origin is tuple:  # a record: one value of each place's type
        return st.tuples(*(strategy_for(a) for a in args))
    if origin is dict:
        return st.dictionaries(strategy_for(args[0]), strategy_for(args[1]), max_size=2)
    raise TypeError(f"no strategy for {tp!r}")


def message_strategy(cls: type[Message]) -> st.SearchStrategy[Message]:
    hints = typing.get_type_hints(cls, include_extras=True)
    return st.builds(cls, **{name: strategy_for(hints[name]) for name in cls._fields})


any_message = st.sampled_from(sorted(REGISTRY.values(), key=lambda c: c.op)).flatmap(
    message_strategy
)
