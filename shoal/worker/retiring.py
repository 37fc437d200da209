"""The worker shell's part in a graceful retirement (a mixin of Worker).

`retire()` asks the scheduler to retire this worker (RetireWorker) and waits,
serving its data and finishing its tasks meanwhile, until the scheduler says
WorkerRetired (its values are safe elsewhere), the scheduler is gone, or the
timeout passes; then the worker leaves as close() does. The decisions are the
scheduler core's (shoal.scheduler.retirement); nothing here decides.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from shoal.protocol.messages import RetireWorker, WorkerRetired
from shoal.protocol.schema import Message

log = logging.getLogger(__name__)


class Retiring:
    """What Worker needs to retire; Worker provides the attributes named below."""

    name: str
    _main: asyncio.Task[None] | None
    _stop: asyncio.Event
    _leave_reason: str | None
    _retired: asyncio.Event | None = None
    retired_reason = ""  # the scheduler's WorkerRetired reason, once it came

    if TYPE_CHECKING:  # Worker's own

        def _send(self, msg: Message) -> None: ...
        async def close(self, reason: str = "") -> None: ...

    def _on_retired(self, msg: WorkerRetired) -> None:
        """The scheduler let this worker go (asked for or not): it leaves now."""
        self.retired_reason = msg.reason
        log.info("worker %s %s", self.name, msg.reason)
        if self._retired is None:
            self._retired = asyncio.Event()
        self._retired.set()
        if self._leave_reason is None:
            self._leave_reason = msg.reason
        self._stop.set()  # its _run ends, and its shutdown sends WorkerLeaving

    @property
    def retired(self) -> bool:
        """Whether the scheduler let this worker go at the end of a retirement."""
        return self._retired is not None and self._retired.is_set()

    async def retire(self, timeout: float, reason: str = "retiring") -> bool:
        """Leave gracefully within `timeout` seconds: True when the scheduler said its
        work was handed over, False when it left for the timeout or a lost scheduler.

        Returns once the worker has closed.
        """
        if self._main is None or self._main.done():
            await self.close(reason)
            return False
        if self._retired is None:
            self._retired = asyncio.Event()
        started = time.monotonic()
        log.info("worker %s retiring (%s), for at most %g s", self.name, reason, timeout)
        # The scheduler lets it go a little before the timeout, so that it can say so.
        self._send(RetireWorker(reason=reason, timeout=max(timeout * 0.9, timeout - 2.0)))
        retired = asyncio.ensure_future(self._retired.wait())
        try:
            await asyncio.wait({retired, self._main}, timeout=timeout)
        finally:
            retired.cancel()
        done = self.retired
        if not done:
            log.warning(
                "worker %s leaves after %.1f s without the scheduler's word",
                self.name,
                time.monotonic() - started,
            )
        await self.close(self.retired_reason or reason)
        return done
