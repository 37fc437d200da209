"""Where `Client()` with no address gets its LocalCluster: a loader set from above.

client/ never imports deploy/ (tests/test_layering.py): deploy/ is the layer
that wires clients, schedulers and workers together, and imports this package.
So the package root, `shoal/__init__.py`, which runs before any module here,
installs a loader that imports `shoal.deploy.local` when a Client first needs
a cluster; a Client given an address never pays for that import.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

_loader: Callable[[], ModuleType] | None = None


def install(loader: Callable[[], ModuleType]) -> None:
    """Set what `local_cluster()` calls: it returns the module holding LocalCluster."""
    global _loader
    _loader = loader


def local_cluster() -> ModuleType:
    """The module with `LocalCluster` and `check_cluster_keywords` (shoal.deploy.local).

    Raises:
        RuntimeError: no loader was installed (shoal/__init__.py installs one).
    """
    if _loader is None:
        raise RuntimeError("no local cluster is available: give Client an address")
    return _loader()
