"""Checking a submitted graph before any of it is accepted.

Pure functions over a SubmitGraph's columns: shapes, duplicate keys, missing
dependencies, cycles, and which new tasks are needed at all. Linear in the
size of the submission; nothing here changes scheduler state.
"""

from __future__ import annotations

import operator
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from itertools import chain, filterfalse, repeat
from typing import Any

from shoal.protocol.messages import SubmitGraph

_UNKNOWN = object()


class Plan:
    """A checked submission: the new tasks to create, dependencies first."""

    __slots__ = ("index", "order", "outside")

    def __init__(
        self, index: dict[object, int], order: Sequence[int], outside: dict[object, Any]
    ) -> None:
        self.index = index  # key -> position in the message, for new keys only
        self.order = order  # positions of the needed new tasks, dependencies first
        # Keys already known that the needed new tasks read, in order of first
        # use, with what `known` holds for them: looked up once here.
        self.outside = outside


def check_columns(msg: SubmitGraph) -> str | None:
    """The reason the columns do not fit together, or None."""
    n = len(msg.keys)
    for name in ("func", "args", "deps"):
        if len(getattr(msg, name)) != n:
            return f"column {name!r} has {len(getattr(msg, name))} entries for {n} keys"
    if msg.priority and len(msg.priority) != n:
        return f"column 'priority' has {len(msg.priority)} entries for {n} keys"
    nfuncs = len(msg.funcs)
    for i in msg.func:
        if not 0 <= i < nfuncs:
            return f"function index {i} is out of range ({nfuncs} functions)"
    for name in ("resources", "restrict", "retries", "timeout"):
        for i in getattr(msg, name):
            if not 0 <= i < n:
                return f"{name} given for task index {i}, out of range ({n} tasks)"
    for i, count in msg.retries.items():
        if count < 0:
            return f"negative retries for {msg.keys[i]!r}"
    for i, seconds in msg.timeout.items():
        if not seconds > 0:  # NaN fails this too
            return f"timeout for {msg.keys[i]!r} must be positive, not {seconds!r}"
    return None


def plan_graph(msg: SubmitGraph, known: Mapping[object, object]) -> Plan | str:
    """Check a submission against the keys the scheduler already has.

    Keys already known are kept as they are (their new definitions are
    ignored). Returns the plan, or the reason to refuse the whole submission.
    A submission of new keys listed dependencies first (as clients send them)
    is checked by a few passes in C; any other takes the general way.
    """
    problem = check_columns(msg)
    if problem:
        return problem
    keys = msg.keys
    index = dict(zip(keys, range(len(keys)), strict=True))
    if len(index) == len(keys) and known.keys().isdisjoint(keys):
        plan = _plan_in_order(msg, index, known)
        if plan is not None:
            return plan
    return _plan_any(msg, known)


def _plan_in_order(
    msg: SubmitGraph, index: dict[object, int], known: Mapping[object, object]
) -> Plan | None:
    """The plan of new keys whose dependencies all come before them, or None
    when they do not (or when something is wrong: _plan_any says what)."""
    deps = msg.deps
    # Each dependency's position (-1: known already) must be below its user's.
    positions = map(index.get, chain.from_iterable(deps), repeat(-1))
    users = chain.from_iterable(map(repeat, range(len(deps)), map(len, deps)))
    if not all(map(operator.lt, positions, users)):
        return None
    outside = _outside(deps, index, known)
    wanted = set(msg.wanted)
    if outside is None or wanted.difference(index).difference(known):
        return None
    if index.keys() <= wanted:
        return Plan(index, range(len(deps)), outside)
    needed = _needed(msg, index)
    order = [i for i in range(len(deps)) if i in needed]
    outside = _outside((deps[i] for i in order), index, known)
    assert outside is not None  # a subset of the above
    return Plan(index, order, outside)


def _outside(
    deps: Iterable[tuple[object, ...]], index: dict[object, int], known: Mapping[object, object]
) -> dict[object, object] | None:
    """Dependencies that are not new, each with what `known` holds for it, in
    order of first use; None when one of them is not known either."""
    keys = dict.fromkeys(filterfalse(index.__contains__, chain.from_iterable(deps)))
    values = list(map(known.get, keys, repeat(_UNKNOWN)))
    if any(map(operator.is_, values, repeat(_UNKNOWN))):  # `in` would compare, and read, each
        return None
    return dict(zip(keys, values, strict=True))


def _plan_any(msg: SubmitGraph, known: Mapping[object, object]) -> Plan | str:
    index: dict[object, int] = {}
    for i, key in enumerate(msg.keys):
        if key in index:
            return f"key {key!r} appears twice in one submission"
        if key not in known:
            index[key] = i
    deps = msg.deps
    for i in index.values():
        for dep in deps[i]:
            if dep not in index and dep not in known:
                return f"task {msg.keys[i]!r} depends on {dep!r}, which is not in the graph"
    for key in msg.wanted:
        if key not in index and key not in known:
            return f"wanted key {key!r} is not in the graph"
    order = _topological(msg, index)
    if isinstance(order, str):
        return order
    needed = _needed(msg, index)
    order = [i for i in order if i in needed]
    outside = _outside((deps[i] for i in order), index, known)
    assert outside is not None  # checked above
    return Plan(index, order, outside)


def _topological(msg: SubmitGraph, index: dict[object, int]) -> list[int] | str:
    """Positions of new tasks, dependencies first (Kahn), or a cycle's description."""
    deps = msg.deps
    missing = dict.fromkeys(index.values(), 0)  # new dependencies not yet placed
    users: dict[int, list[int]] = {}
    for i in index.values():
        seen = set()
        for dep in deps[i]:
            j = index.get(dep)
            if j is not None and j not in seen:
                seen.add(j)
                missing[i] += 1
                users.setdefault(j, []).append(i)
    ready = deque(i for i, count in missing.items() if count == 0)
    order = []
    while ready:
        i = ready.popleft()
        order.append(i)
        for user in users.get(i, ()):
            missing[user] -= 1
            if missing[user] == 0:
                ready.append(user)
    if len(order) < len(index):
        return "the graph has a cycle: " + " -> ".join(map(repr, _a_cycle(msg, index, missing)))
    return order


def _a_cycle(msg: SubmitGraph, index: dict[object, int], missing: dict[int, int]) -> list[object]:
    """Keys along one cycle among the tasks Kahn's walk could not place."""
    stuck = {i for i, count in missing.items() if count > 0}
    start = min(stuck)
    path: list[int] = []
    position: dict[int, int] = {}
    i = start
    while i not in position:
        position[i] = len(path)
        path.append(i)
        # Every stuck task has a stuck dependency, so this always finds one.
        i = next(j for dep in msg.deps[i] if (j := index.get(dep, -1)) in stuck)
    cycle = [*path[position[i] :], i]
    return [msg.keys[j] for j in reversed(cycle)]


def _needed(msg: SubmitGraph, index: dict[object, int]) -> set[int]:
    """New tasks that a wanted key depends on, directly or not (or is)."""
    stack = [index[key] for key in msg.wanted if key in index]
    needed = set(stack)
    deps = msg.deps
    while stack:
        for dep in deps[stack.pop()]:
            j = index.get(dep)
            if j is not None and j not in needed:
                needed.add(j)
                stack.append(j)
    return needed
