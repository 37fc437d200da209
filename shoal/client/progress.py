"""Seeing a computation from the client: `shoal.progress(...)` and `Client.dashboard_link`.

The bar moves on the scheduler's reports of each key (the same events that
complete the futures, through the futures' watch), never by asking each future
in turn. In a terminal it redraws one line; in a notebook, with ipywidgets, it
is a widget updated from a thread, and the call returns at once.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import IO, TYPE_CHECKING, Any

from shoal.client.futures import Future, Watch
from shoal.client.nesting import futures_in

if TYPE_CHECKING:
    from shoal.client.link import SchedulerLink

# Redraws at most this often; the last one is always drawn.
REDRAW_S = 0.1
BAR_WIDTH = 40


class Observing:
    """What a Client tells of where to watch it (a base of Client)."""

    _link: SchedulerLink | None

    @property
    def dashboard_link(self) -> str:
        """The URL of the scheduler's dashboard; "" when it serves no HTTP."""
        link = self._link
        return f"{link.http_address}/" if link is not None and link.http_address else ""


def progress(
    *collections: Any,
    notebook: bool | None = None,
    file: IO[str] | None = None,
    timeout: float | None = None,
) -> Any:
    """Show a progress bar until the futures in `collections` (futures, or lists,
    tuples, sets and dicts of them, nested) are done.

    In a terminal it blocks, drawing on `file` (stderr), and returns True when
    all are done, False when `timeout` seconds passed first. In a notebook with
    ipywidgets (`notebook=None`: detected) it shows a widget and returns it at
    once, updating it from a thread.

    Raises:
        TypeError: nothing given that holds a Future.
        ValueError: futures of different clients.
    """
    futures = [
        f for c in collections for f in (futures_in(c) if not isinstance(c, Future) else [c])
    ]
    if not futures:
        raise TypeError("progress() needs futures, or collections that hold them")
    watch = Watch(futures)
    if notebook is None:
        notebook = _in_notebook()
    if notebook:
        return _widget(watch, len(futures), timeout)
    return _terminal(watch, len(futures), file if file is not None else sys.stderr, timeout)


class _Counts:
    """Done and erred so far, from the watch's completions (read under its lock)."""

    def __init__(self, watch: Watch, total: int) -> None:
        self.watch, self.total = watch, total
        self.done = self.erred = 0

    def update(self) -> None:
        watch = self.watch
        while watch.completed:
            future = watch.completed.popleft()
            self.done += 1
            if future.status != "finished":
                self.erred += 1

    def wait(self, deadline: float | None) -> bool:
        """Wait until something completes, the next redraw, or the deadline; False
        once past the deadline."""
        left = REDRAW_S if deadline is None else min(REDRAW_S, deadline - time.monotonic())
        if left <= 0:
            return False
        self.watch.block(lambda: bool(self.watch.completed), left)
        return True


def bar_text(done: int, total: int, erred: int, elapsed: float, width: int = BAR_WIDTH) -> str:
    filled = int(width * done / total) if total else width
    text = f"[{'#' * filled}{' ' * (width - filled)}] {done}/{total} {100 * done / total:3.0f}%"
    if erred:
        text += f", {erred} erred"
    return f"{text} | {elapsed:.1f} s"


def _terminal(watch: Watch, total: int, out: IO[str], timeout: float | None) -> bool:
    """On a terminal, one line redrawn; elsewhere (a log), a line at each tenth."""
    counts = _Counts(watch, total)
    start = time.monotonic()
    deadline = None if timeout is None else start + timeout
    tty = getattr(out, "isatty", lambda: False)()
    tenths = -1
    while True:
        counts.update()
        text = bar_text(counts.done, total, counts.erred, time.monotonic() - start)
        finished = counts.done >= total
        if tty:
            out.write("\r" + text + ("\n" if finished else ""))
        elif 10 * counts.done // total > tenths:
            tenths = 10 * counts.done // total
            out.write(text + "\n")
        out.flush()
        if finished:
            return True
        if not counts.wait(deadline):
            if tty:
                out.write("\n")
            return False


def _in_notebook() -> bool:
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    get_ipython = getattr(shell, "get_ipython", None)
    kernel = get_ipython() if get_ipython is not None else None
    return kernel is not None and "IPKernelApp" in getattr(kernel, "config", {})


def _widget(watch: Watch, total: int, timeout: float | None) -> Any:
    import ipywidgets
    from IPython.display import display

    bar = ipywidgets.IntProgress(min=0, max=total, value=0, bar_style="info")
    label = ipywidgets.Label(value=f"0/{total}")
    box = ipywidgets.HBox([bar, label])
    display(box)

    def follow() -> None:
        counts = _Counts(watch, total)
        start = time.monotonic()
        deadline = None if timeout is None else start + timeout
        while counts.done < total:
            counts.update()
            bar.value = counts.done
            label.value = bar_text(counts.done, total, counts.erred, time.monotonic() - start, 0)
            if counts.done < total and not counts.wait(deadline):
                return
        bar.bar_style = "danger" if counts.erred else "success"

    threading.Thread(target=follow, name="shoal-progress", daemon=True).start()
    return box
