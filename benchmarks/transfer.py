"""Worker-to-worker transfer: one numpy array moved between two worker processes.

Figures in GB/s (1e9 bytes/s): a raw blocking socket between two processes
(the floor this machine allows), shoal, dask.distributed, and Ray between
two raylets (two nodes on this machine). Each round starts one fresh child
process per system; systems alternate.

    python -m benchmarks.transfer [--repeat 3] [--quick] [--size MIB] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import time
from typing import Any

import numpy as np

from benchmarks.children import run_child

SIZE_MIB = 256
SIZE_MIB_QUICK = 64
MOVES = 5  # timed moves per round, after one untimed warm-up move
MOVES_QUICK = 3
CHILD_TIMEOUT_S = 300.0
WAIT_TIMEOUT_S = 120.0
SYSTEMS = ("raw", "shoal", "dask", "ray")


def make_array(nbytes: int) -> np.ndarray:
    """Run on worker A: every page is written, so it is resident there."""
    return np.ones(nbytes, dtype=np.uint8)


def consume(x: np.ndarray) -> tuple[float, int, int]:
    """Run on worker B: the wall time it starts (its input is already here), and checks."""
    return time.time(), int(x[::4096].sum()), x.nbytes


def _strided_ones(nbytes: int) -> int:
    return len(range(0, nbytes, 4096))


# -- child process: one system, one round --------------------------------------------


def move_raw(nbytes: int, moves: int) -> list[float]:
    """Seconds per move over a plain socket to the protocol benchmark's raw server.

    The server (another process) receives each array into a new np.empty buffer
    with recv_into and acks with one byte; the time runs from the first byte sent
    to the ack.
    """
    from benchmarks.protocol import _RAW_ARRAY_FRESH, SOCKET_TIMEOUT_S, ServerProcess, raw_transfer

    arr = make_array(nbytes)
    with ServerProcess() as server:
        with socket.create_connection(("127.0.0.1", server.raw_port), SOCKET_TIMEOUT_S) as sock:
            sock.sendall(_RAW_ARRAY_FRESH)
            raw_transfer(sock, arr)  # warm-up
            return [raw_transfer(sock, arr) for _ in range(moves)]


def move_cluster(system: str, nbytes: int, moves: int) -> list[float]:
    """Seconds per move from worker A to worker B: submit(consume) to consume's start."""
    if system == "shoal":
        from shoal import Client, wait

        cluster = Client(n_workers=2, threads_per_worker=1)
    else:
        from distributed import Client as DaskClient
        from distributed import wait

        cluster = DaskClient(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        )
    with cluster as client:
        workers = sorted(client.scheduler_info()["workers"])  # names (shoal), addresses (dask)
        if len(workers) != 2:
            raise RuntimeError(f"{system}: expected 2 workers, got {workers}")
        times = []
        for i in range(moves + 1):  # the first move is a warm-up: workers connect
            a = client.submit(make_array, nbytes, workers=[workers[0]], pure=False)
            wait([a], timeout=WAIT_TIMEOUT_S)
            start = time.time()
            b = client.submit(consume, a, workers=[workers[1]], pure=False)
            started, total, size = b.result(timeout=WAIT_TIMEOUT_S)
            if (total, size) != (_strided_ones(nbytes), nbytes):
                raise RuntimeError(f"{system}: array arrived wrong: sum {total}, size {size}")
            if i:
                times.append(started - start)
            del a, b  # release both copies before the next move
    return times


def move_ray(nbytes: int, moves: int) -> list[float]:
    """Seconds per move between two raylets (two Ray nodes on this machine, one CPU each).

    On one raylet both workers would share its object store and nothing would
    move; two nodes make Ray send the array from one store to the other, as
    between machines. Time runs from submitting `consume` to its start.
    """
    import ray
    from ray.cluster_utils import Cluster as RayCluster

    store = max(2 * nbytes, 2**30)
    nodes = RayCluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "resources": {"a": 1}, "object_store_memory": store},
    )
    try:
        nodes.add_node(num_cpus=1, resources={"b": 1}, object_store_memory=store)
        ray.init(address=nodes.address, log_to_driver=False, logging_level="ERROR")
        make = ray.remote(make_array).options(resources={"a": 1})
        use = ray.remote(consume).options(resources={"b": 1})
        times = []
        for i in range(moves + 1):  # the first move is a warm-up
            a = make.remote(nbytes)
            ray.wait([a], timeout=WAIT_TIMEOUT_S, fetch_local=False)
            start = time.time()
            started, total, size = ray.get(use.remote(a), timeout=WAIT_TIMEOUT_S)
            if (total, size) != (_strided_ones(nbytes), nbytes):
                raise RuntimeError(f"ray: array arrived wrong: sum {total}, size {size}")
            if i:
                times.append(started - start)
            del a
        return times
    finally:
        ray.shutdown()
        nodes.shutdown()


def child(system: str, nbytes: int, moves: int) -> None:
    if system == "raw":
        seconds = move_raw(nbytes, moves)
    elif system == "ray":
        seconds = move_ray(nbytes, moves)
    else:
        seconds = move_cluster(system, nbytes, moves)
    print(json.dumps({"seconds": seconds, "gb_s": [nbytes / s / 1e9 for s in seconds]}))


def spawn(system: str, nbytes: int, moves: int) -> dict[str, Any]:
    """One round of `system` in a child process (killed with its cluster on timeout)."""
    args = ["--child", system, "--bytes", str(nbytes), "--moves", str(moves)]
    return run_child("benchmarks.transfer", args, CHILD_TIMEOUT_S)


# -- parent: rounds, summary, table ---------------------------------------------------


def summarize(rounds: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per system: each round's median GB/s, then their median, min and max."""
    table: dict[str, Any] = {}
    for system, runs in rounds.items():
        per_round = [statistics.median(r["gb_s"]) for r in runs]
        table[system] = {
            "median": statistics.median(per_round),
            "min": min(per_round),
            "max": max(per_round),
            "rounds": per_round,
        }
    pairs = (("shoal", "dask"), ("shoal", "ray"), ("shoal", "raw"), ("dask", "raw"), ("ray", "raw"))
    for a, b in pairs:
        if a in table and b in table:
            table[f"{a}/{b}"] = table[a]["median"] / table[b]["median"]
    return table


def _cell(table: dict[str, Any], system: str) -> str:
    row = table.get(system)
    return f"{row['median']:.2f} ({row['min']:.2f}..{row['max']:.2f})" if row else "-"


def _ratio(table: dict[str, Any], name: str) -> str:
    return f"{table[name]:.2f}" if name in table else "-"


def print_table(table: dict[str, Any], mib: float) -> None:
    names = [s for s in SYSTEMS if s in table]
    head = f"{'worker->worker ' + format(mib, 'g') + ' MiB [GB/s]':34}"
    print(head + "".join(f" {s:>18}" for s in names))
    print(f"{'median (min..max)':34}" + "".join(f" {_cell(table, s):>18}" for s in names))
    ratios = ("shoal/dask", "shoal/ray", "shoal/raw", "dask/raw", "ray/raw")
    print("   ".join(f"{r} {_ratio(table, r)}" for r in ratios if r in table))


def _available(system: str) -> bool:
    module = {"raw": "numpy", "shoal": "shoal", "dask": "distributed", "ray": "ray"}[system]
    try:
        __import__(module)
    except ImportError:
        print(f"{system} is not installed; skipping it", file=sys.stderr)
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--quick", action="store_true", help="64 MiB, one round, 3 moves")
    parser.add_argument("--size", type=float, help="array size in MiB (default 256)")
    parser.add_argument("--moves", type=int, help="timed moves per round (default 5)")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--out", help="also write the figures as JSON here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--bytes", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.bytes, args.moves)
        return 0
    mib = args.size or (SIZE_MIB_QUICK if args.quick else SIZE_MIB)
    nbytes = int(mib * 2**20)
    moves = args.moves or (MOVES_QUICK if args.quick else MOVES)
    repeat = 1 if args.quick else args.repeat
    systems = [s for s in args.systems.split(",") if s and _available(s)]
    rounds: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}
    for rnd in range(repeat):
        for system in systems if rnd % 2 == 0 else systems[::-1]:
            rounds[system].append(spawn(system, nbytes, moves))
            rates = " ".join(f"{x:.2f}" for x in rounds[system][-1]["gb_s"])
            print(f"  round {rnd + 1}/{repeat} {system}: GB/s {rates}", file=sys.stderr)
    table = summarize(rounds)
    print_table(table, mib)
    if args.out:
        config = {"bytes": nbytes, "moves": moves, "repeat": repeat}
        with open(args.out, "w") as f:
            json.dump({"config": config, "table": table, "rounds": rounds}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
