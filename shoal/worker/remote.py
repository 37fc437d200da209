"""What clients ask of a worker outside the task graph: call a function
(`Client.run`), keep a file where tasks import from (`Client.upload_file`).

The worker's shell hands such requests here; user code runs on a thread of
its own, never on the event loop and never in a task slot. The tasks started
here are owned here and awaited by close().
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, cast

from shoal.errors import CommClosedError, MessageTooLarge, type_name
from shoal.protocol.comm import Comm
from shoal.protocol.messages import FileStored, FunctionRan, RunFunction, StoreFile
from shoal.protocol.serialize import deserialize, serialize
from shoal.worker.execute import task_erred
from shoal.worker.secede import TaskContext, WorkerIdentity, set_current_task

log = logging.getLogger(__name__)

FILE_SUFFIXES = (".py", ".zip", ".egg")


def file_problem(filename: str) -> str | None:
    """Why `filename` may not be stored, or None: a plain name with a known suffix."""
    if not filename or "/" in filename or "\\" in filename or filename.startswith("."):
        return f"a file to upload needs a plain name, not {filename!r}"
    if not filename.endswith(FILE_SUFFIXES):
        return f"only {', '.join(FILE_SUFFIXES)} files can be uploaded, not {filename!r}"
    return None


class _NoSlot:
    """The slot keeper of a function run outside tasks: it holds no slot to give back."""

    def secede(self, task: TaskContext) -> None:
        task.seceded = True

    def rejoin(self, task: TaskContext) -> None:
        task.seceded = False


class RemoteCalls:
    """Runs the functions and stores the files clients send one worker."""

    def __init__(self, identity: WorkerIdentity) -> None:
        self.identity = identity
        self.directory: Path | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, comm: Comm, msg: RunFunction | StoreFile) -> None:
        """Answer `msg` on `comm` once done, off the loop."""
        coro = self._run(comm, msg) if isinstance(msg, RunFunction) else self._store(comm, msg)
        task = asyncio.get_running_loop().create_task(coro, name=f"{msg.op} {self.identity.name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, comm: Comm, msg: RunFunction) -> None:
        answer = await asyncio.to_thread(self._call, msg)
        _answer(comm, answer)

    async def _store(self, comm: Comm, msg: StoreFile) -> None:
        error = await asyncio.to_thread(self.store_file, msg.filename, msg.data)
        _answer(comm, FileStored(request_id=msg.request_id, error=error))

    def _call(self, msg: RunFunction) -> FunctionRan:
        start = time.perf_counter()
        set_current_task(TaskContext(None, 0, self.identity, _NoSlot()))
        try:
            call = cast(tuple[Any, tuple, dict], deserialize(msg.call, "function to run"))
            func, args, kwargs = call
            result = func(*args, **kwargs)
            payload = serialize(result, f"result of {getattr(func, '__name__', 'a function')}")
        # User code failing is data, reported to the client that asked.
        except BaseException as exc:
            erred = task_erred(None, exc, time.perf_counter() - start)
            return FunctionRan(
                request_id=msg.request_id,
                typename=erred.typename,
                message=erred.message,
                traceback=erred.traceback,
                exception=erred.exception,
            )
        finally:
            set_current_task(None)
        return FunctionRan(request_id=msg.request_id, result=payload)

    def store_file(self, filename: str, data: bytes) -> str:
        """Write the file and make it importable; why it failed to import, or ""."""
        problem = file_problem(filename)
        if problem is not None:
            return problem
        if self.directory is None:
            self.directory = Path(tempfile.mkdtemp(prefix=f"shoal-files-{self.identity.name}-"))
            sys.path.insert(0, str(self.directory))
        path = self.directory / filename
        path.write_bytes(data)
        if filename.endswith(".py"):
            importlib.invalidate_caches()
            return _import_again(path.stem)
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
        importlib.invalidate_caches()
        return ""

    async def close(self) -> None:
        """Wait for the requests under way, then remove the stored files."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5.0)
        directory = self.directory
        if directory is not None:
            self.directory = None
            for entry in [str(directory), *(str(p) for p in directory.iterdir())]:
                while entry in sys.path:
                    sys.path.remove(entry)
            shutil.rmtree(directory, ignore_errors=True)


def _import_again(name: str) -> str:
    """Import the module `name` (again, if it was): "" or what went wrong."""
    try:
        module = sys.modules.get(name)
        if module is not None:
            importlib.reload(module)
        else:
            importlib.import_module(name)
    # The uploaded module's own code failed: the client hears why.
    except BaseException as exc:
        log.warning("uploaded module %s does not import: %s", name, exc)
        return f"{type_name(type(exc))}: {exc}\n{''.join(traceback.format_exception(exc))}"
    return ""


def _answer(comm: Comm, msg: FunctionRan | FileStored) -> None:
    try:
        try:
            comm.send(msg)
        except MessageTooLarge as exc:  # a result over the client's limits
            comm.send(
                FunctionRan(
                    request_id=msg.request_id, typename=type_name(MessageTooLarge), message=str(exc)
                )
            )
    except CommClosedError as exc:  # the client went away: nobody is left to tell
        log.debug("cannot answer %s: %s", msg.op, exc)
