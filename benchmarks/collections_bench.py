"""dask collections on shoal beside dask.distributed: wall time and peak worker memory.

Three workloads, each on a fresh cluster of two worker processes with one
thread each, in a child process per system and workload:

- array: `(x + x.T).mean(axis=0)` over a random array of 100 x 100 = 10,000 chunks;
- dataframe: `read_csv` of 100 CSV files this benchmark writes, then a
  groupby-aggregate (sum, mean, max of a column by a key);
- bag: a word count (`read_text`, split, flatten, frequencies) over 100 text files.

Wall time runs from the call to compute() to its result, checked for the
right answer. Peak worker memory is the highest sum of the workers' resident
sets sampled every 20 ms while it runs (psutil). Separately, `translate`
measures shoal's translation of a 1,000,000-task dask.array graph, in
microseconds per task.

    python -m benchmarks.collections_bench [--repeat 3] [--quick] [--systems shoal,dask]
                                           [--workloads array,dataframe,bag,translate]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.children import run_child
from benchmarks.table import Metric, format_table, summarize

WORKLOADS = ("array", "dataframe", "bag", "translate")
SHAPES = {
    "full": {"side": 2_000, "chunk": 20, "files": 100, "rows": 20_000, "lines": 5_000,
             "translate_tasks": 1_000_000},
    "quick": {"side": 400, "chunk": 20, "files": 20, "rows": 2_000, "lines": 500,
              "translate_tasks": 50_000},
}  # fmt: skip
CHILD_TIMEOUT_S = 600.0
SAMPLE_S = 0.02
WORDS = ("shoal", "dask", "array", "frame", "bag", "task", "graph", "worker", "key", "value")


def metrics(shape: dict[str, int], workloads: list[str]) -> list[Metric]:
    """The table's rows for these workloads."""
    chunks = (shape["side"] // shape["chunk"]) ** 2
    rows = {
        "array": [
            Metric("array_s", f"dask.array (x + x.T).mean(0), {chunks:,} chunks", "s", lower=True),
            Metric("array_peak_mib", "  peak worker memory (sum of RSS)", "MiB", lower=True),
        ],
        "dataframe": [
            Metric(
                "dataframe_s",
                f"dask.dataframe read_csv x{shape['files']} + groupby-agg",
                "s",
                lower=True,
            ),
            Metric("dataframe_peak_mib", "  peak worker memory (sum of RSS)", "MiB", lower=True),
        ],
        "bag": [
            Metric("bag_s", f"dask.bag word count over {shape['files']} files", "s", lower=True),
            Metric("bag_peak_mib", "  peak worker memory (sum of RSS)", "MiB", lower=True),
        ],
        "translate": [
            Metric(
                "translate_us_per_task",
                f"translate a {shape['translate_tasks']:,}-task dask.array graph",
                "us/task",
                lower=True,
            ),
            Metric(
                "dask_order_us_per_task",
                "  of which dask.order (timed alone)",
                "us/task",
                lower=True,
            ),
            Metric(
                "messages_us_per_task",
                "  then split into SubmitGraph messages",
                "us/task",
                lower=True,
            ),
        ],
    }
    return [m for w in WORKLOADS if w in workloads for m in rows[w]]


# -- inputs ------------------------------------------------------------------------------


def write_inputs(folder: Path, shape: dict[str, int]) -> None:
    """CSV files for the dataframe, text files for the bag (deterministic)."""
    import numpy as np

    rng = np.random.default_rng(42)
    rows = shape["rows"]
    for i in range(shape["files"]):
        keys = rng.integers(0, 100, rows)
        values = rng.random(rows)
        with open(folder / f"part-{i:03d}.csv", "w") as f:
            f.write("k,v\n")
            f.write("\n".join(f"{k},{v:.6f}" for k, v in zip(keys, values, strict=True)))
            f.write("\n")
        words = rng.integers(0, len(WORDS), (shape["lines"], 8))
        with open(folder / f"text-{i:03d}.txt", "w") as f:
            f.write("\n".join(" ".join(WORDS[w] for w in line) for line in words))
            f.write("\n")


# -- one round, in a child -----------------------------------------------------------------


def make_client(system: str) -> tuple[Any, Any, list[int]]:
    """(client, the scheduler call for dask.compute, worker pids)."""
    if system == "shoal":
        from shoal.client.client import Client

        client = Client(n_workers=2, threads_per_worker=1)
        client.wait_for_workers(2, timeout=60)
        pids = [w["pid"] for w in client.scheduler_info()["workers"].values()]
        return client, client.get, pids
    from dask.distributed import Client as DaskClient

    client = DaskClient(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    client.wait_for_workers(2)
    pids = list(client.run(os.getpid).values())
    return client, client.get, pids


class PeakMemory:
    """The highest sum of the processes' resident sets, sampled in a thread."""

    def __init__(self, pids: list[int]) -> None:
        import psutil

        self.procs = [psutil.Process(pid) for pid in pids]
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> int:
        total = 0
        for proc in self.procs:
            try:
                total += proc.memory_info().rss
            except Exception:  # a worker restarting: count the others
                continue
        return total

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> PeakMemory:
        self.peak = self._rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.peak = max(self.peak, self._rss())


def build(workload: str, shape: dict[str, int], folder: Path) -> tuple[Any, Any]:
    """(the collection, a check of its computed value)."""
    if workload == "array":
        import dask.array as da
        import numpy as np

        x = da.random.RandomState(0).random_sample((shape["side"],) * 2, chunks=shape["chunk"])

        def check_array(value: Any) -> None:
            # Each entry is the mean of side sums of two uniforms: close to 1.
            assert value.shape == (shape["side"],) and np.all((value > 0.8) & (value < 1.2))

        return (x + x.T).mean(axis=0), check_array
    if workload == "dataframe":
        import dask.dataframe as dd

        df = dd.read_csv(str(folder / "part-*.csv"), blocksize=None)
        out = df.groupby("k").v.agg(["sum", "mean", "max"])

        def check_frame(value: Any) -> None:
            mean = value["sum"].sum() / (shape["files"] * shape["rows"])
            assert len(value) == 100 and abs(mean - 0.5) < 0.05, (len(value), mean)

        return out, check_frame
    import dask.bag as db

    lines = db.read_text(str(folder / "text-*.txt"))
    counts = lines.str.split().flatten().frequencies()

    def check_bag(value: Any) -> None:
        assert sorted(w for w, _ in value) == sorted(WORDS)
        assert sum(n for _, n in value) == shape["files"] * shape["lines"] * 8

    return counts, check_bag


def run_round(system: str, workload: str, shape_name: str, folder: str) -> dict[str, float]:
    shape = SHAPES[shape_name]
    if workload == "translate":
        return translate_round(shape["translate_tasks"])
    import dask

    client, get, pids = make_client(system)
    try:
        collection, check = build(workload, shape, Path(folder))
        with PeakMemory(pids) as memory:
            begin = time.perf_counter()
            (value,) = dask.compute(collection, scheduler=get)
            took = time.perf_counter() - begin
        check(value)
        return {f"{workload}_s": took, f"{workload}_peak_mib": memory.peak / 2**20}
    finally:
        client.close()


def translate_round(n_tasks: int) -> dict[str, float]:
    """shoal's translation of an n-task dask.array graph: `ones + 1`, one element a
    chunk, so half the tasks read another. dask.order is timed on its own too."""
    import dask.array as da
    from dask.core import flatten
    from dask.order import order

    from shoal.client import graph as graphs
    from shoal.client.dask import translate

    side = round((n_tasks / 2) ** 0.5)
    x = da.ones((side, side), chunks=1) + 1
    graph = dict(x.__dask_graph__())
    keys = list(flatten(x.__dask_keys__()))
    begin = time.perf_counter()
    done = translate(graph, keys, graphs.FunctionCache(), lambda k: False)
    took = time.perf_counter() - begin
    assert len(done.rows) == len(graph)
    begin = time.perf_counter()
    graphs.messages(done.rows, keys, None, done.options)
    chunked = time.perf_counter() - begin
    begin = time.perf_counter()
    order(graph)
    ordering = time.perf_counter() - begin
    return {
        "translate_us_per_task": took / len(graph) * 1e6,
        "translate_tasks": float(len(graph)),
        "dask_order_us_per_task": ordering / len(graph) * 1e6,
        "messages_us_per_task": chunked / len(graph) * 1e6,
    }


# -- driving -------------------------------------------------------------------------------


def spawn(system: str, workload: str, shape_name: str, folder: str) -> dict[str, float]:
    args = ["--child", system, "--workload", workload, "--shape", shape_name, "--folder", folder]
    return run_child("benchmarks.collections_bench", args, CHILD_TIMEOUT_S)


def prepare(shape_name: str) -> tempfile.TemporaryDirectory:
    folder = tempfile.TemporaryDirectory(prefix="shoal-bench-collections-")
    write_inputs(Path(folder.name), SHAPES[shape_name])
    return folder


# Each project in its in-process local cluster shape: shoal.Client() and
# distributed.Client() with two one-thread worker processes.
SYSTEMS = ("shoal", "dask")


def systems_for(workload: str, systems: list[str]) -> list[str]:
    """The systems among `systems` that run `workload` (the translation is shoal's own)."""
    own = ("shoal",) if workload == "translate" else SYSTEMS
    return [s for s in systems if s in own]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small shapes, one repetition")
    parser.add_argument("--systems", default="shoal,dask")
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--out", help="also write the table as JSON here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--workload", help=argparse.SUPPRESS)
    parser.add_argument("--shape", default="full", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_round(args.child, args.workload, args.shape, args.folder)))
        return 0
    shape_name = "quick" if args.quick else "full"
    repeat = 1 if args.quick else args.repeat
    systems = [s for s in args.systems.split(",") if s]
    workloads = [w for w in args.workloads.split(",") if w]
    values: dict[str, dict[str, list[float]]] = {}
    with prepare(shape_name) as folder:
        for rep in range(repeat):
            for workload in workloads:
                turn = systems_for(workload, systems)
                for system in turn if rep % 2 == 0 else turn[::-1]:
                    found = spawn(system, workload, shape_name, folder)
                    print(f"  rep {rep + 1}/{repeat} {workload} {system}: {found}", file=sys.stderr)
                    for key, value in found.items():
                        values.setdefault(key, {}).setdefault(system, []).append(value)
    table = summarize(metrics(SHAPES[shape_name], workloads), values)
    print(format_table(table))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"shape": SHAPES[shape_name], "repeat": repeat, "table": table}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
