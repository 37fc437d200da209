"""Who holds the worker's thread slots: tasks that secede give theirs back.

A task waiting on tasks it submitted (`shoal.secede()`, or blocking in
`result()`/`gather()` inside a task) leaves its slot to the next ready task,
so that waiting parents never fill every thread. Coming back (`rejoin()`) it
waits for a slot like a new task, ahead of the ready ones. A mixin of
WorkerState (shoal.worker.state): pure, it never touches a thread.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shoal.protocol.messages import TaskSeceded
from shoal.worker.events import GrantSlot, Key, ThreadRejoining, ThreadSeceded

if TYPE_CHECKING:
    from shoal.worker.events import Command
    from shoal.worker.state import KeyState


class SecededSlots:
    """The seceded and rejoining tasks of a WorkerState, and their slots."""

    if TYPE_CHECKING:
        nthreads: int
        slots: int
        keys: dict[Key, KeyState]
        executing: dict[Key, None]
        _out: list[Command]

        def _send(self, msg: TaskSeceded) -> None: ...

    def _init_slots(self) -> None:
        # Running tasks whose thread gave its slot back, and those of them that
        # wait for one again, in the order they asked.
        self.seceded: dict[Key, None] = {}
        self.rejoining: dict[Key, None] = {}

    def busy(self) -> int:
        """Slots taken: tasks handed to threads that have not seceded."""
        return len(self.executing) - len(self.seceded)

    def _may_start_ready(self) -> bool:
        """Grant waiting rejoins first; True when a ready task may take a free slot."""
        rejoining = self.rejoining
        while rejoining and self.busy() < self.nthreads:
            key = next(iter(rejoining))
            del rejoining[key], self.seceded[key]
            self._out.append(GrantSlot(key))
        return not rejoining and self.busy() < self.slots

    def _on_seceded(self, event: ThreadSeceded) -> None:
        from shoal.worker.state import S

        rec = self.keys.get(event.key)
        if rec is None or event.key not in self.executing or event.key in self.seceded:
            return  # finished meanwhile (the done event came first), or said twice
        self.seceded[event.key] = None
        if rec.status is S.EXECUTING:  # its outcome is owed: the scheduler counts it
            self._send(TaskSeceded(key=event.key))

    def _on_rejoining(self, event: ThreadRejoining) -> None:
        if event.key in self.seceded:
            self.rejoining[event.key] = None
        else:  # never seceded as far as the core knows: nothing to wait for
            self._out.append(GrantSlot(event.key))

    def _leave_slot(self, rec: KeyState) -> None:
        """`rec` stops running (its thread returned): it holds no slot any more."""
        del self.executing[rec.key]
        self.seceded.pop(rec.key, None)
        if self.rejoining.pop(rec.key, None) is not None:  # a thread must not wait for ever
            self._out.append(GrantSlot(rec.key))
