"""Larger than memory, as dataframe users meet it: a groupby over a persisted frame.

The same clusters as benchmarks/spill.py (two one-thread workers from the
command line with the same --memory-limit, default 300 MiB each, both
systems' default thresholds, under their nanny). `dd.from_map` makes N
pandas partitions (an int64 key of K groups and a float64 value, both
random, so incompressible) inside tasks, so the client never holds them; their
total is three times the two limits together. The frame is persisted (the
client holds every partition's future, as `df = df.persist()` does) and then
grouped: sum and count of the value per key, through the same
`client.persist` / `client.compute` calls on both systems. The answer is
checked against pandas run in this process over the same partitions, made one
at a time. Figures as for the numpy workload: wall time from the persist to
the answer, each worker's peak RSS, the most bytes reported spilled, and
workers restarted or lost.

    python -m benchmarks.spill_frame [--systems shoal,dask] [--memory-limit 300MiB]
                                     [--part-mib 20] [--factor 3] [--keys 1000]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.children import run_child
from benchmarks.spill import (
    CHILD_TIMEOUT_S,
    STEP_TIMEOUT_S,
    MiB,
    PeakRss,
    SpilledBytes,
    add,
    alternate_rounds,
    worker_pids,
)
from benchmarks.systems import CliCluster
from benchmarks.table import Metric, format_table

ROW_BYTES = 16  # an int64 key and a float64 value


def make_part(i: int, rows: int, keys: int) -> Any:
    """Partition i: the same rows wherever and however often it is made."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(i)
    return pd.DataFrame({"key": rng.integers(0, keys, rows), "value": rng.random(rows)})


def expected_sums(n: int, rows: int, keys: int) -> Any:
    """Sum and count per key with pandas, one partition at a time."""
    total = None
    for i in range(n):
        part = make_part(i, rows, keys).groupby("key")["value"].agg(["sum", "count"])
        total = part if total is None else total.add(part, fill_value=0)
    return total


def run_frame(system: str, limit: str, part_mib: int, factor: float, keys: int) -> dict[str, Any]:
    from shoal.deploy.options import parse_bytes

    limit_bytes = parse_bytes(limit)
    n = math.ceil(factor * 2 * limit_bytes / (part_mib * MiB))
    rows = part_mib * MiB // ROW_BYTES
    expected = expected_sums(n, rows, keys)
    with tempfile.TemporaryDirectory(prefix="shoal-bench-frame-") as tmp:
        workdir = Path(tmp)
        args = ("--memory-limit", limit, "--local-directory", str(workdir / "spill"))
        with CliCluster(system, workdir, args) as cluster:
            try:
                figures = _measure(system, cluster, n, rows, keys, expected)
            except BaseException:
                print(cluster.logs(), file=sys.stderr)
                raise
    figures["limit_mb"] = limit_bytes / MiB
    return figures


def _measure(
    system: str, cluster: CliCluster, n: int, rows: int, keys: int, expected: Any
) -> dict[str, Any]:
    import dask.dataframe as dd
    import numpy as np

    client = cluster.connect()
    try:
        assert client.submit(add, 1.0, 2.0).result(timeout=STEP_TIMEOUT_S) == 3.0
        pids = worker_pids(system, client)
        meta = make_part(0, 0, keys)
        frame = dd.from_map(make_part, range(n), rows=rows, keys=keys, meta=meta)
        with PeakRss(pids) as peaks, SpilledBytes(system, client) as spilled:
            begin = time.perf_counter()
            held = client.persist(frame)
            grouped = held.groupby("key")["value"].agg(["sum", "count"])
            answer = client.compute(grouped).result(timeout=STEP_TIMEOUT_S)
            wall = time.perf_counter() - begin
            spilled.settle()  # the partitions are still held
        after = worker_pids(system, client)
        del held
    finally:
        client.close()
    answer = answer.sort_index()
    right = (
        list(answer.index) == list(expected.index)
        and np.array_equal(answer["count"].to_numpy(), expected["count"].to_numpy())
        and np.allclose(answer["sum"].to_numpy(), expected["sum"].to_numpy(), rtol=1e-9)
    )
    if not right:
        raise RuntimeError(f"{system}: wrong groupby answer:\n{answer}\nexpected:\n{expected}")
    restarted = sum(1 for name, pid in pids.items() if after.get(name) != pid)
    return {
        "partitions": n,
        "data_mb": n * rows * ROW_BYTES / MiB,
        "wall_s": wall,
        "peak_rss_mb": max(peaks.peak.values()) / MiB,
        "peak_rss_mb_each": {name: rss / MiB for name, rss in peaks.peak.items()},
        "spilled_mb": spilled.most / MiB,
        "workers_restarted": restarted,
        "right_answer": True,
    }


def metrics(shape: dict[str, Any]) -> list[Metric]:
    data = f"{shape['factor']:g}x limit of 2 x {shape['limit']}"
    return [
        Metric("wall_s", f"dataframe groupby, {data}, wall", "s", lower=True),
        Metric("peak_rss_mb", "  peak RSS of the busiest worker", "MiB", lower=True),
        Metric("spilled_mb", "  most bytes reported spilled, all workers", "MiB"),
        Metric("workers_restarted", "  workers restarted or lost", "count", lower=True),
    ]


def spawn(system: str, shape: dict[str, Any], timeout: float = CHILD_TIMEOUT_S) -> dict[str, Any]:
    args = ["--child", system, "--memory-limit", shape["limit"], "--factor", str(shape["factor"])]
    args += ["--part-mib", str(shape["part_mib"]), "--keys", str(shape["keys"])]
    return run_child("benchmarks.spill_frame", args, timeout)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of its own (memory limit and factor are the numpy workload's)."""
    parser.add_argument("--part-mib", type=int, default=20, help="MiB per partition (20)")
    parser.add_argument("--keys", type=int, default=1000, help="groups (default 1000)")


def shape_of(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "limit": args.memory_limit,
        "factor": args.factor,
        "part_mib": args.part_mib,
        "keys": args.keys,
    }


def run_rounds(systems: list[str], shape: dict[str, Any], repeat: int) -> dict[str, Any]:
    return alternate_rounds("groupby", spawn, metrics(shape), systems, shape, repeat)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1, help="rounds (default 1)")
    parser.add_argument("--systems", default="shoal,dask")
    parser.add_argument("--out", help="also write the figures as JSON here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--memory-limit", default="300MiB", help="per worker (default 300MiB)")
    parser.add_argument("--factor", type=float, default=3.0, help="data / total limit (3)")
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.child:
        figures = run_frame(args.child, args.memory_limit, args.part_mib, args.factor, args.keys)
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
