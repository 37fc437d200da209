"""`make bench`: shoal, dask.distributed (two shapes) and Ray, every workload, one table.

Each repetition runs every round, with the systems' order flipping from one
repetition to the next: the end-to-end rounds (benchmarks/e2e.py: latency
with the first result, map+gather, tree), each on a fresh cluster; the
worker-to-worker move of a large array beside a raw socket
(benchmarks/transfer.py); the scheduler's memory per task
(benchmarks/memory.py); and the dask collections (array, dataframe, bag) with
shoal's translation of a large dask graph (benchmarks/collections_bench.py).
Every round is a child process with a time limit that is killed with its
cluster's processes when the limit passes. The systems and their shapes are in
benchmarks/systems.py.

    python -m benchmarks.bench [--repeat 3] [--quick] [--systems ...] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from benchmarks import collections_bench, e2e, memory, systems, transfer
from benchmarks.table import Metric, format_table, summarize

WORKLOADS = ("e2e", "transfer", "memory", *collections_bench.WORKLOADS)
# The transfer runs each project once, in its local shape (the move is the same
# code in either), and Ray between two raylets; the memory workload needs the
# scheduler in a process of its own.
TRANSFER_SYSTEMS = ("shoal", "dask", "ray")


def shapes(quick: bool) -> dict[str, Any]:
    mib = transfer.SIZE_MIB_QUICK if quick else transfer.SIZE_MIB
    return {
        "e2e": e2e.SHAPES["quick" if quick else "full"],
        "transfer": {
            "mib": mib,
            "bytes": mib * 2**20,
            "moves": transfer.MOVES_QUICK if quick else transfer.MOVES,
        },
        "memory": {"tasks": memory.N_TASKS_QUICK if quick else memory.N_TASKS},
        "collections": dict(collections_bench.SHAPES["quick" if quick else "full"]),
    }


def metrics(shape: dict[str, Any], workloads: list[str]) -> list[Metric]:
    """The table's rows for these workloads, in the order of WORKLOADS."""
    mib = shape["transfer"]["mib"]
    rows = {
        "e2e": e2e.metrics(shape["e2e"]),
        "transfer": [Metric("transfer_gb_s", f"worker->worker move of {mib:g} MiB", "GB/s")],
        "memory": memory.metrics(shape["memory"]["tasks"]),
    }
    for workload in collections_bench.WORKLOADS:
        rows[workload] = collections_bench.metrics(shape["collections"], [workload])
    return [metric for workload in WORKLOADS if workload in workloads for metric in rows[workload]]


def rounds_of(workload: str, names: list[str]) -> list[tuple[str, str]]:
    """(round, system) pairs of one workload, in the order of `names`."""
    if workload == "e2e":
        return [(kind, s) for kind in e2e.ROUNDS for s in names if e2e.runs_on(kind, s)]
    if workload in collections_bench.WORKLOADS:
        return [(workload, s) for s in collections_bench.systems_for(workload, names)]
    if workload == "transfer":
        # The raw socket baseline takes its turn in the same repetitions.
        return [("transfer", s) for s in ("raw", *names) if s == "raw" or s in TRANSFER_SYSTEMS]
    return [("memory", s) for s in names if s in memory.SYSTEMS]


def run_round(kind: str, system: str, shape: dict[str, Any], quick: bool) -> dict[str, Any]:
    """One system's round, in a child process; metric -> value."""
    if kind in e2e.ROUNDS:
        return e2e.spawn(system, kind, "quick" if quick else "full")
    if kind in collections_bench.WORKLOADS:
        name = "quick" if quick else "full"
        return collections_bench.spawn(system, kind, name, shape["collections"]["folder"])
    if kind == "transfer":
        moves = transfer.spawn(system, shape["transfer"]["bytes"], shape["transfer"]["moves"])
        return {"transfer_gb_s": statistics.median(moves["gb_s"]), "moves": moves}
    return memory.spawn(system, shape["memory"]["tasks"])


def machine() -> dict[str, Any]:
    from benchmarks.protocol import machine as protocol_machine

    found = protocol_machine()
    del found["load_average_at_start"]
    for module in ("distributed", "ray"):
        try:
            found[module] = __import__(module).__version__
        except ImportError:
            pass
    try:
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, timeout=10
        )
        found["commit"] = commit.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return found


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument("--quick", action="store_true", help="small shapes, one repetition")
    parser.add_argument("--systems", default=",".join(systems.SYSTEMS))
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--out", help="also write the table and every round as JSON here")
    parser.add_argument(
        "--stop-after",
        type=float,
        metavar="S",
        help="start no round after S seconds; the table shows the rounds done (noted under it)",
    )
    args = parser.parse_args(argv)
    repeat = 1 if args.quick else args.repeat
    shape = shapes(args.quick)
    names = [s for s in args.systems.split(",") if s and systems.available(s)]
    workloads = [w for w in args.workloads.split(",") if w]
    unknown = set(workloads) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workloads {sorted(unknown)}; choose from {WORKLOADS}")
    load_start, began = _load(), time.monotonic()
    print(f"load average at start: {' '.join(map(str, load_start))}", file=sys.stderr)
    values: dict[str, dict[str, list[float]]] = {}
    loads: dict[str, list[float]] = {}
    rounds = []
    # The CSV and text files of the collection workloads, written once for all rounds.
    inputs = collections_bench.prepare("quick" if args.quick else "full")
    shape["collections"]["folder"] = inputs.name
    skipped = 0
    for rep in range(repeat):
        order = names if rep % 2 == 0 else names[::-1]
        for workload in workloads:
            for kind, system in rounds_of(workload, order):
                if args.stop_after and time.monotonic() - began > args.stop_after:
                    skipped += 1
                    continue
                load = _load()
                result = run_round(kind, system, shape, args.quick)
                entry = {"rep": rep + 1, "round": kind, "system": system, "load": load}
                rounds.append({**entry, "result": result})
                shown = {k: round(v, 4) for k, v in result.items() if isinstance(v, float)}
                where = f"rep {rep + 1}/{repeat} {kind} {system} (load {load[0]})"
                print(f"  {where}: {shown}", file=sys.stderr, flush=True)
                for key, value in result.items():
                    if isinstance(value, int | float) and not isinstance(value, bool):
                        values.setdefault(key, {}).setdefault(system, []).append(value)
                        loads.setdefault(key, []).append(load[0])
                if args.out:  # what has run so far, should the run be stopped
                    with open(args.out + ".partial", "w") as f:
                        json.dump({"shape": shape, "rounds": rounds}, f)
    inputs.cleanup()
    table = summarize(metrics(shape, workloads), values, loads)
    load_end, took = _load(), time.monotonic() - began
    found = machine()
    print(format_table(table))
    print(
        f"{repeat} repetition(s), {took:.0f} s; load average (1, 5, 15 min) "
        f"{' '.join(map(str, load_start))} at start, {' '.join(map(str, load_end))} at end"
    )
    print(
        f"{found['cpus']} CPUs ({found['cpu_model']}), {found['platform']}, "
        f"Python {found['python']}, distributed {found.get('distributed', '-')}, "
        f"ray {found.get('ray', '-')}, shoal at {found.get('commit', '?')}"
    )
    unsettled = [
        f"{r['system']} rep {r['rep']}"
        for r in rounds
        if r["round"] == "memory"
        and not all(
            r["result"].get(f"settled_{when}", True) for when in ("base", "pending", "held")
        )
    ]
    if unsettled:
        print(f"note: the scheduler's memory had not settled in {', '.join(unsettled)}")
    if skipped:
        stop = f"{args.stop_after:.0f} s"
        print(f"note: stopped after {stop}; {skipped} rounds of the {repeat} repetitions not run")
    if args.out:
        found = {
            "machine": found,
            "load_average": {"start": load_start, "end": load_end},
            "seconds": took,
            "repeat": repeat,
            "shape": shape,
            "table": table,
            "rounds": rounds,
        }
        with open(args.out, "w") as f:
            json.dump(found, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
