"""The worker core's memory decisions: when to spill, pause, resume and trim.

A mixin of WorkerState (shoal.worker.state), pure like it: a MemorySample comes
in (resident bytes, managed bytes), commands go out (Spill, Pause, Resume,
Trim) and the scheduler hears WorkerPaused / WorkerResumed. The store
(shoal.worker.store) carries the commands out; the nanny terminates.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from shoal.protocol.messages import WorkerPaused, WorkerResumed
from shoal.worker.events import MemorySample, Pause, Resume, Spill, Trim

if TYPE_CHECKING:
    from shoal.protocol.schema import Message
    from shoal.worker.events import Command, Key

# Defaults as fractions of the memory limit, the same as dask's.
TARGET, SPILL, PAUSE, TERMINATE = 0.60, 0.70, 0.80, 0.95
# Give freed memory back to the system once this much was let go of since the last time.
TRIM_BYTES = 64 * 2**20


@dataclasses.dataclass(frozen=True, slots=True)
class MemoryLimits:
    """A worker's memory limit in bytes (0: none) and its thresholds, fractions of
    it (None: that step is off).

    target: managed memory (the values held) above it spills, least recently
        used first, down to it.
    spill: resident memory (so unmanaged memory counts) above it spills until
        resident memory is back under target.
    pause: resident memory above it stops tasks from starting, and the
        scheduler places work elsewhere; they start again below it.
    terminate: the nanny restarts the worker above it.
    """

    limit: int = 0
    target: float | None = TARGET
    spill: float | None = SPILL
    pause: float | None = PAUSE
    terminate: float | None = TERMINATE

    def __post_init__(self) -> None:
        if self.limit < 0:
            raise ValueError(f"memory limit must be at least 0, not {self.limit}")
        for name in ("target", "spill", "pause", "terminate"):
            check_fraction(name, getattr(self, name))

    def with_limit(self, limit: int) -> MemoryLimits:
        return dataclasses.replace(self, limit=limit)

    def bytes_at(self, fraction: float | None) -> float | None:
        """The bytes at which a threshold acts, or None when it does not."""
        if not self.limit or fraction is None:
            return None
        return self.limit * fraction


def check_fraction(name: str, value: object) -> float | None:
    """A threshold: a number above 0 and at most 1, or None (off).

    Raises:
        TypeError / ValueError: naming the threshold.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"memory {name} fraction must be a number or None, not {value!r}")
    if not 0 < value <= 1:
        raise ValueError(f"memory {name} fraction must be above 0 and at most 1, not {value!r}")
    return float(value)


class MemoryManagement:
    """Spill, pause and trim decisions (see WorkerState)."""

    memory: MemoryLimits
    paused: bool
    executing: dict[Key, None]
    _out: list[Command]
    _freed: int

    if TYPE_CHECKING:

        def _send(self, msg: Message) -> None: ...

    def _on_memory(self, event: MemorySample) -> None:
        """Spill down to target; pause above pause, resume below; trim after frees."""
        limits = self.memory
        spill_bytes = 0.0
        target = limits.bytes_at(limits.target)
        if target is not None and event.managed > target:
            spill_bytes = event.managed - target
        over = limits.bytes_at(limits.spill)
        if over is not None and event.rss > over:
            # Resident memory counts what the store cannot see: spill until the
            # process is back under target (or the spill threshold, with no target).
            floor = target if target is not None else over
            spill_bytes = max(spill_bytes, min(event.rss - floor, event.managed))
        if spill_bytes > 0:
            self._out.append(Spill(int(spill_bytes)))
        pause = limits.bytes_at(limits.pause)
        if pause is not None and event.rss > pause and not self.paused:
            self.paused = True
            self._out.append(Pause())
            running = tuple(key for key in event.running if key in self.executing)
            self._send(WorkerPaused(memory=event.rss, limit=limits.limit, running=running))
        elif self.paused and (pause is None or event.rss <= pause):
            self.paused = False
            self._out.append(Resume())
            self._send(WorkerResumed(memory=event.rss))
        self._freed += event.freed
        if self._freed >= TRIM_BYTES:
            self._freed = 0
            self._out.append(Trim())
