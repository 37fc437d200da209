"""Warnings raised inside tasks: caught on the worker with the task's report, passed
on by the scheduler to the clients waiting on the task, raised again in the client."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.client.warned import raise_again, warning_class
from shoal.errors import ProtocolError
from shoal.protocol import messages as m
from shoal.protocol.schema import from_wire
from shoal.scheduler.clients import SCAN_FOR_WANTED
from shoal.scheduler.model import Send
from shoal.worker import task_warnings
from shoal.worker.execute import Executor
from tests.scheduler_harness import Harness, sent
from tests.test_worker_execute import run, spec

pytestmark = pytest.mark.timeout(60)


class Careful(UserWarning):
    pass


def warns_then_adds(x: int, y: int) -> int:
    warnings.warn("first", Careful, stacklevel=1)
    for _ in range(3):
        warnings.warn(f"sum of {x} and {y}", RuntimeWarning, stacklevel=1)  # the same, three times
    return x + y


def warns_then_raises() -> None:
    warnings.warn("about to fail", UserWarning, stacklevel=1)
    raise ValueError("failed")


def warns_often() -> int:
    for i in range(m.WARNINGS_PER_TASK + 5):
        warnings.warn(f"number {i}", UserWarning, stacklevel=1)
    return 0


def line_of(func: object, text: str) -> int:
    import inspect

    lines, first = inspect.getsourcelines(func)  # type: ignore[arg-type]
    return first + next(i for i, line in enumerate(lines) if text in line)


@pytest.fixture
def routed() -> Iterator[None]:
    """This thread's warnings go through the worker's hook, as after install(), and
    the filters and hook are put back afterwards."""
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = task_warnings._show
        yield


# -- the worker -------------------------------------------------------------------------


def test_a_finished_task_reports_each_distinct_warning_once(routed: None) -> None:
    outcome, _ = run(warns_then_adds, spec(2, 3))
    assert type(outcome) is m.TaskFinished
    here = __file__
    module = __name__  # its dotted name, as filters name modules
    assert outcome.warned == (
        (f"{__name__}.Careful", "first", here, line_of(warns_then_adds, '"first"'), module),
        (
            "builtins.RuntimeWarning",
            "sum of 2 and 3",
            here,
            line_of(warns_then_adds, "sum of"),
            module,
        ),
    )


def test_an_erred_task_reports_the_warnings_it_raised_before(routed: None) -> None:
    outcome, _ = run(warns_then_raises, spec())
    assert type(outcome) is m.TaskErred
    assert [w[:2] for w in outcome.warned] == [("builtins.UserWarning", "about to fail")]


def test_a_task_reports_at_most_its_share_of_warnings(routed: None) -> None:
    outcome, _ = run(warns_often, spec())
    assert len(outcome.warned) == m.WARNINGS_PER_TASK
    assert outcome.warned[0][1] == "number 0"


def test_long_warning_texts_are_cut(routed: None) -> None:
    def long() -> int:
        warnings.warn("x" * (m.WARNING_TEXT_CHARS + 100), UserWarning, stacklevel=1)
        return 0

    outcome, _ = run(long, spec())
    assert len(outcome.warned[0][1]) == m.WARNING_TEXT_CHARS


def test_without_warnings_a_report_has_none(routed: None) -> None:
    outcome, _ = Executor().run("k", *_add_payloads(), ())
    assert outcome.warned == ()


def _add_payloads():
    from shoal.protocol.serialize import serialize

    return serialize(lambda x, y: x + y), spec(1, 2)


def test_a_warnings_module_is_named_as_filters_name_it(tmp_path: Path) -> None:
    assert task_warnings.module_of(warnings.__file__) == "warnings"
    assert task_warnings.module_of(logging.__file__) == "logging"  # a package's __init__
    assert task_warnings.module_of(str(tmp_path / "elsewhere.py")) == str(tmp_path / "elsewhere")
    assert task_warnings.module_of("<dynamic-code>") == "<dynamic-code>"


def test_warnings_outside_tasks_go_to_the_workers_own_stderr_once_and_filters_hold() -> None:
    """After install(), in a process of its own: a warning on a task's thread is the
    task's; one elsewhere is shown once per place unless the old filters ignore it."""
    script = textwrap.dedent(
        """
        import warnings
        from shoal.worker import task_warnings
        task_warnings.install()
        task_warnings.install()  # once is enough
        with task_warnings.Caught() as caught:
            warnings.warn("in a task", UserWarning, stacklevel=1)
        for _ in range(3):
            warnings.warn("outside", UserWarning, stacklevel=1)
        warnings.warn("deprecated", DeprecationWarning, stacklevel=2)
        print(len(caught.warned), caught.warned[0][1])
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=True
    )
    assert done.stdout.split() == ["1", "in", "a", "task"]
    assert done.stderr.count("UserWarning: outside") == 1
    assert "in a task" not in done.stderr and "deprecated" not in done.stderr


# -- the wire ---------------------------------------------------------------------------


def test_a_warning_record_has_five_places_of_fixed_types() -> None:
    good = {"op": "task-warned", "key": "k", "warned": (("c", "t", "f.py", 3, "f"),)}
    assert from_wire(good) == m.TaskWarned(key="k", warned=(("c", "t", "f.py", 3, "f"),))
    for bad in (("c", "t", "f.py", 3), ("c", "t", "f.py", "3", "f"), ["c", "t", "f.py", 3, "f"]):
        with pytest.raises(ProtocolError, match=r"task-warned\.warned"):
            from_wire({**good, "warned": (bad,)})


# -- the scheduler ----------------------------------------------------------------------

WARNED = (("builtins.UserWarning", "careful", "/t/f.py", 3, "/t/f"),)


def finished_with_warnings(h: Harness, key: object) -> list:
    msg = m.TaskFinished(key=key, nbytes=8, typename="int", duration=0.01, warned=WARNED)
    return h.handle(h.on(key), msg)


def test_a_wanted_tasks_warnings_reach_its_client_before_its_result() -> None:
    h = Harness()
    h.worker("a")
    c = h.client()
    h.submit(c, {"x": []})
    out = finished_with_warnings(h, "x")
    to_client = sent(out, c)
    assert to_client[0] == m.TaskWarned(key="x", warned=WARNED)
    assert type(to_client[1]) is m.KeyInMemory and to_client[1].key == "x"


def test_an_inner_tasks_warnings_reach_the_clients_waiting_above_it() -> None:
    h = Harness()
    h.worker("a")
    c, d = h.client("c"), h.client("d")
    h.submit(c, {"x": [], "y": ["x"], "z": ["y"]}, wanted=["z"])
    h.submit(d, {"z": ["y"]}, wanted=["z"])
    out = finished_with_warnings(h, "x")
    assert Send(c, m.TaskWarned(key="x", warned=WARNED)) in out
    assert Send(d, m.TaskWarned(key="x", warned=WARNED)) in out


def test_the_search_for_waiting_clients_is_bounded() -> None:
    """A chain whose last task alone is wanted: from its first task the client is
    past the search, and that task's warnings go nowhere; from the second it is not."""
    h = Harness(validate=False)
    h.worker("a")
    c = h.client()
    n = SCAN_FOR_WANTED + 1  # t0 has SCAN_FOR_WANTED tasks above it, t1 one fewer
    chain = {f"t{i}": [f"t{i - 1}"] if i else [] for i in range(n)}
    h.submit(c, chain, wanted=[f"t{n - 1}"])
    assert not sent(finished_with_warnings(h, "t0"), c, m.TaskWarned)
    assert sent(finished_with_warnings(h, "t1"), c, m.TaskWarned)  # within reach


def test_an_erring_tasks_warnings_reach_its_client_before_the_error() -> None:
    h = Harness()
    h.worker("a")
    c = h.client()
    h.submit(c, {"x": []})
    msg = m.TaskErred(key="x", typename="ValueError", message="no", traceback="", warned=WARNED)
    to_client = sent(h.handle(h.on("x"), msg), c)
    assert to_client[0] == m.TaskWarned(key="x", warned=WARNED)
    assert type(to_client[1]) is m.KeyErred


# -- the client ---------------------------------------------------------------------------


def test_the_client_raises_them_again_at_the_tasks_place() -> None:
    msg = m.TaskWarned(
        key="k",
        warned=(
            (f"{__name__}.Careful", "mind", "/w/tasks.py", 12, "/w/tasks"),
            ("no.such.module.Warning", "odd", "/w/tasks.py", 13, "/w/tasks"),
            ("builtins.ValueError", "not a warning", "/w/tasks.py", 14, "/w/tasks"),
        ),
    )
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        raise_again(msg)
    assert [(w.category, str(w.message), w.filename, w.lineno) for w in got] == [
        (Careful, "mind", "/w/tasks.py", 12),
        (UserWarning, "odd", "/w/tasks.py", 13),
        (UserWarning, "not a warning", "/w/tasks.py", 14),
    ]


def test_the_clients_filters_decide(caplog: pytest.LogCaptureFixture) -> None:
    msg = m.TaskWarned(key="k", warned=WARNED)
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("ignore")
        raise_again(msg)
    assert got == []
    with warnings.catch_warnings(), caplog.at_level(logging.WARNING):
        warnings.simplefilter("error")
        raise_again(msg)  # an error filter does not raise out of the client's reader
    assert "careful" in caplog.text
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("default")
        raise_again(msg)
        raise_again(msg)
    assert len(got) == 1  # once per place, as the default filter shows them


def test_warning_classes_are_found_by_name() -> None:
    assert warning_class("builtins.DeprecationWarning") is DeprecationWarning
    assert warning_class(f"{__name__}.Careful") is Careful
    assert warning_class("") is UserWarning
