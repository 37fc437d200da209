"""A seeded simulation of a cluster under failures: the scheduler core, N worker cores
and one client, joined by an in-memory bus on a virtual clock.

Random arithmetic graphs run while workers are killed (with or without a nanny to
report it), lost together with their nanny (a whole node), stall past the heartbeat
timeout, leave politely and join; a "poisoned" task kills every worker that runs it;
the client asks for copies and lets some futures go. Workers note the tasks their
threads start, as their shells do. Each core is validated after every step it takes.
Once the run settles, every wanted key must have been reported with its right value,
or erred as it must: a task of its lineage raised (ValueError), or had started on
`allowed_failures` workers that the simulation killed (KilledWorker, which a poisoned
lineage must end in; a worker whose nanny reported its crash, with nothing noted as
started, counts against all it was given). Releasing the rest must then leave nothing
on the scheduler or on any worker.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import math
import random
import re
from collections.abc import Callable
from typing import Any

import pytest

from shoal.client.graph import FunctionCache, graph_rows, messages
from shoal.protocol import messages as m
from shoal.protocol.schema import Message
from shoal.protocol.serialize import Serialized, deserialize, serialize
from shoal.scheduler.model import ACTIVE, Command, Disconnect, Send, Status
from shoal.scheduler.state import SchedulerState
from shoal.worker.events import Command as WorkerCommand
from shoal.worker.events import (
    Drop,
    Execute,
    ExecutionDone,
    Fetch,
    FetchDone,
    FetchFailed,
    Hold,
    Restart,
    SendToScheduler,
    ThreadsStarted,
    Value,
)
from shoal.worker.execute import Executor
from shoal.worker.state import Status as KeyStatus
from shoal.worker.state import WorkerState

SEEDS = [*range(40), 189, 979, 2347, 3701]  # 28 and these once exposed core bugs
KILLED = "shoal.errors.KilledWorker"
RAISED = "builtins.ValueError"
MODULUS = 1_000_003
PAD_BYTES = 2_000  # a padded result is too large to travel inline: it is fetched
HEARTBEAT_S = 1.0
HEARTBEAT_TIMEOUT_S = 5.0
DEATH_REPORT_WAIT_S = 2.0
LATENCY_S = (0.0002, 0.01)
TICK_SLACK_S = 0.001  # the core removes a worker once strictly past its deadline
MAX_EVENTS = 30_000  # a run takes a few thousand at most
CLIENT, SCHEDULER = "client-0", "scheduler"
# Fault kinds and their weights.
FAULTS = {"kill": 4, "node": 2, "stall": 2, "leave": 1, "join": 1, "replicate": 1, "release": 1}
# How long after a thread starts a task its worker's shell writes the note of it.
NOTE_S = 0.0005


def step(op: str, const: int, pad: int, *inputs: tuple[int, bytes]) -> tuple[int, bytes]:
    """One task of a random graph: the sum or product of its inputs' numbers with a
    constant, and `pad` bytes of ballast; or a ValueError."""
    if op == "fail":
        raise ValueError(f"task with constant {const} fails on purpose")
    number = const
    for other, _ in inputs:
        number = number * other if op == "mul" else number + other
    return number % MODULUS, bytes(pad)


# -- graphs --------------------------------------------------------------------------


@dataclasses.dataclass
class Graph:
    """A random DAG as the client submits it, and what each key must come to."""

    tasks: dict[str, tuple]  # key -> (step, op, const, pad, *dependency keys)
    deps: dict[str, tuple[str, ...]]
    wanted: list[str]
    values: dict[str, tuple[int, bytes]]  # keys that compute
    # key -> the failing tasks it may be blamed on: raising tasks of its lineage
    # (itself included) below which nothing raises
    culprits: dict[str, frozenset[str]]
    poisoned: set[str]  # tasks that kill the worker running them

    def doomed(self, key: str) -> set[str]:
        """The tasks of `key`'s lineage that can never finish: it must err."""
        return self.culprits[key] | (self.lineage(key) & self.poisoned)

    def lineage(self, key: str) -> set[str]:
        """`key` and every key it depends on, directly or not."""
        seen, stack = {key}, [key]
        while stack:
            for dep in self.deps[stack.pop()]:
                if dep not in seen:
                    seen.add(dep)
                    stack.append(dep)
        return seen


def random_graph(rng: random.Random) -> Graph:
    """20 to 300 tasks, some raising; the sinks and a few others are wanted."""
    n = rng.randint(20, 300)
    fail_rate = rng.choice((0.0, 0.0, 0.01, 0.03))
    tasks: dict[str, tuple] = {}
    deps: dict[str, tuple[str, ...]] = {}
    values: dict[str, tuple[int, bytes]] = {}
    culprits: dict[str, frozenset[str]] = {}
    for i in range(n):
        key = f"t-{i}"
        # Mostly recent keys (long chains), sometimes any earlier key (wide fan-in).
        pool = range(max(0, i - 12), i) if rng.random() < 0.8 else range(i)
        picked = rng.sample(pool, min(len(pool), rng.choice((0, 1, 1, 2, 2, 3, 5))))
        deps[key] = tuple(f"t-{j}" for j in picked)
        op = "fail" if rng.random() < fail_rate else rng.choice(("sum", "sum", "mul"))
        const, pad = rng.randint(1, 1000), PAD_BYTES if rng.random() < 0.25 else 0
        tasks[key] = (step, op, const, pad, *deps[key])
        blamed = frozenset().union(*(culprits[dep] for dep in deps[key]))
        if blamed:
            culprits[key] = blamed
        elif op == "fail":
            culprits[key] = frozenset({key})
        else:
            culprits[key] = frozenset()
            values[key] = step(op, const, pad, *(values[dep] for dep in deps[key]))
    sinks = set(tasks) - {dep for ds in deps.values() for dep in ds}
    wanted = [key for key in tasks if key in sinks or rng.random() < 0.1]
    poisoned = set(rng.sample(sorted(values), rng.choice((0, 0, 1, 2))))
    return Graph(tasks, deps, wanted, values, culprits, poisoned)


# -- the cluster -------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class Node:
    """One worker process: its core, and how its life is going."""

    name: str
    peer: str
    address: str
    nanny: bool
    core: WorkerState
    nanny_peer: str = ""  # its nanny's connection, when it has one
    life: str = "alive"  # "alive", "left" (on purpose) or "dead" (killed or cut off)
    registered: bool = False
    paused_until: float = 0.0  # stalled (sends, runs and serves nothing) until then
    flushed: bool = False  # dead, but what it sent before still arrives

    @property
    def alive(self) -> bool:
        return self.life == "alive"


class Sim:
    """The scheduler core, worker cores and a client on one virtual clock.

    Every delivery is an event in a heap ordered by (time, sequence number). A
    connection delivers in order: each message is due after a random latency but
    never before the one sent ahead of it on the same connection.
    """

    def __init__(self, seed: int) -> None:
        self.rng = rng = random.Random(seed)
        self.allowed_failures = rng.choice((1, 2, 3, 3))
        self.scheduler = SchedulerState(
            heartbeat_timeout=HEARTBEAT_TIMEOUT_S,
            allowed_failures=self.allowed_failures,
            death_report_wait=DEATH_REPORT_WAIT_S,
        )
        self.task_s = rng.choice((0.0005, 0.02, 0.2))  # mean modelled task duration
        self.now = 0.0
        self.events: list[tuple[float, int, bool, Callable[..., None], tuple]] = []
        self.order = itertools.count()
        self.work = 0  # events in the heap other than heartbeats
        self.due: dict[tuple[str, str], float] = {}  # connection -> its last delivery
        self.open: dict[str, None] = {}  # peers connected to the scheduler
        self.nodes: dict[str, Node] = {}  # by peer, dead ones included
        self.at_address: dict[str, Node] = {}  # the live process serving each address
        self.numbers = itertools.count()
        self.executor = Executor()
        self.graph = random_graph(rng)
        self.released: set[str] = set()  # futures the client let go
        self.reports: dict[str, list[m.KeyInMemory | m.KeyErred]] = {}
        # Who was sent each task, and the processes that died (never those that left).
        self.computes: dict[object, list[Node]] = {}
        self.dead: list[Node] = []
        self.ran: dict[object, list[Node]] = {}  # the workers whose threads started each task
        self.reported: set[str] = set()  # peers of workers whose nanny reported their death
        self.nannies: dict[str, None] = {}  # nanny connections alive
        self.faults: list[str] = []  # what happened, for failure messages and coverage

    # -- the clock ---------------------------------------------------------------

    def at(self, when: float, fn: Callable[..., None], *args: Any, work: bool = True) -> None:
        heapq.heappush(self.events, (when, next(self.order), work, fn, args))
        self.work += work

    def send(self, src: str, dst: str, fn: Callable[..., None], *args: Any) -> None:
        """Deliver `fn(*args)` over the connection src -> dst."""
        when = max(self.now + self.rng.uniform(*LATENCY_S), self.due.get((src, dst), 0.0))
        self.due[src, dst] = when
        self.at(when, fn, *args)

    def run(self) -> None:
        """Process events until nothing but heartbeats is left."""
        for _ in range(MAX_EVENTS):
            if self.work == 0 and not self.scheduler.dying:
                return
            self.step()
        raise AssertionError(f"the run did not settle: {self.describe()}")

    def step(self) -> None:
        deadline = self.scheduler.next_deadline()
        tick_at = math.inf if deadline is None else max(self.now, deadline + TICK_SLACK_S)
        if not self.events or tick_at <= self.events[0][0]:
            assert tick_at < math.inf, f"nothing left to happen: {self.describe()}"
            self.now = tick_at
            self.obey(self.scheduler.tick(self.now))
            return
        self.now, _, work, fn, args = heapq.heappop(self.events)
        self.work -= work
        fn(*args)

    def stalled(self, node: Node, fn: Callable[..., None], *args: Any) -> bool:
        """Put an event for a stalled process off until it wakes; True if it was."""
        if node.paused_until <= self.now:
            return False
        self.at(node.paused_until, fn, *args)
        return True

    # -- the scheduler --------------------------------------------------------------

    def to_scheduler(self, peer: str, msg: Message) -> None:
        self.send(peer, SCHEDULER, self.scheduler_gets, peer, msg)

    def scheduler_gets(self, peer: str, msg: Message) -> None:
        node = self.nodes.get(peer)
        if peer not in self.open or (node is not None and node.life == "dead" and not node.flushed):
            return  # the connection is gone, or the process died with this unsent
        self.obey(self.scheduler.handle(peer, msg, self.now))

    def obey(self, commands: list[Command]) -> None:
        """Carry out the scheduler's commands, as its shell would."""
        self.scheduler.validate()
        for command in commands:
            peer = command.peer
            if type(command) is Disconnect:
                self.cut(peer)
            elif peer == CLIENT:
                self.send(SCHEDULER, CLIENT, self.client_gets, command.msg)
            elif peer in self.nodes:
                assert type(command) is Send
                node = self.nodes[peer]
                if type(command.msg) is m.ComputeTask:
                    self.computes.setdefault(command.msg.key, []).append(node)
                self.send(SCHEDULER, peer, self.worker_gets, node, command.msg)
            else:
                assert peer.startswith("nanny-"), command  # a nanny is told nothing

    def cut(self, peer: str) -> None:
        """The scheduler closes a connection: a worker cut off stops (and is replaced)."""
        self.nannies.pop(peer, None)
        node = self.nodes.get(peer)
        if node is not None and node.alive:
            self.faults.append("cut")
            self.die(node)
            self.replace(node)
        self.at(self.now, self.close, peer)

    def close(self, peer: str) -> None:
        """The scheduler notices that a connection ended."""
        if peer in self.open:
            del self.open[peer]
            self.obey(self.scheduler.lost(peer, self.now))

    # -- workers -----------------------------------------------------------------------

    def join(
        self, name: str = "", address: str = "", nanny: bool | None = None, nanny_peer: str = ""
    ) -> Node:
        """A fresh worker process connects and registers; a fresh nanny first, unless
        `nanny_peer` (a nanny restarting its worker) is given."""
        number = next(self.numbers)
        name = name or f"w{number}"
        nanny = self.rng.random() < 0.5 if nanny is None else nanny
        if nanny and not nanny_peer:
            nanny_peer = self.start_nanny(name)
        nthreads = self.rng.choice((1, 2))
        peer = f"worker-{number}"
        node = Node(name, peer, address or f"sim://{name}.{number}", nanny, WorkerState(nthreads))
        node.nanny_peer = nanny_peer
        self.nodes[peer] = node
        self.at_address[node.address] = node
        self.open[peer] = None
        self.scheduler.connected(peer, "worker")
        register = m.RegisterWorker(
            name=name, address=node.address, nthreads=nthreads, nanny=nanny, nanny_id=nanny_peer
        )
        self.to_scheduler(peer, register)
        self.at(self.now + HEARTBEAT_S, self.heartbeat, node, work=False)
        return node

    def start_nanny(self, name: str) -> str:
        """A nanny connects, registers (its peer doubles as its id) and heartbeats."""
        peer = f"nanny-{next(self.numbers)}"
        self.open[peer] = None
        self.nannies[peer] = None
        self.scheduler.connected(peer, "nanny")
        self.to_scheduler(peer, m.RegisterNanny(nanny_id=peer, name=name))
        self.at(self.now + HEARTBEAT_S, self.nanny_beats, peer, work=False)
        return peer

    def nanny_beats(self, peer: str) -> None:
        if peer in self.nannies:
            self.to_scheduler(peer, m.Heartbeat())
            self.at(self.now + HEARTBEAT_S, self.nanny_beats, peer, work=False)

    def heartbeat(self, node: Node) -> None:
        if not node.alive:
            return
        if node.registered and node.paused_until <= self.now:
            self.to_scheduler(node.peer, m.Heartbeat(executing=len(node.core.executing)))
        self.at(self.now + HEARTBEAT_S, self.heartbeat, node, work=False)

    def worker_gets(self, node: Node, msg: Message) -> None:
        if not node.alive or self.stalled(node, self.worker_gets, node, msg):
            return
        if type(msg) is m.WorkerRegistered:
            node.registered = True
        elif type(msg) is m.RegistrationRefused:
            raise AssertionError(f"{node.name} refused: {msg.reason}")
        else:
            self.worker_does(node, node.core.handle(msg, self.now))

    def worker_does(self, node: Node, commands: list[WorkerCommand]) -> None:
        """Carry out a worker core's commands, as its shell would."""
        node.core.validate()
        for command in commands:
            if type(command) is SendToScheduler:
                self.to_scheduler(node.peer, command.msg)
            elif type(command) is Execute:
                # A thread starts it; the shell notes that soon after, if it still runs.
                self.ran.setdefault(command.key, []).append(node)
                self.at(self.now + NOTE_S, self.note_started, node, command.key)
                delay = self.rng.expovariate(1 / self.task_s)
                if command.key in self.graph.poisoned:
                    self.at(self.now + delay, self.crash, node)
                else:
                    self.at(self.now + delay, self.executed, node, command, delay)
            elif type(command) is Fetch:
                self.send(node.peer, command.address, self.serve, node, command)
            elif type(command) is Hold or type(command) is Drop:
                pass  # the store's part: values stay where the core keeps them here
            else:
                assert type(command) is not Restart, "no task has a timeout here"
                raise AssertionError(f"unknown command {command!r}")

    def note_started(self, node: Node, key: object) -> None:
        """The shell writes its note of a started task, if the task still runs."""
        if not node.alive or self.stalled(node, self.note_started, node, key):
            return
        if node.core.keys.get(key) is not None:
            self.worker_does(node, node.core.handle(ThreadsStarted((key,)), self.now))

    def executed(self, node: Node, command: Execute, duration: float) -> None:
        """A thread finished a task: now it is really computed, with a modelled duration."""
        if not node.alive or self.stalled(node, self.executed, node, command, duration):
            return
        outcome, value = self.executor.run(command.key, command.func, command.args, command.deps)
        done = ExecutionDone(command.key, dataclasses.replace(outcome, duration=duration), value)
        self.worker_does(node, node.core.handle(done, self.now))

    def crash(self, node: Node) -> None:
        """A poisoned task takes its worker down with it."""
        if node.alive and not self.stalled(node, self.crash, node):
            self.faults.append("crash")
            self.kill(node)

    def serve(self, asker: Node, fetch: Fetch) -> None:
        """A GetData reaches the process at `fetch.address`, which answers from memory."""
        holder = self.at_address.get(fetch.address)
        if holder is not None and self.stalled(holder, self.serve, asker, fetch):
            return
        if holder is None:
            answer: FetchDone | FetchFailed = FetchFailed(fetch.address, fetch.keys, "refused")
        else:
            data = {}
            for key in fetch.keys:
                value = holder.core.value_of(key)
                if value is not None:
                    data[key] = payload_of(value)
            answer = FetchDone(fetch.address, fetch.keys, data)
        self.send(fetch.address, asker.peer, self.fetched, asker, holder, answer)

    def fetched(self, asker: Node, holder: Node | None, answer: FetchDone | FetchFailed) -> None:
        if not asker.alive or self.stalled(asker, self.fetched, asker, holder, answer):
            return
        if type(answer) is FetchDone and holder is not None and holder.life == "dead":
            answer = FetchFailed(answer.address, answer.keys, "connection lost")
        self.worker_does(asker, asker.core.handle(answer, self.now))

    def die(self, node: Node) -> None:
        """The process is gone: it runs, serves and sends nothing more."""
        node.life = "dead"
        self.dead.append(node)
        if self.at_address.get(node.address) is node:
            del self.at_address[node.address]

    def replace(self, node: Node) -> None:
        """A nanny restarts its worker under the same name; otherwise a new one joins."""
        if node.nanny and node.nanny_peer in self.nannies:
            address = node.address if self.rng.random() < 0.5 else ""
            delay = self.rng.uniform(0.5, 2 * DEATH_REPORT_WAIT_S)
            self.at(self.now + delay, self.join, node.name, address, True, node.nanny_peer)
        else:
            self.at(self.now + self.rng.uniform(0.1, 2.0), self.join)

    # -- faults ------------------------------------------------------------------------

    def live(self) -> list[Node]:
        return [node for node in self.nodes.values() if node.alive]

    def fault(self) -> None:
        kind = self.rng.choices(list(FAULTS), weights=list(FAULTS.values()))[0]
        if kind == "join":
            self.join()
        elif kind in ("replicate", "release"):
            self.client_asks(kind)
        elif self.live():
            node = self.rng.choice(self.live())
            if kind == "kill":
                self.kill(node)
            elif kind == "node":
                self.lose_node(node)
            elif kind == "stall":
                self.stall(node)
            else:
                self.leave(node)
        self.faults.append(kind)

    def kill(self, node: Node) -> None:
        """SIGKILL: the connection ends, after what the worker sent or not; a nanny may
        report it, before or after."""
        self.die(node)
        if self.rng.random() < 0.5:
            node.flushed = True
            self.send(node.peer, SCHEDULER, self.close, node.peer)
        else:
            self.at(self.now + self.rng.uniform(0.0, 0.05), self.close, node.peer)
        if node.nanny and self.rng.random() < 0.7:
            self.at(self.now + self.rng.uniform(0.0, 0.1), self.nanny_reports, node)
        self.replace(node)

    def lose_node(self, node: Node) -> None:
        """The machine goes: the worker and its nanny end together, in either order,
        and nobody reports anything; a fresh worker joins elsewhere."""
        if node.nanny_peer in self.nannies:
            del self.nannies[node.nanny_peer]
            self.at(self.now + self.rng.uniform(0.0, 0.05), self.close, node.nanny_peer)
        node.nanny = False  # no nanny left to restart it
        self.kill(node)

    def nanny_reports(self, node: Node) -> None:
        """The nanny reports the death on the connection it keeps open."""
        if node.nanny_peer not in self.nannies:
            return  # the nanny is gone too
        self.faults.append("report")
        self.reported.add(node.peer)
        died = m.WorkerDied(name=node.name, address=node.address, cause="killed by SIGKILL")
        self.to_scheduler(node.nanny_peer, died)

    def stall(self, node: Node) -> None:
        """The process hangs for a while, longer than the heartbeat timeout or not."""
        until = self.now + self.rng.uniform(1.0, 2.5 * HEARTBEAT_TIMEOUT_S)
        node.paused_until = max(node.paused_until, until)
        self.at(node.paused_until, self.wake, node)

    def wake(self, node: Node) -> None:
        """The end of a stall: events put off run now; this one keeps the run going."""

    def leave(self, node: Node) -> None:
        """The worker retires: WorkerLeaving, then its connection closes."""
        if not node.alive or self.stalled(node, self.leave, node):
            return  # a hung process retires once it wakes, if it is still there
        node.life = "left"
        if self.at_address.get(node.address) is node:
            del self.at_address[node.address]
        self.to_scheduler(node.peer, m.WorkerLeaving(reason="scaling down"))
        self.send(node.peer, SCHEDULER, self.close, node.peer)
        self.at(self.now + self.rng.uniform(0.1, 2.0), self.join)

    # -- the client ----------------------------------------------------------------------

    def submit(self) -> None:
        self.open[CLIENT] = None
        self.scheduler.connected(CLIENT, "client")
        self.to_scheduler(CLIENT, m.RegisterClient(name="sim"))
        graph = self.graph
        rows = graph_rows(graph.tasks, graph.wanted, FunctionCache())
        submission = messages(rows, graph.wanted)
        assert not submission.bridges
        for msg in submission.msgs:
            self.to_scheduler(CLIENT, msg)

    def client_asks(self, kind: str) -> None:
        held = [key for key in self.graph.wanted if key not in self.released]
        if not held:
            return
        key = self.rng.choice(held)
        if kind == "release":
            self.released.add(key)
            self.to_scheduler(CLIENT, m.ReleaseFutures(keys=(key,)))
        else:
            self.to_scheduler(CLIENT, m.Replicate(keys=(key,), n=2))

    def client_gets(self, msg: Message) -> None:
        if type(msg) is m.KeyInMemory or type(msg) is m.KeyErred:
            self.reports.setdefault(msg.key, []).append(msg)
            self.check_report(msg)
        else:
            ok = (m.ClientRegistered, m.WorkersChanged, m.Replicated)
            assert type(msg) in ok, f"the client did not expect {msg!r}"

    def held_value(self, key: str, inline: Serialized | None, who_has: tuple[str, ...]) -> object:
        """The value of `key`: inline, or from a live holder; None when no holder has it
        (it died since)."""
        if inline is not None:
            return deserialize(inline)
        for address in who_has:
            holder = self.at_address.get(address)
            value = holder.core.value_of(key) if holder is not None else None
            if value is not None:
                return deserialize(payload_of(value))
        return None

    # -- checks ----------------------------------------------------------------------------

    def check_report(self, msg: m.KeyInMemory | m.KeyErred) -> None:
        key, graph = msg.key, self.graph
        if type(msg) is m.KeyInMemory:
            doomed = graph.doomed(key)
            assert not doomed, f"{key} in memory, but {sorted(doomed)} cannot finish"
            value = self.held_value(key, msg.value, msg.who_has)
            assert value is None or value == graph.values[key], f"{key}: wrong value {value!r}"
            return
        blame = msg.blame if msg.blame is not None else key
        assert blame in graph.lineage(key), f"{key} blamed on {blame}, not of its lineage"
        if msg.typename == RAISED:
            assert blame in graph.culprits[key], f"{key} blamed on {blame}: {msg.message}"
        else:
            assert msg.typename == KILLED, f"{key} erred with {msg.typename}: {msg.message}"
            self.check_killed(blame, msg.message)

    def check_killed(self, key: object, message: str) -> None:
        """KilledWorker for `key` only after it was sent to `allowed_failures` workers
        that died, as the message names them."""
        named = re.findall(r"'([^']*)' \(", message)
        # Workers that started it, or that were given it and whose nanny reported them.
        given = [node for node in self.computes.get(key, []) if node.peer in self.reported]
        died = {node.name for node in self.ran.get(key, []) + given if node in self.dead}
        assert len(named) == self.allowed_failures, f"{key}: {message}"
        assert set(named) <= died, f"{key}: {message}; sent to dead workers {sorted(died)}"
        ts = self.scheduler.tasks.get(key)
        if ts is not None:  # not forgotten yet: its record agrees
            assert ts.deaths is not None and [name for name, _ in ts.deaths] == named, key

    def check_results(self) -> None:
        """Each wanted key ended as it must, and the workers hold what the scheduler says."""
        state, graph = self.scheduler, self.graph
        for key in graph.wanted:
            if key in self.released:
                continue
            assert key in self.reports, f"{key} never reported: {self.describe()}"
            last, ts = self.reports[key][-1], state.tasks[key]
            doomed = graph.doomed(key)
            assert not doomed or type(last) is m.KeyErred, f"{key} is not erred: {doomed}"
            if type(last) is m.KeyInMemory:
                assert ts.status is Status.MEMORY, f"{key} reported in memory, is {ts.status}"
                # Its holders now: the one reported may have died since, leaving a copy.
                who_has = tuple(ws.address for ws in ts.who_has)
                value = self.held_value(key, ts.value, who_has)
                assert value == graph.values[key], f"{key}: {value!r} held at the end"
            else:
                assert ts.status is Status.ERRED, f"{key} reported erred, is {ts.status}"
        assert not [ts for ts in state.tasks.values() if ts.status in ACTIVE], self.describe()
        for node in self.live():
            ws = state.workers[node.peer]
            held = {key for key, rec in node.core.keys.items() if rec.status is KeyStatus.MEMORY}
            assert held == {ts.key for ts in ws.has_what}, f"{node.name} holds {sorted(held)}"
            assert not node.core.executing and not node.core.requests, node.name

    def release_all(self) -> None:
        held = tuple(key for key in self.graph.wanted if key not in self.released)
        self.released.update(held)
        self.to_scheduler(CLIENT, m.ReleaseFutures(keys=held))

    def check_empty(self) -> None:
        assert self.scheduler.tasks == {}, self.describe()
        for node in self.live():
            assert node.core.keys == {}, f"{node.name} still holds {sorted(node.core.keys)}"
            ws = self.scheduler.workers[node.peer]
            assert not ws.processing and not ws.has_what, ws

    def describe(self) -> str:
        statuses: dict[str, int] = {}
        for ts in self.scheduler.tasks.values():
            statuses[ts.status] = statuses.get(ts.status, 0) + 1
        lives = {node.name: node.life for node in self.nodes.values()}
        return f"t={self.now:.3f} tasks={statuses} nodes={lives} faults={self.faults}"


def payload_of(value: Value) -> Serialized:
    """What a worker's data server sends for a held value."""
    return value.payload if value.payload is not None else serialize(value.obj)


def simulate(seed: int) -> Sim:
    """One whole run: a cluster, a graph, faults, checks, release, checks."""
    sim = Sim(seed)
    rng = sim.rng
    for _ in range(rng.randint(2, 6)):
        sim.join()
    sim.submit()
    threads = sum(node.core.nthreads for node in sim.nodes.values())
    horizon = 1.5 * len(sim.graph.tasks) * sim.task_s / threads + 0.05
    for _ in range(rng.randint(1, 16)):
        sim.at(rng.uniform(0.0, horizon), sim.fault)
    sim.run()
    sim.check_results()
    sim.release_all()
    sim.run()
    sim.check_empty()
    return sim


@pytest.mark.timeout(60)
@pytest.mark.parametrize("seed", SEEDS)
def test_random_graphs_survive_random_failures(seed: int) -> None:
    simulate(seed)


@pytest.mark.timeout(60)
def test_a_seed_replays_exactly() -> None:
    first, second = simulate(7), simulate(7)
    assert list(first.scheduler.history) == list(second.scheduler.history)
    assert first.faults == second.faults
