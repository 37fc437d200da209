"""Invariants of the worker core, checked by WorkerState.validate().

Tests call it after every step. It reads state and never changes it; a broken
invariant is our bug and raises AssertionError naming the key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shoal.worker.events import Key
from shoal.worker.state import _HOLDS_DEPS, _OWES_REPORT, S, Status

if TYPE_CHECKING:
    from shoal.worker.state import KeyState, WorkerState


def _check(ok: object, what: str) -> None:
    if not ok:
        raise AssertionError(f"worker state invariant broken: {what}")


def validate_state(state: WorkerState) -> None:
    by_status: dict[Status, list[Key]] = {}
    for key, rec in state.keys.items():
        _check(rec.key == key, f"{key!r} is filed under another key")
        by_status.setdefault(rec.status, []).append(key)
        _validate_key(state, rec)
    running = by_status.get(S.EXECUTING, []) + by_status.get(S.CANCELLED, [])
    _check(set(state.executing) == set(running), "executing index")
    _check(state.busy() <= state.slots, "more tasks running than slots")
    _check(set(state.seceded) <= set(state.executing), "a seceded task not running")
    _check(set(state.rejoining) <= set(state.seceded), "a task rejoining that never seceded")
    timed = {k for k in running if state.keys[k].timeout}
    _check(set(state.timed) == timed, "timed index")
    timed_out = {k for k, rec in state.keys.items() if rec.timed_out}
    _check(timed_out <= set(by_status.get(S.CANCELLED, [])), "a timed-out key not cancelled")
    _check(set(state.to_fetch) == set(by_status.get(S.FETCH, [])), "to_fetch index")
    flying = {(a, k) for a, keys in state.in_flight.items() for k in keys}
    _check(all(state.in_flight.values()), "an empty in_flight entry")
    expected = {(state.keys[k].fetching_from, k) for k in by_status.get(S.FLIGHT, [])}
    _check(flying == expected, "in_flight index")
    queued = {(k, arrival) for _, arrival, k in state._ready}
    ready = by_status.get(S.READY, [])
    _check(all((k, state.keys[k].queued) in queued for k in ready), "ready heap")
    _check(
        not ready or state.busy() == state.slots or state.rejoining or state.paused,
        "ready task, idle slot",
    )
    _check(len(state.requests) <= state.max_fetches, "more fetch requests than allowed")
    _check(
        not state.to_fetch or len(state.requests) == state.max_fetches or state.paused,
        "a key left to fetch while requests could be made",
    )
    requested = {(a, k) for a, keys in state.requests for k in keys}
    _check(flying <= requested, "a key in flight outside any request")


def _validate_key(state: WorkerState, rec: KeyState) -> None:
    st, key = rec.status, rec.key
    _check(st not in (S.RELEASED, S.FORGOTTEN), f"{key!r} is {st}")
    if st in _OWES_REPORT:
        _check(rec.wanted, f"{key!r} is {st} but not wanted")
    elif st not in (S.MEMORY, S.FETCH, S.FLIGHT):  # FETCH, FLIGHT: acquiring
        _check(not rec.wanted, f"{key!r} is {st} but wanted")
    _check((rec.value is not None) == (st is S.MEMORY), f"{key!r} value vs {st}")
    _check(st is not S.MEMORY or rec.wanted or rec.dependents, f"{key!r} held for nobody")
    _check(
        st not in (S.FETCH, S.FLIGHT) or rec.dependents or rec.wanted,
        f"{key!r} fetched for nobody",
    )
    _check(st is not S.FETCH or rec.holders, f"{key!r} to fetch with no holder")
    _check((rec.fetching_from is not None) == (st is S.FLIGHT), f"{key!r} fetching_from")
    if st in _HOLDS_DEPS:
        for dep in rec.deps:
            _check(key in state.keys[dep].dependents, f"{dep!r} misses dependent {key!r}")
        missing = {d for d in rec.deps if state.keys[d].status is not S.MEMORY}
        _check(set(rec.missing) == missing, f"{key!r} missing deps")
        _check((st is S.WAITING) == bool(missing), f"{key!r} is {st} with missing={missing}")
    else:
        _check(not rec.deps and not rec.missing, f"{key!r} is {st} but holds deps")
    for dep_key in rec.dependents:
        task = state.keys.get(dep_key)
        _check(task is not None and key in task.deps, f"{dep_key!r} does not need {key!r}")
