"""GPU benchmarks (`make bench-gpu`): they need an NVIDIA GPU, cupy and nvidia-ml-py.

1. Overhead per task: chains of cupy matmuls (tanh(x @ w), float32 matrices)
   as a shoal graph on one GPU worker, against the same kernels called
   directly in this process, synchronised at the end; the difference divided
   by the number of tasks is shoal's overhead per task.
2. Device-to-device moves: a cupy array made on worker A and used on worker B
   (GPU 0 and GPU 1, or two workers on GPU 0 when there is one), against a raw
   cupy device -> pinned host -> device copy of the same size in this process;
   the ratio shoal / raw is the figure (1.0 would be the copies alone).

    python -m benchmarks.gpu [--quick] [--repeat 3] [--out FILE.json]

On a machine without a GPU it says what it looked for and exits with 1.
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

import numpy as np

MATRIX = 2048
CHAINS, STEPS = 8, 50  # 400 matmul tasks
CHAINS_QUICK, STEPS_QUICK = 4, 10
MOVE_MIB = 256
MOVE_MIB_QUICK = 32
MOVES = 5
WAIT_S = 300.0


def missing() -> str:
    """Why this machine cannot run the GPU benchmarks; "" when it can."""
    try:
        import cupy
    except ImportError as exc:
        return f"cupy is not installed ({exc}); install it with pip install -e '.[gpu]'"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except cupy.cuda.runtime.CUDARuntimeError as exc:
        return f"cupy finds no CUDA device ({exc})"
    if count < 1:
        return "cupy finds no CUDA device"
    from shoal.errors import NoDevice
    from shoal.worker.gpu import Nvml

    try:
        Nvml.load("make bench-gpu").devices()
    except NoDevice as exc:
        return str(exc)
    return ""


# -- tasks (run on the workers) -----------------------------------------------------------


def make_matrix(n: int, seed: int) -> Any:
    import cupy

    rng = cupy.random.default_rng(seed)
    return (rng.random((n, n), dtype=cupy.float32) - 0.5) / np.float32(np.sqrt(n))


def step(x: Any, w: Any) -> Any:
    import cupy

    return cupy.tanh(x @ w)


def checksum(x: Any) -> float:
    import cupy

    value = float(x.sum())
    cupy.cuda.get_current_stream().synchronize()
    return value


def make_bytes(nbytes: int) -> Any:
    import cupy

    return cupy.ones(nbytes, dtype=cupy.uint8)


def arrived(x: Any) -> tuple[float, int]:
    """Run on worker B: when its input was there (on its device), and its size."""
    import cupy

    cupy.cuda.get_current_stream().synchronize()
    return time.time(), int(x.nbytes)


# -- 1: overhead per task ---------------------------------------------------------------------


def direct(chains: int, steps: int) -> tuple[float, float]:
    """Seconds for the kernels called in a loop here, and the checksum."""
    ws = [make_matrix(MATRIX, 1000 + c) for c in range(chains)]
    xs = [make_matrix(MATRIX, c) for c in range(chains)]
    checksum(step(xs[0], ws[0]))  # warm-up: cuBLAS handles, kernels loaded
    xs = [make_matrix(MATRIX, c) for c in range(chains)]
    start = time.perf_counter()
    for _ in range(steps):
        xs = [step(x, w) for x, w in zip(xs, ws, strict=True)]
    total = sum(checksum(x) for x in xs)
    return time.perf_counter() - start, total


def through_shoal(chains: int, steps: int) -> tuple[float, float]:
    """Seconds for the same kernels as tasks on one GPU worker, and the checksum."""
    from shoal import Client, wait

    with Client(gpus=[0], threads_per_worker=1) as client:
        ws = [client.submit(make_matrix, MATRIX, 1000 + c) for c in range(chains)]
        xs = [client.submit(make_matrix, MATRIX, c) for c in range(chains)]
        wait(ws + xs, timeout=WAIT_S)
        warm = client.submit(step, xs[0], ws[0], pure=False)
        client.submit(checksum, warm, pure=False).result(WAIT_S)
        start = time.perf_counter()
        for _ in range(steps):
            xs = [client.submit(step, x, w, pure=False) for x, w in zip(xs, ws, strict=True)]
        sums = client.gather([client.submit(checksum, x, pure=False) for x in xs])
        return time.perf_counter() - start, float(sum(sums))


def overhead(chains: int, steps: int, repeat: int) -> dict[str, Any]:
    tasks = chains * steps + chains
    runs = []
    for _ in range(repeat):
        direct_s, direct_sum = direct(chains, steps)
        shoal_s, shoal_sum = through_shoal(chains, steps)
        if not np.isclose(direct_sum, shoal_sum, rtol=1e-3):
            raise RuntimeError(f"checksums differ: direct {direct_sum}, shoal {shoal_sum}")
        runs.append({"direct_s": direct_s, "shoal_s": shoal_s})
    shoal_s = statistics.median(r["shoal_s"] for r in runs)
    direct_s = statistics.median(r["direct_s"] for r in runs)
    return {
        "tasks": tasks,
        "matrix": MATRIX,
        "direct_s": direct_s,
        "shoal_s": shoal_s,
        "overhead_per_task_ms": (shoal_s - direct_s) / tasks * 1e3,
        "shoal/direct": shoal_s / direct_s,
        "runs": runs,
    }


# -- 2: device-to-device moves -------------------------------------------------------------------


def raw_moves(nbytes: int, count: int) -> list[float]:
    """Seconds per raw device -> pinned host -> device copy on GPU 0."""
    import cupy

    src = cupy.ones(nbytes, dtype=cupy.uint8)
    dst = cupy.empty_like(src)
    host = np.frombuffer(cupy.cuda.alloc_pinned_memory(nbytes), np.uint8, nbytes)
    times = []
    for i in range(count + 1):  # the first is a warm-up
        start = time.perf_counter()
        src.get(out=host)
        dst.set(host)
        cupy.cuda.runtime.deviceSynchronize()
        if i:
            times.append(time.perf_counter() - start)
    return times


def shoal_moves(nbytes: int, count: int) -> tuple[list[float], str]:
    """Seconds per move of a device array from worker A to worker B, and where."""
    from shoal import Client, wait
    from shoal.deploy.local import LocalCluster
    from shoal.worker.gpu import Nvml

    devices = Nvml.load("make bench-gpu").devices()
    pair = [devices[0], devices[1] if len(devices) > 1 else devices[0]]
    with LocalCluster(n_workers=0) as cluster:
        env = {**os.environ, "SHOAL_TOKEN": cluster.token}
        procs = [
            subprocess.Popen(_worker_command(cluster.scheduler_address, name, device.uuid),
                             env=env, stdin=subprocess.DEVNULL)
            for name, device in zip(("a", "b"), pair, strict=True)
        ]  # fmt: skip
        try:
            with Client(cluster.scheduler_address, token=cluster.token) as client:
                client.wait_for_workers(2, timeout=WAIT_S)
                a, b = sorted(client.scheduler_info()["workers"])
                times = []
                for i in range(count + 1):  # the first is a warm-up: the workers connect
                    x = client.submit(make_bytes, nbytes, workers=[a], pure=False)
                    wait([x], timeout=WAIT_S)
                    start = time.time()
                    started, size = client.submit(arrived, x, workers=[b], pure=False).result(
                        WAIT_S
                    )
                    if size != nbytes:
                        raise RuntimeError(f"{size} bytes arrived of {nbytes}")
                    if i:
                        times.append(started - start)
                    del x
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(30)
    return times, f"{pair[0].label} -> {pair[1].label}"


def _worker_command(address: str, name: str, uuid: str) -> list[str]:
    shoal = [sys.executable, "-m", "shoal", "--log-level", "warning", "worker", address]
    return [*shoal, "--gpus", uuid, "--no-nanny", "--nthreads", "1", "--name", name]


def moves(mib: float, count: int) -> dict[str, Any]:
    nbytes = int(mib * 2**20)
    raw = raw_moves(nbytes, count)
    shoal, where = shoal_moves(nbytes, count)
    return {
        "bytes": nbytes,
        "where": where,
        "raw_s": statistics.median(raw),
        "shoal_s": statistics.median(shoal),
        "shoal/raw": statistics.median(shoal) / statistics.median(raw),
        "raw_gb_s": nbytes / statistics.median(raw) / 1e9,
        "shoal_gb_s": nbytes / statistics.median(shoal) / 1e9,
        "raw": raw,
        "shoal": shoal,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="rounds of the overhead run")
    parser.add_argument("--quick", action="store_true", help="small shapes, one round")
    parser.add_argument("--out", help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    why = missing()
    if why:
        print(f"bench-gpu needs an NVIDIA GPU with cupy and nvidia-ml-py: {why}", file=sys.stderr)
        return 1
    import cupy

    # Worker processes start without the working directory on their path (python -P):
    # they find this module, whose functions the tasks are, through PYTHONPATH.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    name = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    print(f"bench-gpu on {name}; load average {os.getloadavg()[0]:.2f}", flush=True)
    chains, steps = (CHAINS_QUICK, STEPS_QUICK) if args.quick else (CHAINS, STEPS)
    cost = overhead(chains, steps, 1 if args.quick else args.repeat)
    print(
        f"overhead: {cost['tasks']} tasks of tanh(x @ w), {MATRIX}x{MATRIX} float32: direct "
        f"{cost['direct_s']:.3f} s, shoal {cost['shoal_s']:.3f} s, "
        f"{cost['overhead_per_task_ms']:.3f} ms per task (shoal/direct {cost['shoal/direct']:.2f})"
    )
    mib = MOVE_MIB_QUICK if args.quick else MOVE_MIB
    move = moves(mib, MOVES)
    print(
        f"move {mib:g} MiB {move['where']}: raw device->host->device {move['raw_s'] * 1e3:.1f} ms "
        f"({move['raw_gb_s']:.2f} GB/s), shoal {move['shoal_s'] * 1e3:.1f} ms "
        f"({move['shoal_gb_s']:.2f} GB/s): shoal/raw {move['shoal/raw']:.2f}"
    )
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": name, "overhead": cost, "move": move}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
