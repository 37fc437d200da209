"""Tasks that submit tasks, cluster-wide helpers, datasets, fire-and-forget and
remote exceptions, each on a real cluster: `shoal scheduler` and `shoal worker`
processes (each worker under its nanny) on loopback.

The task functions live at module level: the worker processes import this
module by name to unpickle them.
"""

from __future__ import annotations

import os
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest

import shoal
from shoal import Client, as_completed, fire_and_forget, get_client, get_worker, worker_client
from shoal.errors import FutureCancelled, UploadError
from tests.test_failures import Cluster, cluster
from tests.test_integration import TOKEN, WAIT_S, poll

pytestmark = pytest.mark.timeout(180)


# -- task functions --------------------------------------------------------------------


def fib(n: int, pure: bool = True) -> int:
    """Each call submits its two children and waits for them."""
    if n < 2:
        return n
    client = get_client()
    a = client.submit(fib, n - 1, pure, pure=pure)
    b = client.submit(fib, n - 2, pure, pure=pure)
    return a.result() + b.result()


def children(node: int) -> list[int]:
    """The tree searched: each node below 3**6 has up to three children."""
    return [3 * node + k for k in (1, 2, 3) if 3 * node + k < 3**6 and (node + k) % 4]


def search(node: int) -> int:
    """Count the nodes under `node`, submitting each child as it is discovered."""
    found = children(node)
    if not found:
        return 1
    with worker_client() as client:
        pending = as_completed([client.submit(search, child) for child in found])
        return 1 + sum(future.result() for future in pending)


def count_tree(node: int) -> int:
    return 1 + sum(count_tree(child) for child in children(node))


def who_am_i() -> tuple[str, str, str, int]:
    me = get_worker()
    return me.name, me.address, me.scheduler_address, me.nthreads


def secede_and_wait(x: int) -> int:
    shoal.secede()
    client = get_client()
    value = client.submit(inc, x).result()
    shoal.rejoin()
    return value


def inc(x: int) -> int:
    return x + 1


def pid() -> int:
    return os.getpid()


def fail_on(name: str) -> str:
    me = get_worker().name
    if me == name:
        raise ValueError(f"no luck on {me}")
    return me


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def write_marker(path: str, _after: object) -> str:
    Path(path).write_text("done")
    return path


class CodeError(Exception):
    """An exception whose class takes other arguments than Exception's."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"code {code}: {detail}")
        self.code, self.detail = code, detail


def raise_code_error(code: int) -> None:
    raise CodeError(code, "it went wrong")


def import_and_call(module: str) -> object:
    import importlib

    return importlib.import_module(module).answer()


# -- the cluster -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli() -> Iterator[Cluster]:
    """A scheduler and two one-thread workers under their nannies."""
    with cluster() as c:
        c.start_scheduler()
        c.start_worker("a")
        c.start_worker("b")
        yield c


@pytest.fixture
def client(cli: Cluster) -> Iterator[Client]:
    with Client(cli.address, token=TOKEN, timeout=WAIT_S) as c:
        c.wait_for_workers(2, WAIT_S)
        yield c


# -- tasks that submit tasks -----------------------------------------------------------------


def test_fibonacci_of_depth_20_where_each_task_waits_on_its_children(client: Client) -> None:
    # 20 parents wait at once on two one-thread workers: without seceding, the
    # third would find no thread.
    assert client.submit(fib, 20).result(timeout=120) == 6765
    # Every call its own task: 465 tasks, most of them waiting parents at some point.
    assert client.submit(fib, 12, False, pure=False).result(timeout=120) == 144


def test_a_tree_search_submits_work_as_it_discovers_it(client: Client) -> None:
    assert client.submit(search, 0).result(timeout=120) == count_tree(0)


def test_get_worker_names_the_worker_running_the_task(client: Client, cli: Cluster) -> None:
    name, address, scheduler, nthreads = client.submit(who_am_i, pure=False).result(WAIT_S)
    info = client.scheduler_info()["workers"]
    assert name in ("a", "b") and info[name]["address"] == address
    assert scheduler == cli.address and nthreads == 1
    with pytest.raises(ValueError, match="in a shoal task"):
        get_worker()
    with pytest.raises(ValueError, match="in a shoal task"):
        shoal.secede()


def test_explicit_secede_and_rejoin(client: Client) -> None:
    futures = client.map(secede_and_wait, range(6))  # six parents on two threads
    assert client.gather(futures) == [x + 1 for x in range(6)]


# -- client.run -----------------------------------------------------------------------------


def test_run_calls_a_function_on_every_worker(client: Client) -> None:
    pids = client.run(pid)
    info = client.scheduler_info()["workers"]
    assert pids == {w["address"]: w["pid"] for w in info.values()}
    only_a = client.run(pid, workers=["a"])
    assert list(only_a) == [info["a"]["address"]]
    assert client.run(fail_on, "nobody") == {w["address"]: n for n, w in info.items()}


def test_run_reports_errors_per_worker(client: Client) -> None:
    info = client.scheduler_info()["workers"]
    outcome = client.run(fail_on, "b", on_error="return")
    assert outcome[info["a"]["address"]] == "a"
    error = outcome[info["b"]["address"]]
    assert isinstance(error, ValueError) and "no luck on b" in str(error)
    with pytest.raises(ValueError, match="no luck on b") as raised:
        client.run(fail_on, "b")
    assert any(info["b"]["address"] in note for note in raised.value.__notes__)


def test_run_on_scheduler_is_refused_by_name(client: Client) -> None:
    with pytest.raises(NotImplementedError, match="run_on_scheduler is not supported"):
        client.run_on_scheduler(pid)


# -- upload_file ------------------------------------------------------------------------------


def test_an_uploaded_module_imports_on_every_worker_and_on_later_ones(
    client: Client, cli: Cluster, tmp_path: Path
) -> None:
    source = tmp_path / "shoal_uploaded_mod.py"
    source.write_text("def answer():\n    return 42\n")
    client.upload_file(source)
    futures = [
        client.submit(import_and_call, "shoal_uploaded_mod", workers=[w], pure=False)
        for w in ("a", "b")
    ]
    assert client.gather(futures) == [42, 42]
    source.write_text("def answer():\n    return 43\n")  # a new version replaces the old
    client.upload_file(source)
    assert client.run(import_and_call, "shoal_uploaded_mod") == {
        w["address"]: 43 for w in client.scheduler_info()["workers"].values()
    }
    late = cli.start_worker("late")
    try:
        client.wait_for_workers(3, WAIT_S)
        future = client.submit(import_and_call, "shoal_uploaded_mod", workers=["late"])
        assert future.result(WAIT_S) == 43
    finally:
        late.stop()
        poll(lambda: len(client.scheduler_info()["workers"]) == 2, "the late worker gone")


def test_an_uploaded_zip_is_importable_and_a_broken_module_is_named(
    client: Client, tmp_path: Path
) -> None:
    import zipfile

    archive = tmp_path / "shoal_zipped.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("shoal_zipped_mod.py", "def answer():\n    return 'zipped'\n")
    client.upload_file(archive)
    assert set(client.run(import_and_call, "shoal_zipped_mod").values()) == {"zipped"}
    broken = tmp_path / "shoal_broken_mod.py"
    broken.write_text("raise RuntimeError('broken on import')\n")
    with pytest.raises(UploadError, match="broken on import"):
        client.upload_file(broken)
    with pytest.raises(ValueError, match=r"\.py, \.zip and \.egg"):
        client.upload_file(tmp_path / "notes.txt")


# -- datasets and fire-and-forget ---------------------------------------------------------------


def test_a_published_dataset_outlives_its_client_and_reaches_another(cli: Cluster) -> None:
    with Client(cli.address, token=TOKEN) as first:
        futures = first.map(inc, range(5))
        first.publish_dataset(numbers={"values": futures, "note": "five"})
        first.publish_dataset(first.submit(inc, 100), name="single")
        with pytest.raises(ValueError, match="published already"):
            first.publish_dataset(numbers=[1])
        del futures
    with Client(cli.address, token=TOKEN) as second:
        assert second.list_datasets() == ["numbers", "single"]
        got = second.get_dataset("numbers")
        assert got["note"] == "five" and second.gather(got["values"]) == [1, 2, 3, 4, 5]
        assert second.get_dataset("single").result(WAIT_S) == 101
        second.unpublish_dataset("numbers")
        assert second.list_datasets() == ["single"]
        assert second.gather(got["values"]) == [1, 2, 3, 4, 5]  # its own futures hold them
        with pytest.raises(KeyError):
            second.get_dataset("numbers")
        assert second.get_dataset("numbers", default=None) is None
        with pytest.raises(KeyError):
            second.unpublish_dataset("numbers")
        second.unpublish_dataset("single")


def test_a_fired_and_forgotten_task_runs_on_after_its_client_closed(
    cli: Cluster, tmp_path: Path
) -> None:
    marker = tmp_path / "fired"
    with Client(cli.address, token=TOKEN) as c:
        # Not started when its client leaves: only fire-and-forget keeps it.
        future = c.submit(write_marker, str(marker), c.submit(nap, 1.0, pure=False))
        fire_and_forget(future)
        del future
    poll(marker.exists, "the forgotten task's file")
    # And it is let go once done: the scheduler holds no task.
    with Client(cli.address, token=TOKEN) as c:
        poll(lambda: not c.scheduler_info()["tasks"], "the scheduler to let go of it")


def test_a_release_queued_before_fire_and_forget_does_not_overtake_it(
    cli: Cluster, tmp_path: Path
) -> None:
    """The dependency's Future goes as its submission is sent, so the loop queues a
    release then; the loop is held there while the caller fires and lets go of the
    dependent. That release must not carry the fired key ahead of FireAndForget."""
    marker = tmp_path / "fired"
    with Client(cli.address, token=TOKEN) as c:
        assert c._thread is not None
        future = c.submit(write_marker, str(marker), c.submit(nap, 0.5, pure=False))
        held, holding = threading.Event(), threading.Event()
        c._thread.call_soon(lambda: (holding.set(), held.wait(WAIT_S)))
        assert holding.wait(WAIT_S)  # both submissions sent, the release queued
        fire_and_forget(future)
        del future
        held.set()
    poll(marker.exists, "the forgotten task's file")


# -- exceptions -------------------------------------------------------------------------------


def test_an_exception_with_its_own_arguments_comes_back_as_itself(client: Client) -> None:
    future = client.submit(raise_code_error, 7)
    with pytest.raises(CodeError) as raised:
        future.result(WAIT_S)
    assert raised.value.code == 7 and raised.value.detail == "it went wrong"
    assert "raise_code_error" in str(raised.value.__cause__)  # the remote traceback
    frames = traceback.extract_tb(raised.value.__traceback__)
    assert frames[-1].name == "raise_code_error"
    assert frames[-1].line == 'raise CodeError(code, "it went wrong")'
    remote = traceback.extract_tb(future.traceback())
    assert remote[-1].name == "raise_code_error" and remote[-1].filename == __file__
    assert isinstance(future.exception(), CodeError)
    assert client.submit(inc, 1).traceback(WAIT_S) is None


# -- restart (last: it replaces the workers) --------------------------------------------------


def test_restart_forgets_every_key_and_restarts_each_worker(client: Client) -> None:
    before = client.run(pid)
    held = client.submit(inc, 1)
    assert held.result(WAIT_S) == 2
    blocked = client.submit(time.sleep, 30, pure=False)
    client.publish_dataset(kept=held)
    client.restart(timeout=60)
    with pytest.raises(FutureCancelled):
        blocked.result(WAIT_S)
    assert held.cancelled()
    after = client.run(pid)
    assert len(after) == 2 and not set(after.values()) & set(before.values())
    assert client.list_datasets() == []
    assert client.scheduler_info()["tasks"] == {}
    assert client.submit(inc, 1).result(WAIT_S) == 2  # computed anew
    assert threading.active_count() < 50
