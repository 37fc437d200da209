"""What a client does differently inside a shoal task: set from above.

A task that submits tasks and waits for them must give its worker thread
slot back while it waits, or waiting parents fill every thread and the
cluster deadlocks. client/ cannot import worker/ (tests/test_layering.py),
so the package root installs the worker's hooks here: a context manager
around every blocking wait (result, gather, wait, as_completed), and the
priority of the running task, which tasks it submits exceed by one so that
the deepest work runs first.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager as ContextManager

_waiting: Callable[[], ContextManager[None]] | None = None
_priority: Callable[[], int | None] | None = None


def install(
    waiting: Callable[[], ContextManager[None]], priority: Callable[[], int | None]
) -> None:
    """Set the hooks: `waiting()` wraps a blocking wait; `priority()` is the running
    task's priority, or None outside tasks."""
    global _waiting, _priority
    _waiting, _priority = waiting, priority


def waiting() -> ContextManager[None]:
    """Wrap a blocking wait: inside a task, its thread slot is given back meanwhile."""
    return _waiting() if _waiting is not None else contextlib.nullcontext()


def nested_priority(priority: int) -> int:
    """The priority of a task submitted with `priority`: inside a running task, on top
    of that task's own plus one, so that what a task waits for runs before older
    work at its level (a tree is then explored depth first)."""
    running = _priority() if _priority is not None else None
    return priority if running is None else priority + running + 1
