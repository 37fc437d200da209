"""Taking in a large SubmitGraph a slice at a time: check, create, publish, start.

A mixin of SchedulerState, pure like it. `_take_in` is a generator that
yields after each slice of at most SLICE_TASKS tasks; the core keeps it per
connection and the shell calls `resume()` after letting the loop run. Other
connections' messages are handled between slices; see docs/design.md
("Large graphs") for what each phase may see of them.
"""

from __future__ import annotations

import operator
from collections.abc import Generator, Iterator
from itertools import chain, filterfalse, repeat
from operator import attrgetter

from shoal.protocol import messages as m
from shoal.scheduler.core import CoreBase
from shoal.scheduler.ingest import Plan, check_columns, plan_graph
from shoal.scheduler.model import ClientInfo, Status, TaskState, without_member

# Graphs with more tasks than this are taken in slices of this many tasks.
SLICE_TASKS = 10_000

R, W, M, E = Status.RELEASED, Status.WAITING, Status.MEMORY, Status.ERRED
_UNKNOWN = object()


def _spans(n: int) -> Iterator[slice]:
    for start in range(0, n, SLICE_TASKS):
        yield slice(start, min(start + SLICE_TASKS, n))


def plan_in_slices(msg: m.SubmitGraph, known: dict) -> Generator[None, None, Plan | str]:
    """plan_graph's answer, yielding between slices.

    New keys listed dependencies first (what a well-behaved peer sends) are
    checked in slices; any other submission, and any refusal, is left to
    plan_graph in one step, which words the reason.
    """
    keys, deps, n = msg.keys, msg.deps, len(msg.keys)
    columns_fit = all(len(c) == n for c in (msg.func, msg.args, deps))
    if not columns_fit or (msg.priority and len(msg.priority) != n) or msg.resources:
        return plan_graph(msg, known)
    nfuncs = len(msg.funcs)
    index: dict[object, int] = {}
    for span in _spans(n):
        part = msg.func[span]
        if min(part) < 0 or max(part) >= nfuncs or not known.keys().isdisjoint(keys[span]):
            return plan_graph(msg, known)
        index.update(zip(keys[span], range(span.start, span.stop), strict=True))
        yield
    if len(index) != n or check_columns(msg) is not None:  # sparse columns: small
        return plan_graph(msg, known)
    outside: dict[object, object] = {}
    for span in _spans(n):
        dep_keys = deps[span]
        positions = map(index.get, chain.from_iterable(dep_keys), repeat(-1))
        users = chain.from_iterable(map(repeat, range(span.start, span.stop), map(len, dep_keys)))
        if not all(map(operator.lt, positions, users)):
            return plan_graph(msg, known)
        key: object
        for key in filterfalse(index.__contains__, chain.from_iterable(dep_keys)):
            if key not in outside:
                value = known.get(key, _UNKNOWN)
                if value is _UNKNOWN:
                    return plan_graph(msg, known)
                outside[key] = value
        yield
    found: set[object] = set()  # new keys wanted
    for span in _spans(len(msg.wanted)):
        part = msg.wanted[span]
        found.update(filter(index.__contains__, part))
        if not known.keys() >= set(filterfalse(index.__contains__, part)):
            return plan_graph(msg, known)
        yield
    if len(found) == n:
        return Plan(index, range(n), outside)
    # Some tasks are not needed: plan_graph culls them, in one step (rare at this size).
    return plan_graph(msg, known)


class LargeSubmissions(CoreBase):
    """Large graphs taken in slices (see SchedulerState)."""

    def taking_in(self, peer: str) -> bool:
        """True while a large graph from `peer` is being taken in: call resume()."""
        return peer in self.intakes

    def resume(self, peer: str, now: float) -> list:
        """Take in the next slice of `peer`'s large graph; return what to send."""
        self._begin("submit-graph", now)
        steps = self.intakes[peer]
        try:
            next(steps)
        except StopIteration:
            del self.intakes[peer]
        return self._end()

    def _take_in(self, peer: str, msg: m.SubmitGraph) -> Generator[None, None, None]:
        """Plan, create privately, publish, start; yield between slices."""
        plan = yield from plan_in_slices(msg, self.tasks)
        if isinstance(plan, str):
            self._send(peer, m.GraphRejected(keys=msg.wanted, reason=plan))
            self._audit("graph-rejected", conn=peer, reason=plan[:1000])
            return
        local: dict[object, TaskState] = dict(plan.outside)
        new: list[TaskState] = []
        published = False
        held: list[TaskState] | None = None
        try:
            order = plan.order
            for start in range(0, len(order), SLICE_TASKS):
                new += self._create_tasks(msg, plan, order[start : start + SLICE_TASKS], local)
                yield
            # The new tasks wanted are marked while still private (the client's
            # table takes them at once when published); known ones wait for that.
            client, index = self.clients[peer], plan.index
            alone = (client,)  # one tuple for all the tasks it alone wants
            new_wanted: list[TaskState] = []
            old_wanted: list[object] = []
            for start in range(0, len(msg.wanted), SLICE_TASKS):
                for key in msg.wanted[start : start + SLICE_TASKS]:
                    if key in index:
                        ts = local[key]
                        ts.wanted_by = alone
                        new_wanted.append(ts)
                    else:
                        old_wanted.append(key)
                yield
            if not self._still_valid(plan, local):
                self._unlink(new, plan)
                new, published = [], True
                self._submit_graph_now(peer, msg)  # planned again, in one step
                return
            again = self._publish(client, new, new_wanted, old_wanted)
            published = True
            # Dependents first: a task then never finishes before a task that reads
            # it counts it as needed. Tasks found ready are held, then started in
            # priority order, as one unsliced pass would have started them.
            held = []
            for start in range(len(new), 0, -SLICE_TASKS):
                self._held = held
                try:
                    for ts in reversed(new[max(0, start - SLICE_TASKS) : start]):
                        if ts.status is R:  # another graph may have started it meanwhile
                            self._activate(ts)
                finally:
                    self._held = None
                yield
            held.reverse()  # into creation order, which priority follows without a column
            if msg.priority:
                held.sort(key=lambda ts: ts.priority)
            while held:
                for ts in held[:SLICE_TASKS]:
                    if ts.status is W and ts.waiting_on == 0:
                        self._ready(ts)
                del held[:SLICE_TASKS]
                yield
            again = [ts for ts in plan.outside.values() if ts.status is R] + [
                ts for ts in again if ts.status is R
            ]
            self._recompute([ts for ts in again if ts.needed])
        finally:
            if not published:  # given up (the client left): undo the private links
                self._unlink(new, plan)
            elif held:  # tasks found ready still start, for whoever else needs them
                for ts in held:
                    if ts.status is W and ts.waiting_on == 0:
                        self._ready(ts)

    def _still_valid(self, plan: Plan, local: dict) -> bool:
        """Nothing the plan relied on changed while the tasks were made."""
        tasks = self.tasks
        if not tasks.keys().isdisjoint(plan.index):
            return False
        return all(map(operator.is_, map(tasks.get, plan.outside), plan.outside.values()))

    def _unlink(self, new: list[TaskState], plan: Plan) -> None:
        """Drop tasks never published: known tasks forget them as dependents, and
        their groups stop counting them."""
        for ts in new:
            ts.group.counts[R] -= 1
            for dep in ts.deps:
                if dep.key not in plan.index:
                    dep.dependents = without_member(dep.dependents, ts)
        for dep in plan.outside.values():
            if dep.status is not Status.FORGOTTEN:
                self._check_release(dep)

    def _publish(
        self,
        client: ClientInfo,
        new: list[TaskState],
        new_wanted: list[TaskState],
        old_wanted: list[object],
    ) -> list[TaskState]:
        """The new tasks join the table, wanted as asked; returns wanted old ones released.

        One step, but each part in C but the loop over known keys wanted again."""
        tasks = self.tasks
        tasks.update(zip(map(attrgetter("key"), new), new, strict=True))
        client.wants.update(dict.fromkeys(new_wanted))
        again = []
        for key in old_wanted:
            again += self._want_known(client, tasks[key])
        return again
