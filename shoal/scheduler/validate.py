"""Invariants of the scheduler core, checked by SchedulerState.validate().

Tests call it after every step. It reads state and never changes it; a
broken invariant is our bug and raises AssertionError with the task named.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shoal.scheduler.model import ACTIVE, Status

if TYPE_CHECKING:
    from shoal.scheduler.model import TaskState
    from shoal.scheduler.state import SchedulerState


def validate_state(state: SchedulerState) -> None:
    for key, ts in state.tasks.items():
        assert ts.key == key, f"{ts} is filed under {key!r}"
        _validate_task(state, ts)
    for ws in state.workers.values():
        if ws.gone:
            assert (ws in state.dying) != ws.retiring, f"{ws} is gone but registered"
            assert ws.retiring == (ws in state.retiring), f"{ws} retiring misfiled"
        else:
            assert state.placement.workers.get(ws.name) is ws, f"{ws} missing from placement"
        used: dict[str, float] = {}
        for ts in ws.processing:
            assert ts.processing_on is ws, f"{ts} is in {ws}.processing but not on it"
            for name, amount in (ts.resources or {}).items():
                used[name] = used.get(name, 0.0) + amount
        for name, total in ws.resources.items():
            free = total - used.get(name, 0.0)
            assert abs(ws.free[name] - free) < 1e-9, f"{ws}: {name} free {ws.free[name]} != {free}"
        for ts in ws.started:
            assert ts in ws.processing, f"{ts} noted started on {ws} but not processing there"
        for ts in ws.seceded:
            assert ts in ws.started, f"{ts} seceded on {ws} but not noted started"
        for ts in ws.has_what:
            assert ws in ts.who_has, f"{ts} is in {ws}.has_what but not in its who_has"
        assert ws.nbytes == sum(ts.nbytes for ts in ws.has_what), f"{ws}: nbytes drifted"
    out = len(state.dying) + len(state.retiring)
    assert len(state.placement.workers) == len(state.workers) - out, "placement misfiled"
    for ws, ret in state.retiring.items():
        assert ret.ws is ws and ws.retiring and ws.gone, f"retirement of {ws} misfiled"
        assert state.workers.get(ws.peer) is ws, f"departed {ws} still retiring"
        for ts in ret.copies:
            assert ts in ws.has_what, f"{ws} copies {ts} it does not hold"
    for retire in state.retire_requests:
        for ws in retire.pending:
            assert ws in state.retiring, f"a retire request waits for {ws}, not retiring"
    for ws in state.dying:
        assert state.workers.get(ws.peer) is ws and ws.gone, f"dying {ws} misfiled"
    assert {n.nanny_id: n for n in state.nannies.values()} == state.nanny_ids, "nannies misfiled"
    for peer, nanny in state.nannies.items():
        assert nanny.peer == peer, f"{nanny} filed under {peer}"
    by_address = {ws.address: ws for ws in state.workers.values()}
    assert state.by_address == by_address, "by_address does not match the workers"
    for (key, ws), requests in state.replications.items():
        assert state.workers.get(ws.peer) is ws, f"a copy of {key!r} owed by departed {ws}"
        for request in requests:
            assert (key, ws) in request.pending, f"replication of {key!r} misfiled"
    for client in state.clients.values():
        for ts in client.wants:
            assert client in ts.wanted_by, f"{client} wants {ts} but is not in wanted_by"
            assert state.tasks.get(ts.key) is ts, f"{client} wants forgotten {ts}"
    _validate_tally(state)


def _validate_tally(state: SchedulerState) -> None:
    """The counts by status each task group keeps match the tasks filed."""
    found: dict[tuple[str, Status], int] = {}
    for ts in state.tasks.values():
        assert state.tally.groups.get(ts.group.name) is ts.group, f"{ts}: group not filed"
        found[ts.group.name, ts.status] = found.get((ts.group.name, ts.status), 0) + 1
    for name, group in state.tally.groups.items():
        for status, n in group.counts.items():
            if status is not Status.FORGOTTEN:
                held = found.get((name, status), 0)
                assert n == held, f"group {name}: {n} {status} counted, {held} filed"


def _validate_task(state: SchedulerState, ts: TaskState) -> None:
    status = ts.status
    assert status is not Status.FORGOTTEN, f"{ts} is forgotten but still filed"
    for dep in ts.deps:
        assert state.tasks.get(dep.key) is dep, f"{ts} depends on forgotten {dep}"
        assert ts in dep.dependents, f"{ts} not among the dependents of {dep}"
    for members in (ts.dependents, ts.wanted_by, ts.who_has):
        assert len(set(members)) == len(members), f"{ts} links to one record twice: {members}"
    for dependent in ts.dependents:
        assert ts in dependent.deps, f"{dependent} is a dependent of {ts} without the edge"
    active = sum(1 for d in ts.dependents if d.status in ACTIVE)
    assert ts.pending == active, f"{ts}: pending {ts.pending} != {active} active dependents"
    for client in ts.wanted_by:
        assert ts in client.wants, f"{ts} wanted by {client} which does not list it"
        assert client.peer in state.clients, f"{ts} wanted by departed {client}"
    if status is not Status.PROCESSING:
        assert ts.processing_on is None, f"{ts} has processing_on while {status}"
    if status is not Status.MEMORY:
        assert not ts.who_has and ts.value is None, f"{ts} holds data while {status}"
    not_ready = sum(1 for dep in ts.deps if dep.status is not Status.MEMORY)
    if status is Status.WAITING:
        assert ts.waiting_on == not_ready > 0, f"{ts}: waiting_on {ts.waiting_on} != {not_ready}"
    elif status in (Status.QUEUED, Status.PROCESSING):
        assert not_ready == 0, f"{ts} is {status} with dependencies not in memory"
    if status is Status.PROCESSING:
        ws = ts.processing_on
        assert ws is not None and ts in ws.processing, f"{ts} not in its worker's processing"
        assert state.workers.get(ws.peer) is ws, f"{ts} processing on departed {ws}"
    elif status is Status.MEMORY:
        assert ts.who_has or ts.value is not None, f"{ts} in memory with no holder"
        for ws in ts.who_has:
            assert ts in ws.has_what, f"{ts} claims {ws} holds it"
            assert state.workers.get(ws.peer) is ws, f"{ts} held by departed {ws}"
        assert ts.needed, f"{ts} in memory but nothing needs it"
    elif status is Status.ERRED:
        assert ts.error is not None, f"{ts} erred without an error"
        assert ts.needed or ts.dependents, f"{ts} erred, unneeded, should be forgotten"
    elif status is Status.RELEASED:
        assert ts.dependents or ts.needed, f"{ts} released with no reason to be kept"
        assert not ts.needed, f"{ts} needed but released"
    if status in ACTIVE:
        assert ts.needed, f"{ts} is {status} but nothing needs it"
        assert ts.func is not None, f"{ts} is {status} but has no lineage (scattered)"
