"""Running tasks: one task on the calling thread (`Executor`), and the thread pool that
runs them off the event loop (`ThreadPool`). User code failing here is data, reported
as TaskErred. Nothing here decides what runs, or touches a socket or the core's state:
a task that secedes (shoal.worker.secede) only tells the core, which decides its slot.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import threading
import time
import traceback
from collections import OrderedDict, deque
from collections.abc import Callable
from queue import SimpleQueue
from typing import cast

from shoal.errors import SerializationError, rebuilt_exception, type_name
from shoal.protocol import taskspec
from shoal.protocol.messages import INLINE_VALUE_BYTES, TaskErred, TaskFinished
from shoal.protocol.serialize import Serialized, deserialize, device_nbytes, serialize, typename_of
from shoal.worker.events import Execute, ExecutionDone, Key, Value
from shoal.worker.secede import TaskContext, WorkerIdentity, set_current_task
from shoal.worker.store import Store
from shoal.worker.task_warnings import Caught

log = logging.getLogger(__name__)

# The same function arrives with thousands of tasks: unpickle each one once.
FUNCTION_CACHE_SIZE = 1_000


class FunctionCache:
    """Unpickled functions by the bytes of their payload, least recently used dropped."""

    def __init__(self, maxsize: int = FUNCTION_CACHE_SIZE) -> None:
        self.maxsize = maxsize
        self.hits = self.misses = 0
        self._entries: OrderedDict[bytes, Callable[..., object]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, payload: Serialized) -> Callable[..., object]:
        """The function in `payload`.

        Raises:
            SerializationError: it does not unpickle.
        """
        if len(payload.frames) != 1:  # a function with out-of-band buffers: rare, not cached
            return cast(Callable[..., object], deserialize(payload, "function"))
        stream = payload.frames[0]
        blob = stream if type(stream) is bytes else bytes(stream)
        with self._lock:
            func = self._entries.get(blob)
            if func is not None:
                self._entries.move_to_end(blob)
                self.hits += 1
                return func
        # Outside the lock: it runs user code. Not callable: the call raises, as data.
        func = cast(Callable[..., object], deserialize(payload, "function"))
        with self._lock:
            self.misses += 1
            self._entries[blob] = func
            if len(self._entries) > self.maxsize:
                self._entries.popitem(last=False)
        return func


class Executor:
    """Runs one task on the calling thread and turns the outcome into a report.
    Its inputs come from `store`, which reads them back from disk if need be."""

    def __init__(self, functions: FunctionCache | None = None, store: Store | None = None) -> None:
        self.functions = functions if functions is not None else FunctionCache()
        self.store = store if store is not None else Store()

    def run(
        self, key: Key, func: Serialized, args: Serialized, deps: tuple[tuple[Key, Value], ...]
    ) -> tuple[TaskFinished | TaskErred, Value | None]:
        """Unpickle, call, pickle the result. Never raises for what user code does.
        The warnings the task raised go with its report (shoal.worker.task_warnings).

        The inputs are pinned in the store while it runs: never spilled from under
        it. Only a started task pins them, so that tasks queued behind a paused
        pool hold nothing in memory.
        """
        keys = [dep for dep, _ in deps]
        if keys:
            self.store.pin(keys)
        try:
            with Caught() as caught:
                report, value = self._run(key, func, args, deps)
        finally:
            if keys:
                self.store.unpin(keys)
        if caught.warned:
            report.warned = tuple(caught.warned)
        return report, value

    def _run(
        self, key: Key, func: Serialized, args: Serialized, deps: tuple[tuple[Key, Value], ...]
    ) -> tuple[TaskFinished | TaskErred, Value | None]:
        start = time.perf_counter()
        try:
            function = self.functions.get(func)
            spec = cast(taskspec.ArgSpec, deserialize(args, f"arguments of task {key!r}"))
            values = {dep: self.load(dep, value) for dep, value in deps}
            result = taskspec.run(function, spec, values)
            on_device = device_nbytes(result)
            if on_device is None:
                payload = serialize(result, f"result of task {key!r}")
        # User code failing is data (STYLE 5.1), SystemExit from a task included.
        except BaseException as exc:
            return task_erred(key, exc, time.perf_counter() - start), None
        if on_device is not None:  # it stays on this worker's device, copied when asked for
            return self._on_device(key, result, on_device, time.perf_counter() - start)
        small = payload.inline and payload.nbytes <= INLINE_VALUE_BYTES
        finished = TaskFinished(
            key=key,
            nbytes=payload.nbytes,
            typename=typename_of(result),
            duration=time.perf_counter() - start,
            value=payload if small else None,
        )
        return finished, Value(payload, result)

    @staticmethod
    def _on_device(
        key: Key, result: object, nbytes: int, duration: float
    ) -> tuple[TaskFinished, Value]:
        typename = typename_of(result)
        finished = TaskFinished(key=key, nbytes=nbytes, typename=typename, duration=duration)
        return finished, Value(None, result, nbytes=nbytes, typename=typename, on_device=True)

    def load(self, key: Key, value: Value) -> object:
        """The object of a held value, unpickled once however many tasks ask at once.

        Raises:
            SerializationError: the payload does not unpickle.
            OSError: its spill file cannot be read.
        """
        return self.store.load(key, value)


def task_erred(key: Key, exc: BaseException, duration: float) -> TaskErred:
    """The report of a task that raised `exc`."""
    cls = type(exc)
    try:
        message = str(exc)
    except Exception as str_exc:  # a broken __str__ must not lose the report
        message = f"<str() of the exception failed: {str_exc!r}>"
    return TaskErred(
        key=key,
        typename=type_name(cls),
        message=message,
        traceback="".join(traceback.format_exception(exc)),
        duration=duration,
        exception=_pickled_exception(exc),
    )


def _pickled_exception(exc: BaseException) -> Serialized | None:
    """The exception as a payload, only if it also unpickles: the client rebuilds it.

    An exception whose class takes other arguments than it passes to
    Exception.__init__ does not unpickle the usual way (its class is called with
    `args`); it travels as its class, `args` and attributes instead, rebuilt
    without calling its __init__ (shoal.errors.rebuilt_exception).
    """
    for form in (exc, _AsState(exc)):
        try:
            payload = serialize(form, "exception")
            deserialize(payload, "exception")
        except SerializationError:
            continue
        return payload
    return None


class _AsState:
    """Pickles as its exception's class, args and attributes (see _pickled_exception)."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __reduce__(self) -> tuple[object, ...]:
        exc = self.exc
        return rebuilt_exception, (type(exc), exc.args, dict(getattr(exc, "__dict__", {})))


class ThreadPool:
    """`nthreads` named daemon threads running Execute commands from one queue.

    Completions reach the loop in bursts: threads append to a deque and only the first
    completion of a burst schedules `on_done`, since a task can take a few microseconds
    and one loop wake-up per task would cost more than the task. Starts travel the
    same way to `on_started`, which hears only of tasks still running when the burst
    is delivered: a short task's start shares its completion's wake-up and is never
    reported.

    A task that secedes gets a new thread to take its place in the pool (its own
    thread leaves the pool once the task returns); `on_seceded(key)` tells the core.
    One that rejoins waits until the core grants it a slot again: `on_rejoining(key)`
    asks, `resume(key)` wakes it.
    """

    def __init__(
        self,
        nthreads: int,
        on_done: Callable[[list[ExecutionDone]], None],
        *,
        executor: Executor | None = None,
        name: str = "shoal-worker",
        on_started: Callable[[list[Key]], None] | None = None,
        on_seceded: Callable[[Key], None] | None = None,
        on_rejoining: Callable[[Key], None] | None = None,
        identity: WorkerIdentity | None = None,
    ) -> None:
        self.executor = executor if executor is not None else Executor()
        self._name = name
        self._on_seceded, self._on_rejoining = on_seceded, on_rejoining
        self._identity = identity or WorkerIdentity(name, "", "", nthreads)
        self._rejoins: dict[Key, threading.Event] = {}  # seceded tasks waiting for a slot
        self._numbers = itertools.count(nthreads)
        self._threads_guard = threading.Lock()
        self._loop = asyncio.get_running_loop()
        self._on_done = on_done
        self._queue: SimpleQueue[Execute | None] = SimpleQueue()
        self._done: deque[ExecutionDone] = deque()
        self._on_started = on_started
        self._started: deque[Key] = deque()
        self._armed = False  # a _deliver is scheduled and has not started draining
        self._closing = False
        self._go = threading.Event()  # cleared while paused: threads start nothing
        self._go.set()
        # thread name -> the key it runs now and when it started it (monotonic)
        self._running: dict[str, tuple[Key, float]] = {}
        self._exited = 0
        self._made = nthreads  # threads started, those that took a seceded task's place too
        self._all_exited: asyncio.Future[None] | None = None
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(nthreads)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def threads(self) -> list[threading.Thread]:
        with self._threads_guard:
            return list(self._threads)

    def running(self) -> dict[Key, float]:
        """The tasks threads run now, with the time.monotonic() each started."""
        return dict(self._running.copy().values())

    def pause(self) -> None:
        """Start no more tasks (those running finish) until `resume`."""
        self._go.clear()

    def resume(self) -> None:
        self._go.set()

    @property
    def paused(self) -> bool:
        return not self._go.is_set()

    def submit(self, command: Execute) -> None:
        """Queue a task; its ExecutionDone reaches `on_done` on the loop."""
        if self._closing:
            raise RuntimeError("the thread pool is closed")
        self._queue.put(command)

    def _work(self) -> None:
        me = threading.current_thread().name
        try:
            while True:
                command = self._queue.get()
                self._go.wait()  # paused: the task waits here, not started
                if command is None or self._closing:
                    return
                self._running[me] = (command.key, time.monotonic())
                if self._on_started is not None:
                    self._started.append(command.key)
                    if not self._armed:
                        self._armed = True
                        self._call_on_loop(self._deliver)
                priority = -command.priority[0] if command.priority else 0
                task = TaskContext(command.key, priority, self._identity, self)
                set_current_task(task)
                outcome, value = self._run(command)
                set_current_task(None)
                del self._running[me]
                self._done.append(ExecutionDone(command.key, outcome, value))
                # Wait for the next task holding nothing of this one: its inputs and
                # result must be freed when the core lets go of them.
                del command, outcome, value
                # _deliver clears _armed before draining, so a completion appended
                # while it drains is either drained now or finds _armed false.
                if not self._armed:
                    self._armed = True
                    self._call_on_loop(self._deliver)
                if task.left:  # a thread took its place when it seceded
                    return
        finally:
            self._call_on_loop(self._thread_exited)

    # -- seceding (called on the task's own thread) ---------------------------------------

    def secede(self, task: TaskContext) -> None:
        """The task gives its slot back: a new thread joins the pool in its place."""
        task.seceded = True
        if not task.left:
            task.left = True
            with self._threads_guard:
                if self._closing:
                    return
                thread = threading.Thread(
                    target=self._work, name=f"{self._name}-{next(self._numbers)}", daemon=True
                )
                # Those that left after their seceded task are let go of here.
                self._threads = [t for t in self._threads if t.is_alive()]
                self._threads.append(thread)
                self._made += 1
            thread.start()
        if self._on_seceded is not None:
            self._call_on_loop(functools.partial(self._on_seceded, task.key))

    def rejoin(self, task: TaskContext) -> None:
        """Block until the core grants the task a slot again (at once when closing)."""
        if self._on_rejoining is None or self._closing:
            task.seceded = False
            return
        event = self._rejoins[task.key] = threading.Event()
        self._call_on_loop(functools.partial(self._on_rejoining, task.key))
        event.wait()
        task.seceded = False

    def grant_slot(self, key: Key) -> None:
        """The core granted `key`'s thread a slot: wake it (from the loop)."""
        event = self._rejoins.pop(key, None)
        if event is not None:
            event.set()

    def _run(self, command: Execute) -> tuple[TaskFinished | TaskErred, Value | None]:
        try:
            return self.executor.run(command.key, command.func, command.args, command.deps)
        except Exception as exc:  # our bug, not the task's: log it, and still answer
            log.error("running task %r failed inside shoal", command.key, exc_info=True)
            return task_erred(command.key, exc, 0.0), None

    def _call_on_loop(self, callback: Callable[[], None]) -> None:
        try:
            self._loop.call_soon_threadsafe(callback)
        except RuntimeError:  # the loop is closed: nobody is left to tell
            log.debug("event loop closed; %s dropped", callback.__name__)

    def _deliver(self) -> None:
        self._armed = False
        done = self._done
        batch = [done.popleft() for _ in range(len(done))]
        started = self._started
        begun = [started.popleft() for _ in range(len(started))]
        if self._closing:
            return
        if batch:
            self._on_done(batch)
        if begun and self._on_started is not None:
            running = {key for key, _ in self._running.copy().values()}
            still = [key for key in begun if key in running]
            if still:
                self._on_started(still)

    def _thread_exited(self) -> None:
        self._exited += 1
        fut = self._all_exited
        if self._exited == self._made and fut is not None and not fut.done():
            fut.set_result(None)

    async def close(self, timeout: float = 5.0) -> None:
        """Drop queued tasks, let running ones finish for up to `timeout` seconds, join.

        A task still running then is left to its daemon thread, with a WARNING naming it.
        """
        if self._all_exited is not None:
            await asyncio.wait({self._all_exited}, timeout=timeout)
            return
        with self._threads_guard:
            self._closing = True
        self._go.set()  # paused threads wake to exit
        for event in list(self._rejoins.values()):  # nothing will grant them a slot now
            event.set()
        self._all_exited = self._loop.create_future()
        if self._exited == self._made:
            self._all_exited.set_result(None)
        for _ in self._threads:
            self._queue.put(None)
        await asyncio.wait({self._all_exited}, timeout=timeout)
        if not self._all_exited.done():
            running = dict(self._running)  # one atomic copy: threads change it
            tasks = ", ".join(f"{key!r} on {name}" for name, (key, _) in sorted(running.items()))
            log.warning(
                "threads still busy after %.1f s, left behind: %s", timeout, tasks or "none"
            )
            return
        for thread in self._threads:
            thread.join(timeout)  # each has returned already: this only reaps it
