"""The worker shell's memory part: it carries out the core's memory commands on
the store and the thread pool, and measures what the core decides from.

Thin like the rest of the shell: Hold, Drop and Spill go to the store, Pause and
Resume to the thread pool, Trim to the heap. Samples of resident and managed
memory go to the core (MemorySample), which decides what to do about them.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING

from shoal.protocol.messages import Heartbeat
from shoal.worker.events import (
    Command,
    Drop,
    ExecutionDone,
    Hold,
    MemorySample,
    Pause,
    Resume,
    Spill,
    Trim,
)
from shoal.worker.heap import trim_heap
from shoal.worker.store import Store

if TYPE_CHECKING:
    from shoal.worker.execute import ThreadPool

log = logging.getLogger(__name__)

# Resident memory is read at most this often: the process's figure costs a system call.
RSS_EVERY_S = 0.01

# Resident bytes this process began with as a fork of another (LocalCluster's
# workers, shoal.deploy.forked): pages it shares with its parent, copy on write,
# which are the parent's memory, not the worker's. Left out of its figure.
_inherited = 0


def inherit_resident() -> None:
    """Called in a forked child before its worker starts: what it holds now is
    its parent's."""
    import psutil

    global _inherited
    _inherited = int(psutil.Process(os.getpid()).memory_info().rss)


class Holding:
    """The store of one worker, and the measurements its core decides from."""

    def __init__(self, name: str, local_directory: str | None, compression: str | None) -> None:
        import psutil

        self.store = Store(local_directory, compression=compression)
        self.name = name
        self._process = psutil.Process(os.getpid())
        self._rss = 0
        self._rss_at = float("-inf")
        self._reported: set[object] = set()  # keys whose spill failure was logged

    def rss(self) -> int:
        now = time.monotonic()
        if now - self._rss_at >= RSS_EVERY_S:
            rss = int(self._process.memory_info().rss)
            self._rss, self._rss_at = max(rss - _inherited, 0), now
        return self._rss

    def sample(self, pool: ThreadPool | None) -> MemorySample:
        store = self.store
        running = tuple(pool.running()) if pool is not None else ()
        return MemorySample(self.rss(), store.memory_bytes, store.take_freed(), running)

    def heartbeat(
        self, cpu: float, pool: ThreadPool | None, devices: tuple[dict[str, float], ...] = ()
    ) -> Heartbeat:
        """`devices`: the figures of the GPU the worker is pinned to (worker/gpu.py)."""
        store = self.store
        return Heartbeat(
            cpu=cpu,
            memory=self.rss(),
            executing=len(pool.running()) if pool is not None else 0,
            managed=store.memory_bytes,
            spilled=store.disk_bytes,
            unspillable=store.failed_bytes,
            devices=devices,
        )

    def after_tasks(
        self, batch: list[ExecutionDone], pool: ThreadPool | None, limit: int
    ) -> list[ExecutionDone | MemorySample]:
        """The events for the core when tasks ended: theirs, and with a memory limit
        a sample, since results take memory."""
        events: list[ExecutionDone | MemorySample] = list(batch)
        if limit:
            events.append(self.sample(pool))
        return events

    def carry_out(self, command: Command, pool: ThreadPool | None) -> None:
        """One memory command (MEMORY_COMMANDS)."""
        kind = type(command)
        if kind is Hold:
            self.store.put(command.key, command.value)  # type: ignore[union-attr]
        elif kind is Drop:
            self.store.drop(command.key)  # type: ignore[union-attr]
            self._reported.discard(command.key)  # type: ignore[union-attr]
        elif kind is Spill:
            self._spill(command.nbytes)  # type: ignore[union-attr]
        elif kind is Pause:
            assert pool is not None
            log.warning(
                "worker %s paused: its memory is %d MiB, over the pause threshold",
                self.name,
                self.rss() // 2**20,
            )
            pool.pause()
        elif kind is Resume:
            assert pool is not None
            log.info("worker %s resumed: its memory is %d MiB", self.name, self.rss() // 2**20)
            pool.resume()
        elif kind is Trim:
            trim_heap()
            self._rss_at = float("-inf")  # it may have fallen
        else:
            raise TypeError(f"not a memory command: {command!r}")

    def _spill(self, nbytes: int) -> None:
        report = self.store.spill(nbytes)
        if report.nbytes:
            self._rss_at = float("-inf")
        for key, why in report.failed.items():
            if key not in self._reported:  # once per key: it is in every heartbeat after
                self._reported.add(key)
                log.warning("worker %s keeps a value in memory: %s", self.name, why)

    def close(self) -> None:
        self.store.close()
