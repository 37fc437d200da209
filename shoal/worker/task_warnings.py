"""Warnings raised inside tasks: caught on the thread that runs each task and sent
with its report, so that the client raises them again where it waits, under its
own filters (shoal.client.warned).

A worker process calls `install()` once: its filters then let every warning
through (the client's filters decide), and its `showwarning` hands a warning
raised on a thread running a task to that task's `Caught`. A warning raised
anywhere else in the worker goes to the `showwarning` it had, once per place,
unless the filters it had before ignore it. Without `install()` (a worker in the
client's own process) nothing is caught: the process's own machinery shows it.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
import warnings
from typing import Any

from shoal.protocol.messages import WARNING_TEXT_CHARS, WARNINGS_PER_TASK, Warned

_local = threading.local()
_lock = threading.Lock()
_state: dict[str, Any] = {}  # "show": the showwarning before, "filters": the filters before
_shown: set[tuple[str, type[Warning], str, int]] = set()


class Caught:
    """The warnings raised on this thread while the `with` block runs, each once."""

    def __init__(self) -> None:
        self.warned: list[Warned] = []
        self._seen: set[Warned] = set()

    def __enter__(self) -> Caught:
        self._outer = getattr(_local, "caught", None)
        _local.caught = self
        return self

    def __exit__(self, *exc: object) -> None:
        _local.caught = self._outer

    def add(self, message: object, category: type[Warning], filename: str, lineno: int) -> None:
        if len(self.warned) >= WARNINGS_PER_TASK:
            return
        text = _text(message)[:WARNING_TEXT_CHARS]
        name = f"{category.__module__}.{category.__qualname__}"
        record = (name, text, str(filename), lineno, module_of(str(filename)))
        if record not in self._seen:
            self._seen.add(record)
            self.warned.append(record)


def install() -> None:
    """Catch the warnings of task threads in this process from now on; once is enough."""
    with _lock:
        if _state:
            return
        _state["show"] = warnings.showwarning
        _state["filters"] = list(warnings.filters)
        warnings.showwarning = _show
        warnings.simplefilter("always")


def _show(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    caught: Caught | None = getattr(_local, "caught", None)
    if caught is not None:
        caught.add(message, category, filename, lineno)
        return
    # Not a task's: what the filters before install() would have done with it.
    text = _text(message)
    action = _action(_state["filters"], text, category, module_of(filename), lineno)
    if action == "ignore":
        return
    if action != "always":
        place = (text, category, filename, lineno)
        with _lock:
            if place in _shown:
                return
            _shown.add(place)
    _state["show"](message, category, filename, lineno, file, line)


def _text(message: object) -> str:
    try:
        return str(message)
    except Exception as exc:  # a broken __str__ must not lose the task's report
        return f"<str() of the warning failed: {exc!r}>"


@functools.lru_cache(maxsize=1024)
def module_of(filename: str) -> str:
    """The dotted name of the module in `filename`, from the entry of sys.path that
    holds it ("pandas.core.frame"), which filters' module patterns are matched
    against; where none holds it, the file name less ".py", as
    warnings.warn_explicit names a module it is not told."""
    if filename.endswith(".py"):
        root = ""
        for entry in sys.path:
            folder = os.path.join(os.path.abspath(entry or os.curdir), "")
            if filename.startswith(folder) and len(folder) > len(root):
                root = folder
        parts = filename[len(root) : -3].split(os.sep) if root else []
        if parts and parts[-1] == "__init__":
            parts.pop()
        if parts and all(part.isidentifier() for part in parts):
            return ".".join(parts)
    module = filename or "<unknown>"
    return module[:-3] if module[-3:].lower() == ".py" else module


def _action(
    filters: list[Any], text: str, category: type[Warning], module: str, lineno: int
) -> str:
    """The action of the first filter matching, as warnings.warn_explicit finds it."""
    for action, pattern, kind, where, line in filters:
        if (
            _matches(pattern, text)
            and issubclass(category, kind)
            and _matches(where, module)
            and line in (0, lineno)
        ):
            return str(action)
    return "default"


def _matches(pattern: Any, text: str) -> bool:
    """A filter's pattern: None for any, a plain str for exactly it (Python's own
    filters at start-up), else a compiled expression matching the text's start."""
    if pattern is None:
        return True
    if type(pattern) is str:
        return pattern == text
    return pattern.match(text) is not None
