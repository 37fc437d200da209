"""What the client knows of each key it holds futures for, and who waits on it.

Owns the per-key state records, the count of live Future objects per key and
the one Condition that sync waiters block on. States change only on the
client's event-loop thread; this module never does I/O and never blocks the loop.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from shoal import errors
from shoal.client.tracebacks import remote_traceback
from shoal.errors import RemoteTraceback, SerializationError, TaskFailed
from shoal.protocol.messages import KeyErred, KeyInMemory
from shoal.protocol.serialize import Serialized, deserialize

if TYPE_CHECKING:
    from shoal.client.futures import Future

log = logging.getLogger(__name__)

Key = str | tuple[str | int, ...]


class Status(enum.StrEnum):
    PENDING = "pending"
    FINISHED = "finished"
    ERROR = "error"
    CANCELLED = "cancelled"


class KeyState:
    """One key: its status, its inline value or holders, its error, its waiters.

    `watchers` are internal (wait, as_completed, gather) and run inline on the
    loop thread; `callbacks` are the user's, run through the table's runner.
    """

    __slots__ = (
        "callbacks",
        "failure",
        "key",
        "nbytes",
        "payload",
        "status",
        "typename",
        "waiters",
        "watchers",
        "who_has",
    )

    def __init__(self, key: Key) -> None:
        self.key = key
        self.status = Status.PENDING
        self.payload: Serialized | None = None
        self.who_has: tuple[str, ...] = ()
        self.nbytes = 0
        self.typename = ""
        # A remote error as received, or (exception type, message) of a local one;
        # kept as data so each raise gets a fresh exception and traceback.
        self.failure: KeyErred | tuple[type[BaseException], str] | None = None
        self.watchers: list[Callable[[KeyState], None]] = []
        self.callbacks: list[tuple[Callable[[Future], object], Future]] = []
        self.waiters: list[asyncio.Future[None]] = []

    @property
    def done(self) -> bool:
        return self.status is not Status.PENDING

    def exception(self) -> BaseException | None:
        """A fresh exception for an erred or cancelled key; None otherwise."""
        failure = self.failure
        if failure is None:
            return None
        if isinstance(failure, KeyErred):
            return remote_exception(failure)
        cls, text = failure
        return cls(text)

    @property
    def lost(self) -> bool:
        """Failed because the scheduler was lost: submitting it again computes anew."""
        failure = self.failure
        return isinstance(failure, tuple) and failure[0] is errors.SchedulerLost

    def reset(self) -> None:
        """Back to pending, for a key submitted again after a cancel."""
        self.status = Status.PENDING
        self.failure = None
        self.payload, self.who_has = None, ()

    def __repr__(self) -> str:
        return f"<KeyState {self.key!r} {self.status}>"


def remote_exception(msg: KeyErred) -> BaseException:
    """The task's own exception, rebuilt, with the remote traceback as its cause.

    Falls back to TaskFailed when the exception did not travel or cannot be
    unpickled here (its class is not importable on the client, say).
    """
    cause = RemoteTraceback(msg.traceback)
    exc: object = None
    if msg.exception is not None:
        try:
            exc = deserialize(msg.exception, "exception")
        except SerializationError as err:
            log.debug("key=%r: cannot rebuild the remote exception: %s", msg.key, err)
    if not isinstance(exc, BaseException):
        exc = _shoal_error(msg.typename, msg.message)
    if not isinstance(exc, BaseException):
        exc = TaskFailed(msg.typename, msg.message, msg.traceback)
    exc.__cause__ = cause
    # Raised here, it shows the caller's frames and then the task's.
    return exc.with_traceback(remote_traceback(msg.traceback))


def _shoal_error(typename: str, message: str) -> BaseException | None:
    """One of shoal's own errors, raised by the scheduler rather than by a task."""
    cls = errors.shoal_error_named(typename)
    return cls(message) if cls is not None else None


class KeyTable:
    """Key states and live-Future counts of one client.

    `schedule_flush` is called (from any thread) when a key's count reached
    zero and no flush is pending; the client then calls `take_released()` on
    its loop and sends one ReleaseFutures. `run_callback` runs a user's done
    callback somewhere that may block.
    """

    def __init__(
        self,
        schedule_flush: Callable[[], None],
        run_callback: Callable[[Callable[[Future], object], Future], None],
    ) -> None:
        # Re-entrant: Future.__del__ may run from the garbage collector while
        # this same thread holds the lock (inside acquire(), say).
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.states: dict[Key, KeyState] = {}
        self.counts: dict[Key, int] = {}
        self._released: list[Key] = []
        self._flush_pending = False
        self._schedule_flush = schedule_flush
        self._run_callback = run_callback
        self._due: list[tuple[Callable[[Future], object], Future]] = []

    # -- reference counts (any thread) ------------------------------------------

    def acquire(self, key: Key) -> KeyState:
        """Count one more live Future for `key`; its state, made if new."""
        with self.lock:
            self.counts[key] = self.counts.get(key, 0) + 1
            state = self.states.get(key)
            if state is None:
                state = self.states[key] = KeyState(key)
            return state

    def release(self, key: Key) -> None:
        """Count one Future fewer; at zero the key is queued for ReleaseFutures."""
        with self.lock:
            count = self.counts.get(key, 0) - 1
            if count > 0:
                self.counts[key] = count
                return
            self.counts[key] = 0
            self._released.append(key)
            if self._flush_pending:
                return
            self._flush_pending = True
        self._schedule_flush()

    def take_released(self) -> list[Key]:
        """Forget keys whose count is still zero and return them, once each."""
        with self.lock:
            self._flush_pending = False
            keys = []
            for key in self._released:
                if self.counts.get(key) == 0:
                    del self.counts[key]
                    self.states.pop(key, None)
                    keys.append(key)
            self._released.clear()
            return keys

    # -- changes (loop thread only) -----------------------------------------------

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Apply a batch of changes: one lock hold, one notify, then user callbacks."""
        with self.lock:
            try:
                yield
            finally:
                self.changed.notify_all()
                due, self._due = self._due, []
        for fn, future in due:
            self._run_callback(fn, future)

    def finished(self, msg: KeyInMemory) -> None:
        state = self.states.get(msg.key)
        if state is None or state.status is Status.CANCELLED:
            return  # released or cancelled here meanwhile: nobody waits for it
        state.payload, state.who_has = msg.value, msg.who_has
        state.nbytes, state.typename = msg.nbytes, msg.typename
        self._complete(state, Status.FINISHED)

    def erred(self, msg: KeyErred) -> None:
        state = self.states.get(msg.key)
        if state is None or state.done:
            return
        state.failure = msg
        self._complete(state, Status.ERROR)

    def fail(self, key: Key, cls: type[BaseException], text: str) -> None:
        """A local error: the graph was rejected, the scheduler is gone, ..."""
        state = self.states.get(key)
        if state is None or state.done:
            return
        state.failure = (cls, text)
        self._complete(state, Status.ERROR)

    def cancel(self, key: Key, cls: type[BaseException], text: str) -> None:
        state = self.states.get(key)
        if state is None or state.status is Status.CANCELLED:
            return
        state.payload, state.who_has = None, ()
        state.failure = (cls, text)
        self._complete(state, Status.CANCELLED)

    def fail_pending(self, cls: type[BaseException], text: str) -> None:
        """Fail every key still pending (the scheduler connection is lost)."""
        for state in list(self.states.values()):
            if not state.done:
                state.failure = (cls, text)
                self._complete(state, Status.ERROR)

    def _complete(self, state: KeyState, status: Status) -> None:
        state.status = status
        watchers, state.watchers = state.watchers, []
        for watcher in watchers:
            watcher(state)
        waiters, state.waiters = state.waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        if state.callbacks:
            self._due.extend(state.callbacks)
            state.callbacks = []

    # -- waiting (any thread) --------------------------------------------------------

    def wait_for(self, predicate: Callable[[], bool], timeout: float | None) -> bool:
        """Block until `predicate()` (checked under the lock) or the timeout."""
        with self.changed:
            return self.changed.wait_for(predicate, timeout)

    def add_callback(self, state: KeyState, fn: Callable[[Future], object], future: Future) -> None:
        with self.lock:
            if not state.done:
                state.callbacks.append((fn, future))
                return
        self._run_callback(fn, future)
