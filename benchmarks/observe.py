"""Observing shoal: what a scrape and a dashboard poll cost, and a poller for `make bench`.

`python -m benchmarks.observe --scale [N ...]` fills a scheduler core with N
tasks (100 workers, five key prefixes, some tasks finished) and times
building the dashboard's answer and a /metrics scrape (CPU time), with their sizes: they
read aggregates, so neither should grow with N.

`python -m benchmarks.observe URL [INTERVAL]` is a poller that benchmarks/e2e.py
starts before its first run and keeps for all of them, so that starting it is
counted against none: it reads `on` and `off` lines on stdin and, while on,
GETs a scheduler's /metrics and /api/v1/dashboard every INTERVAL seconds (1),
over one connection kept open, as a Prometheus scraper and an open dashboard
page do. It answers `on` once
its first poll is done and `off` once its polling thread has stopped, and
prints the number of requests made when stdin ends. While off it sleeps on
stdin and uses no CPU.
"""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time
import urllib.parse

SCALE = (10_000, 100_000, 1_000_000)
PREFIXES = ("load", "clean", "join", "fit", "score")


class Polling(threading.Thread):
    """GETs /metrics and the dashboard's JSON at once, then every `interval` s."""

    def __init__(self, http: str, interval: float) -> None:
        super().__init__(daemon=True)
        self.http, self.interval = http, interval
        self.requests = 0
        self.first, self.stop = threading.Event(), threading.Event()

    def run(self) -> None:
        # One connection kept open, as a Prometheus scraper and a browser keep theirs.
        where = urllib.parse.urlsplit(self.http)
        conn = http.client.HTTPConnection(where.hostname, where.port, timeout=10)
        since = 0.0
        try:
            while True:
                self._get(conn, "/metrics")
                page = json.loads(self._get(conn, f"/api/v1/dashboard?since={since}"))
                since = max([since, *(run["stop"] for run in page["stream"])])
                self.requests += 2
                self.first.set()
                if self.stop.wait(self.interval):
                    return
        finally:
            conn.close()

    @staticmethod
    def _get(conn: http.client.HTTPConnection, path: str) -> bytes:
        conn.request("GET", path)
        answer = conn.getresponse()
        body = answer.read()
        if answer.status != 200:
            raise RuntimeError(f"GET {path}: {answer.status} {body[:200]!r}")
        return body


def poll(http: str, interval: float) -> int:
    requests = 0
    polling: Polling | None = None
    for line in sys.stdin:
        command = line.strip()
        if command == "on" and polling is None:
            polling = Polling(http, interval)
            polling.start()
            if not polling.first.wait(30):
                raise RuntimeError(f"no answer from {http} in 30 s")
        elif command == "off" and polling is not None:
            polling.stop.set()
            polling.join(30)
            requests += polling.requests
            polling = None
        elif command not in ("on", "off"):
            raise ValueError(f"unknown command {command!r}: on or off")
        print(command, flush=True)
    print(requests, flush=True)
    return 0


def scale(n: int) -> dict[str, float]:
    """One core holding `n` tasks: the dashboard answer's and a scrape's time and size."""
    from prometheus_client import CollectorRegistry, generate_latest

    from shoal.protocol import messages as m
    from shoal.protocol.serialize import serialize
    from shoal.scheduler import views
    from shoal.scheduler.metrics import SchedulerCollector
    from shoal.scheduler.state import SchedulerState

    state = SchedulerState()
    for i in range(100):
        state.connected(f"w{i}", "worker")
        worker = m.RegisterWorker(name=f"w{i}", address=f"tcp://w{i}:1", nthreads=4)
        state.handle(f"w{i}", worker, 0.0)
    state.connected("c", "client")
    state.handle("c", m.RegisterClient(name="c"), 0.0)
    keys = tuple(f"{PREFIXES[i % len(PREFIXES)]}-{i:032x}" for i in range(n))
    args = serialize(("x",), "arguments")
    msg = m.SubmitGraph(
        keys=keys,
        funcs=(serialize(len, "function"),),
        func=(0,) * n,
        args=(args,) * n,
        deps=((),) * n,
        wanted=keys,
    )
    state.handle("c", msg, 1.0)
    while state.taking_in("c"):
        state.resume("c", 1.0)
    for ws in list(state.workers.values()):
        for ts in list(ws.processing)[:8]:
            done = m.TaskFinished(key=ts.key, nbytes=1000, typename="int", duration=0.01)
            state.handle(ws.peer, done, 2.0)
    registry = CollectorRegistry()
    registry.register(SchedulerCollector(state))
    begin = time.process_time()
    page = json.dumps(views.dashboard(state, 3.0, 0.0))
    page_s = time.process_time() - begin
    begin = time.process_time()
    scrape = generate_latest(registry)
    scrape_s = time.process_time() - begin
    return {
        "tasks": n,
        "dashboard_cpu_ms": page_s * 1e3,
        "dashboard_bytes": len(page),
        "metrics_cpu_ms": scrape_s * 1e3,
        "metrics_bytes": len(scrape),
    }


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--scale":
        for n in [int(a) for a in argv[1:]] or SCALE:
            print(json.dumps(scale(n)), flush=True)
        return 0
    return poll(argv[0], float(argv[1]) if len(argv) > 1 else 1.0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
