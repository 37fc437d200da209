"""The task's side of seceding: which task a pool thread runs, and secede()/rejoin().

A pool thread records its task here while it runs it. `secede()` tells the
worker core (through the thread pool and the event loop) that the task gives
its slot back, and the pool starts a thread to take the slot; `rejoin()`
asks for a slot again and blocks until the core grants one. What is decided
is the core's (shoal.worker.slots); this module only carries the news.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from shoal.protocol.tls import TLSConfig


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerIdentity:
    """The worker a task runs on, as the task may see it (shoal.get_worker()).
    `token` is the one its tasks' clients connect with (get_client): a submit
    token of the worker's token file when it has one, else the worker's own."""

    name: str
    address: str
    scheduler_address: str
    nthreads: int
    token: str | bytes | None = dataclasses.field(default=None, repr=False)
    tls: TLSConfig | None = dataclasses.field(default=None, repr=False)


class SlotKeeper(Protocol):
    """What a task context needs of its thread pool."""

    def secede(self, task: TaskContext) -> None: ...

    def rejoin(self, task: TaskContext) -> None: ...


class TaskContext:
    """The task a pool thread runs now. `seceded`: its slot is given back;
    `left`: it seceded once, so its thread leaves the pool after this task."""

    __slots__ = ("key", "left", "pool", "priority", "seceded", "worker")

    def __init__(self, key: Any, priority: int, worker: WorkerIdentity, pool: SlotKeeper) -> None:
        self.key, self.priority, self.worker, self.pool = key, priority, worker, pool
        self.seceded = self.left = False


_local = threading.local()


def current_task() -> TaskContext | None:
    """The task the calling thread runs for a worker, or None outside tasks."""
    return getattr(_local, "task", None)


def set_current_task(task: TaskContext | None) -> None:
    _local.task = task


def running_priority() -> int | None:
    """The priority of the task the calling thread runs, or None outside tasks."""
    task = getattr(_local, "task", None)
    return None if task is None else task.priority


def secede() -> None:
    """Give the running task's thread slot back to its worker, for as long as the
    task waits on others (on tasks it submitted, say). Does nothing when it has
    seceded already.

    Raises:
        ValueError: not called from inside a task.
    """
    task = _task_or_raise("secede")
    if not task.seceded:
        task.pool.secede(task)


def rejoin() -> None:
    """Take a thread slot again after secede(), waiting until the worker has one
    free. Does nothing when the task has not seceded.

    Raises:
        ValueError: not called from inside a task.
    """
    task = _task_or_raise("rejoin")
    if task.seceded:
        task.pool.rejoin(task)


def _task_or_raise(what: str) -> TaskContext:
    task = current_task()
    if task is None:
        raise ValueError(f"{what}() is for code running in a shoal task, on a worker thread")
    return task


@contextlib.contextmanager
def seceded_while_waiting() -> Iterator[None]:
    """Around a wait: inside a task that holds its slot, secede for the wait and
    rejoin after; anywhere else, nothing."""
    task = current_task()
    if task is None or task.seceded:
        yield
        return
    task.pool.secede(task)
    try:
        yield
    finally:
        task.pool.rejoin(task)
