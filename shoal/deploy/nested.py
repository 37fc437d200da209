"""Tasks that submit tasks: get_client(), get_worker(), worker_client(), secede(), rejoin().

A task reaches its own cluster through a client of its worker's scheduler,
made once per worker process with the worker's credentials and shared by
its tasks. Waiting on futures inside a task gives the task's thread slot
back for the wait (see shoal.worker.slots), so parents that wait never fill
a worker's threads. Here because it wires client/ to worker/.
"""

from __future__ import annotations

import atexit
import contextlib
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from shoal.worker.secede import WorkerIdentity, current_task, rejoin, secede

if TYPE_CHECKING:
    from shoal.client.client import Client

__all__ = ["get_client", "get_worker", "rejoin", "secede", "worker_client"]

_clients: dict[str, Client] = {}
_guard = threading.Lock()


def get_worker() -> WorkerIdentity:
    """The worker running the calling task: `name`, `address` (its data address),
    `scheduler_address` and `nthreads`.

    Raises:
        ValueError: not called from inside a task.
    """
    task = current_task()
    if task is None:
        raise ValueError("get_worker() is for code running in a shoal task, on a worker")
    return task.worker


def get_client(timeout: float = 10.0) -> Client:
    """A client of the calling task's scheduler, with its worker's token and TLS
    settings; one per worker process, shared by its tasks (do not close it).

    Futures it gives behave as any client's; waiting on them (result(), gather(),
    wait(), as_completed()) gives the task's thread slot back meanwhile. Tasks it
    submits rank above the task that submits them (priority + 1), so the work a
    task waits for runs before older work of its level.

    Raises:
        ValueError: not called from inside a task.
        OSError, TimeoutError: the scheduler did not answer within `timeout`.
    """
    worker = get_worker()
    with _guard:
        client = _clients.get(worker.scheduler_address)
        if client is None or client.status in ("closed", "lost"):
            from shoal.client.client import Client

            client = Client(
                worker.scheduler_address,
                token=worker.token,
                tls=worker.tls,
                timeout=timeout,
                name=f"tasks of {worker.name}",
            )
            _clients[worker.scheduler_address] = client
    return client


@contextlib.contextmanager
def worker_client(timeout: float = 10.0) -> Iterator[Client]:
    """`with worker_client() as client:` secede for the block, rejoin after it.

    Raises:
        ValueError: not used inside a task.
    """
    client = get_client(timeout)
    secede()
    try:
        yield client
    finally:
        rejoin()


@atexit.register
def _close_clients() -> None:
    with _guard:
        clients = list(_clients.values())
        _clients.clear()
    for client in clients:
        client.close()
