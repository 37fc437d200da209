"""What the worker core and its shell pass each other: the events the shell
observes, the commands the core gives, and the Value records that carry data.

The scheduler's ComputeTask, FreeKeys and AcquireKeys are events too; they are
declared with the other messages in shoal.protocol.messages.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable
from typing import Any

from shoal.protocol.messages import TaskErred, TaskFinished
from shoal.protocol.schema import Message
from shoal.protocol.serialize import Serialized

Key = Hashable

# Sentinel: a Value whose object has not been unpickled yet.
NO_OBJECT: Any = type("NoObject", (), {"__repr__": lambda self: "NO_OBJECT"})()


class Value:
    """A value held here: its payload and, once unpickled, the object.

    The core only routes it. The executor fills `obj` (once, under `lock`, which it
    makes) the first time a task needs it; results arrive with both filled.

    A value `on_device` is held as its object alone, in device memory (a cupy
    array, or a container of them): it keeps no payload, and a host copy is made
    for each peer or client that asks for it (see shoal.protocol.cuda). `nbytes`
    and `typename` describe it either way. This is the seam where a store of a
    worker's values takes device memory as one of its locations.
    """

    __slots__ = ("lock", "nbytes", "obj", "on_device", "payload", "typename")

    def __init__(
        self,
        payload: Serialized | None,
        obj: object = NO_OBJECT,
        *,
        nbytes: int = 0,
        typename: str = "",
        on_device: bool = False,
    ) -> None:
        self.payload, self.obj = payload, obj
        self.nbytes = payload.nbytes if payload is not None else nbytes
        self.typename = payload.typename if payload is not None else typename
        self.on_device = on_device
        self.lock: Any = None

    def to_device(self) -> None:
        """The object, now loaded, is on the device: drop the host copy it came as."""
        self.on_device = True
        self.payload = None

    def __repr__(self) -> str:
        loaded = "loaded" if self.obj is not NO_OBJECT else "not loaded"
        where = " on device" if self.on_device else ""
        return f"<Value {self.typename} {self.nbytes} B{where} {loaded}>"


# -- events the shell observes ---------------------------------------------------------


@dataclasses.dataclass(slots=True)
class ExecutionDone:
    """A task ran; `value` holds the result when `outcome` is a TaskFinished."""

    key: Key
    outcome: TaskFinished | TaskErred
    value: Value | None = None


@dataclasses.dataclass(slots=True)
class FetchDone:
    """A peer answered a Fetch: `data` holds what it had of `keys`; `too_large` maps
    the keys it holds but could not send within this worker's limits to their sizes."""

    address: str
    keys: tuple[Key, ...]
    data: dict[Key, Serialized]
    too_large: dict[Key, int] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(slots=True)
class DataPut:
    """A client handed this worker values to hold (scatter)."""

    data: dict[Key, Serialized]


@dataclasses.dataclass(slots=True)
class Tick:
    """Time passed. `running` maps each task a pool thread is running now to the
    time (same clock as `now`) its thread started it."""

    running: dict[Key, float]


@dataclasses.dataclass(slots=True)
class ThreadsStarted:
    """Pool threads started these tasks, which had not finished when the shell
    looked (tasks that end at once are never named: they cost nothing here)."""

    keys: tuple[Key, ...]


@dataclasses.dataclass(slots=True)
class MemorySample:
    """How much memory the worker uses now: `rss`, the process's resident bytes;
    `managed`, the bytes of the values the store holds in memory; `freed`, bytes
    the store let go of since the last sample; `running`, the tasks threads run."""

    rss: int
    managed: int
    freed: int = 0
    running: tuple[Key, ...] = ()


@dataclasses.dataclass(slots=True)
class FetchFailed:
    """A Fetch of `keys` from `address` got no answer (connection failed or lost)."""

    address: str
    keys: tuple[Key, ...]
    reason: str


@dataclasses.dataclass(slots=True)
class ThreadSeceded:
    """Event: the thread running `key` gave its slot back; it runs on, waiting."""

    key: Key


@dataclasses.dataclass(slots=True)
class ThreadRejoining:
    """Event: the seceded thread running `key` wants a slot again; it blocks until
    a GrantSlot for `key`."""

    key: Key


# -- commands -------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class SendToScheduler:
    msg: Message


@dataclasses.dataclass(slots=True)
class Execute:
    """Run `key` on a thread; `deps` pairs each dependency with its Value."""

    key: Key
    func: Serialized
    args: Serialized
    deps: tuple[tuple[Key, Value], ...]
    priority: tuple[int, ...] = ()  # the scheduler's, for what the task submits


@dataclasses.dataclass(slots=True)
class Fetch:
    """Ask the worker at `address` for the values of `keys` (one GetData). Exactly one
    FetchDone or FetchFailed with the same address and keys must follow."""

    address: str
    keys: tuple[Key, ...]


@dataclasses.dataclass(slots=True)
class Restart:
    """Leave the scheduler (saying `reason`) and exit, for the nanny to start this
    worker afresh: a thread is stuck in a task past its timeout and grace."""

    reason: str


@dataclasses.dataclass(slots=True)
class Hold:
    """`key`'s value is in memory here now: the store holds it."""

    key: Key
    value: Value


@dataclasses.dataclass(slots=True)
class Drop:
    """The store lets go of `key`'s value, wherever it lives."""

    key: Key


@dataclasses.dataclass(slots=True)
class GrantSlot:
    """The thread that asked to rejoin with `key` has its slot: wake it."""

    key: Key


@dataclasses.dataclass(slots=True)
class Spill:
    """Move least recently used values to disk until `nbytes` of memory are freed."""

    nbytes: int


@dataclasses.dataclass(slots=True)
class Pause:
    """Memory is short: threads start no more tasks until Resume."""


@dataclasses.dataclass(slots=True)
class Resume:
    """Threads may start tasks again."""


@dataclasses.dataclass(slots=True)
class Trim:
    """Much memory was freed: give the heap's free pages back to the system."""


Command = (
    SendToScheduler
    | Execute
    | Fetch
    | Restart
    | Hold
    | Drop
    | Spill
    | Pause
    | Resume
    | Trim
    | GrantSlot
)
# What the store and the thread pool carry out (shoal.worker.holding).
MEMORY_COMMANDS = (Hold, Drop, Spill, Pause, Resume, Trim)
