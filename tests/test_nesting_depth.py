"""Arguments and structures of futures nested past MAX_NESTING are refused by
name at submit, never with a bare RecursionError; up to it they work."""

from __future__ import annotations

import pytest

from shoal.client.graph import arg_payload
from shoal.client.nesting import futures_in, key_leaves, replace_futures
from shoal.errors import NestingTooDeep
from shoal.protocol.serialize import deserialize
from shoal.protocol.taskspec import MAX_NESTING


def nested(depth: int, kind: type = list) -> object:
    obj: object = 1
    for _ in range(depth):
        obj = {"x": obj} if kind is dict else kind([obj])
    return obj


@pytest.mark.parametrize("kind", [list, tuple, dict])
def test_arguments_400_deep_are_refused_by_name(kind: type) -> None:
    with pytest.raises(NestingTooDeep, match=f"more than {MAX_NESTING} deep"):
        arg_payload((nested(400, kind),), {}, frozenset())
    with pytest.raises(NestingTooDeep):
        arg_payload((), {"a": nested(400, kind)}, frozenset())


def test_arguments_up_to_the_limit_work() -> None:
    arg = nested(MAX_NESTING - 2)
    payload, deps = arg_payload((arg,), {}, frozenset())
    assert deserialize(payload).args == (arg,) and deps == ()


def test_structures_of_futures_400_deep_are_refused_by_name() -> None:
    deep = nested(400)
    for walk in (futures_in, key_leaves, lambda obj: replace_futures(obj, lambda f: f)):
        with pytest.raises(NestingTooDeep):
            walk(deep)
    assert futures_in(nested(50)) == []
