"""Client methods that act on the whole cluster rather than on tasks: run a
function on every worker, upload a file, restart the workers, publish
datasets, fire and forget. A mixin of Client (shoal.client.client).

Functions run and files go straight to the workers' data ports; the
scheduler only keeps what later workers and other clients need: uploaded
files, datasets' keys and the client's pickled structure (never unpickled
there), and the keys fired and forgotten.
"""

from __future__ import annotations

import asyncio
import io
import logging
import pickle
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cloudpickle

from shoal.client import nesting
from shoal.client.futures import Future
from shoal.client.state import remote_exception
from shoal.errors import CommClosedError, SerializationError, UploadError
from shoal.protocol.messages import (
    FireAndForget,
    FunctionRan,
    GetDataset,
    KeyErred,
    ListDatasets,
    PublishDataset,
    RestartWorkers,
    SubmitGraph,
    UnpublishDataset,
    UploadFile,
)
from shoal.protocol.serialize import Serialized, deserialize, serialize

if TYPE_CHECKING:
    from shoal.client.executor import ClientExecutor
    from shoal.client.link import SchedulerLink
    from shoal.client.loop import LoopThread
    from shoal.client.pool import DataPool
    from shoal.client.state import KeyTable

log = logging.getLogger(__name__)

UPLOAD_SUFFIXES = (".py", ".zip", ".egg")
RESTART_TIMEOUT_S = 60.0


class ClusterHelpers:
    """run, upload_file, restart, datasets, get_executor (see Client)."""

    if TYPE_CHECKING:
        timeout: float
        _keys: KeyTable
        _pool: DataPool

        _thread: LoopThread | None

        def _link_or_raise(self) -> SchedulerLink: ...
        def _sync(self, coro: Coroutine[Any, Any, Any]) -> Any: ...

    # -- functions on workers ----------------------------------------------------------

    def run(
        self,
        function: Callable[..., Any],
        *args: Any,
        workers: Iterable[str] | str | None = None,
        on_error: str = "raise",
        **kwargs: Any,
    ) -> Any:
        """Call `function(*args, **kwargs)` on every worker (or those named, by name
        or address), outside the task graph, on a thread of its own beside the task
        threads; returns `{worker address: result}`. Inside it, get_worker() names
        the worker.

        With `on_error="return"`, a worker's failure is its entry's value (the
        exception) instead of being raised.

        Raises:
            Exception: with `on_error="raise"`, the first failure, in the workers'
                joining order; a note names the worker.
            ValueError: an unknown `on_error`; none of `workers` is in the cluster.
            SerializationError: `function` or an argument cannot be pickled.
        """
        if on_error not in ("raise", "return"):
            raise ValueError(f"on_error must be 'raise' or 'return', not {on_error!r}")
        call = serialize((function, args, kwargs), "function to run")

        async def run() -> dict[str, Any]:
            targets = await self._worker_addresses(workers)
            outcomes = await asyncio.gather(
                *(self._run_on(address, call) for address in targets), return_exceptions=True
            )
            results = dict(zip(targets, outcomes, strict=True))
            for address, outcome in results.items():
                if isinstance(outcome, BaseException) and on_error == "raise":
                    outcome.add_note(f"(on worker {address})")
                    raise outcome
            return results

        return self._sync(run())

    def run_on_scheduler(self, *args: Any, **kwargs: Any) -> Any:
        """Not supported: the scheduler never runs user code (nor unpickles user data).

        Raises:
            NotImplementedError: always; run() runs a function on the workers.
        """
        raise NotImplementedError(
            "run_on_scheduler is not supported: shoal's scheduler never runs user code "
            "nor unpickles user data; use client.run() to run a function on the workers"
        )

    async def _worker_addresses(self, workers: Iterable[str] | str | None) -> list[str]:
        info = await self._link_or_raise().scheduler_info()
        everyone = [(name, w["address"]) for name, w in info["workers"].items()]
        if workers is None:
            return [address for _, address in everyone]
        allowed = {workers} if isinstance(workers, str) else set(workers)
        chosen = [address for name, address in everyone if name in allowed or address in allowed]
        if not chosen:
            raise ValueError(f"no worker of the cluster is among {sorted(allowed)!r}")
        return chosen

    async def _run_on(self, address: str, call: Serialized) -> Any:
        answer: FunctionRan = await self._pool.run_function(address, call)
        if answer.result is not None:
            return deserialize(answer.result, f"result of the function run on {address}")
        raise remote_exception(
            KeyErred(
                key=address,
                typename=answer.typename,
                message=answer.message,
                traceback=answer.traceback,
                exception=answer.exception,
            )
        )

    # -- files -------------------------------------------------------------------------

    def upload_file(self, path: str | Path) -> Any:
        """Send a .py, .zip or .egg file to every worker, and to every worker that
        joins later; tasks can import it at once (a .py is imported on each worker,
        again if it was imported before).

        Raises:
            ValueError: not a .py, .zip or .egg file.
            OSError: the file cannot be read.
            UploadError: it did not import on a worker (naming the worker and why).
        """
        path = Path(path)
        if path.suffix not in UPLOAD_SUFFIXES:
            raise ValueError(f"only .py, .zip and .egg files can be uploaded, not {path.name!r}")
        data = path.read_bytes()
        filename = path.name

        async def run() -> None:
            link = self._link_or_raise()
            # First for workers that join from now on, then those already here.
            make = lambda rid: UploadFile(filename=filename, data=data, request_id=rid)  # noqa: E731
            kept = await link.request(make)
            if kept.error:
                raise ValueError(kept.error)
            targets = await self._worker_addresses(None)
            answers = await asyncio.gather(
                *(self._pool.store_file(address, filename, data) for address in targets)
            )
            for address, answer in zip(targets, answers, strict=True):
                if answer.error:
                    raise UploadError(f"{filename} on worker {address}: {answer.error}")

        return self._sync(run())

    # -- restart -----------------------------------------------------------------------

    def restart(self, timeout: float = RESTART_TIMEOUT_S) -> Any:
        """Forget every key of every client (their futures are cancelled) and every
        dataset, and restart each worker under its nanny; returns once as many
        workers are connected as before. Workers without a nanny stay, emptied.

        Raises:
            TimeoutError: the workers were not back within `timeout` seconds.
            CommClosedError: the scheduler connection is lost.
        """

        async def run() -> None:
            link = self._link_or_raise()
            answer = await link.request(lambda rid: RestartWorkers(request_id=rid))
            await link.wait_for_workers(answer.workers, timeout)

        return self._sync(run())

    # -- datasets ----------------------------------------------------------------------

    def publish_dataset(self, *args: Any, name: str | None = None, override: bool = False,
                        **datasets: Any) -> Any:  # fmt: skip
        """Keep data (any structure of futures and plain values) on the scheduler
        under a name, for any client, until unpublished: `publish_dataset(x=futures)`
        or `publish_dataset(value, name="x")`. The futures' keys stay computed.

        Raises:
            ValueError: a name is published already (unless `override`), or the
                scheduler no longer knows a future's key.
            TypeError: a value without a name.
            SerializationError: a value cannot be pickled.
        """
        if args:
            if name is None or len(args) != 1:
                raise TypeError("publish_dataset(value, name=...) takes one value and its name")
            datasets[name] = args[0]
        packed = [(key, *_pack(value)) for key, value in datasets.items()]

        async def run() -> None:
            link = self._link_or_raise()
            for dataset, payload, keys, _futures in packed:
                make = lambda rid, n=dataset, p=payload, k=keys: PublishDataset(  # noqa: E731
                    name=n, keys=k, payload=p, override=override, request_id=rid
                )
                answer = await link.request(make)
                if answer.error:
                    raise ValueError(answer.error)

        return self._sync(run())

    def unpublish_dataset(self, name: str) -> Any:
        """Drop the dataset `name`; its keys are let go unless futures hold them.

        Raises:
            KeyError: no dataset of that name.
        """

        async def run() -> None:
            answer = await self._link_or_raise().request(
                lambda rid: UnpublishDataset(name=name, request_id=rid)
            )
            if answer.error:
                raise KeyError(answer.error)

        return self._sync(run())

    def get_dataset(self, name: str, default: Any = KeyError) -> Any:
        """The dataset `name`, its futures made for this client.

        Raises:
            KeyError: no dataset of that name (unless a `default` is given).
        """

        async def run() -> Any:
            link = self._link_or_raise()
            answer = await link.request(lambda rid: GetDataset(name=name, request_id=rid))
            if answer.error:
                if default is KeyError:
                    raise KeyError(answer.error)
                return default
            assert answer.payload is not None
            value = _unpack(answer.payload, self)
            if answer.keys:  # hold them as for any known key: the scheduler reports them
                link.send(
                    SubmitGraph(keys=(), funcs=(), func=(), args=(), deps=(), wanted=answer.keys)
                )
            return value

        return self._sync(run())

    def list_datasets(self) -> Any:
        """The names of the published datasets, sorted."""

        async def run() -> list[str]:
            answer = await self._link_or_raise().request(lambda rid: ListDatasets(request_id=rid))
            return list(answer.names)

        return self._sync(run())

    # -- executor ----------------------------------------------------------------------

    def get_executor(self, **submit_options: Any) -> ClientExecutor:
        """A concurrent.futures.Executor running on this client's cluster; every
        task it submits gets `submit_options` (resources, workers, retries, ...).

        Raises:
            TypeError: an option submit() does not take.
        """
        from shoal.client.executor import ClientExecutor

        return ClientExecutor(self, **submit_options)  # type: ignore[arg-type]

    def _fire_and_forget(self, keys: list[Any], keepalive: object = None) -> None:
        """Send FireAndForget after what this thread submitted before (same queue).
        `keepalive` holds the Futures until it is queued: a release of their keys,
        which the loop may send as soon as the last Future goes, must come after
        it, or the scheduler lets the tasks go before it hears they are fired."""
        msg = FireAndForget(keys=tuple(keys))
        thread = self._thread
        if thread is None or thread.in_thread:
            self._send_fired(msg, keepalive)
        else:
            thread.call_soon(self._send_fired, msg, keepalive)

    def _send_fired(self, msg: FireAndForget, keepalive: object = None) -> None:
        try:
            self._link_or_raise().send(msg)
        except CommClosedError as exc:  # its futures fail with the same error
            log.debug("fire-and-forget not sent: %s", exc)


def fire_and_forget(futures: Any) -> None:
    """Keep computing these futures' tasks (any nesting) even once no client holds
    them: each runs to its end, then is let go.

    Raises:
        CommClosedError: a future's client is not connected.
    """
    by_client: dict[int, tuple[Any, list[Any]]] = {}
    held = list(nesting.futures_in(futures))
    for future in held:
        by_client.setdefault(id(future.client), (future.client, []))[1].append(future.key)
    for client, keys in by_client.values():
        client._fire_and_forget(list(dict.fromkeys(keys)), keepalive=held)


# -- pickling datasets: futures travel as their keys ----------------------------------------


class _FuturePickler(cloudpickle.Pickler):
    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file, protocol=5)
        self.keys: dict[Any, None] = {}

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, Future):
            self.keys[obj.key] = None
            return ("shoal-future", obj.key)
        return None


class _FutureUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, client: Any) -> None:
        super().__init__(file)
        self.client = client

    def persistent_load(self, pid: Any) -> Any:
        if isinstance(pid, tuple) and len(pid) == 2 and pid[0] == "shoal-future":
            return Future(pid[1], self.client)
        raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")


def _pack(value: Any) -> tuple[Serialized, tuple[Any, ...], Any]:
    """The dataset's payload and keys (and the value, kept alive until published)."""
    buffer = io.BytesIO()
    pickler = _FuturePickler(buffer)
    try:
        pickler.dump(value)
    except Exception as exc:  # anything pickling raises, as data: the user's value
        raise SerializationError(
            f"cannot pickle a dataset ({type(value).__name__}): {exc}"
        ) from exc
    return Serialized("dataset", [buffer.getvalue()]), tuple(pickler.keys), value


def _unpack(payload: Serialized, client: Any) -> Any:
    data = b"".join(bytes(frame) for frame in payload.frames)
    try:
        return _FutureUnpickler(io.BytesIO(data), client).load()
    except Exception as exc:  # the user's class may not import here
        raise SerializationError(f"cannot unpickle a dataset: {exc}") from exc
