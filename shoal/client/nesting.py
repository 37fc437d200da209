"""Nested structures of futures and keys: finding the leaves, rebuilding the shape.

No I/O and no state of its own. gather() walks lists, tuples, sets and dict
values; compute() walks lists only, since there a tuple is a key.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shoal.client.futures import Future
from shoal.client.state import Key, KeyState, Status
from shoal.errors import NestingTooDeep
from shoal.protocol.serialize import Serialized, deserialize
from shoal.protocol.taskspec import MAX_NESTING

# Returned by a leaf function to drop the leaf from its container.
SKIP = object()


def _check_depth(depth: int) -> None:
    if depth >= MAX_NESTING:
        raise NestingTooDeep(f"futures nested in containers more than {MAX_NESTING} deep")


def futures_in(obj: Any) -> list[Future]:
    """Every Future in `obj`, depth first, in container order (with repeats).

    Raises:
        NestingTooDeep: containers nested more than MAX_NESTING deep.
    """
    found: list[Future] = []
    _collect(obj, found, 0)
    return found


def _collect(obj: Any, found: list[Future], depth: int) -> None:
    if isinstance(obj, Future):
        found.append(obj)
    elif type(obj) in (list, tuple, set, frozenset):
        _check_depth(depth)
        for item in obj:
            _collect(item, found, depth + 1)
    elif type(obj) is dict:
        _check_depth(depth)
        for item in obj.values():
            _collect(item, found, depth + 1)


def replace_futures(obj: Any, leaf: Callable[[Future], Any], depth: int = 0) -> Any:
    """`obj` with each Future replaced by `leaf(future)`; SKIP drops it.

    Raises:
        NestingTooDeep: containers nested more than MAX_NESTING deep.
    """
    if isinstance(obj, Future):
        return leaf(obj)
    kind = type(obj)
    if kind in (list, tuple, set, frozenset):
        _check_depth(depth)
        items = [replace_futures(item, leaf, depth + 1) for item in obj]
        return kind(item for item in items if item is not SKIP)
    if kind is dict:
        _check_depth(depth)
        out = {}
        for k, v in obj.items():
            new = replace_futures(v, leaf, depth + 1)
            if new is not SKIP:
                out[k] = new
        return out
    return obj


def key_leaves(keys: Any, depth: int = 0) -> list[Any]:
    """The keys and Futures of a compute() request: a key, or nested lists of them."""
    if type(keys) is list:
        _check_depth(depth)
        return [leaf for item in keys for leaf in key_leaves(item, depth + 1)]
    return [keys]


def replace_keys(keys: Any, leaf: Callable[[Any], Any], depth: int = 0) -> Any:
    """The nesting of `keys` with each leaf replaced by `leaf(it)`."""
    if type(keys) is list:
        _check_depth(depth)
        return [replace_keys(item, leaf, depth + 1) for item in keys]
    return leaf(keys)


def settled(listed: list[Future], errors: str) -> list[KeyState]:
    """States of the finished futures, one per key.

    Raises:
        Exception: with `errors="raise"`, the first done-but-failed future's exception.
    """
    states: dict[Key, KeyState] = {}
    for future in listed:
        state = future._state
        if state.status is Status.FINISHED:
            states[state.key] = state
        elif errors == "raise" and state.done:
            raise state.exception()  # type: ignore[misc]
    return list(states.values())


def assemble(
    structure: Any, states: list[KeyState], fetched: dict[Key, Serialized], host: bool = False
) -> Any:
    """`structure` with each Future replaced by its value; failed ones dropped.
    With `host`, device arrays come back as numpy arrays (see Future.result)."""
    values: dict[Key, Any] = {}
    for state in states:
        payload = state.payload if state.payload is not None else fetched[state.key]
        values[state.key] = deserialize(payload, f"result of {state.key!r}", host=host)
    return replace_futures(structure, lambda f: values.get(f.key, SKIP))
