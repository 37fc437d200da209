"""Warnings that tasks raised on workers, raised again in the client's process.

Each arrives in a TaskWarned before the result of any key depending on its
task, and is raised again with `warnings.warn_explicit` under the client's own
filters, at the file and line where the task raised it: `pytest.warns` and
`warnings.catch_warnings(record=True)` around a `compute`, `get` or `result`
see it, and the default filters show each once per place.
"""

from __future__ import annotations

import importlib
import logging
import sys
import warnings
from typing import Any

from shoal.protocol.messages import TaskWarned

log = logging.getLogger(__name__)

# One registry per module the warnings came from, as each module has its own
# __warningregistry__ where they are raised.
_registries: dict[str, dict[Any, Any]] = {}


def raise_again(msg: TaskWarned) -> None:
    """Raise each warning of `msg` in this process."""
    for category_name, text, filename, lineno, module in msg.warned:
        category = warning_class(category_name)
        registry = _registries.setdefault(module, {})
        try:
            warnings.warn_explicit(text, category, filename, lineno, module, registry)
        except Warning:
            # An "error" filter turned it into an exception: a warning there does not
            # stop the computation it came from, and it cannot here either.
            log.warning("task %r raised %s: %s", msg.key, category_name, text)


def warning_class(name: str) -> type[Warning]:
    """The Warning subclass named `module.qualname`; UserWarning when this process
    cannot import it or it is no Warning."""
    module_name, _, qualname = name.rpartition(".")
    module = sys.modules.get(module_name)
    if module is None and module_name:
        try:
            module = importlib.import_module(module_name)
        except Exception:  # any import failure: the warning is still raised
            module = None
    found: object = module
    for part in qualname.split("."):
        found = getattr(found, part, None)
    if isinstance(found, type) and issubclass(found, Warning):
        return found
    return UserWarning
