"""The HTTP endpoints of the scheduler and the worker: /health, /ready, /metrics and
/api/v1, on a real scheduler and workers in this process (loopback only); the guard
(the token beyond loopback), TLS, and the counters the core keeps for them."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPResponse

from shoal import Client
from shoal.protocol.tls import TLSConfig
from shoal.protocol.web import TOKEN_COOKIE, Guard, WebServer
from shoal.scheduler.server import Scheduler
from shoal.scheduler.tally import key_prefix
from shoal.worker.http import WorkerWeb, advertised_http, gpu_memory
from shoal.worker.server import Worker
from tests.certs import PKI

WAIT_S = 30.0
TOKEN = "http-test-token"


def slow_inc(x: int) -> int:
    time.sleep(0.002)
    return x + 1


def fail(x: int) -> int:
    raise ValueError(x)


async def fetch(url: str, **options: Any) -> HTTPResponse:
    return await AsyncHTTPClient().fetch(url, raise_error=False, request_timeout=10, **options)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text answer, by (name, sorted labels)."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return found


async def scrape(http: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await fetch(f"{http}/metrics")
    assert response.code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    return samples(response.body.decode())


async def poll(condition: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not await condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.mark.timeout(60)
async def test_scheduler_endpoints_follow_a_graph() -> None:
    async with Scheduler(http_port=0) as scheduler:
        http = scheduler.http_address
        assert http.startswith("http://127.0.0.1:")
        assert (await fetch(f"{http}/health")).body == b"ok\n"
        assert (await fetch(f"{http}/ready")).code == 200
        web = WorkerWeb(host="127.0.0.1", port=0, token=None, tls=None)
        await web.start()
        ready = await fetch(f"{web.address}/ready")
        assert ready.code == 503 and b"not registered" in ready.body
        worker = Worker(scheduler.address, name="w1", nthreads=2, http_address=web.address)
        web.worker = worker
        try:
            async with worker:
                assert (await fetch(f"{web.address}/ready")).code == 200
                async with Client(scheduler.address, asynchronous=True) as client:
                    await client.wait_for_workers(1)
                    before = await scrape(http)
                    assert before["shoal_scheduler_workers", ()] == 1
                    assert before["shoal_scheduler_task_runs_total", ()] == 0
                    futures = client.map(slow_inc, range(200))
                    bad = client.submit(fail, 1)
                    assert await client.gather(futures) == list(range(1, 201))
                    with pytest.raises(ValueError):
                        await bad
                    after = await scrape(http)
                    info = await client.scheduler_info()
                    worker_metrics = await scrape(web.address)
                assert info["http_address"] == http and info["dashboard"] == f"{http}/"
                assert info["workers"]["w1"]["http_address"] == web.address
            assert (await fetch(f"{web.address}/ready")).code == 503  # it left
        finally:
            await web.close()
    assert after["shoal_scheduler_task_runs_total", ()] == 201
    assert after["shoal_scheduler_graphs_total", ()] == 2
    assert after["shoal_scheduler_graph_tasks_total", ()] == 201
    assert after["shoal_scheduler_prefix_tasks_finished_total", (("prefix", "slow_inc"),)] == 200
    assert after["shoal_scheduler_prefix_tasks_erred_total", (("prefix", "fail"),)] == 1
    assert after["shoal_scheduler_tasks", (("state", "memory"),)] == 200
    assert after["shoal_scheduler_tasks", (("state", "erred"),)] == 1
    assert after["shoal_scheduler_transitions_total", ()] >= 3 * 201
    assert after["shoal_scheduler_task_compute_seconds_total", ()] >= 200 * 0.002
    assert after["shoal_scheduler_clients", ()] == 1
    managed = after["shoal_scheduler_worker_memory_bytes", (("type", "managed"), ("worker", "w1"))]
    assert managed > 0
    assert after["shoal_scheduler_worker_threads", (("worker", "w1"),)] == 2
    assert ("shoal_scheduler_gc_seconds_total", (("generation", "0"),)) in after
    assert ("shoal_scheduler_event_loop_lag_seconds", ()) in after
    assert ("process_resident_memory_bytes", ()) in after
    assert worker_metrics["shoal_worker_tasks_finished_total", ()] == 200
    assert worker_metrics["shoal_worker_tasks", (("state", "memory"),)] == 200
    assert worker_metrics["shoal_worker_threads", ()] == 2
    assert worker_metrics["shoal_worker_memory_bytes", (("type", "rss"),)] > 0


@pytest.mark.timeout(60)
async def test_the_json_api() -> None:
    async with Scheduler(http_port=0) as scheduler, Worker(scheduler.address, name="w1"):
        http = scheduler.http_address
        async with Client(scheduler.address, asynchronous=True) as client:
            await client.wait_for_workers(1)
            futures = client.map(slow_inc, range(20), key=[f"inc-{i}" for i in range(20)])
            await client.gather(futures)

            async def get(path: str) -> Any:
                response = await fetch(f"{http}{path}")
                assert response.code == 200, (path, response.body)
                assert response.headers["Content-Type"] == "application/json"
                return json.loads(response.body)

            workers = (await get("/api/v1/workers"))["workers"]
            assert [w["name"] for w in workers] == ["w1"] and workers[0]["keys"] == 20
            tasks = await get("/api/v1/tasks")
            assert tasks["states"]["memory"] == 20
            (inc,) = [p for p in tasks["prefixes"] if p["prefix"] == "inc"]
            assert inc["states"]["memory"] == 20 and inc["finished"] == 20
            stream = await get("/api/v1/stream")
            runs = [r for r in stream["runs"] if r["prefix"] == "inc"]
            assert len(runs) == 20 and all(r["worker"] == "w1" and r["ok"] for r in runs)
            assert all(r["start"] <= r["stop"] <= stream["now"] for r in runs)
            later = await get(f"/api/v1/stream?since={runs[-1]['stop']}")
            assert later["runs"] == []
            story = await get("/api/v1/story?key=inc-3")
            moves = [(t["from"], t["to"]) for t in story["transitions"]]
            assert ("processing", "memory") in moves
            assert (await fetch(f"{http}/api/v1/story")).code == 400
            desired = await get("/api/v1/desired-workers")
            assert desired == {"desired_workers": 1, "workers": 1}  # it holds the values
            kinds = [e["kind"] for e in (await get("/api/v1/events"))["events"]]
            assert kinds[:3] == ["worker-joined", "client-connected", "graph-received"]
            assert (await get("/api/v1/info"))["tasks"] == {"memory": 20}


@pytest.mark.timeout(30)
async def test_no_http_unless_asked() -> None:
    async with Scheduler() as scheduler:
        assert scheduler.http_address == ""
        assert scheduler.state.info()["dashboard"] == ""


def _handler(remote_ip: str, headers: dict[str, str], cookie: str | None = None) -> Any:
    request = SimpleNamespace(remote_ip=remote_ip, headers=headers)
    return SimpleNamespace(request=request, get_cookie=lambda name: cookie)


def test_the_guard_wants_the_token_beyond_loopback() -> None:
    guard = Guard(TOKEN)
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert guard.allows(_handler("127.0.0.1", {}))
    assert guard.allows(_handler("::1", {}))
    assert not guard.allows(_handler("10.1.2.3", {}))
    assert not guard.allows(_handler("10.1.2.3", {"Authorization": "Bearer wrong"}))
    assert not guard.allows(_handler("10.1.2.3", {"Authorization": f"Basic {TOKEN}"}))
    assert guard.allows(_handler("10.1.2.3", bearer))
    assert guard.allows(_handler("10.1.2.3", {}, cookie=TOKEN))
    assert not guard.allows(_handler("10.1.2.3", {}, cookie="wrong"))


async def test_beyond_loopback_without_a_token_is_refused() -> None:
    server = WebServer([], host="0.0.0.0", port=0)
    with pytest.raises(PermissionError, match="beyond loopback"):
        await server.start()
    insecure = WebServer([], host="0.0.0.0", port=0, allow_insecure=True)
    await insecure.start()
    await insecure.close()


@pytest.mark.timeout(30)
async def test_a_refused_request_is_401_and_open_routes_stay_open(monkeypatch) -> None:
    """Every request here comes from loopback, so the guard is made to see a
    stranger: metrics and the API then need the token; /health and /ready do not."""
    monkeypatch.setattr("shoal.protocol.web.is_loopback", lambda host: False)
    async with Scheduler(http_port=0, token=TOKEN) as scheduler:
        http = scheduler.http_address
        for path in ("/metrics", "/api/v1/info"):
            refused = await fetch(f"{http}{path}")
            assert refused.code == 401 and refused.headers["WWW-Authenticate"].startswith("Bearer")
            wrong = await fetch(f"{http}{path}", headers={"Authorization": "Bearer nope"})
            assert wrong.code == 401
            given = await fetch(f"{http}{path}", headers={"Authorization": f"Bearer {TOKEN}"})
            assert given.code == 200
            cookie = await fetch(f"{http}{path}", headers={"Cookie": f"{TOKEN_COOKIE}={TOKEN}"})
            assert cookie.code == 200
        assert (await fetch(f"{http}/health")).code == 200
        assert (await fetch(f"{http}/ready")).code == 200


@pytest.mark.timeout(30)
async def test_http_speaks_tls_when_the_cluster_does(pki: PKI) -> None:
    server_tls = TLSConfig(ca=pki.ca, cert=pki.server.cert, key=pki.server.key)
    async with Scheduler("tls://127.0.0.1:0", tls=server_tls, http_port=0) as scheduler:
        http = scheduler.http_address
        assert http.startswith("https://127.0.0.1:")
        context = ssl.create_default_context(cafile=pki.ca)
        answer = await fetch(f"{http}/metrics", ssl_options=context)
        assert answer.code == 200 and b"shoal_scheduler_workers" in answer.body
        with pytest.raises((ssl.SSLError, HTTPClientError, OSError)):
            await AsyncHTTPClient().fetch(http.replace("https", "http") + "/health")


def test_key_prefixes() -> None:
    assert key_prefix("inc-3f2a9c0d1e2f3a4b") == "inc"
    assert key_prefix(("inc-3f2a9c0d1e2f3a4b", 4)) == "inc"
    assert key_prefix("load-part-12") == "load-part"
    assert key_prefix("x") == "x"
    assert key_prefix("sum-7") == "sum"
    assert key_prefix(("tree", 1, 2)) == "tree"
    assert key_prefix(42) == "int"
    assert key_prefix("-") == "other"


def test_the_worker_tells_an_address_peers_can_reach() -> None:
    assert advertised_http("http://0.0.0.0:9000", "tcp://10.0.0.7:4001") == "http://10.0.0.7:9000"
    assert advertised_http("https://127.0.0.1:9000", "tcp://10.0.0.7:1") == "https://127.0.0.1:9000"
    assert advertised_http("", "tcp://10.0.0.7:4001") == ""


def test_gpu_memory_is_that_of_the_workers_own_device(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the pinned device is reported: NVML's other devices are another worker's."""
    import sys
    from types import SimpleNamespace

    from shoal.worker.gpu import DeviceMonitor, Nvml
    from tests.fakes import pynvml as fake_pynvml

    state = tmp_path / "nvml.json"
    gpu = {"name": "Fake", "total": 8 * 2**30, "utilization": 1}
    devices = [{**gpu, "uuid": "GPU-a", "used": 1}, {**gpu, "uuid": "GPU-b", "used": 2}]
    state.write_text(json.dumps({"devices": devices}))
    monkeypatch.setenv(fake_pynvml.STATE_ENV, str(state))
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml)
    monitor = DeviceMonitor.pinned(Nvml.load(), 2**30, {"CUDA_VISIBLE_DEVICES": "GPU-b"})
    (family,) = gpu_memory(SimpleNamespace(gpu=monitor))  # type: ignore[arg-type]
    by_gpu = {(s.labels["gpu"], s.labels["type"]): s.value for s in family.samples}
    assert by_gpu == {("1", "used"): 2, ("1", "total"): 8 * 2**30, ("1", "limit"): 2**30}
    assert list(gpu_memory(SimpleNamespace(gpu=None))) == []  # type: ignore[arg-type]
