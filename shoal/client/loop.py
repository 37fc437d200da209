"""The event-loop thread behind a synchronous Client (and a synchronous LocalCluster).

Owns one thread running one asyncio loop; hands coroutines and callbacks to
it from other threads. Never runs user code of its own accord.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

# How long stop() waits for the loop thread to finish its last callbacks.
STOP_TIMEOUT_S = 10.0


class LoopThread:
    """An asyncio loop running forever in a daemon thread until `stop()`."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())

    @property
    def in_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run `coro` on the loop and block until it returns or raises.

        Raises:
            RuntimeError: called from the loop thread itself (it would deadlock).
            TimeoutError: not done within `timeout` seconds (the coroutine is cancelled).
            Exception: whatever the coroutine raises.
        """
        if self.in_thread:
            coro.close()
            raise RuntimeError("a blocking client call was made on the client's own loop thread")
        done = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return done.result(timeout)
        except TimeoutError:
            done.cancel()
            raise

    def call_soon(self, fn: Callable[..., object], *args: object) -> None:
        """Run `fn(*args)` on the loop soon; from any thread, in call order."""
        self.loop.call_soon_threadsafe(fn, *args)

    def stop(self) -> None:
        """Stop the loop, join the thread, close the loop."""
        if self.loop.is_closed():
            return
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(STOP_TIMEOUT_S)
            if self._thread.is_alive():
                log.warning("client loop thread did not stop within %.0f s", STOP_TIMEOUT_S)
                return
        self.loop.close()
