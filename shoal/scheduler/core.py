"""What the scheduler core's mixins use of one another, declared for the type checker.

SchedulerState (shoal.scheduler.state) is made of mixins (clients, intake,
replicas, stalls, workers) that share its attributes and call each other's methods.
Each mixin derives from CoreBase, which declares those attributes and
methods, so that a type checker checks every mixin as strictly as
state.py itself. It holds nothing at run time: the declarations are
annotations, and the method stubs exist only for the type checker.
"""

from __future__ import annotations

import itertools
from collections.abc import Generator, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from shoal.scheduler.model import (
    ClientInfo,
    Command,
    NannyInfo,
    Status,
    TaskState,
    WorkerInfo,
)
from shoal.scheduler.placement import Placement

if TYPE_CHECKING:
    from shoal.protocol import messages as m
    from shoal.protocol.schema import Message
    from shoal.scheduler.ingest import Plan
    from shoal.scheduler.replicas import Replication
    from shoal.scheduler.retirement import Retirement, RetireRequest
    from shoal.scheduler.roles import Grant
    from shoal.scheduler.stalls import Stall
    from shoal.scheduler.tally import Tally


class CoreBase:
    """The attributes and methods of SchedulerState that its mixins rely on."""

    address: str
    audit: bool
    require_tls: bool
    grants: dict[str, Grant]
    http_address: str
    tally: Tally
    heartbeat_timeout: float
    allowed_failures: int
    death_report_wait: float
    no_worker_warning: float
    no_workers_timeout: float | None
    stalls: dict[Any, Stall]
    tasks: dict[object, TaskState]
    placement: Placement
    roles: dict[str, str]
    workers: dict[str, WorkerInfo]
    by_address: dict[str, WorkerInfo]
    replications: dict[tuple[object, WorkerInfo], list[Replication]]
    clients: dict[str, ClientInfo]
    dying: dict[WorkerInfo, float]
    nannies: dict[str, NannyInfo]  # by peer
    nanny_ids: dict[str, NannyInfo]  # by the id each registered under
    retiring: dict[WorkerInfo, Retirement]
    retire_requests: list[RetireRequest]
    retire_events: int  # copies settled and workers come or gone, for retirement.py
    _order: itertools.count[int]
    _client_ids: itertools.count[int]
    _worker_index: itertools.count[int]
    _now: float
    _out: list[Command]
    _free: dict[WorkerInfo, list[object]]
    intakes: dict[str, Generator[None, None, None]]
    _held: list[TaskState] | None

    if TYPE_CHECKING:
        # state.py
        def _move(self, ts: TaskState, to: Status, *args: Any) -> None: ...
        def _send(self, peer: str, msg: Message) -> None: ...
        def _fill(self, ws: WorkerInfo) -> None: ...
        def _add_replica(self, ts: TaskState, ws: WorkerInfo) -> None: ...
        def _in_memory_now(self, ts: TaskState) -> None: ...
        def _recompute(self, roots: list[TaskState]) -> None: ...
        def _activate(self, ts: TaskState) -> None: ...
        def _check_release(self, ts: TaskState) -> None: ...
        def _begin(self, what: str, now: float) -> None: ...
        def _end(self) -> list[Command]: ...
        def _ready(self, ts: TaskState) -> None: ...
        def _maybe_forget(self, ts: TaskState) -> None: ...

        # clients.py
        def _report_memory(self, ts: TaskState, clients: Iterable[ClientInfo]) -> None: ...
        def _report_error(self, ts: TaskState, clients: Iterable[ClientInfo]) -> None: ...
        def _report_warned(self, ts: TaskState, warned: tuple[m.Warned, ...]) -> None: ...
        def _submit_graph_now(self, peer: str, msg: m.SubmitGraph) -> None: ...
        def _want_known(self, client: ClientInfo, ts: TaskState) -> list[TaskState]: ...
        def _remove_client(self, client: ClientInfo) -> None: ...
        def _unwant(self, client: ClientInfo, ts: TaskState) -> None: ...
        def _create_tasks(
            self, msg: m.SubmitGraph, plan: Plan, positions: Sequence[int], local: dict
        ) -> list[TaskState]: ...

        # intake.py
        def _take_in(self, peer: str, msg: m.SubmitGraph) -> Generator[None, None, None]: ...

        # replicas.py
        def _data_lost(self, ts: TaskState) -> None: ...
        def _copy_settled(self, key: object, ws: WorkerInfo) -> None: ...
        def _lost_for_good(self, ts: TaskState) -> None: ...

        # roles.py
        def _audit(self, event: str, **fields: object) -> None: ...
        def _token_of(self, peer: str) -> str: ...

        # keepers.py, restarts.py
        def _dropped_keepers(self) -> None: ...
        def _restart_handlers(self) -> dict[tuple[str, type[Message]], Any]: ...

        # workers.py
        def _register_worker(self, peer: str, msg: m.RegisterWorker) -> None: ...
        def _task_seceded(self, peer: str, msg: m.TaskSeceded) -> None: ...
        def _workers_changed(self) -> None: ...
        def _remove_worker(self, ws: WorkerInfo, cause: str | None = None) -> None: ...

        # retirement.py
        def _advance_retirements(self) -> None: ...
        def _retirement_over(self, ws: WorkerInfo) -> None: ...
        def _expire_retirements(self, now: float) -> None: ...
        def _retirement_deadlines(self) -> list[float]: ...
