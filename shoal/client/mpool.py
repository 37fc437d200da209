"""`shoal.Pool`: the multiprocessing.Pool interface on a shoal cluster.

`with Pool() as p: p.map(square, range(10))` runs on a LocalCluster of
`processes` one-thread workers; `Pool(address=...)` on a running cluster.
Built on the Executor facade (shoal.client.executor): every call is a
task, and the lazy iterators keep a bounded window of tasks in flight.
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from shoal.client.executor import ClientExecutor, run_chunk

# Tasks an imap() keeps in flight ahead of the one it yields next.
WINDOW = 2_000


class AsyncResult:
    """The outcome of apply_async() and map_async(), as multiprocessing has it."""

    def __init__(
        self,
        futures: list[cf.Future[Any]],
        single: bool,
        chunked: bool,
        callback: Callable[[Any], object] | None,
        error_callback: Callable[[BaseException], object] | None,
    ) -> None:
        self._futures, self._single, self._chunked = futures, single, chunked
        self._callback, self._error_callback = callback, error_callback
        self._done = threading.Event()
        self._value: Any = None
        self._error: BaseException | None = None
        self._left = len(futures)
        self._guard = threading.Lock()
        if not futures:
            self._finish()
        for future in futures:
            future.add_done_callback(self._one_done)

    def _one_done(self, _: cf.Future[Any]) -> None:
        with self._guard:
            self._left -= 1
            last = self._left == 0
        if last:
            self._finish()

    def _finish(self) -> None:
        try:
            values = [f.result() for f in self._futures]
        except BaseException as exc:  # a task's error: this result's outcome
            self._error = exc
        else:
            if self._single:
                self._value = values[0]
            elif self._chunked:
                self._value = [item for chunk in values for item in chunk]
            else:
                self._value = values
        self._futures = []
        self._done.set()
        if self._error is None and self._callback is not None:
            self._callback(self._value)
        elif self._error is not None and self._error_callback is not None:
            self._error_callback(self._error)

    def ready(self) -> bool:
        return self._done.is_set()

    def successful(self) -> bool:
        """Raises:
        ValueError: the result is not ready yet."""
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._error is None

    def wait(self, timeout: float | None = None) -> None:
        self._done.wait(timeout)

    def get(self, timeout: float | None = None) -> Any:
        """The value; the task's exception is raised.

        Raises:
            multiprocessing.TimeoutError: not ready within `timeout` seconds.
        """
        if not self._done.wait(timeout):
            import multiprocessing

            raise multiprocessing.TimeoutError
        if self._error is not None:
            raise self._error
        return self._value


class Pool:
    """A process pool shaped like multiprocessing.Pool, running on a shoal cluster.

    `processes` one-thread workers of a LocalCluster it starts (the machine's
    CPU count when None), or the cluster at `address` (with `client_options`
    for its Client, such as token). `initializer(*initargs)` runs once on every
    worker there is at the start (client.run), not on workers that join later.
    `maxtasksperchild` and `context` have no meaning on a cluster and must stay None.

    Raises:
        ValueError: `processes` below 1, or `maxtasksperchild`/`context` given.
        OSError, TimeoutError: no scheduler answered at `address`.
    """

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        maxtasksperchild: int | None = None,
        context: Any = None,
        *,
        address: str | None = None,
        client_options: dict[str, Any] | None = None,
    ) -> None:
        from shoal.client.client import Client

        if processes is not None and processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if maxtasksperchild is not None or context is not None:
            raise ValueError("shoal.Pool takes neither maxtasksperchild nor context")
        options = dict(client_options or {})
        if address is None:
            options.setdefault("threads_per_worker", 1)
            if processes is not None:
                options.setdefault("n_workers", processes)
        self._client = Client(address, **options)
        self._executor = ClientExecutor(self._client)
        self._state = "running"
        if initializer is not None:
            self._client.run(initializer, *initargs)

    @property
    def client(self) -> Any:
        return self._client

    def _check_running(self) -> None:
        if self._state != "running":
            raise ValueError("Pool not running")

    # -- blocking --------------------------------------------------------------------

    def apply(self, func: Callable[..., Any], args: Iterable[Any] = (),
              kwds: dict[str, Any] | None = None) -> Any:  # fmt: skip
        """`func(*args, **kwds)` on the cluster; its value."""
        return self.apply_async(func, args, kwds).get()

    def map(self, func: Callable[[Any], Any], iterable: Iterable[Any],
            chunksize: int | None = None) -> list[Any]:  # fmt: skip
        """`[func(x) for x in iterable]`, computed on the cluster."""
        return self.map_async(func, iterable, chunksize).get()

    def starmap(self, func: Callable[..., Any], iterable: Iterable[Iterable[Any]],
                chunksize: int | None = None) -> list[Any]:  # fmt: skip
        """`[func(*args) for args in iterable]`, computed on the cluster."""
        return self.starmap_async(func, iterable, chunksize).get()

    # -- asynchronous ----------------------------------------------------------------

    def apply_async(
        self,
        func: Callable[..., Any],
        args: Iterable[Any] = (),
        kwds: dict[str, Any] | None = None,
        callback: Callable[[Any], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> AsyncResult:
        self._check_running()
        future = self._executor.submit(func, *args, **(kwds or {}))
        return AsyncResult([future], True, False, callback, error_callback)

    def map_async(
        self,
        func: Callable[[Any], Any],
        iterable: Iterable[Any],
        chunksize: int | None = None,
        callback: Callable[[Any], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> AsyncResult:
        return self.starmap_async(func, ((x,) for x in iterable), chunksize, callback,
                                  error_callback)  # fmt: skip

    def starmap_async(
        self,
        func: Callable[..., Any],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        callback: Callable[[Any], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> AsyncResult:
        self._check_running()
        futures, chunked = self._submit_all(func, (tuple(a) for a in iterable), chunksize or 1)
        return AsyncResult(futures, False, chunked, callback, error_callback)

    def _submit_all(
        self, func: Callable[..., Any], items: Iterator[tuple[Any, ...]], chunksize: int
    ) -> tuple[list[cf.Future[Any]], bool]:
        if chunksize < 1:
            raise ValueError("Chunksize must be 1+")
        client, executor = self._client, self._executor
        futures: list[cf.Future[Any]] = []
        if chunksize == 1:
            while batch := list(itertools.islice(items, 1000)):
                remote = client.map(func, *zip(*batch, strict=True), pure=False)
                futures.extend(executor._linked(f) for f in remote)
            return futures, False
        while chunk := list(itertools.islice(items, chunksize)):
            futures.append(executor.submit(run_chunk, func, chunk))
        return futures, True

    # -- lazy ------------------------------------------------------------------------

    def imap(self, func: Callable[[Any], Any], iterable: Iterable[Any],
             chunksize: int = 1) -> Iterator[Any]:  # fmt: skip
        """`func(x)` for each item, in order, as they come; at most WINDOW tasks ahead."""
        self._check_running()
        return self._lazy(func, iter(iterable), chunksize, ordered=True)

    def imap_unordered(self, func: Callable[[Any], Any], iterable: Iterable[Any],
                       chunksize: int = 1) -> Iterator[Any]:  # fmt: skip
        """As imap(), in the order the results come."""
        self._check_running()
        return self._lazy(func, iter(iterable), chunksize, ordered=False)

    def _lazy(
        self, func: Callable[[Any], Any], items: Iterator[Any], chunksize: int, ordered: bool
    ) -> Iterator[Any]:
        if chunksize < 1:
            raise ValueError("Chunksize must be 1+")
        executor = self._executor

        def submit_some(n: int) -> list[cf.Future[Any]]:
            if chunksize == 1:
                return [executor.submit(func, x) for x in itertools.islice(items, n)]
            made = []
            for _ in range(n):
                chunk = [(x,) for x in itertools.islice(items, chunksize)]
                if not chunk:
                    break
                made.append(executor.submit(run_chunk, func, chunk))
            return made

        def results() -> Iterator[Any]:
            window: deque[cf.Future[Any]] = deque(submit_some(WINDOW))
            try:
                while window:
                    if ordered:
                        future = window.popleft()
                    else:
                        done, _ = cf.wait(window, return_when=cf.FIRST_COMPLETED)
                        future = next(f for f in window if f in done)
                        window.remove(future)
                    value = future.result()
                    window.extend(submit_some(1))
                    if chunksize == 1:
                        yield value
                    else:
                        yield from value
            finally:
                for future in window:
                    future.cancel()

        return results()

    # -- life cycle --------------------------------------------------------------------

    def close(self) -> None:
        """Take no more work; join() then waits for what was given."""
        if self._state == "running":
            self._state = "closed"

    def terminate(self) -> None:
        """Cancel what has not finished and close the cluster connection (and the
        LocalCluster this pool started)."""
        if self._state == "terminated":
            return
        self._state = "terminated"
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._client.close()

    def join(self) -> None:
        """Wait for the work given; then the cluster connection closes.

        Raises:
            ValueError: the pool is still running (call close() or terminate() first).
        """
        if self._state == "running":
            raise ValueError("Pool is still running")
        if self._state == "closed":
            self._executor.shutdown(wait=True)
            self._state = "terminated"
            self._client.close()

    def __enter__(self) -> Pool:
        self._check_running()
        return self

    def __exit__(self, *exc: object) -> None:
        self.terminate()

    def __repr__(self) -> str:
        return f"<shoal.Pool state={self._state} client={self._client!r}>"
