"""A small harness around the scheduler's pure core, shared by the test_scheduler_* modules.

It registers workers and clients, submits graphs written as `{key: deps}`,
answers tasks as their worker would, validates the state after every step,
records which transitions ran, and checks that the commands agree with the
state they leave behind.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from shoal.protocol import messages as m
from shoal.protocol.schema import Message
from shoal.protocol.serialize import Serialized, serialize
from shoal.scheduler.model import Command, Disconnect, Send, Status, TaskState
from shoal.scheduler.state import SchedulerState

FUNC = serialize(len, "function")
ARGS = serialize(("x",), "arguments")
# A run time that keeps placement.depth at its initial 2 with the default
# round trip (1 + int(0.002 / 0.0015) == 2), so slot counts stay predictable.
STEADY_S = 0.0015

# (from, to) pairs seen by every harness while a `recording()` block is open.
_recorders: list[set[tuple[Status, Status]]] = []


@contextlib.contextmanager
def recording() -> Iterator[set[tuple[Status, Status]]]:
    """Collect the transitions made by every harness used inside the block."""
    seen: set[tuple[Status, Status]] = set()
    _recorders.append(seen)
    try:
        yield seen
    finally:
        _recorders.remove(seen)


class Harness:
    """One SchedulerState plus bookkeeping; every step is validated.

    `check_commands` also checks each step's commands against the state:
    FreeKeys never names a key the scheduler still places on that worker, and
    a ComputeTask's key is processing there (unless freed later in the step).
    """

    def __init__(self, *, validate: bool = True, check_commands: bool = True, **kwargs: Any):
        self.state = SchedulerState(**kwargs)
        self.now = 0.0
        self.validate = validate
        self.check_commands = check_commands
        self.log: list[Command] = []  # every command, in order
        self.seen: set[tuple[Status, Status]] = set()
        self._counted = 0

    # -- stepping -------------------------------------------------------------------

    def handle(self, peer: str, msg: Message) -> list[Command]:
        """Feed one message; a large graph is taken in whole, slice after slice, as
        the shell does when no other connection speaks in between."""
        self.now += 1.0
        out = self.state.handle(peer, msg, self.now)
        while self.state.taking_in(peer):
            out += self.state.resume(peer, self.now)
        return self._after(out)

    def lose(self, peer: str) -> list[Command]:
        self.now += 1.0
        return self._after(self.state.lost(peer, self.now))

    def tick(self, seconds: float = 0.0) -> list[Command]:
        """Let `seconds` pass, then wake the core."""
        self.now += seconds
        return self._after(self.state.tick(self.now))

    def nanny_reports(self, worker: str, cause: str) -> list[Command]:
        """The nanny of `worker` (a peer id) reports its death on its connection."""
        ws = self.state.workers[worker]
        peer = self.state.nanny_ids[ws.nanny_id].peer
        return self.handle(peer, m.WorkerDied(name=ws.name, address=ws.address, cause=cause))

    def nanny(self, name: str) -> str:
        """Connect and register the nanny of the worker `name` (if not connected yet);
        its peer id is `n:<name>`, its id `id-<name>`."""
        peer = f"n:{name}"
        if peer not in self.state.nannies:
            self.state.connected(peer, "nanny")
            self.out = self.handle(peer, m.RegisterNanny(nanny_id=f"id-{name}", name=name))
        return peer

    def start(self, *keys: object) -> list[Command]:
        """The workers running `keys` note that their threads started them."""
        out: list[Command] = []
        by_worker: dict[str, list[object]] = {}
        for key in keys:
            by_worker.setdefault(self.on(key), []).append(key)
        for peer, started in by_worker.items():
            out += self.handle(peer, m.TasksStarted(keys=tuple(started)))
        return out

    def _after(self, out: list[Command]) -> list[Command]:
        if self.validate:
            self.state.validate()
        self._record()
        if self.check_commands:
            check_commands(self.state, out)
        self.log.extend(out)
        return out

    def _record(self) -> None:
        state = self.state
        new = state.transitions_done - self._counted
        self._counted = state.transitions_done
        pairs = {(a, b) for _, a, b, _, _ in itertools.islice(reversed(state.history), new)}
        self.seen |= pairs
        for seen in _recorders:
            seen |= pairs

    # -- peers ----------------------------------------------------------------------

    def worker(
        self,
        name: str,
        nthreads: int = 1,
        resources: Mapping[str, float] | None = None,
        address: str | None = None,
        nanny: bool = False,
        peer: str | None = None,
    ) -> str:
        """Connect and register a worker; its peer id is `w:<name>` by default. With
        `nanny`, its nanny (see `nanny()`) registers first."""
        peer = peer or f"w:{name}"
        nanny_id = ""
        if nanny:
            self.nanny(name)
            nanny_id = f"id-{name}"
        self.state.connected(peer, "worker")
        msg = m.RegisterWorker(
            name=name,
            address=address or f"tcp://{name}:1",
            nthreads=nthreads,
            resources=dict(resources or {}),
            nanny=nanny,
            nanny_id=nanny_id,
        )
        self.out = self.handle(peer, msg)
        return peer

    def client(self, name: str = "c") -> str:
        """Connect and register a client; its peer id is `c:<name>`."""
        peer = f"c:{name}"
        self.state.connected(peer, "client")
        self.out = self.handle(peer, m.RegisterClient(name=name))
        return peer

    # -- graphs ---------------------------------------------------------------------

    def submit(
        self,
        client: str,
        graph: Mapping[object, Iterable[object]],
        wanted: Iterable[object] | None = None,
        *,
        priority: Mapping[object, int] | None = None,
        resources: Mapping[object, dict[str, float]] | None = None,
        restrict: Mapping[object, tuple[str, ...]] | None = None,
        retries: Mapping[object, int] | None = None,
        args: Mapping[object, Serialized] | None = None,
        timeout: Mapping[object, float] | None = None,
    ) -> list[Command]:
        """Submit `{key: deps}`; by default every key in it is wanted."""
        return self.handle(
            client,
            graph_message(
                graph,
                wanted,
                priority=priority,
                resources=resources,
                restrict=restrict,
                retries=retries,
                args=args,
                timeout=timeout,
            ),
        )

    def finish(
        self,
        key: object,
        *,
        worker: str | None = None,
        nbytes: int = 8,
        value: Serialized | None = None,
        duration: float = STEADY_S,
    ) -> list[Command]:
        """The worker running `key` (or `worker`) reports it done."""
        peer = worker or self.on(key)
        msg = m.TaskFinished(key=key, nbytes=nbytes, typename="int", duration=duration, value=value)
        return self.handle(peer, msg)

    def err(
        self,
        key: object,
        *,
        worker: str | None = None,
        message: str = "boom",
        typename: str = "ValueError",
    ) -> list[Command]:
        """The worker running `key` (or `worker`) reports that it raised."""
        peer = worker or self.on(key)
        msg = m.TaskErred(
            key=key,
            typename=typename,
            message=message,
            traceback=f"Traceback: {key!r}",
            duration=STEADY_S,
        )
        return self.handle(peer, msg)

    # -- looking ----------------------------------------------------------------------

    def task(self, key: object) -> TaskState:
        return self.state.tasks[key]

    def status(self, key: object) -> str:
        ts = self.state.tasks.get(key)
        return "forgotten" if ts is None else str(ts.status)

    def on(self, key: object) -> str:
        ws = self.state.tasks[key].processing_on
        assert ws is not None, f"{key!r} is not processing"
        return ws.peer

    def processing(self, peer: str) -> list[object]:
        return [ts.key for ts in self.state.workers[peer].processing]

    def keys_in(self, *statuses: Status) -> list[object]:
        return [k for k, ts in self.state.tasks.items() if ts.status in statuses]


def graph_message(
    graph: Mapping[object, Iterable[object]],
    wanted: Iterable[object] | None = None,
    *,
    priority: Mapping[object, int] | None = None,
    resources: Mapping[object, dict[str, float]] | None = None,
    restrict: Mapping[object, tuple[str, ...]] | None = None,
    retries: Mapping[object, int] | None = None,
    args: Mapping[object, Serialized] | None = None,
    timeout: Mapping[object, float] | None = None,
) -> m.SubmitGraph:
    keys = tuple(graph)
    where = {key: i for i, key in enumerate(keys)}
    return m.SubmitGraph(
        keys=keys,
        funcs=(FUNC,),
        func=(0,) * len(keys),
        args=tuple((args or {}).get(key, ARGS) for key in keys),
        deps=tuple(tuple(deps) for deps in graph.values()),
        wanted=tuple(keys if wanted is None else wanted),
        priority=tuple(priority.get(key, 0) for key in keys) if priority else (),
        resources={where[k]: dict(v) for k, v in (resources or {}).items()},
        restrict={where[k]: tuple(v) for k, v in (restrict or {}).items()},
        retries={where[k]: v for k, v in (retries or {}).items()},
        timeout={where[k]: v for k, v in (timeout or {}).items()},
    )


def sent(out: Iterable[Command], peer: str | None = None, kind: type | None = None) -> list[Any]:
    """The messages in `out`, optionally only those to `peer` and of type `kind`."""
    return [
        c.msg
        for c in out
        if type(c) is Send
        and (peer is None or c.peer == peer)
        and (kind is None or type(c.msg) is kind)
    ]


def computed(out: Iterable[Command], peer: str | None = None) -> list[object]:
    """Keys sent as ComputeTask (to `peer`), in order."""
    return [msg.key for msg in sent(out, peer, m.ComputeTask)]


def started(out: list[Command], peer: str | None = None) -> list[object]:
    """Keys sent as ComputeTask (to `peer`) and not freed later in the same step."""
    keys = []
    for i, cmd in enumerate(out):
        if type(cmd) is Send and type(cmd.msg) is m.ComputeTask and cmd.peer == (peer or cmd.peer):
            if cmd.msg.key not in freed(out[i + 1 :], cmd.peer):
                keys.append(cmd.msg.key)
    return keys


def freed(out: Iterable[Command], peer: str | None = None) -> list[object]:
    """Keys named by FreeKeys (to `peer`), in order."""
    return [key for msg in sent(out, peer, m.FreeKeys) for key in msg.keys]


def disconnects(out: Iterable[Command]) -> list[Disconnect]:
    return [c for c in out if type(c) is Disconnect]


def check_commands(state: SchedulerState, out: list[Command]) -> None:
    """The commands of one step agree with the state they leave behind.

    A worker reads its messages in order, so for each (worker, key) the last
    ComputeTask or FreeKeys of the step decides: after a ComputeTask the key is
    processing there; after a FreeKeys it is neither processing nor held there.
    """
    last: dict[tuple[str, object], type] = {}
    for command in out:
        if type(command) is Send and type(command.msg) is m.ComputeTask:
            last[command.peer, command.msg.key] = m.ComputeTask
        elif type(command) is Send and type(command.msg) is m.FreeKeys:
            for key in command.msg.keys:
                last[command.peer, key] = m.FreeKeys
    for (peer, key), kind in last.items():
        ts = state.tasks.get(key)
        on = ts is not None and ts.processing_on is not None and ts.processing_on.peer == peer
        if kind is m.ComputeTask:
            assert on, f"ComputeTask({key!r}) to {peer}, but it is not processing there"
        else:
            assert not on, f"FreeKeys({key!r}) to {peer} while it is processing there"
            assert ts is None or all(ws.peer != peer for ws in ts.who_has), (
                f"FreeKeys({key!r}) to {peer} while {peer} is still listed as holding it"
            )
