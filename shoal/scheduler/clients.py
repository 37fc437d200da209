"""The scheduler core's answers to clients: graphs, releases, cancels, questions.

A mixin of SchedulerState (shoal.scheduler.state), split out to keep each
module readable; it uses the core's transitions and never does I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from shoal.protocol import messages as m
from shoal.scheduler.core import CoreBase
from shoal.scheduler.ingest import Plan, plan_graph
from shoal.scheduler.intake import SLICE_TASKS
from shoal.scheduler.model import (
    ACTIVE,
    ORDER_SPAN,
    SMALL,
    ClientInfo,
    Send,
    Status,
    TaskState,
    WorkerInfo,
    addresses,
    with_member,
    without_member,
)
from shoal.scheduler.roles import key_summary

M, E, R = Status.MEMORY, Status.ERRED, Status.RELEASED


class ClientRequests(CoreBase):
    """Handlers of client messages and reports to clients (see SchedulerState)."""

    def _register_client(self, peer: str, msg: m.RegisterClient) -> None:
        client = ClientInfo(peer, f"client-{next(self._client_ids)}", msg.name)
        self.clients[peer] = client
        self.tally.clients_connected += 1
        self.tally.event(self._now, "client-connected", client=client.client_id, name=msg.name)
        self._send(
            peer,
            m.ClientRegistered(
                client_id=client.client_id,
                workers=len(self.placement.workers),
                http_address=self.http_address,
            ),
        )
        self._audit(
            "client-registered",
            conn=peer,
            client=client.client_id,
            name=msg.name[:100],
            token=self._token_of(peer),
        )

    def _remove_client(self, client: ClientInfo) -> None:
        self._audit("client-left", conn=client.peer, client=client.client_id)
        self.tally.event(self._now, "client-gone", client=client.client_id, name=client.name)
        for ts in list(client.wants):
            self._unwant(client, ts)

    def _unwant(self, client: ClientInfo, ts: TaskState) -> None:
        del client.wants[ts]
        if not client.wants:  # a dict keeps its largest size until replaced
            client.wants = {}
        ts.wanted_by = without_member(ts.wanted_by, client)
        self._check_release(ts)

    def _submit_graph(self, peer: str, msg: m.SubmitGraph) -> None:
        self.tally.graphs += 1
        self.tally.graph_tasks += len(msg.keys)
        client = self.clients[peer].client_id
        self.tally.event(self._now, "graph-received", client=client, tasks=len(msg.keys))
        if self.audit:
            self._audit_graph(peer, msg)
        if len(msg.keys) <= SLICE_TASKS:
            self._submit_graph_now(peer, msg)
            return
        steps = self._take_in(peer, msg)  # see intake.py; the shell calls resume()
        try:
            next(steps)
        except StopIteration:
            return
        self.intakes[peer] = steps

    def _submit_graph_now(self, peer: str, msg: m.SubmitGraph) -> None:
        """Check and take in a whole graph in one step."""
        client = self.clients[peer]
        plan = plan_graph(msg, self.tasks)
        if isinstance(plan, str):
            self._send(peer, m.GraphRejected(keys=msg.wanted, reason=plan))
            self._audit("graph-rejected", conn=peer, reason=plan[:1000])
            return
        local = dict(plan.outside)
        new = self._create_tasks(msg, plan, plan.order, local)
        tasks = self.tasks
        for ts in new:
            tasks[ts.key] = ts
        # Existing tasks that were let go but are needed again (recomputed below).
        again = [ts for ts in plan.outside.values() if ts.status is R]
        index, alone = plan.index, (client,)  # one tuple for all the tasks it alone wants
        for key in msg.wanted:
            if key in index:  # created just now: released, wanted by nobody else
                ts = local[key]
                ts.wanted_by = alone
                client.wants[ts] = None
                continue
            again += self._want_known(client, tasks[key])
        # Highest priority first, so that the first free slots go to it. Activating a
        # task before its dependencies is fine: it counts them as not in memory.
        for ts in sorted(new, key=lambda ts: ts.priority) if msg.priority else new:
            self._activate(ts)
        # Then the old ones, now counted as needed by the new tasks that wait for them
        # (a new task that erred at once needs none of them).
        self._recompute([ts for ts in again if ts.needed])

    def _want_known(self, client: ClientInfo, ts: TaskState) -> list[TaskState]:
        """`client` wants a task that existed before its graph: tell it what is known;
        returns the task when it must be computed again."""
        if client not in ts.wanted_by:
            ts.wanted_by = with_member(ts.wanted_by, client)
            client.wants[ts] = None
        if ts.status is M:
            self._report_memory(ts, (client,))
        elif ts.status is E:
            self._report_error(ts, (client,))
        elif ts.status is R:
            return [ts]
        return []

    def _create_tasks(
        self, msg: m.SubmitGraph, plan: Plan, positions: Sequence[int], local: dict
    ) -> list[TaskState]:
        """The tasks at `positions` (of the plan's order), linked to their dependencies,
        which `local` holds by key (the known ones the plan found, then each new task,
        added here): a small dict of recent entries, where self.tasks may be huge and
        cold. Known dependencies list them as dependents; self.tasks is left alone."""
        keys, funcs, func, args, deps = msg.keys, msg.funcs, msg.func, msg.args, msg.deps
        prio, order, group_of = msg.priority, self._order, self.tally.group_of
        options = msg.resources or msg.restrict or msg.retries or msg.timeout
        new = []
        # Tasks that read one and the same task (a map over one future) share the
        # tuple that names it.
        last: tuple[TaskState, ...] = ()
        for i in positions:
            key = keys[i]
            priority = -prio[i] * ORDER_SPAN + next(order) if prio else next(order)
            ts = TaskState(key, funcs[func[i]], args[i], priority)
            ts.group = group_of(key)
            if options:
                ts.resources = msg.resources.get(i)
                ts.restrict = msg.restrict.get(i)
                ts.retries = msg.retries.get(i, 0)
                ts.timeout = msg.timeout.get(i, 0.0)
            dep_keys = deps[i]
            if len(dep_keys) == 1:
                dep = local[dep_keys[0]]
                if not last or last[0] is not dep:
                    last = (dep,)
                ts.deps = last
                users = dep.dependents  # with_member(), inline
                if type(users) is tuple and len(users) < SMALL:
                    dep.dependents = users + (ts,)  # noqa: RUF005 (faster than unpacking)
                else:
                    dep.dependents = with_member(users, ts)
            elif dep_keys:
                ts.deps = tuple(map(local.__getitem__, dict.fromkeys(dep_keys)))
                for dep in ts.deps:
                    users = dep.dependents
                    if type(users) is tuple and len(users) < SMALL:
                        dep.dependents = users + (ts,)  # noqa: RUF005 (faster than unpacking)
                    else:
                        dep.dependents = with_member(users, ts)
            local[key] = ts
            new.append(ts)
        return new

    def _release_futures(self, peer: str, msg: m.ReleaseFutures) -> None:
        client = self.clients[peer]
        for key in msg.keys:
            ts = self.tasks.get(key)
            if ts is not None and client in ts.wanted_by:
                self._unwant(client, ts)

    def _audit_graph(self, peer: str, msg: m.SubmitGraph) -> None:
        """The audit line of a graph: who sent it, how many tasks, what they are
        called and ask for; nothing of the payloads."""
        resources: dict[str, float] = {}
        for asked in msg.resources.values():
            for name, amount in asked.items():
                resources[name] = max(amount, resources.get(name, 0.0))
        self._audit(
            "graph-submitted",
            conn=peer,
            client=self.clients[peer].client_id,
            token=self._token_of(peer),
            tasks=len(msg.keys),
            wanted=len(msg.wanted),
            prefixes=key_summary(msg.keys, len(msg.keys))["prefixes"],
            resources={name[:60]: amount for name, amount in list(resources.items())[:20]},
        )

    def _cancel_keys(self, peer: str, msg: m.CancelKeys) -> None:
        """Drop this client's interest in the keys and in everything pending on them;
        with `force` (admin only: roles.py checked), every client's interest."""
        client = self.clients[peer]
        stack = [ts for key in msg.keys if (ts := self.tasks.get(key)) is not None]
        seen: dict[TaskState, None] = {}
        while stack:
            ts = stack.pop()
            if ts in seen:
                continue
            seen[ts] = None
            if ts.status in ACTIVE or ts.status is R:
                stack.extend(ts.dependents)
        cancelled = [ts for ts in seen if client in ts.wanted_by]
        self._audit(
            "cancel",
            conn=peer,
            client=client.client_id,
            token=self._token_of(peer),
            force=msg.force,
            **key_summary(msg.keys, len(msg.keys)),
        )
        if msg.force:
            self._cancel_for_others(client, list(seen))
        # The client knows about the keys it named; it hears of the others. (An
        # echo of its own keys could arrive after it submitted one of them anew.)
        named = set(msg.keys)
        others = tuple(ts.key for ts in cancelled if ts.key not in named)
        if others:
            self._send(peer, m.KeysCancelled(keys=others))
        for ts in cancelled:
            self._unwant(client, ts)

    def _cancel_for_others(self, by: ClientInfo, tasks: list[TaskState]) -> None:
        """An admin's forced cancel: the other clients that want `tasks` let go of
        them and hear why."""
        lost: dict[ClientInfo, list[TaskState]] = {}
        for ts in tasks:
            for other in ts.wanted_by:
                if other is not by:
                    lost.setdefault(other, []).append(ts)
        reason = f"cancelled by {by.client_id} ({by.name[:60] or 'unnamed'}) with the admin role"
        for other, dropped in lost.items():
            self._send(
                other.peer, m.KeysCancelled(keys=tuple(ts.key for ts in dropped), reason=reason)
            )
            self._audit(
                "keys-released-for-others",
                conn=by.peer,
                client=by.client_id,
                owner=other.client_id,
                **key_summary((ts.key for ts in dropped), len(dropped)),
            )
            for ts in dropped:
                self._unwant(other, ts)

    def _who_has(self, peer: str, msg: m.WhoHas) -> None:
        answer = {}
        for key in msg.keys:
            ts = self.tasks.get(key)
            answer[key] = tuple(ws.address for ws in ts.who_has) if ts is not None else ()
        self._send(peer, m.WhoHasAnswer(who_has=answer, request_id=msg.request_id))

    def _scheduler_info(self, peer: str, msg: m.GetSchedulerInfo) -> None:
        self._send(peer, m.SchedulerInfo(info=self.info(), request_id=msg.request_id))

    def info(self) -> dict[str, Any]:
        """The cluster as plain data."""
        counts = {s: n for s, n in self.tally.counts().items() if n and s != "forgotten"}
        workers = {
            ws.name: {
                "address": ws.address,
                "nthreads": ws.nthreads,
                "memory_limit": ws.memory_limit,
                "resources": dict(ws.resources),
                "processing": len(ws.processing),
                "keys": len(ws.has_what),
                "nbytes": ws.nbytes,
                "pid": ws.pid,
                "host": ws.host,
                "http_address": ws.http_address,
                "nanny": ws.nanny,
                "cpu": ws.cpu,
                "memory": ws.memory,
                "executing": ws.executing,
                # Of `memory`: the values held (managed); the rest is the process's.
                # Values on disk (spilled) are not in `memory`; values that could
                # not be written to disk (unspillable) are in managed.
                "managed": ws.managed,
                "unmanaged": max(0, ws.memory - ws.managed),
                "spilled": ws.spilled,
                "unspillable": ws.unspillable,
                "paused": ws.paused,
                "gpus": gpus_of(ws),
            }
            for ws in self.placement.workers.values()
        }
        return {
            "address": self.address,
            "http_address": self.http_address,
            "dashboard": f"{self.http_address}/" if self.http_address else "",
            "workers": workers,
            "clients": len(self.clients),
            "tasks": counts,
        }

    # -- reports to clients --------------------------------------------------------

    def _report_memory(self, ts: TaskState, clients: Iterable[ClientInfo]) -> None:
        msg = m.KeyInMemory(
            key=ts.key,
            nbytes=ts.nbytes,
            typename=ts.typename,
            who_has=addresses(ts.who_has),
            value=ts.value,
        )
        for client in clients:
            self._out.append(Send(client.peer, msg))

    def _report_error(self, ts: TaskState, clients: Iterable[ClientInfo]) -> None:
        error = ts.error
        assert error is not None
        msg = m.KeyErred(
            key=ts.key,
            typename=error.typename,
            message=error.message,
            traceback=error.traceback,
            exception=error.exception,
            blame=error.blame,
        )
        for client in clients:
            self._send(client.peer, msg)

    def _report_warned(self, ts: TaskState, warned: tuple[m.Warned, ...]) -> None:
        """A task's warnings, to the clients that want it or else a task depending
        on it (the nearest found, looking at SCAN_FOR_WANTED tasks at most): sent
        now, they arrive before the report of any key depending on the task."""
        clients = ts.wanted_by or _wanting_above(ts)
        if clients:
            msg = m.TaskWarned(key=ts.key, warned=warned)
            for client in clients:
                self._send(client.peer, msg)


# Tasks looked at above a warning task for the clients waiting on it: enough for
# the chains and reductions of a collection's graph, bounded for all-to-all ones.
SCAN_FOR_WANTED = 1_000


def _wanting_above(ts: TaskState) -> tuple[ClientInfo, ...]:
    """The clients that want a task depending on `ts`, directly or not; none past
    a wanted task, and none beyond SCAN_FOR_WANTED tasks looked at."""
    found: dict[ClientInfo, None] = {}
    seen = {ts}
    todo = list(ts.dependents)
    while todo and len(seen) < SCAN_FOR_WANTED:
        above = todo.pop()
        if above in seen:
            continue
        seen.add(above)
        if above.wanted_by:
            found.update(dict.fromkeys(above.wanted_by))
        else:
            todo.extend(above.dependents)
    return tuple(found)


def gpus_of(ws: WorkerInfo) -> tuple[dict[str, Any], ...]:
    """What scheduler_info() says of each GPU of a worker: from its registration,
    index, uuid, name and memory_limit; from its latest heartbeat, memory_used and
    memory_total (0 until one came) and utilization (None where NVML cannot say)."""
    out = []
    for i, device in enumerate(ws.devices):
        figures = ws.device_figures[i] if i < len(ws.device_figures) else {}
        out.append(
            {
                "index": device.get("index", ""),
                "uuid": device.get("uuid", ""),
                "name": device.get("name", ""),
                "memory_limit": ws.device_memory_limit,
                "memory_used": int(figures.get("memory_used", 0)),
                "memory_total": int(figures.get("memory_total", 0)),
                "utilization": figures.get("utilization"),
            }
        )
    return tuple(out)  # as it reads after crossing the wire
