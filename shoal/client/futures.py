"""Future, as_completed and wait: the user's handles on keys computed remotely.

A Future is a counted reference to its client's state record for one key; it
changes no state itself and never does I/O except through its client. Sync
waits block on the client's one Condition, never on a per-future Event.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from shoal.client import blocking
from shoal.client.state import Key, KeyState, KeyTable, Status
from shoal.protocol.serialize import Serialized, deserialize

if TYPE_CHECKING:
    from collections.abc import Coroutine

log = logging.getLogger(__name__)


class FutureOwner(Protocol):
    """What a Future needs of its client (the Client, or a stub in tests)."""

    asynchronous: bool
    loop: asyncio.AbstractEventLoop | None
    _keys: KeyTable

    def _fetch(self, states: list[KeyState]) -> dict[Key, Serialized]: ...

    async def _fetch_async(self, states: list[KeyState]) -> dict[Key, Serialized]: ...

    def _cancel_now(self, keys: list[Key]) -> None: ...


class Future:
    """A remote value that is or will be the result of the task `key`.

    Every Future of one key shares one state record of its client. The client
    holds the key on the cluster while at least one Future for it lives.
    """

    __slots__ = ("__weakref__", "_state", "_table", "client", "key")
    # dask's mark of a scheduler's future: dask.delayed and the collections' from_delayed
    # take it as a reference to `key` on the cluster.
    __dask_future__ = True

    def __init__(self, key: Key, client: FutureOwner) -> None:
        self.key = key
        self.client = client
        self._table = client._keys
        self._state = self._table.acquire(key)

    def __del__(self) -> None:
        try:
            table = self._table
        except AttributeError:  # __init__ failed before counting us
            return
        table.release(self.key)

    def __reduce__(self) -> Any:
        raise TypeError(
            f"a Future ({self.key!r}) cannot be pickled: pass it as an argument of "
            "submit(), map() or a graph task, inside lists, tuples and dicts, and it "
            "becomes its value"
        )

    def __dask_tokenize__(self) -> tuple[str, object]:
        """dask names what is built from a Future after its key."""
        return ("shoal.Future", self.key)

    @property
    def status(self) -> str:
        """pending, finished, error or cancelled."""
        return str(self._state.status)

    def done(self) -> bool:
        """True once the key finished, erred or was cancelled."""
        return self._state.status is not Status.PENDING

    def cancelled(self) -> bool:
        return self._state.status is Status.CANCELLED

    def cancel(self) -> None:
        """Stop computing this key; the future raises FutureCancelled from now on."""
        self.client._cancel_now([self.key])

    def add_done_callback(self, fn: Callable[[Future], object]) -> None:
        """Call `fn(self)` once the future is done (at once if it is already).

        With a synchronous client it runs on a client thread beside the event
        loop, one callback at a time; with an asynchronous one, on the loop.
        """
        self._table.add_callback(self._state, fn, self)

    # -- results ------------------------------------------------------------------

    def result(self, timeout: float | None = None, *, host: bool = False) -> Any:
        """The value; with an asynchronous client, an awaitable of it.

        A device array in it (cupy) comes back as a cupy array on this process's
        device; with `host`, as a numpy array, which needs no cupy and no GPU here.

        Raises:
            TimeoutError: not done within `timeout` seconds.
            FutureCancelled: the key was cancelled.
            GraphError: the scheduler rejected the graph that defined the key.
            CommClosedError: the connection to the scheduler was lost.
            SerializationError: a device array, and this process has no cupy or no
                GPU (the message says: install cupy, or pass host=True).
            Exception: the task's own exception, its remote traceback as
                `__cause__` (TaskFailed when it cannot be rebuilt here).
        """
        if self.client.asynchronous:
            return self._result_async(timeout, host)
        self._wait(timeout)
        state = self._state
        if state.status is not Status.FINISHED:
            raise state.exception()  # type: ignore[misc]
        payload = state.payload
        if payload is None:
            payload = self.client._fetch([state])[self.key]
        return deserialize(payload, f"result of {self.key!r}", host=host)

    def exception(self, timeout: float | None = None) -> Any:
        """The task's exception, or None if it finished; awaitable when asynchronous.

        Raises:
            TimeoutError: not done within `timeout` seconds.
            FutureCancelled: the key was cancelled.
        """
        if self.client.asynchronous:
            return self._exception_async(timeout)
        self._wait(timeout)
        return self._exception_now()

    def traceback(self, timeout: float | None = None) -> Any:
        """The traceback of the task's exception where it ran (frames rebuilt here,
        so `traceback.format_tb` prints them), or None if it did not fail;
        awaitable when asynchronous.

        Raises:
            TimeoutError: not done within `timeout` seconds.
            FutureCancelled: the key was cancelled.
        """
        if self.client.asynchronous:
            return self._traceback_async(timeout)
        self._wait(timeout)
        exc = self._exception_now()
        return exc.__traceback__ if exc is not None else None

    async def _traceback_async(self, timeout: float | None) -> Any:
        exc = await self._exception_async(timeout)
        return exc.__traceback__ if exc is not None else None

    def _exception_now(self) -> BaseException | None:
        state = self._state
        if state.status is Status.CANCELLED:
            raise state.exception()  # type: ignore[misc]
        return state.exception()

    def _wait(self, timeout: float | None) -> None:
        state = self._state
        if state.done:
            return
        with blocking.waiting():  # inside a task: its thread slot is free meanwhile
            if not self._table.wait_for(lambda: state.done, timeout):
                raise TimeoutError(f"{self.key!r} not done after {timeout} s")

    async def _wait_async(self, timeout: float | None) -> None:
        state = self._state
        if state.done:
            return
        waiter = asyncio.get_running_loop().create_future()
        state.waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except TimeoutError:
            raise TimeoutError(f"{self.key!r} not done after {timeout} s") from None

    def _on_client_loop(self) -> bool:
        return asyncio.get_running_loop() is self.client.loop

    async def _result_async(self, timeout: float | None = None, host: bool = False) -> Any:
        if not self._on_client_loop():
            # A sync client's loop runs in its own thread: block a helper thread.
            return await asyncio.to_thread(self.result, timeout, host=host)
        await self._wait_async(timeout)
        state = self._state
        if state.status is not Status.FINISHED:
            raise state.exception()  # type: ignore[misc]
        payload = state.payload
        if payload is None:
            payload = (await self.client._fetch_async([state]))[self.key]
        return deserialize(payload, f"result of {self.key!r}", host=host)

    async def _exception_async(self, timeout: float | None) -> BaseException | None:
        if not self._on_client_loop():
            return await asyncio.to_thread(self.exception, timeout)
        await self._wait_async(timeout)
        return self._exception_now()

    def __await__(self) -> Any:
        return self._result_async().__await__()

    def __repr__(self) -> str:
        state = self._state
        extra = f", type: {state.typename}" if state.typename else ""
        return f"<Future: {state.status}, key: {self.key!r}{extra}>"


# -- waiting on many --------------------------------------------------------------


class Watch:
    """Follows a set of futures of one client: which completed, in order.

    Registered as a watcher on each pending state; updated on the loop thread
    under the table's lock; sync readers wait on the table's Condition.
    """

    def __init__(self, futures: Iterable[Future]) -> None:
        self.table: KeyTable | None = None
        self.completed: deque[Future] = deque()
        self.pending = 0
        self.erred = False
        self._wakeup: asyncio.Future[None] | None = None
        self.add(futures)

    def add(self, futures: Iterable[Future]) -> None:
        groups: dict[int, tuple[KeyState, list[Future]]] = {}
        for future in futures:
            if not isinstance(future, Future):
                raise TypeError(f"expected Futures, got {type(future).__name__}")
            if self.table is None:
                self.table = future._table
            elif future._table is not self.table:
                raise ValueError("futures of different clients cannot be waited on together")
            groups.setdefault(id(future._state), (future._state, []))[1].append(future)
        if self.table is None:
            return
        with self.table.lock:
            for state, group in groups.values():
                if state.done:
                    self._hit(group, state)
                else:
                    self.pending += len(group)
                    state.watchers.append(functools.partial(self._seen, group))

    def _seen(self, group: list[Future], state: KeyState) -> None:
        self.pending -= len(group)
        self._hit(group, state)

    def _hit(self, group: list[Future], state: KeyState) -> None:
        self.completed.extend(group)
        if state.status is not Status.FINISHED:
            self.erred = True
        wakeup = self._wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    def block(self, ready: Callable[[], bool], timeout: float | None) -> bool:
        """Wait (sync) until `ready()`; False on timeout."""
        if self.table is None or ready():
            return True
        with blocking.waiting():  # inside a task: its thread slot is free meanwhile
            return self.table.wait_for(ready, timeout)

    async def until(self, ready: Callable[[], bool], timeout: float | None) -> bool:
        """Wait (on the client's loop) until `ready()`; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        loop = asyncio.get_running_loop()
        while not ready():
            self._wakeup = loop.create_future()
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                async with asyncio.timeout(left):
                    await self._wakeup
            except TimeoutError:
                return ready()
            finally:
                self._wakeup = None
        return True


class AsCompleted:
    """Iterate over futures as they complete: `for` with a sync client, `async for`."""

    def __init__(self, futures: Iterable[Future] = (), with_results: bool = False) -> None:
        self._futures = list(futures)
        self._watch = Watch(self._futures)
        self._yielded = 0
        self._total = len(self._futures)
        self.with_results = with_results

    def add(self, future: Future) -> None:
        """Also yield `future` once it completes."""
        self._total += 1
        self._watch.add([future])

    def count(self) -> int:
        """How many futures are still to be yielded."""
        return self._total - self._yielded

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        watch = self._watch
        if self._yielded >= self._total:
            raise StopIteration
        watch.block(lambda: bool(watch.completed), None)
        return self._emit(watch.completed.popleft())

    def _emit(self, future: Future) -> Any:
        self._yielded += 1
        if not self.with_results:
            return future
        return future, future.result()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        watch = self._watch
        if self._yielded >= self._total:
            raise StopAsyncIteration
        client = watch.completed[0].client if watch.completed else self._futures[0].client
        if asyncio.get_running_loop() is not client.loop:
            return await asyncio.to_thread(self.__next__)
        await watch.until(lambda: bool(watch.completed), None)
        future = watch.completed.popleft()
        self._yielded += 1
        if not self.with_results:
            return future
        return future, await future._result_async()


def as_completed(futures: Iterable[Future], with_results: bool = False) -> AsCompleted:
    """Yield futures (or `(future, result)` pairs) in the order they complete.

    Raises:
        TypeError: something other than a Future was given.
        ValueError: futures of different clients were given.
        Exception: with `with_results`, a failed future's exception.
    """
    return AsCompleted(futures, with_results)


class ReturnWhen(enum.StrEnum):
    ALL_COMPLETED = "ALL_COMPLETED"
    FIRST_COMPLETED = "FIRST_COMPLETED"


class DoneAndNotDone(NamedTuple):
    done: set[Future]
    not_done: set[Future]


def wait(
    futures: Future | Iterable[Future],
    timeout: float | None = None,
    return_when: str = "ALL_COMPLETED",
) -> DoneAndNotDone | Coroutine[Any, Any, DoneAndNotDone]:
    """Wait until all (or the first of) `futures` completed; awaitable when asynchronous.

    Returns `(done, not_done)` sets. Erred and cancelled futures count as done.

    Raises:
        TimeoutError: the condition did not hold within `timeout` seconds.
        ValueError: an unknown `return_when`, or futures of different clients.
    """
    listed = [futures] if isinstance(futures, Future) else list(futures)
    when = ReturnWhen(return_when)
    watch = Watch(listed)

    def ready() -> bool:
        if when is ReturnWhen.ALL_COMPLETED:
            return watch.pending == 0
        return bool(watch.completed) or not listed

    def outcome(ok: bool) -> DoneAndNotDone:
        if not ok:
            raise TimeoutError(
                f"{watch.pending} of {len(listed)} futures not done after {timeout} s"
            )
        done = {f for f in listed if f.done()}
        return DoneAndNotDone(done, {f for f in listed if f not in done})

    if listed and listed[0].client.asynchronous:

        async def waiting() -> DoneAndNotDone:
            return outcome(await watch.until(ready, timeout))

        return waiting()
    return outcome(watch.block(ready, timeout))
