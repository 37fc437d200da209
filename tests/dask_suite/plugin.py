"""pytest plugin: dask's own tests with a shoal LocalCluster as dask's scheduler.

Loaded with `-p tests.dask_suite.plugin`. `--dask-on=shoal` (the default)
starts one LocalCluster and a Client for the session, makes the client dask's
default scheduler (the configured one and every collection's own), and routes
the named local schedulers dask's tests ask for ("sync", "threads", ...) to it;
`--dask-on=local` leaves dask as it is, for the comparison. `--dask-results`
writes each test's outcome as JSON at the end, and `--dask-journal` appends
one line per test as it starts and ends, so that a run that dies (a crash in
the test process) still tells what ran and which test it died in.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

# The named schedulers routed to shoal: dask's assert_eq helpers compute with "sync".
ROUTED = ("sync", "synchronous", "single-threaded", "threads", "threading")
N_WORKERS = 2
THREADS_PER_WORKER = 2


class _Session:
    client: Any = None
    journal: Any = None
    calls = 0
    outcomes: dict[str, str] = {}  # noqa: RUF012
    restore: list[Any] = []  # noqa: RUF012


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("shoal-dask")
    group.addoption("--dask-on", choices=["shoal", "local"], default="shoal")
    group.addoption("--dask-results", default=None, help="write outcomes as JSON here")
    group.addoption("--dask-journal", default=None, help="append starts and outcomes here")


def _counted(get: Any) -> Any:
    def shoal_get(dsk: Any, keys: Any, **kwargs: Any) -> Any:
        _Session.calls += 1
        return get(dsk, keys, **kwargs)

    shoal_get.__self__ = get.__self__  # type: ignore[attr-defined]  # dask.persist looks here
    return shoal_get


def _collection_classes() -> list[type]:
    import dask.array as da
    import dask.bag as db
    import dask.dataframe as dd
    from dask.delayed import Delayed

    return [da.Array, db.Bag, db.Item, Delayed, dd.DataFrame, dd.Series, dd.Index, dd.Scalar]


def pytest_configure(config: pytest.Config) -> None:
    path = config.getoption("--dask-journal")
    if path:
        _Session.journal = open(path, "a", buffering=1)  # closed at unconfigure
    if config.getoption("--dask-on") != "shoal":
        return
    import dask
    import dask.base

    from shoal import Client

    client = Client(n_workers=N_WORKERS, threads_per_worker=THREADS_PER_WORKER, timeout=60)
    _Session.client = client
    get = _counted(client.get)
    named = dask.base.named_schedulers
    for name in ROUTED:
        _Session.restore.append((named, name, named[name]))
        named[name] = get
    for cls in _collection_classes():
        _Session.restore.append((cls, "__dask_scheduler__", cls.__dict__.get("__dask_scheduler__")))
        cls.__dask_scheduler__ = staticmethod(get)  # type: ignore[attr-defined]
    dask.config.set(scheduler=get)


def _journal(event: str, nodeid: str) -> None:
    if _Session.journal is not None:
        _Session.journal.write(json.dumps([event, nodeid]) + "\n")
        _Session.journal.flush()


def pytest_runtest_logstart(nodeid: str, location: object) -> None:
    _journal("start", nodeid)


def pytest_runtest_logfinish(nodeid: str, location: object) -> None:
    _journal(_Session.outcomes.get(nodeid, "passed"), nodeid)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    outcomes = _Session.outcomes
    if report.when == "call" or report.outcome != "passed":
        if hasattr(report, "wasxfail"):
            outcome = "xpassed" if report.passed else "xfailed"
        else:
            outcome = report.outcome if report.when == "call" else (
                "skipped" if report.skipped else "error")  # fmt: skip
        if outcomes.get(report.nodeid) not in ("failed", "error"):
            outcomes[report.nodeid] = outcome


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _Session.client is not None:
        terminalreporter.write_line(f"shoal: {_Session.calls} computations reached shoal")


def pytest_unconfigure(config: pytest.Config) -> None:
    path = config.getoption("--dask-results", None)
    if path:
        with open(path, "w") as f:
            json.dump({"outcomes": _Session.outcomes, "shoal_calls": _Session.calls}, f)
    if _Session.journal is not None:
        _Session.journal.close()
        _Session.journal = None
    for owner, name, old in reversed(_Session.restore):
        if isinstance(owner, dict):
            owner[name] = old
        elif old is None:
            delattr(owner, name)
        else:
            setattr(owner, name, old)
    _Session.restore.clear()
    if _Session.client is not None:
        _Session.client.close()
        _Session.client = None
