"""shoal: a distributed task-computing service for Python."""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING, Any

from shoal.client import blocking as _blocking
from shoal.client import cluster as _cluster
from shoal.worker import secede as _secede

__version__ = "0.1.0"

__all__ = [
    "Client",
    "Executor",
    "Future",
    "Pool",
    "as_completed",
    "fire_and_forget",
    "get_client",
    "get_worker",
    "progress",
    "rejoin",
    "secede",
    "wait",
    "worker_client",
]

if TYPE_CHECKING:
    from shoal.client.client import Client
    from shoal.client.cluster_helpers import fire_and_forget
    from shoal.client.executor import Executor
    from shoal.client.futures import Future, as_completed, wait
    from shoal.client.mpool import Pool
    from shoal.client.progress import progress
    from shoal.deploy.nested import get_client, get_worker, rejoin, secede, worker_client

# Loaded on first use, so `import shoal` (the CLI, workers) stays cheap.
_LAZY = {
    "Client": "shoal.client.client",
    "Future": "shoal.client.futures",
    "as_completed": "shoal.client.futures",
    "wait": "shoal.client.futures",
    "Executor": "shoal.client.executor",
    "Pool": "shoal.client.mpool",
    "fire_and_forget": "shoal.client.cluster_helpers",
    "get_client": "shoal.deploy.nested",
    "get_worker": "shoal.deploy.nested",
    "worker_client": "shoal.deploy.nested",
    "secede": "shoal.deploy.nested",
    "rejoin": "shoal.deploy.nested",
    "progress": "shoal.client.progress",
}


def _load_local_cluster() -> ModuleType:
    """`Client()` with no address starts a LocalCluster: client/ may not import
    deploy/, so the root wires them, importing deploy only when it is needed."""
    from shoal.deploy import local

    return local


_cluster.install(_load_local_cluster)
# Inside a task, a client's blocking waits give the task's thread slot back, and
# what it submits ranks above it: client/ learns of tasks only through these hooks.
_blocking.install(_secede.seceded_while_waiting, _secede.running_priority)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'shoal' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
