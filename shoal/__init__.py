"""shoal: a distributed task-computing service for Python."""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING, Any

from shoal.client import cluster as _cluster

__version__ = "0.1.0"

__all__ = ["Client", "Future", "as_completed", "progress", "wait"]

if TYPE_CHECKING:
    from shoal.client.client import Client
    from shoal.client.futures import Future, as_completed, wait
    from shoal.client.progress import progress

# Loaded on first use, so `import shoal` (the CLI, workers) stays cheap.
_LAZY = {
    "Client": "shoal.client.client",
    "Future": "shoal.client.futures",
    "as_completed": "shoal.client.futures",
    "wait": "shoal.client.futures",
    "progress": "shoal.client.progress",
}


def _load_local_cluster() -> ModuleType:
    """`Client()` with no address starts a LocalCluster: client/ may not import
    deploy/, so the root wires them, importing deploy only when it is needed."""
    from shoal.deploy import local

    return local


_cluster.install(_load_local_cluster)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'shoal' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
