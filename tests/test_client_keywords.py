"""The Python API checks its keywords before anything starts: Client, LocalCluster,
submit and map (dask's reserved keywords), and the token from $SHOAL_TOKEN."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import psutil
import pytest

from shoal import Client
from shoal.deploy.local import LocalCluster
from shoal.errors import HandshakeError
from shoal.scheduler.server import Scheduler
from shoal.worker.server import Worker

WAIT_S = 30.0
TOKEN = "a token only the environment knows"


def children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def keywords(*args: object, **kw: object) -> list[str]:
    return sorted(kw)


@pytest.mark.parametrize(
    ("make", "error", "words"),
    [
        (lambda: Client(unknown=1), TypeError, "'unknown'"),
        (lambda: Client(n_workers=2, bogus_option=3), TypeError, "'bogus_option'"),
        (lambda: LocalCluster(2, unknown=1), TypeError, "'unknown'"),
        (lambda: Client("tcp://127.0.0.1:1", n_workers=2), TypeError, "'n_workers'"),
        (lambda: Client(n_workers=-1), ValueError, "n_workers must be at least 0"),
        (lambda: Client(n_workers="2"), TypeError, "n_workers must be a whole number"),
        (lambda: Client(threads_per_worker=0), ValueError, "threads_per_worker"),
        (lambda: Client(memory_limit="10KB"), ValueError, "below the 128 MiB"),
        (lambda: Client(resources={"GPU": float("nan")}), ValueError, "'GPU'"),
        (lambda: Client(heartbeat_timeout=0), ValueError, "heartbeat_timeout"),
        (lambda: Client(no_workers_timeout=float("inf")), ValueError, "no_workers_timeout"),
        (lambda: Client(allowed_failures=0), ValueError, "allowed_failures"),
        (lambda: LocalCluster(1, start_timeout=-1), ValueError, "seconds"),
    ],
)
@pytest.mark.timeout(30)
def test_a_bad_keyword_is_refused_by_name_before_any_process_starts(make, error, words) -> None:
    before = children()
    with pytest.raises(error, match=words):
        make()
    assert children() <= before, "a worker process was started (and left behind)"


@pytest.mark.timeout(30)
async def test_a_client_with_only_shoal_token_in_the_environment_connects(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scheduler = await Scheduler("tcp://127.0.0.1:0", token=TOKEN).start()
    try:
        monkeypatch.delenv("SHOAL_TOKEN", raising=False)
        with pytest.raises(HandshakeError):
            await Client(scheduler.address, asynchronous=True, timeout=5)
        monkeypatch.setenv("SHOAL_TOKEN", TOKEN)
        async with Client(scheduler.address, asynchronous=True, timeout=5) as client:
            assert client.status == "running"
    finally:
        await scheduler.close()


@pytest.mark.timeout(60)
async def test_a_bytes_token_starts_a_local_cluster() -> None:
    # Found by mypy: the token went to the forked workers' environment as bytes.
    async with Client(token=TOKEN.encode(), n_workers=1, asynchronous=True) as client:
        assert client.cluster.token == TOKEN
        assert await client.submit(abs, -3) == 3


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    scheduler = await Scheduler("tcp://127.0.0.1:0").start()
    worker = await Worker(scheduler.address, nthreads=1).start()
    try:
        async with Client(scheduler.address, asynchronous=True, timeout=WAIT_S) as client:
            yield client
    finally:
        await worker.close()
        await scheduler.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("actor", True),
        ("actors", True),
        ("allow_other_workers", True),
        ("fifo_timeout", "100 ms"),
        ("batch_size", 10),
    ],
)
async def test_dask_keywords_shoal_does_not_support_are_refused_by_name(
    client: Client, name: str, value: object
) -> None:
    with pytest.raises(TypeError, match=f"submit\\(\\) got {name}="):
        client.submit(keywords, **{name: value})
    with pytest.raises(TypeError, match=f"map\\(\\) got {name}="):
        client.map(keywords, [1], **{name: value})


@pytest.mark.timeout(60)
async def test_dask_keywords_meaning_what_shoal_does_are_accepted_and_kept_from_the_function(
    client: Client,
) -> None:
    future = client.submit(keywords, allow_other_workers=False, actor=False, other=1)
    assert await asyncio.wait_for(future, WAIT_S) == ["other"]
    futures = client.map(keywords, [1, 2], actors=False, pure=False)
    assert await asyncio.wait_for(client.gather(futures), WAIT_S) == [[], []]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("options", "error", "words"),
    [
        ({"resources": {"GPU": float("nan")}}, ValueError, "resource 'GPU'"),
        ({"resources": {"GPU": -1}}, ValueError, "resource 'GPU'"),
        ({"resources": {"GPU": "1"}}, ValueError, "resource 'GPU'"),
        ({"resources": ["GPU"]}, TypeError, "resources must be a dict"),
        ({"retries": -1}, ValueError, "retries"),
        ({"retries": 1.5}, ValueError, "retries"),
        ({"priority": "high"}, TypeError, "priority"),
        ({"timeout": float("inf")}, ValueError, "timeout"),
        ({"workers": [1, 2]}, TypeError, "workers"),
    ],
)
async def test_bad_task_options_are_refused_by_name(
    client: Client, options: dict, error: type, words: str
) -> None:
    with pytest.raises(error, match=words):
        client.submit(keywords, **options)


@pytest.mark.timeout(60)
async def test_retries_none_as_dask_writes_it_means_no_retries(client: Client) -> None:
    future = client.submit(keywords, retries=None)
    assert await asyncio.wait_for(future, WAIT_S) == []
