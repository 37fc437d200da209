"""A task's remote traceback as a real traceback object, from its text.

The worker sends the traceback as the text Python prints. Each frame it names
(`File "path", line N, in name`) is made again here by running a one-line
code object compiled under that file name and line, renamed to the
function, so that `traceback.format_tb`, debuggers and a re-raised
exception show the task's frames (with their source lines when the file
exists here). The frames hold no variables of the task.
"""

from __future__ import annotations

import re
from types import TracebackType

_FRAME = re.compile(r'^  File "(?P<file>[^"\n]*)", line (?P<line>\d+), in (?P<name>.+)$', re.M)
_LAST = "Traceback (most recent call last):\n"
MAX_FRAMES = 200  # of a runaway recursion, the innermost are kept
MAX_LINE = 1_000_000


class _Here(Exception):
    """Raised by a made frame, caught at once: its traceback is the frame."""


def remote_traceback(text: str) -> TracebackType | None:
    """The frames of the last exception in `text`, outermost first; None if none."""
    at = text.rfind(_LAST)
    if at < 0:
        return None
    frames = [(m["file"], int(m["line"]), m["name"].strip()) for m in _FRAME.finditer(text, at)][
        -MAX_FRAMES:
    ]
    head: TracebackType | None = None
    for filename, line, name in reversed(frames):
        tb = _frame(filename, min(max(line, 1), MAX_LINE), name)
        if tb is not None:
            tb.tb_next = head
            head = tb
    return head


def _frame(filename: str, line: int, name: str) -> TracebackType | None:
    code = compile("\n" * (line - 1) + "raise _Here()", filename, "exec")
    if name.isidentifier() or name.startswith("<"):
        code = code.replace(co_name=name)
    try:
        exec(code, {"_Here": _Here, "__name__": "shoal.remote"})
    except _Here as exc:
        tb = exc.__traceback__
        return tb.tb_next if tb is not None else None
    return None
