"""The worker's HTTP endpoints (tornado): /health, /ready and /metrics.

Read on the event loop from what the worker keeps anyway: the counts by status
its core's transition log keeps, its fetcher's counts, its thread count and
its process's memory. One server serves a worker process for its life, across
the Worker objects that join the scheduler again after losing it
(`WorkerWeb.worker` is the current one). Guarded as shoal.protocol.web says.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import psutil
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from shoal.protocol.tls import TLSConfig
from shoal.protocol.tokens import Keyring
from shoal.protocol.web import (
    HealthHandler,
    MetricsHandler,
    ReadyHandler,
    WebServer,
    registry_for,
)

if TYPE_CHECKING:
    from shoal.worker.server import Worker

P = "shoal_worker"
# The statuses of keys a worker reports (see shoal.worker.state.Status).
SHOWN = ("waiting", "ready", "executing", "cancelled", "fetch", "flight", "memory")
_UNSPECIFIED = ("0.0.0.0", "::", "[::]", "")


def advertised_http(http_address: str, data_address: str) -> str:
    """`http_address` with an unspecified host (0.0.0.0) replaced by the host of
    the data address the worker advertises."""
    if not http_address:
        return ""
    scheme, _, rest = http_address.partition("://")
    host, _, port = rest.rpartition(":")
    if host not in _UNSPECIFIED:
        return http_address
    data_host = data_address.partition("://")[2].rpartition(":")[0]
    return f"{scheme}://{data_host or '127.0.0.1'}:{port}"


class WorkerCollector:
    """Metrics of the current worker of a process."""

    def __init__(self, web: WorkerWeb) -> None:
        self.web = web
        self.process = psutil.Process()

    def collect(self) -> Iterator[Metric]:
        worker = self.web.worker
        if worker is None:
            return
        log = worker.state.history
        tasks = GaugeMetricFamily(f"{P}_tasks", "Keys on this worker by status", labels=["state"])
        for status in SHOWN:
            tasks.add_metric([status], max(0, log.counts.get(status, 0)))
        yield tasks
        finished = log.moves.get(("executing", "memory"), 0)
        yield CounterMetricFamily(f"{P}_tasks_finished", "Tasks run to a result", finished)
        yield GaugeMetricFamily(f"{P}_threads", "Threads running tasks", worker.nthreads)
        memory = GaugeMetricFamily(
            f"{P}_memory_bytes", "Memory of this worker process", labels=["type"]
        )
        memory.add_metric(["rss"], self.process.memory_info().rss)
        memory.add_metric(["limit"], worker.memory_limit)
        yield memory
        fetcher = worker.fetcher
        if fetcher is not None:
            yield CounterMetricFamily(
                f"{P}_transfers", "Answers fetched from peer workers", fetcher.fetches
            )
            yield CounterMetricFamily(
                f"{P}_transfer_keys", "Values fetched from peer workers", fetcher.fetched_keys
            )
            yield CounterMetricFamily(
                f"{P}_transfer_bytes", "Bytes fetched from peer workers", fetcher.fetched_bytes
            )
        yield from gpu_memory(worker)


def gpu_memory(worker: Worker) -> Iterator[Metric]:
    """Memory of the GPU the worker is pinned to (shoal.worker.gpu), from NVML, which
    is asked about that device alone: no device is counted by two workers."""
    if worker.gpu is None:
        return
    used = GaugeMetricFamily(f"{P}_gpu_memory_bytes", "GPU memory", labels=["gpu", "type"])
    for figures in worker.gpu.sample():
        index = worker.gpu.device.index
        used.add_metric([index, "used"], figures["memory_used"])
        used.add_metric([index, "total"], figures["memory_total"])
    used.add_metric([worker.gpu.device.index, "limit"], worker.gpu.memory_limit)
    yield used


class WorkerWeb:
    """The HTTP server of a worker process; set `worker` to each Worker it runs."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        token: str | bytes | None,
        tls: TLSConfig | None,
        keyring: Keyring | None = None,
        require_tls: bool = False,
    ) -> None:
        self.worker: Worker | None = None
        self.server = WebServer(
            [],
            host=host,
            port=port,
            token=None if keyring is not None else token,
            keyring=keyring,
            tls=tls,
            require_tls=require_tls,
        )
        registry = registry_for(P, self.server.loop, WorkerCollector(self))
        self.server.add(
            [
                (r"/health", HealthHandler),
                (r"/ready", ReadyHandler, {"ready": self.ready}),
                (r"/metrics", MetricsHandler, {"registry": registry}),
            ]
        )

    def ready(self) -> str | None:
        if self.worker is None or not self.worker.registered:
            return "not registered with a scheduler"
        return None

    @property
    def address(self) -> str:
        return self.server.address

    async def start(self) -> WorkerWeb:
        await self.server.start()
        return self

    async def close(self) -> None:
        await self.server.close()
