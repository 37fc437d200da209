"""Larger than memory: intermediate data three times the cluster's memory limit.

Two one-thread workers from the command line with the same --memory-limit
(default 300 MiB each; both systems' default thresholds 0.6/0.7/0.8/0.95, both
under their nanny), on 127.0.0.1. A map makes N numpy chunks of random floats
(incompressible, so compression neither helps nor hurts either system) whose
total is three times the two limits together; the client holds every chunk's
future while a reduction sums them four at a time and then the partial sums.
The answer is checked against the same chunks summed in this process. Figures:
wall time from the first submit to the answer, each worker's peak resident
memory (sampled every 20 ms), the most bytes the scheduler reported spilled,
and whether any worker was restarted (its pid changed) or went missing.

    python -m benchmarks.spill [--systems shoal,dask] [--memory-limit 300MiB]
                               [--chunk-mib 20] [--factor 3] [--repeat 1] [--out FILE.json]
                               [--compression default|none|lz4] [--data random|repetitive]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.children import run_child
from benchmarks.systems import CliCluster
from benchmarks.table import Metric, format_table, summarize

MiB = 2**20
CHILD_TIMEOUT_S = 900.0
STEP_TIMEOUT_S = 600.0
SAMPLE_S = 0.02
GROUP = 4  # chunks summed by one reduction task


def make_chunk(i: int, n: int, data: str = "random") -> np.ndarray:
    """Random floats (incompressible), or the same with each value 64 times over
    (lz4 shrinks it several-fold)."""
    rng = np.random.default_rng(i)
    if data == "random":
        return rng.random(n)
    return np.repeat(rng.random(n // 64 + 1), 64)[:n]


def add_up(*chunks: np.ndarray) -> float:
    return float(sum(float(c.sum()) for c in chunks))


def add(*parts: float) -> float:
    return float(sum(parts))


class PeakRss:
    """Samples processes' resident memory in a thread; keeps each one's peak."""

    def __init__(self, pids: dict[str, int]) -> None:
        import psutil

        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.peak = dict.fromkeys(pids, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.wait(SAMPLE_S):
            for name, proc in self.procs.items():
                try:
                    self.peak[name] = max(self.peak[name], proc.memory_info().rss)
                except psutil.Error:
                    pass  # it died: the pid check reports that

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def worker_pids(system: str, client: Any) -> dict[str, int]:
    if system == "shoal":
        return {name: w["pid"] for name, w in client.scheduler_info()["workers"].items()}
    # A restarted dask worker comes back at another address: keyed by address.
    return dict(client.run(os.getpid))


# Seconds to wait, after the answer, for a heartbeat that reports spilled bytes.
SETTLE_S = 3.0


def spilled_now(system: str, client: Any) -> int:
    info = client.scheduler_info()["workers"]
    if system == "shoal":
        return sum(w["spilled"] for w in info.values())
    return sum(w["metrics"]["spilled_bytes"]["memory"] for w in info.values())


class SpilledBytes:
    """The most bytes the scheduler reported spilled, polled in a thread."""

    def __init__(self, system: str, client: Any) -> None:
        self.system, self.client = system, client
        self.most = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            try:
                self.most = max(self.most, spilled_now(self.system, self.client))
            except Exception:  # a reply lost while closing: not a figure
                return

    def settle(self) -> None:
        """What workers hold on disk reaches the scheduler with their next
        heartbeat: while the data is still held, wait for one (bounded)."""
        deadline = time.monotonic() + SETTLE_S
        while True:
            self.most = max(self.most, spilled_now(self.system, self.client))
            if self.most > 0 or time.monotonic() > deadline:
                return
            time.sleep(0.1)

    def __enter__(self) -> SpilledBytes:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def run_spill(
    system: str,
    limit: str,
    chunk_mib: int,
    factor: float,
    compression: str = "default",
    data: str = "random",
) -> dict[str, Any]:
    """One round. `compression`: "default" (shoal: none; dask: its "auto", lz4
    where a sample of the data compresses), "none" or "lz4" for both."""
    from shoal.deploy.options import parse_bytes

    limit_bytes = parse_bytes(limit)
    n = math.ceil(factor * 2 * limit_bytes / (chunk_mib * MiB))
    size = chunk_mib * MiB // 8
    expected = sum(float(make_chunk(i, size, data).sum()) for i in range(n))
    with tempfile.TemporaryDirectory(prefix="shoal-bench-spill-") as tmp:
        workdir = Path(tmp)
        args = ["--memory-limit", limit, "--local-directory", str(workdir / "spill")]
        if system == "shoal" and compression != "default":
            args += ["--spill-compression", compression]
        cluster = CliCluster(system, workdir, tuple(args))
        if system == "dask" and compression != "default":
            setting = "False" if compression == "none" else compression
            cluster.env["DASK_DISTRIBUTED__WORKER__MEMORY__SPILL_COMPRESSION"] = setting
        with cluster:
            try:
                figures = _measure(system, cluster, n, size, expected, limit_bytes, data)
                figures.update(compression=compression, data=data)
                return figures
            except BaseException:
                print(cluster.logs(), file=sys.stderr)
                raise


def _measure(
    system: str, cluster: CliCluster, n: int, size: int, expected: float, limit: int, data: str
) -> dict[str, Any]:
    client = cluster.connect()
    try:
        assert client.submit(add, 1.0, 2.0).result(timeout=STEP_TIMEOUT_S) == 3.0
        pids = worker_pids(system, client)
        with PeakRss(pids) as peaks, SpilledBytes(system, client) as spilled:
            begin = time.perf_counter()
            chunks = client.map(make_chunk, range(n), n=size, data=data, pure=False)
            parts = [
                client.submit(add_up, *chunks[i : i + GROUP], pure=False)
                for i in range(0, n, GROUP)
            ]
            answer = client.submit(add, *parts, pure=False).result(timeout=STEP_TIMEOUT_S)
            wall = time.perf_counter() - begin
            spilled.settle()  # the chunks are still held
        after = worker_pids(system, client)
        del chunks, parts
    finally:
        client.close()
    if not math.isclose(answer, expected, rel_tol=1e-9):
        raise RuntimeError(f"{system}: wrong answer {answer!r}, expected {expected!r}")
    restarted = sum(1 for name, pid in pids.items() if after.get(name) != pid)
    return {
        "chunks": n,
        "data_mb": n * size * 8 / MiB,
        "limit_mb": limit / MiB,
        "wall_s": wall,
        "peak_rss_mb": max(peaks.peak.values()) / MiB,
        "peak_rss_mb_each": {name: rss / MiB for name, rss in peaks.peak.items()},
        "spilled_mb": spilled.most / MiB,
        "workers_restarted": restarted,
        "right_answer": True,
    }


def metrics(shape: dict[str, Any]) -> list[Metric]:
    data = f"{shape['factor']:g}x the memory limit of 2 workers x {shape['limit']}"
    if shape.get("compression", "default") != "default" or shape.get("data", "random") != "random":
        data += f", {shape.get('data', 'random')} data, compression {shape['compression']}"
    return [
        Metric("wall_s", f"larger than memory ({data}), wall", "s", lower=True),
        Metric("peak_rss_mb", "  peak RSS of the busiest worker", "MiB", lower=True),
        Metric("spilled_mb", "  most bytes reported spilled, all workers", "MiB"),
        Metric("workers_restarted", "  workers restarted or lost", "count", lower=True),
    ]


def spawn(system: str, shape: dict[str, Any], timeout: float = CHILD_TIMEOUT_S) -> dict[str, Any]:
    args = ["--child", system, "--memory-limit", shape["limit"]]
    args += ["--chunk-mib", str(shape["chunk_mib"]), "--factor", str(shape["factor"])]
    args += ["--compression", shape.get("compression", "default")]
    args += ["--data", shape.get("data", "random")]
    return run_child("benchmarks.spill", args, timeout)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--memory-limit", default="300MiB", help="per worker (default 300MiB)")
    parser.add_argument("--chunk-mib", type=int, default=20, help="MiB per chunk (default 20)")
    parser.add_argument("--factor", type=float, default=3.0, help="data / total limit (3)")
    parser.add_argument(
        "--compression",
        choices=("default", "none", "lz4"),
        default="default",
        help="of spilled values, for both systems (default: each system's own default)",
    )
    parser.add_argument(
        "--data", choices=("random", "repetitive"), default="random", help="chunk contents"
    )


def shape_of(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "limit": args.memory_limit,
        "chunk_mib": args.chunk_mib,
        "factor": args.factor,
        "compression": args.compression,
        "data": args.data,
    }


def alternate_rounds(
    label: str,
    one_round: Callable[[str, dict[str, Any]], dict[str, Any]],
    table_metrics: list[Metric],
    systems: list[str],
    shape: dict[str, Any],
    repeat: int,
) -> dict[str, Any]:
    """Rounds of `one_round(system, shape)` alternating the systems' order; the
    table of `table_metrics` and every round's figures."""
    values: dict[str, dict[str, list[float]]] = {}
    rounds = []
    for rnd in range(repeat):
        for system in systems if rnd % 2 == 0 else systems[::-1]:
            figures = one_round(system, shape)
            rounds.append({"round": rnd + 1, "system": system, "figures": figures})
            print(f"  {label} round {rnd + 1}/{repeat} {system}: {figures}", file=sys.stderr)
            for metric in table_metrics:
                values.setdefault(metric.key, {}).setdefault(system, []).append(figures[metric.key])
    return {"shape": shape, "table": summarize(table_metrics, values), "rounds": rounds}


def run_rounds(systems: list[str], shape: dict[str, Any], repeat: int) -> dict[str, Any]:
    """Rounds alternating the systems' order; the table and every round's figures."""
    return alternate_rounds("spill", spawn, metrics(shape), systems, shape, repeat)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1, help="rounds (default 1)")
    parser.add_argument("--systems", default="shoal,dask")
    parser.add_argument("--out", help="also write the figures as JSON here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.child:
        figures = run_spill(
            args.child, args.memory_limit, args.chunk_mib, args.factor, args.compression, args.data
        )
        print(json.dumps(figures), flush=True)
        return 0
    result = run_rounds([s for s in args.systems.split(",") if s], shape_of(args), args.repeat)
    print(format_table(result["table"]))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
