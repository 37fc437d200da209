"""The scheduler's Prometheus metrics, read from the counters its core keeps.

A custom collector: each scrape reads the tally (shoal.scheduler.tally) and
the worker records, O(key prefixes + workers), never one step per task. The
names follow Prometheus' conventions: base units, `_total` on counters (the
client library adds it), labels for states, prefixes and workers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from shoal.scheduler.model import Status
from shoal.scheduler.tally import desired_workers

if TYPE_CHECKING:
    from shoal.scheduler.state import SchedulerState

P = "shoal_scheduler"
LIVE = [s for s in Status if s is not Status.FORGOTTEN]


class SchedulerCollector:
    """Metrics of one scheduler core (registered in the process's registry)."""

    def __init__(self, state: SchedulerState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        state, tally = self.state, self.state.tally
        yield from self._tasks()
        yield CounterMetricFamily(f"{P}_transitions", "Task status changes", state.transitions_done)
        yield GaugeMetricFamily(f"{P}_workers", "Workers registered", len(state.placement.workers))
        left = CounterMetricFamily(f"{P}_workers_left", "Workers gone, by how", labels=["how"])
        left.add_metric(["left"], tally.workers_left)
        left.add_metric(["died"], tally.workers_died)
        yield left
        yield CounterMetricFamily(f"{P}_workers_joined", "Workers registered", tally.workers_joined)
        yield GaugeMetricFamily(f"{P}_clients", "Clients connected", len(state.clients))
        yield CounterMetricFamily(
            f"{P}_clients_connected", "Clients that connected", tally.clients_connected
        )
        yield CounterMetricFamily(f"{P}_graphs", "Graphs submitted", tally.graphs)
        yield CounterMetricFamily(
            f"{P}_graph_tasks", "Tasks in the graphs submitted", tally.graph_tasks
        )
        yield CounterMetricFamily(f"{P}_task_runs", "Task runs reported", tally.runs)
        yield CounterMetricFamily(
            f"{P}_task_compute_seconds", "Seconds tasks ran, as workers report", tally.compute_s
        )
        yield CounterMetricFamily(
            f"{P}_transfers", "Fetches between workers reported (1 MiB or more)", tally.transfers
        )
        yield CounterMetricFamily(
            f"{P}_transfer_bytes", "Bytes moved by the fetches reported", tally.transfer_bytes
        )
        yield CounterMetricFamily(
            f"{P}_transfer_seconds", "Seconds the fetches reported took", tally.transfer_s
        )
        yield GaugeMetricFamily(
            f"{P}_memory_bytes",
            "Bytes of task results held on workers",
            sum(ws.nbytes for ws in state.placement.workers.values()),
        )
        yield GaugeMetricFamily(
            f"{P}_desired_workers", "Workers the work in hand calls for", desired_workers(state)
        )
        yield GaugeMetricFamily(
            f"{P}_stalled_task_kinds",
            "Kinds of ready task (resources, restrictions) no current worker can run",
            len(state.placement.unrunnable),
        )
        yield GaugeMetricFamily(
            f"{P}_task_duration_mean_seconds",
            "Mean task run time the scheduler has observed",
            state.placement.mean_duration,
        )
        yield from self._workers()

    def _tasks(self) -> Iterator[Metric]:
        tally = self.state.tally
        total = tally.counts()
        tasks = GaugeMetricFamily(f"{P}_tasks", "Tasks by status", labels=["state"])
        for status in LIVE:
            tasks.add_metric([status.value], total.get(status, 0))
        yield tasks
        yield CounterMetricFamily(
            f"{P}_tasks_forgotten", "Tasks forgotten", total.get(Status.FORGOTTEN, 0)
        )
        by_prefix = GaugeMetricFamily(
            f"{P}_prefix_tasks", "Tasks by key prefix and status", labels=["prefix", "state"]
        )
        finished = CounterMetricFamily(
            f"{P}_prefix_tasks_finished", "Task runs that finished, by prefix", labels=["prefix"]
        )
        erred = CounterMetricFamily(
            f"{P}_prefix_tasks_erred", "Task runs that raised, by prefix", labels=["prefix"]
        )
        compute = CounterMetricFamily(
            f"{P}_prefix_compute_seconds", "Seconds tasks ran, by prefix", labels=["prefix"]
        )
        for name, group in tally.groups.items():
            for status in LIVE:
                by_prefix.add_metric([name, status.value], group.counts[status])
            finished.add_metric([name], group.finished)
            erred.add_metric([name], group.erred)
            compute.add_metric([name], group.compute_s)
        yield from (by_prefix, finished, erred, compute)

    def _workers(self) -> Iterator[Metric]:
        labels = ["worker"]
        processing = GaugeMetricFamily(
            f"{P}_worker_processing_tasks", "Tasks assigned to each worker", labels=labels
        )
        executing = GaugeMetricFamily(
            f"{P}_worker_executing_tasks",
            "Tasks running on each worker (its latest heartbeat)",
            labels=labels,
        )
        threads = GaugeMetricFamily(f"{P}_worker_threads", "Threads of each worker", labels=labels)
        memory = GaugeMetricFamily(
            f"{P}_worker_memory_bytes",
            "Memory of each worker: managed (task results), unmanaged (the rest of its "
            "resident memory), limit",
            labels=["worker", "type"],
        )
        cpu = GaugeMetricFamily(
            f"{P}_worker_cpu_ratio", "CPU use of each worker (1: one core)", labels=labels
        )
        for ws in self.state.placement.workers.values():
            name = [ws.name]
            processing.add_metric(name, len(ws.processing))
            executing.add_metric(name, ws.executing)
            threads.add_metric(name, ws.nthreads)
            memory.add_metric([ws.name, "managed"], ws.nbytes)
            memory.add_metric([ws.name, "unmanaged"], max(0, ws.memory - ws.nbytes))
            memory.add_metric([ws.name, "limit"], ws.memory_limit)
            cpu.add_metric(name, ws.cpu / 100.0)
        yield from (processing, executing, threads, memory, cpu)
