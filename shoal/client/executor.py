"""concurrent.futures.Executor on a shoal cluster: `client.get_executor(**options)`
and `shoal.Executor(address)`.

Each submit() is a task; its outcome lands in a standard
concurrent.futures.Future, so `concurrent.futures.wait`, `as_completed` and
`asyncio.wrap_future` work on it. map() sends its items in batches of tasks
(one SubmitGraph per batch, `chunksize` items per task), never one message
per item. The client's done callbacks move outcomes across; nothing here
touches a connection.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import itertools
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from shoal.errors import FutureCancelled

if TYPE_CHECKING:
    from shoal.client.client import Client
    from shoal.client.futures import Future

# The options of Client.submit an executor passes on to each task.
SUBMIT_OPTIONS = frozenset({"priority", "resources", "workers", "retries", "pure", "timeout"})
# Tasks sent in one client.map call (one SubmitGraph) by map().
MAP_BATCH = 1_000


def run_chunk(fn: Callable[..., Any], chunk: list[tuple[Any, ...]]) -> list[Any]:
    """One task of map(chunksize=n): `fn` over n items, in order."""
    return [fn(*args) for args in chunk]


class ClientExecutor(cf.Executor):
    """A concurrent.futures.Executor whose work runs on `client`'s cluster.

    `submit_options` (priority, resources, workers, retries, pure, timeout) apply
    to every task; `pure` is False unless given, since each call of an executor
    runs anew. shutdown() leaves the client open.

    Raises:
        TypeError: an option that is not one of submit()'s (named).
    """

    def __init__(self, client: Client, **submit_options: Any) -> None:
        unknown = sorted(set(submit_options) - SUBMIT_OPTIONS)
        if unknown:
            raise TypeError(f"get_executor() got an unexpected keyword argument {unknown[0]!r}")
        self._client = client
        self._options = {"pure": False, **submit_options}
        self._pending: dict[cf.Future[Any], None] = {}
        self._guard = threading.Lock()
        self._shut = False

    @property
    def client(self) -> Client:
        return self._client

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        """Run `fn(*args, **kwargs)` as a task; its concurrent.futures.Future.

        Keywords all go to `fn` (the executor's options are set once, at its making).

        Raises:
            RuntimeError: the executor is shut down.
            SerializationError: `fn` or an argument cannot be pickled.
        """
        call = functools.partial(fn, **kwargs) if kwargs else fn
        with self._guard:
            self._check_open()
            remote = self._client.submit(call, *args, **self._options)
            return self._linked(remote)

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
    ) -> Iterator[Any]:
        """`fn` over the zipped items, results in order. All items are sent now, in
        batches of tasks, each task taking `chunksize` items. Each result waits at
        most until `timeout` seconds after this call; the iterator, closed early,
        cancels what is left.

        Raises:
            ValueError: `chunksize` below 1.
            RuntimeError: the executor is shut down.
            TimeoutError: (on iterating) a result not ready within `timeout`.
            Exception: (on iterating) the exception of an item's call.
        """
        if not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if buffersize is not None:
            raise TypeError("map() of a shoal executor does not take buffersize")
        deadline = None if timeout is None else time.monotonic() + timeout
        items = zip(*iterables, strict=False)
        if chunksize > 1:
            chunks = iter(lambda: list(itertools.islice(items, chunksize)), [])
            task_args: Iterator[tuple[Any, ...]] = ((chunk,) for chunk in chunks)
            fn = functools.partial(run_chunk, fn)
        else:
            task_args = items
        futures: list[cf.Future[Any]] = []
        while batch := list(itertools.islice(task_args, MAP_BATCH)):
            with self._guard:
                self._check_open()
                remote = self._client.map(fn, *zip(*batch, strict=True), **self._options)
                futures.extend(self._linked(f) for f in remote)
            del remote, batch
        return _results(futures, deadline, chunked=chunksize > 1)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Take no more work; with `cancel_futures`, cancel what has not finished;
        with `wait`, return once every future is done."""
        with self._guard:
            self._shut = True
            pending = list(self._pending)
        if cancel_futures:
            for future in pending:
                future.cancel()
        if wait:
            cf.wait(pending)

    def _check_open(self) -> None:
        if self._shut:
            raise RuntimeError("cannot schedule new futures after shutdown")

    def _linked(self, remote: Future) -> cf.Future[Any]:
        """A concurrent.futures.Future that takes `remote`'s outcome; cancelling it
        cancels `remote`. Once settled it holds no reference to `remote`."""
        local: cf.Future[Any] = cf.Future()
        holder = [remote]
        self._pending[local] = None

        def settled(done: Future) -> None:
            holder.clear()
            try:
                outcome = done.result()
            except FutureCancelled:
                local.cancel()
            except BaseException as exc:  # the task's own error: the future's outcome
                _settle(local, exc, error=True)
            else:
                _settle(local, outcome, error=False)
            finally:
                self._pending.pop(local, None)

        def cancelled(future: cf.Future[Any]) -> None:
            if future.cancelled():
                # What an executor's worker does on taking a cancelled future: it
                # tells wait() and as_completed(), which count it done from then on.
                future.set_running_or_notify_cancel()
                if holder:
                    holder[0].cancel()
            self._pending.pop(future, None)

        local.add_done_callback(cancelled)
        remote.add_done_callback(settled)
        return local


def _settle(local: cf.Future[Any], value: Any, error: bool) -> None:
    try:
        if error:
            local.set_exception(value)
        else:
            local.set_result(value)
    except cf.InvalidStateError:  # cancelled meanwhile: its outcome is that
        return


def _results(futures: list[cf.Future[Any]], deadline: float | None, chunked: bool) -> Iterator[Any]:
    """Results in order, each waited for until `deadline`; cancels the rest when
    closed early. Nothing yielded stays referenced here (no local holds it)."""
    futures.reverse()
    try:
        while futures:
            if not chunked:
                yield _next_result(futures, deadline)
                continue
            chunk = _next_result(futures, deadline)
            chunk.reverse()
            while chunk:
                yield chunk.pop()
    finally:
        for future in futures:
            future.cancel()


def _next_result(futures: list[cf.Future[Any]], deadline: float | None) -> Any:
    left = None if deadline is None else max(0.0, deadline - time.monotonic())
    return futures.pop().result(left)


class Executor(ClientExecutor):
    """A concurrent.futures.Executor with a client of its own: of the scheduler at
    `address`, or of a LocalCluster it starts with `cluster_options` (n_workers,
    threads_per_worker, ...) when `address` is None. shutdown() closes it.

    Raises:
        TypeError: an unknown option (named).
        OSError, TimeoutError: no scheduler answered at `address`.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        client_options: dict[str, Any] | None = None,
        **submit_options: Any,
    ) -> None:
        from shoal.client.client import Client

        unknown = sorted(set(submit_options) - SUBMIT_OPTIONS)
        if unknown:
            raise TypeError(f"Executor() got an unexpected keyword argument {unknown[0]!r}")
        client = Client(address, **(client_options or {}))
        super().__init__(client, **submit_options)
        self._closed = False

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """As ClientExecutor.shutdown, then close the client (at once without `wait`:
        futures not done then are cancelled)."""
        super().shutdown(wait, cancel_futures=cancel_futures)
        if not self._closed:
            self._closed = True
            if not wait:
                for future in list(self._pending):
                    future.cancel()
            self._client.close()
