"""The records the scheduler core keeps: tasks, workers, clients, and commands.

Plain slotted classes with no behaviour beyond small helpers; every decision
about them is made in shoal.scheduler.state. Collections that are iterated
are dicts (insertion-ordered), never sets, so that runs are reproducible.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import TypeAlias, TypeVar

from shoal.protocol.schema import Message
from shoal.protocol.serialize import Serialized

T = TypeVar("T")


class Status(enum.StrEnum):
    """Where a task is in its life on the scheduler."""

    RELEASED = "released"  # known, not needed now, or lost: nothing of it is on a worker
    WAITING = "waiting"  # needed; some dependency is not in memory yet
    QUEUED = "queued"  # ready, waiting for a worker slot (or a worker that can run it)
    PROCESSING = "processing"  # assigned to a worker
    MEMORY = "memory"  # result held by one or more workers (or, when small, here)
    ERRED = "erred"  # failed, or a dependency failed
    FORGOTTEN = "forgotten"  # dropped from the scheduler; the record is dead


ACTIVE = frozenset({Status.WAITING, Status.QUEUED, Status.PROCESSING})

# A task's priority is one int, unique to it, lowest first: the client's
# priority (negated: higher runs first) times ORDER_SPAN plus the order in
# which the scheduler created it. Workers get it as the pair of both.
ORDER_SPAN = 1 << 48

# The records a task links to (its dependents, holders, clients) are a tuple
# while they are few (48 bytes for one, where a dict takes 224) and a dict
# from SMALL up; either iterates in the order they were added.
SMALL = 8
Members: TypeAlias = tuple[T, ...] | dict[T, None]


def with_member(members: Members[T], item: T) -> Members[T]:
    """`members` and `item` (not among them yet)."""
    if type(members) is tuple:
        if len(members) < SMALL:
            return members + (item,)  # noqa: RUF005 (faster than unpacking)
        return dict.fromkeys(members + (item,))  # noqa: RUF005
    members[item] = None  # type: ignore[index]  # a dict: `type() is` narrows one way only
    return members


def addresses(holders: Members[WorkerInfo]) -> tuple[str, ...]:
    """The data addresses of `holders`, as messages carry them."""
    if type(holders) is tuple and len(holders) == 1:
        return (holders[0].address,)
    return tuple([ws.address for ws in holders])


def without_member(members: Members[T], item: T) -> Members[T]:
    """`members` less `item` (among them)."""
    if type(members) is tuple:
        i = members.index(item)
        return members[:i] + members[i + 1 :]
    del members[item]  # type: ignore[union-attr]  # a dict, as above
    return members


@dataclasses.dataclass(frozen=True, slots=True)
class TaskError:
    """Why a task erred: the remote type name (shoal.errors.type_name), message,
    traceback text, pickled exception, and the key blamed (None: its own failure)."""

    typename: str
    message: str
    traceback: str = ""
    exception: Serialized | None = None
    blame: object = None

    def blamed_on(self, key: object) -> TaskError:
        """The error as a dependent of `key` inherits it: blame stays with the first
        task that failed, so a cascade shares one record."""
        if self.blame is not None:
            return self
        return dataclasses.replace(self, blame=key)


class TaskGroup:
    """The tasks sharing a key prefix ("inc" for "inc-3f2a..."): how many are in
    each status now, kept as they move (see shoal.scheduler.tally). FORGOTTEN
    counts every task of the group forgotten so far."""

    __slots__ = ("compute_s", "counts", "erred", "finished", "name", "nbytes")

    def __init__(self, name: str) -> None:
        self.name = name
        self.counts: dict[Status, int] = dict.fromkeys(Status, 0)
        self.finished = 0  # runs that ended in memory, ever
        self.erred = 0  # runs that raised, ever
        self.compute_s = 0.0  # seconds its runs took, finished or erred
        self.nbytes = 0  # bytes its finished runs produced, ever

    def __repr__(self) -> str:
        return f"<TaskGroup {self.name}>"


# The group of a task made outside the core (by a test): counted nowhere it matters.
LOOSE = TaskGroup("")


class TaskState:
    """One task: its payloads, its edges, where it runs or is held."""

    __slots__ = (
        "args",
        "deaths",
        "dependents",
        "deps",
        "error",
        "func",
        "group",
        "key",
        "nbytes",
        "pending",
        "priority",
        "processing_on",
        "resources",
        "restrict",
        "retries",
        "status",
        "timeout",
        "typename",
        "value",
        "waiting_on",
        "wanted_by",
        "who_has",
    )

    def __init__(
        self,
        key: object,
        func: Serialized | None,
        args: Serialized | None,
        priority: int,
    ) -> None:
        self.key = key
        self.status = Status.RELEASED
        self.group = LOOSE  # its key prefix's counts; the core sets it when it files it
        # None for a scattered value: it has no lineage to recompute it from.
        self.func = func
        self.args = args
        self.priority = priority
        self.deps: tuple[TaskState, ...] = ()
        self.dependents: Members[TaskState] = ()
        # Dependencies not yet in memory, while waiting.
        self.waiting_on = 0
        # Dependents in an active state (they still need this task's value).
        self.pending = 0
        self.wanted_by: Members[ClientInfo] = ()
        self.resources: dict[str, float] | None = None
        self.restrict: tuple[str, ...] | None = None
        self.retries = 0
        self.timeout = 0.0  # seconds it may run once started; 0: no limit
        # (worker name, cause) of each worker that died while it ran there; None: none
        self.deaths: list[tuple[str, str]] | None = None
        self.processing_on: WorkerInfo | None = None
        self.who_has: Members[WorkerInfo] = ()
        self.nbytes = 0
        self.typename = ""
        self.value: Serialized | None = None
        self.error: TaskError | None = None

    @property
    def needed(self) -> bool:
        return self.pending > 0 or bool(self.wanted_by)

    def __repr__(self) -> str:
        return f"<Task {self.key!r} {self.status}>"


class WorkerInfo:
    """One registered worker, as the scheduler sees it."""

    __slots__ = (
        "address",
        "alone",
        "cpu",
        "device_figures",
        "device_memory_limit",
        "devices",
        "executing",
        "free",
        "gone",
        "has_what",
        "host",
        "http_address",
        "index",
        "last_seen",
        "managed",
        "memory",
        "memory_limit",
        "name",
        "nanny",
        "nanny_id",
        "nbytes",
        "nthreads",
        "paused",
        "peer",
        "pid",
        "processing",
        "resources",
        "retiring",
        "seceded",
        "spilled",
        "started",
        "unspillable",
        "version",
    )

    def __init__(
        self,
        peer: str,
        name: str,
        address: str,
        nthreads: int,
        memory_limit: int,
        resources: dict[str, float],
        index: int,
    ) -> None:
        self.peer = peer
        self.name = name
        self.address = address
        self.nthreads = nthreads
        self.memory_limit = memory_limit
        self.resources = dict(resources)
        self.free = dict(resources)  # resources not used by processing tasks
        self.index = index  # registration order: breaks ties deterministically
        # Its tasks' holders while it is their only one: one tuple shared by them all.
        self.alone: tuple[WorkerInfo, ...] = (self,)
        self.processing: dict[TaskState, None] = {}
        # Those of them a thread had started, as its tasks-started notes said: a
        # death counts only against these.
        self.started: dict[TaskState, None] = {}
        # Those of them whose thread gave its slot back (task-seceded): not counted
        # against its threads, so that waiting parents never fill a worker.
        self.seceded: dict[TaskState, None] = {}
        self.has_what: dict[TaskState, None] = {}
        self.nbytes = 0
        self.version = 0  # bumped whenever its load changes (see placement)
        self.gone = False  # out of placement: dying, or retiring (then still connected)
        self.retiring = False  # on its way out gracefully (see scheduler/retirement.py)
        self.pid = 0
        self.host = ""
        self.http_address = ""  # its HTTP endpoints (/metrics), if it serves them
        self.nanny = False  # a nanny supervises it and reports how it died
        self.nanny_id = ""  # the id its nanny registered under (see NannyInfo)
        self.last_seen = 0.0  # when it last sent anything (see heartbeat_timeout)
        # From its latest heartbeat: CPU percent, resident bytes, tasks running.
        self.cpu = 0.0
        self.memory = 0
        self.executing = 0
        # Bytes of its values in memory, on disk, and kept in memory for want of
        # disk; and whether it is paused for memory (see scheduler/memory.py).
        self.managed = self.spilled = self.unspillable = 0
        self.paused = False
        # The GPUs it is pinned to (index, uuid, name), its device memory limit, and
        # each one's latest figures (memory used and in all, utilisation).
        self.devices: tuple[dict[str, str], ...] = ()
        self.device_memory_limit = 0
        self.device_figures: tuple[dict[str, float], ...] = ()

    def __repr__(self) -> str:
        return f"<Worker {self.name} {self.address} processing={len(self.processing)}>"


class NannyInfo:
    """One registered nanny: the connection of the supervisor of one worker process.

    It stays open for the life of the nanny, so that the scheduler knows whether a
    report of its worker's death can still come.
    """

    __slots__ = ("last_seen", "name", "nanny_id", "peer")

    def __init__(self, peer: str, nanny_id: str, name: str, last_seen: float) -> None:
        self.peer = peer
        self.nanny_id = nanny_id
        self.name = name  # the name of the worker it supervises, for log lines
        self.last_seen = last_seen

    def __repr__(self) -> str:
        return f"<Nanny of {self.name} {self.nanny_id}>"


class ClientInfo:
    """One connected client and the keys it holds futures for."""

    __slots__ = ("client_id", "name", "peer", "wants")

    def __init__(self, peer: str, client_id: str, name: str) -> None:
        self.peer = peer
        self.client_id = client_id
        self.name = name
        self.wants: dict[TaskState, None] = {}

    def __repr__(self) -> str:
        return f"<Client {self.client_id}>"


class Send:
    """Command: send `msg` to the peer connection `peer`."""

    __slots__ = ("msg", "peer")

    def __init__(self, peer: str, msg: Message) -> None:
        self.peer = peer
        self.msg = msg

    def __eq__(self, other: object) -> bool:
        return type(other) is Send and other.peer == self.peer and other.msg == self.msg

    def __repr__(self) -> str:
        return f"Send({self.peer!r}, {self.msg!r})"


class Disconnect:
    """Command: close the connection `peer`, logging `reason`."""

    __slots__ = ("peer", "reason")

    def __init__(self, peer: str, reason: str) -> None:
        self.peer = peer
        self.reason = reason

    def __eq__(self, other: object) -> bool:
        return type(other) is Disconnect and (other.peer, other.reason) == (
            self.peer,
            self.reason,
        )

    def __repr__(self) -> str:
        return f"Disconnect({self.peer!r}, {self.reason!r})"


class Audit:
    """Command: record `event` with `fields` in the audit log (see audit.py).

    Fields are plain data (str, int, float, bool, lists and dicts of them):
    names, counts, reasons; never a payload, never a secret.
    """

    __slots__ = ("event", "fields")

    def __init__(self, event: str, fields: dict[str, object]) -> None:
        self.event = event
        self.fields = fields

    def __eq__(self, other: object) -> bool:
        return type(other) is Audit and (other.event, other.fields) == (self.event, self.fields)

    def __repr__(self) -> str:
        return f"Audit({self.event!r}, {self.fields!r})"


Command = Send | Disconnect | Audit
