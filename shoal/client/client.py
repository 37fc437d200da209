"""Client: the user's session with a scheduler, synchronous or asynchronous.

Owns the scheduler connection, its reader, the key table and the data pool.
State changes only on the client's loop; user threads build messages and wait
on the key table's Condition, and never touch the connection directly.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Coroutine, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from shoal.client import graph as graphs
from shoal.client import nesting, scatter
from shoal.client.cluster import local_cluster
from shoal.client.cluster_helpers import ClusterHelpers
from shoal.client.collections import Collections
from shoal.client.futures import Future, Watch
from shoal.client.keywords import (
    checked_reconnect_timeout,
    client_token,
    local_token,
    refuse_dask_keywords,
)
from shoal.client.link import SchedulerLink
from shoal.client.loop import LoopThread
from shoal.client.pool import DataPool
from shoal.client.progress import Observing
from shoal.client.state import Key, KeyState, KeyTable, Status
from shoal.errors import (
    CommClosedError,
    FutureCancelled,
    HandshakeError,
    MessageTooLarge,
    RegistrationError,
    SchedulerLost,
)
from shoal.protocol.limits import DEFAULT_LIMITS, Limits
from shoal.protocol.messages import CancelKeys, ReleaseFutures, Replicate
from shoal.protocol.serialize import Serialized
from shoal.protocol.tls import TLSConfig

log = logging.getLogger(__name__)

# How long a client keeps trying to reach its scheduler again after losing it.
RECONNECT_TIMEOUT_S = 600.0
# Between registrations that fail once connected (a scheduler still starting).
REGISTER_RETRY_S = 1.0


class Client(ClusterHelpers, Collections, Observing):
    """Connect to a scheduler (or start a LocalCluster) and compute on it.

    With `asynchronous=False` (the default) the connection runs on an event
    loop in a thread of its own and every method blocks; with
    `asynchronous=True` it runs on the caller's loop, `await Client(...)` or
    `async with Client(...)` starts it, and the methods that wait return
    awaitables. Extra keyword arguments go to LocalCluster when `address` is
    None, and are checked before any process starts. Without `token`, a
    client of a scheduler at `address` uses `$SHOAL_TOKEN` when it is set.

    `timeout` bounds connecting at start and each request. When the scheduler
    is lost, pending futures fail at once with SchedulerLost, and the client
    tries to reach a scheduler at the same address again, with jittered
    backoff, for `reconnect_timeout` seconds (10 minutes by default; None: for
    ever; 0: once). Meanwhile `status` is "reconnecting" and new work fails
    with SchedulerLost; once a scheduler answers, the client is "running"
    again. Past the bound it is "lost" and refuses new work with SchedulerLost.

    `data_limits` bounds what the client accepts in one batch from a worker it
    gathers from (a `shoal.protocol.limits.Limits`); a value over them raises
    ValueTooLarge when gathered, and the worker keeps it.

    Graphs and dask collections go through compute(), get() and persist()
    (shoal.client.collections); `with client.as_default():` makes the client
    dask's scheduler.

    Raises:
        TypeError: an unknown keyword (named), or LocalCluster keywords with an
            `address`; `reconnect_timeout` that is not None or a number.
        ValueError: a LocalCluster keyword out of range; `reconnect_timeout` negative,
            infinite or NaN.
        OSError, TimeoutError: no scheduler answered at `address` within `timeout`.
        HandshakeError: the scheduler refused the token or the protocol version.
        CommClosedError: the scheduler closed the connection before registering us.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        token: str | bytes | None = None,
        tls: TLSConfig | None = None,
        timeout: float = 10.0,
        reconnect_timeout: float | None = RECONNECT_TIMEOUT_S,
        asynchronous: bool = False,
        name: str = "",
        data_limits: Limits = DEFAULT_LIMITS,
        **cluster_kwargs: Any,
    ) -> None:
        self.reconnect_timeout = checked_reconnect_timeout(reconnect_timeout)
        if address is not None and cluster_kwargs:
            raise TypeError(
                f"Client() got an unexpected keyword argument {next(iter(cluster_kwargs))!r} "
                "(keywords beyond the client's own start a LocalCluster: they need address=None)"
            )
        if address is None:
            local_cluster().check_cluster_keywords("Client", cluster_kwargs)
        token = client_token(address, token)
        self.address, self.token, self.tls = address, token, tls
        self.timeout, self.asynchronous, self.name = timeout, asynchronous, name
        self.data_limits = data_limits
        self.status = "created"
        self.client_id = ""
        self.cluster: Any = None
        self._cluster_kwargs = cluster_kwargs
        self._keys = KeyTable(self._schedule_flush, self._run_callback)
        self._funcs = graphs.FunctionCache()
        self._pool = DataPool(token, tls, timeout, name, data_limits)
        self._link: SchedulerLink | None = None
        self._reconnecting: asyncio.Future[None] | None = None
        self._lost_reason = ""  # why the client is "lost", for the errors it raises
        self._callback_runner: ThreadPoolExecutor | None = None
        self._scatter_turn = 0  # where the next scatter starts its round of workers
        self._thread: LoopThread | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        if not asynchronous:
            self._start_sync()

    def _start_sync(self) -> None:
        if self.address is None:
            self.cluster = local_cluster().LocalCluster(
                asynchronous=False, token=local_token(self.token), **self._cluster_kwargs
            )
            self.address, self.token = self.cluster.scheduler_address, self.cluster.token
            self._pool = DataPool(self.token, self.tls, self.timeout, self.name, self.data_limits)
        self._thread = LoopThread(f"shoal-client {self.name}".strip())
        self.loop = self._thread.loop
        self._callback_runner = ThreadPoolExecutor(1, thread_name_prefix="shoal-callbacks")
        try:
            self._thread.run(self._start())
        except BaseException:
            self._stop_threads()
            if self.cluster is not None:
                self.cluster.close()
            raise

    async def _start(self) -> Client:
        if self.status != "created":
            return self
        self.status = "starting"
        self.loop = asyncio.get_running_loop()
        if self.address is None:
            self.cluster = await local_cluster().LocalCluster(
                asynchronous=True, token=local_token(self.token), **self._cluster_kwargs
            )
            self.address, self.token = self.cluster.scheduler_address, self.cluster.token
            self._pool = DataPool(self.token, self.tls, self.timeout, self.name, self.data_limits)
        self._link = SchedulerLink(self._keys, self.address, self.timeout, self._link_lost)
        await self._link.open(self.name, self.token, self.tls)
        self.client_id = self._link.client_id
        self.status = "running"
        log.info("client %s connected to %s", self.client_id, self.address)
        return self

    def _link_lost(self, reason: str) -> None:
        """The scheduler is gone (its pending futures failed): join it again, or
        the one that takes its place, for new work."""
        if self.status != "running":
            return
        if getattr(self.cluster, "failure", None) is not None:
            # Our own in-process scheduler stopped on an internal error: no other
            # will come at its address.
            self.status, self._lost_reason = "lost", reason
            return
        self.status = "reconnecting"
        self._reconnecting = asyncio.ensure_future(self._reconnect(reason))

    async def _reconnect(self, reason: str) -> None:
        """Try to register again until it works or `reconnect_timeout` has passed."""
        bound = math.inf if self.reconnect_timeout is None else self.reconnect_timeout
        log.warning("%s; reconnecting for up to %g s", reason, bound)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + bound
        while True:
            link = SchedulerLink(self._keys, self.address or "", self.timeout, self._link_lost)
            try:
                await link.open(self.name, self.token, self.tls, max(0.0, deadline - loop.time()))
                break
            except (HandshakeError, RegistrationError) as exc:  # final: a setting is wrong
                return self._give_up(reason, exc)
            except (OSError, TimeoutError, CommClosedError) as exc:
                if loop.time() >= deadline:
                    return self._give_up(reason, exc)
                # It answered and did not register us: a scheduler still starting.
                await asyncio.sleep(min(REGISTER_RETRY_S, max(0.0, deadline - loop.time())))
            except Exception as exc:  # shell boundary: our bug must not pass unseen
                log.error("client %s failed reconnecting", self.client_id, exc_info=True)
                return self._give_up(reason, exc)
        if self.status != "reconnecting":
            await link.close("the client closed while reconnecting")
            return
        self._link, self.client_id, self.status = link, link.client_id, "running"
        log.info("client %s connected to %s again", self.client_id, self.address)

    def _give_up(self, reason: str, exc: BaseException) -> None:
        if self.status != "reconnecting":
            return
        self.status = "lost"
        self._lost_reason = f"{reason}; reconnecting failed: {exc}"
        log.error("client %s gave up reconnecting: %s", self.client_id, exc)

    def __await__(self) -> Any:
        return self._start().__await__()

    # -- sending (loop thread) ----------------------------------------------------------

    def _link_or_raise(self) -> SchedulerLink:
        """The scheduler link.

        Raises:
            CommClosedError: the client never connected.
        """
        if self._link is None:
            raise CommClosedError(f"the client is {self.status}: await it or use `async with`")
        return self._link

    def _send_graph(
        self, submission: graphs.Submission, keys: list[Key], keepalive: object
    ) -> None:
        """Loop side of submit/map/compute. `keepalive` holds the Futures the
        messages reference until they are queued, so none is released first."""
        with self._keys.batch():
            # (A key submitted again after a cancel was reset by _hand_over already;
            # a cancel made since then stands.) Bridges the user also holds Futures
            # for stay wanted.
            bridges = [k for k in submission.bridges if not self._keys.counts.get(k)]
            release = [ReleaseFutures(keys=tuple(bridges))] if bridges else []
            try:
                self._link_or_raise().send(*submission.msgs, *release)
            except (CommClosedError, MessageTooLarge) as exc:
                for key in keys:
                    self._keys.fail(key, type(exc), str(exc))

    def _hand_over(self, submission: graphs.Submission, keys: list[Key], keepalive: object) -> None:
        """Queue messages from any thread with one loop callback, without waiting.

        While reconnecting, the futures fail with SchedulerLost (on the loop)."""
        if self.status == "lost":
            raise SchedulerLost(self._lost_reason)
        if self.status not in ("running", "reconnecting"):
            raise CommClosedError(f"the client is {self.status}, not running")
        # Submitted again after a cancel: compute anew. Done here, before returning,
        # so that a result() called next cannot see the old cancel.
        with self._keys.batch():
            for key in keys:
                state = self._keys.states.get(key)
                if state is not None and (state.status is Status.CANCELLED or state.lost):
                    state.reset()
        if self._thread is None:
            self._send_graph(submission, keys, keepalive)  # asynchronous: we are on the loop
        else:
            self._thread.call_soon(self._send_graph, submission, keys, keepalive)

    # -- reference counts and callbacks (any thread) -------------------------------------

    def _schedule_flush(self) -> None:
        loop = self.loop
        if loop is None or loop.is_closed():
            return  # no connection any more: nothing to release
        try:
            loop.call_soon_threadsafe(self._flush_releases)
        except RuntimeError:  # the loop closed just now
            return

    def _flush_releases(self) -> None:
        keys = self._keys.take_released()
        if keys and self._link is not None and self._link.usable:
            self._link.send(ReleaseFutures(keys=tuple(keys)))

    def _run_callback(self, fn: Callable[[Future], object], future: Future) -> None:
        runner = self._callback_runner
        if runner is not None:
            try:
                runner.submit(_call_back, fn, future)
            except RuntimeError:  # closed: run it here rather than drop it
                _call_back(fn, future)
        elif self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(_call_back, fn, future)

    # -- blocking helpers ----------------------------------------------------------------

    def _sync(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Awaitable when asynchronous; else run on the loop thread and block."""
        if self.asynchronous:
            return coro
        assert self._thread is not None
        return self._thread.run(coro)

    async def _fetch_async(self, states: list[KeyState]) -> dict[Key, Serialized]:
        return await self._pool.fetch(
            {st.key: st.who_has for st in states}, self._link_or_raise().who_has
        )

    def _fetch(self, states: list[KeyState]) -> dict[Key, Serialized]:
        assert self._thread is not None
        return self._thread.run(self._fetch_async(states))

    def _cancel_now(self, keys: list[Key]) -> None:
        if self._thread is None or self._thread.in_thread:
            self._cancel_keys(keys)
        else:
            self._thread.run(self._cancel_async(keys))

    async def _cancel_async(self, keys: list[Key], force: bool = False) -> None:
        self._cancel_keys(keys, force)

    def _cancel_keys(self, keys: list[Key], force: bool = False) -> None:
        with self._keys.batch():
            for key in keys:
                self._keys.cancel(key, FutureCancelled, f"{key!r} was cancelled by the client")
        if keys and self._link is not None and self._link.usable:
            self._link.send(CancelKeys(keys=tuple(keys), force=force))

    # -- public API ------------------------------------------------------------------------

    def submit(
        self,
        fn: Callable[..., Any],
        *args: Any,
        key: Key | None = None,
        priority: int = 0,
        resources: dict[str, float] | None = None,
        workers: Iterable[str] | str | None = None,
        retries: int = 0,
        pure: bool = True,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> Future:
        """Run `fn(*args, **kwargs)` on the cluster; returns at once with its Future.

        Futures anywhere in `args` and `kwargs` (inside lists, tuples and dict
        values too) become dependencies and are replaced by their values.
        The keywords dask.distributed reserves are never passed to `fn`: those
        shoal supports are listed here; the others (actor, actors,
        allow_other_workers, fifo_timeout, batch_size) raise TypeError. To
        pass `fn` a keyword of that name, bind it with functools.partial.
        `pure=True` names the task after its function and arguments, so equal
        submissions share one result; `pure=False` always runs anew.
        `timeout` (seconds, counted once a worker thread starts it): past it the
        task fails with TaskTimeout, whatever its `retries`.

        Raises:
            SerializationError: `fn` or an argument cannot be pickled.
            TypeError: `fn` is not callable, `key` is not a valid key, or a
                keyword of dask's that shoal does not support (named).
            ValueError: `timeout` is not positive.
            CommClosedError: the client is not running.
        """
        refuse_dask_keywords("submit", kwargs)
        row = graphs.call_row(fn, args, kwargs, self._funcs, key, pure)
        options = graphs.TaskOptions(priority, resources, workers, retries, timeout)
        future = Future(row.key, self)
        submission = graphs.messages([row], [row.key], options)
        self._hand_over(submission, [row.key], (args, kwargs))
        return future

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        key: str | list[Key] | None = None,
        priority: int = 0,
        resources: dict[str, float] | None = None,
        workers: Iterable[str] | str | None = None,
        retries: int = 0,
        pure: bool = True,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> list[Future]:
        """Run `fn` on each item (zipped across `iterables`); one Future per item.

        `key` is a list of keys, one per item, or a str that replaces the
        function's name in front of each generated key. All tasks travel in
        one SubmitGraph (split in chunks when large). `timeout` applies to
        each task, as in submit(), and dask's other keywords are refused as
        there (`batch_size` too: shoal sizes its own messages).

        Raises:
            SerializationError: `fn` or an item cannot be pickled.
            TypeError: `fn` is not callable, a key is not a valid key, or a
                keyword of dask's that shoal does not support (named).
            ValueError: `key` is a list of the wrong length, or `timeout` is not positive.
            CommClosedError: the client is not running.
        """
        refuse_dask_keywords("map", kwargs)
        items = list(zip(*iterables, strict=False))
        keys: list[Key | None] = [None] * len(items)
        name = key if isinstance(key, str) else None
        if isinstance(key, list):
            if len(key) != len(items):
                raise ValueError(f"map got {len(key)} keys for {len(items)} items")
            keys = list(key)
        rows: dict[Key, graphs.Row] = {}
        item_keys = []
        for args, k in zip(items, keys, strict=True):
            row = graphs.call_row(fn, args, kwargs, self._funcs, k, pure, name)
            rows.setdefault(row.key, row)  # equal pure items share one task
            item_keys.append(row.key)
        futures = [Future(k, self) for k in item_keys]
        options = graphs.TaskOptions(priority, resources, workers, retries, timeout)
        task_keys = list(rows)
        submission = graphs.messages(list(rows.values()), task_keys, options)
        self._hand_over(submission, task_keys, (items, kwargs))
        return futures

    def gather(self, futures: Any, errors: str = "raise", *, host: bool = False) -> Any:
        """Values of Futures in any nesting of lists, tuples, sets and dicts.

        Small values came with the scheduler's report and need no round trip;
        larger ones are fetched from the workers holding them. `errors="skip"` leaves
        failed futures out of their containers; `host` gives device arrays as numpy.

        Raises:
            Exception: with `errors="raise"`, the first failed future's exception
                (FutureCancelled, GraphError and CommClosedError included).
            FetchError: no worker could provide a value.
            ValueError: an unknown `errors`.
        """
        if errors not in ("raise", "skip"):
            raise ValueError(f"errors must be 'raise' or 'skip', not {errors!r}")
        listed = nesting.futures_in(futures)
        watch = Watch(listed)

        def ready() -> bool:
            return watch.pending == 0 or (errors == "raise" and watch.erred)

        if self.asynchronous:
            return self._gather_async(futures, listed, watch, ready, errors, host)
        watch.block(ready, None)
        states = nesting.settled(listed, errors)
        fetch = [st for st in states if st.payload is None]
        payloads = self._fetch(fetch) if fetch else {}
        return nesting.assemble(futures, states, payloads, host)

    async def _gather_async(self, futures: Any, listed: list[Future], watch: Watch,
                            ready: Callable[[], bool], errors: str, host: bool) -> Any:  # fmt: skip
        await watch.until(ready, None)
        states = nesting.settled(listed, errors)
        fetch = [st for st in states if st.payload is None]
        payloads = await self._fetch_async(fetch) if fetch else {}
        return nesting.assemble(futures, states, payloads, host)

    def cancel(self, futures: Any, force: bool = False) -> Any:
        """Cancel Futures (any nesting); they raise FutureCancelled from now on.
        With `force` (a token of the admin role), for every client that wants them.

        Raises:
            CommClosedError: never for a lost connection: the local futures are
                cancelled all the same.
        """
        keys = list(dict.fromkeys(f.key for f in nesting.futures_in(futures)))
        return self._sync(self._cancel_async(keys, force))

    def scatter(
        self,
        data: Any,
        workers: Iterable[str] | str | None = None,
        broadcast: bool = False,
        hash: bool = True,
    ) -> Any:
        """Put local data on workers; Futures for it, in its shape.

        A list, tuple or set gives a list of Futures and a dict a dict of them,
        element by element; anything else gives one Future. Elements go to the
        workers in turn (only those named in `workers`, by name or address), or
        to every one of them with `broadcast`. Values travel straight to the
        workers. With `hash`, keys name the content: the same value scattered
        twice is one key.

        Raises:
            SerializationError: a value cannot be pickled.
            ValueError: none of `workers` is in the cluster.
            TimeoutError: no worker joined within the client's timeout.
            ShoalError: no worker took some value (the others are kept).
        """
        values, shape = scatter.flatten(data)
        entries = scatter.prepare(values, hash)
        futures = [Future(key, self) for key, _ in entries]
        start, self._scatter_turn = self._scatter_turn, self._scatter_turn + len(entries)

        async def run() -> Any:
            link = self._link_or_raise()
            targets = await scatter.choose_workers(link, workers)
            await scatter.put(link, self._pool, entries, targets, broadcast, start)
            watch = Watch(futures)  # the scheduler's answers make them done
            await watch.until(lambda: watch.pending == 0, None)
            return shape(futures)

        return self._sync(run())

    def replicate(self, futures: Any, n: int | None = None) -> Any:
        """Keep `n` copies of each future's value on distinct workers (None: one on
        every worker); returns once they are made. Extra copies are dropped.

        Raises:
            CommClosedError: the scheduler connection is lost.
        """
        listed = nesting.futures_in(futures)
        keys = tuple(dict.fromkeys(f.key for f in listed))
        watch = Watch(listed)

        async def run() -> None:
            await watch.until(lambda: watch.pending == 0, None)  # copies of results only
            link = self._link_or_raise()
            make = lambda rid: Replicate(keys=keys, n=n or 0, request_id=rid)  # noqa: E731
            await link.request(make, wait=True)

        return self._sync(run())

    def who_has(self, futures: Any) -> Any:
        """Data addresses of the workers holding each future's value, by key.

        Raises:
            CommClosedError: the scheduler connection is lost.
        """
        keys = list(dict.fromkeys(f.key for f in nesting.futures_in(futures)))
        return self._sync(self._link_or_raise().who_has(keys))

    def scheduler_info(self) -> Any:
        """The cluster described by the scheduler, as a dict.

        Raises:
            CommClosedError: the scheduler connection is lost.
            TimeoutError: no answer within the client's `timeout`.
        """
        return self._sync(self._link_or_raise().scheduler_info())

    def wait_for_workers(self, n: int = 1, timeout: float | None = None) -> Any:
        """Return once at least `n` workers are connected to the scheduler.

        Raises:
            TimeoutError: fewer than `n` workers after `timeout` seconds.
            CommClosedError: the scheduler connection is lost.
        """
        return self._sync(self._link_or_raise().wait_for_workers(n, timeout))

    # -- closing -----------------------------------------------------------------------------

    def close(self) -> Any:
        """Close the connections (and the LocalCluster this client started).

        Futures still pending fail with CommClosedError. Awaitable when asynchronous.
        """
        if self.asynchronous:
            return self._close_async()
        if self._thread is not None and not self._thread.loop.is_closed():
            self._thread.run(self._close())
        self._stop_threads()
        if self.cluster is not None:
            self.cluster.close()
            self.cluster = None
        return None

    async def _close_async(self) -> None:
        await self._close()
        if self.cluster is not None:
            await self.cluster.close()
            self.cluster = None

    async def _close(self) -> None:
        if self.status in ("closing", "closed"):
            return
        self.status = "closing"
        if self._reconnecting is not None:
            self._reconnecting.cancel()
            await asyncio.gather(self._reconnecting, return_exceptions=True)
        if self._link is not None:
            await self._link.close(f"the client of the scheduler at {self.address} is closed")
        await self._pool.close()
        self.status = "closed"
        log.info("client %s closed", self.client_id)

    def _stop_threads(self) -> None:
        if self._thread is not None:
            self._thread.stop()
        if self._callback_runner is not None:
            self._callback_runner.shutdown(wait=True)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Client:
        return await self._start()

    async def __aexit__(self, *exc: object) -> None:
        await self._close_async()

    def __repr__(self) -> str:
        workers = self._link.workers if self._link is not None else 0
        return f"<Client {self.address} workers={workers} status={self.status}>"


def _call_back(fn: Callable[[Future], object], future: Future) -> None:
    try:
        fn(future)
    except Exception:  # the user's callback: report it, keep serving the others
        log.error("done callback %r of %r failed", fn, future, exc_info=True)
