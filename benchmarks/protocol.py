"""Wire-protocol benchmark: small-message rate, round-trip latency, bulk transfer.

Run as `python -m benchmarks.protocol [--quick] [--out FILE.json]`.

The server runs in a separate process (this module with `--serve`), as in a
real cluster: two processes, two event loops. The client connects to it over
127.0.0.1 and measures:

1. Small control messages per second on one connection, each way, and a
   pipelined echo (client sends N requests, server answers each one).
2. Sequential round trips: `comm.ping()` and a GetData -> DataSent exchange
   through the server's handler; median and p99; next to a plain blocking
   socket echo of about the same size, the floor this machine allows.
3. A 256 MiB float64 array sent client -> server as a DataSent payload, next
   to plain blocking sockets between the same two processes: `sendall` on one
   side, `recv_into` on the other, into one preallocated buffer, and also into
   a new np.empty buffer each time (shoal receives each large frame into new
   memory, since that memory becomes the receiver's array).

Two benchmark-only messages (`bench-start`, `bench-done`) tell the server what
to do on a connection and report back; they are not part of the timed traffic.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import select
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

import shoal
from shoal.protocol.comm import Comm, connect, listen
from shoal.protocol.messages import DataSent, GetData
from shoal.protocol.schema import Message, message
from shoal.protocol.serialize import Serialized, deserialize, serialize

# Sizes.
SMALL_N = 200_000
SMALL_N_QUICK = 20_000
SMALL_RUNS = 3
CHUNK = 1_000  # messages queued between two drain() calls
ECHO_WINDOW = 10_000  # most echo requests in flight at once
RTT_N = 2_000
RTT_N_QUICK = 500
RTT_WARMUP = 200
ARRAY_BYTES = 256 * 1024 * 1024
ARRAY_RUNS = 5
ARRAY_RUNS_QUICK = 3

# Time bounds.
SERVER_START_TIMEOUT_S = 30.0
STEP_TIMEOUT_S = 120.0
SOCKET_TIMEOUT_S = 60.0
SERVER_STOP_TIMEOUT_S = 5.0

_ACK = b"k"
_RAW_ECHO = b"E"
_RAW_ARRAY = b"A"  # receive each array into one preallocated buffer
_RAW_ARRAY_FRESH = b"F"  # receive each array into a new buffer, as shoal does
# About the size of a Ping batch on the wire (count, length, msgpack header).
RAW_PING_BYTES = 32
_LENGTH = struct.Struct("<Q")


# -- control messages (benchmark only) ------------------------------------------


@message("bench-start")
class BenchStart(Message):
    """Tell the server what to do with what follows on this connection."""

    mode: str
    n: int = 0


@message("bench-done")
class BenchDone(Message):
    """The server is ready (count 0), or has done what it was asked."""

    count: int
    ok: bool = True


# -- server process ----------------------------------------------------------------

_SMALL_VALUE = serialize(42)


def _array_received(msg: DataSent) -> BenchDone:
    payload = msg.data.get("array")
    ok = payload is not None and _array_ok(payload, msg.request_id)
    return BenchDone(count=msg.request_id, ok=ok)


def _array_ok(payload: Serialized, nbytes: int) -> bool:
    """Cheap check that the array arrived whole: size, ends, and a strided sum."""
    arr = deserialize(payload, "benchmark array")
    if not isinstance(arr, np.ndarray) or arr.nbytes != nbytes:
        return False
    n = arr.size
    return bool(arr[0] == 0.0 and arr[-1] == n - 1 and arr[::4096].sum() == _strided_sum(n))


def _strided_sum(n: int) -> float:
    return float(np.arange(0, n, 4096, dtype=np.float64).sum())


async def _source(comm: Comm, n: int) -> None:
    for start in range(0, n, CHUNK):
        for i in range(start, min(start + CHUNK, n)):
            comm.send(DataSent(data={}, request_id=i))
        await comm.drain()


async def _serve_comm(comm: Comm) -> None:
    """Serve one benchmark connection until the client closes it."""
    mode, target, count = "", 0, 0
    while True:
        msgs = await comm.read()
        for msg in msgs:
            cls = type(msg)
            if cls is GetData:
                if mode == "sink":
                    count += 1
                    if count == target:
                        comm.send(BenchDone(count=count))
                elif mode == "echo":
                    comm.send(DataSent(data={}, request_id=msg.request_id))
                elif mode == "serve":
                    data = {key: _SMALL_VALUE for key in msg.keys}
                    comm.send(DataSent(data=data, request_id=msg.request_id))
            elif cls is DataSent:  # a large array
                comm.send(_array_received(msg))
            elif cls is BenchStart:
                mode, target, count = msg.mode, msg.n, 0
                if mode == "source":
                    await _source(comm, msg.n)
                else:
                    comm.send(BenchDone(count=0))
        # Free a received array before the next one arrives, as the raw server does.
        del msgs, msg


def _serve_raw_connection(conn: socket.socket) -> None:
    """Blocking: serve one raw connection in the mode named by its first byte."""
    with conn:
        conn.settimeout(SOCKET_TIMEOUT_S)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        mode = _recv_exactly(conn, 1)
        if mode == _RAW_ECHO:
            while (data := _recv_exactly(conn, RAW_PING_BYTES)) is not None:
                conn.sendall(data)
        elif mode in (_RAW_ARRAY, _RAW_ARRAY_FRESH):
            _serve_raw_arrays(conn, fresh=mode == _RAW_ARRAY_FRESH)


def _serve_raw_arrays(conn: socket.socket, fresh: bool) -> None:
    """Receive length-prefixed blobs into a buffer; ack each.

    With `fresh` each blob goes into a new np.empty buffer (its pages mapped
    as the bytes arrive), as shoal receives a large frame; otherwise into one
    buffer allocated and touched before the first.
    """
    buf: memoryview | None = None
    while True:
        head = _recv_exactly(conn, _LENGTH.size)
        if head is None:
            return
        (nbytes,) = _LENGTH.unpack(head)
        if fresh:
            buf = memoryview(np.empty(nbytes, dtype=np.uint8))
        elif buf is None or buf.nbytes != nbytes:
            block = np.empty(nbytes, dtype=np.uint8)
            block.fill(0)  # touch every page: a preallocated buffer
            buf = memoryview(block)
        got = 0
        while got < nbytes:
            n = conn.recv_into(buf[got:])
            if n == 0:
                return
            got += n
        conn.sendall(_ACK)
        if fresh:
            buf = None  # freed once received, as the shoal server frees its array


def _recv_exactly(conn: socket.socket, nbytes: int) -> bytes | None:
    data = b""
    while len(data) < nbytes:
        chunk = conn.recv(nbytes - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _serve_raw(server: socket.socket) -> None:
    while True:
        try:
            conn, _ = server.accept()
        except OSError:
            return
        threading.Thread(target=_serve_raw_connection, args=(conn,), daemon=True).start()


async def _serve() -> None:
    """Listen for shoal and raw connections; print both addresses; run until stdin closes."""
    listener = await listen("tcp://127.0.0.1:0", _serve_comm, role="scheduler")
    raw = socket.create_server(("127.0.0.1", 0))
    threading.Thread(target=_serve_raw, args=(raw,), daemon=True).start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def wait_for_stdin_eof() -> None:
        sys.stdin.buffer.read()
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=wait_for_stdin_eof, daemon=True).start()
    print(json.dumps({"shoal": listener.address, "raw": raw.getsockname()[1]}), flush=True)
    try:
        await stop.wait()
    finally:
        raw.close()
        await listener.close()


class ServerProcess:
    """The benchmark server in a child process; always terminated on exit."""

    def __init__(self, loop: str = "asyncio") -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.shoal_address = ""
        self.raw_port = 0
        self.loop = loop

    def __enter__(self) -> ServerProcess:
        root = Path(__file__).resolve().parent.parent
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.protocol", "--serve", "--loop", self.loop],
            cwd=root,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        try:
            line = self._first_line(SERVER_START_TIMEOUT_S)
            info = json.loads(line)
            self.shoal_address, self.raw_port = info["shoal"], int(info["raw"])
        except BaseException:
            self.stop()
            raise
        return self

    def _first_line(self, timeout: float) -> bytes:
        assert self.proc is not None and self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"the server process did not start within {timeout:.0f} s")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the server process exited with code {self.proc.wait()}")
        return line

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.close()  # asks the server to stop
            proc.wait(SERVER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(SERVER_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        finally:
            if proc.stdout is not None:
                proc.stdout.close()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- client side: measurements ------------------------------------------------------


async def _start(comm: Comm, mode: str, n: int = 0) -> None:
    """Set the server's mode and wait for it to say it is ready."""
    comm.send(BenchStart(mode=mode, n=n))
    msgs = await comm.read()
    if len(msgs) != 1 or type(msgs[0]) is not BenchDone:
        raise RuntimeError(f"unexpected answer to bench-start: {msgs!r}")


async def client_to_server(comm: Comm, n: int) -> float:
    """Seconds from the first GetData sent to the server's report that it has all n."""
    await _start(comm, "sink", n)
    start = time.perf_counter()
    for first in range(0, n, CHUNK):
        for i in range(first, min(first + CHUNK, n)):
            comm.send(GetData(keys=(("x", i),), request_id=i))
        await comm.drain()
    msgs = await comm.read()
    elapsed = time.perf_counter() - start
    if len(msgs) != 1 or type(msgs[0]) is not BenchDone or msgs[0].count != n:
        raise RuntimeError(f"unexpected answer from the sink: {msgs[:3]!r}")
    return elapsed


async def server_to_client(comm: Comm, n: int) -> float:
    """Seconds from asking the server for n DataSent messages to receiving the last."""
    start = time.perf_counter()
    comm.send(BenchStart(mode="source", n=n))
    got = 0
    while got < n:
        for msg in await comm.read():
            if type(msg) is not DataSent or msg.request_id != got:
                raise RuntimeError(f"message {got} from the source is {msg!r}")
            got += 1
    return time.perf_counter() - start


async def echo(comm: Comm, n: int) -> float:
    """Seconds to send n GetData and receive n DataSent answers, ECHO_WINDOW in flight."""
    await _start(comm, "echo")
    received = 0
    room = asyncio.Event()

    async def receive() -> None:
        nonlocal received
        while received < n:
            for msg in await comm.read():
                if type(msg) is not DataSent or msg.request_id != received:
                    raise RuntimeError(f"echo answer {received} is {msg!r}")
                received += 1
            room.set()

    start = time.perf_counter()
    reader = asyncio.create_task(receive())
    try:
        sent = 0
        while sent < n:
            while sent - received >= ECHO_WINDOW:
                room.clear()
                await room.wait()
            end = min(n, sent + CHUNK, received + ECHO_WINDOW)
            for i in range(sent, end):
                comm.send(GetData(keys=(("x", i),), request_id=i))
            sent = end
            await comm.drain()
        await reader
    finally:
        reader.cancel()
    return time.perf_counter() - start


async def ping_round_trips(comm: Comm, n: int) -> list[float]:
    for _ in range(RTT_WARMUP):
        await comm.ping()
    return [await comm.ping() for _ in range(n)]


async def getdata_round_trips(comm: Comm, n: int) -> list[float]:
    """Sequential GetData -> DataSent exchanges; the server's handler answers each."""
    await _start(comm, "serve")
    times = []
    for i in range(RTT_WARMUP + n):  # request ids are counts: never negative on the wire
        start = time.perf_counter()
        comm.send(GetData(keys=(("x", i),), request_id=i))
        msgs = await comm.read()
        elapsed = time.perf_counter() - start
        if len(msgs) != 1 or type(msgs[0]) is not DataSent or msgs[0].request_id != i:
            raise RuntimeError(f"unexpected answer to GetData {i}: {msgs!r}")
        if i >= RTT_WARMUP:
            times.append(elapsed)
    return times


def raw_round_trips(port: int, n: int) -> list[float]:
    """Blocking: sequential RAW_PING_BYTES echoes over a plain TCP socket (TCP_NODELAY)."""
    payload = b"p" * RAW_PING_BYTES
    times = []
    with socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT_S) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(_RAW_ECHO)
        for i in range(-RTT_WARMUP, n):
            start = time.perf_counter()
            sock.sendall(payload)
            if _recv_exactly(sock, RAW_PING_BYTES) != payload:
                raise RuntimeError("raw echo server answered wrongly")
            if i >= 0:
                times.append(time.perf_counter() - start)
    return times


def make_array(nbytes: int) -> np.ndarray:
    return np.arange(nbytes // 8, dtype=np.float64)


async def shoal_transfer(comm: Comm, arr: np.ndarray) -> float:
    """Seconds from serialize+send of the array to the server's acknowledgement."""
    start = time.perf_counter()
    comm.send(DataSent(data={"array": serialize(arr)}, request_id=arr.nbytes))
    await comm.drain()
    msgs = await comm.read()
    elapsed = time.perf_counter() - start
    if len(msgs) != 1 or type(msgs[0]) is not BenchDone or msgs[0].count != arr.nbytes:
        raise RuntimeError(f"unexpected answer to the array: {msgs!r}")
    if not msgs[0].ok:
        raise RuntimeError("the server received a corrupted array")
    return elapsed


def raw_transfer(sock: socket.socket, arr: np.ndarray) -> float:
    """Blocking: seconds from sendall of the array's bytes to the server's acknowledgement."""
    view = memoryview(arr).cast("B")
    start = time.perf_counter()
    sock.sendall(_LENGTH.pack(view.nbytes))
    sock.sendall(view)
    ack = sock.recv(1)
    elapsed = time.perf_counter() - start
    if ack != _ACK:
        raise RuntimeError(f"raw server answered {ack!r}")
    return elapsed


# -- driver ---------------------------------------------------------------------------


def _percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def _rate_summary(n: int, seconds: list[float]) -> dict[str, Any]:
    rates = [n / s for s in seconds]
    return {
        "n": n,
        "seconds": seconds,
        "median_per_s": statistics.median(rates),
        "best_per_s": max(rates),
        "worst_per_s": min(rates),
    }


def _latency_summary(seconds: list[float]) -> dict[str, Any]:
    us = [s * 1e6 for s in seconds]
    return {
        "n": len(us),
        "median_us": statistics.median(us),
        "p99_us": _percentile(us, 99),
        "min_us": min(us),
    }


def _bandwidth_summary(nbytes: int, seconds: list[float]) -> dict[str, Any]:
    rates = [nbytes / s / 1e9 for s in seconds]
    return {
        "bytes": nbytes,
        "seconds": seconds,
        "best_gb_s": max(rates),
        "median_gb_s": statistics.median(rates),
    }


async def _timed(coro: Any) -> Any:
    async with asyncio.timeout(STEP_TIMEOUT_S):
        return await coro


async def run_small(address: str, n: int, runs: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    steps = [
        ("client_to_server", client_to_server),
        ("server_to_client", server_to_client),
        ("echo", echo),
    ]
    for name, step in steps:
        comm = await _timed(connect(address))
        try:
            await _timed(step(comm, min(n, 5_000)))  # warm-up
            results[name] = _rate_summary(n, [await _timed(step(comm, n)) for _ in range(runs)])
        finally:
            await comm.close()
    return results


async def run_round_trips(address: str, raw_port: int, n: int) -> dict[str, Any]:
    comm = await _timed(connect(address))
    try:
        ping = await _timed(ping_round_trips(comm, n))
        getdata = await _timed(getdata_round_trips(comm, n))
    finally:
        await comm.close()
    raw = raw_round_trips(raw_port, n)
    return {
        "ping": _latency_summary(ping),
        "getdata": _latency_summary(getdata),
        "raw": _latency_summary(raw),
    }


async def run_transfer(address: str, raw_port: int, nbytes: int, runs: int) -> dict[str, Any]:
    arr = make_array(nbytes)
    comm = await _timed(connect(address))
    socks: dict[str, socket.socket] = {}
    times: dict[str, list[float]] = {"shoal": [], "raw": [], "raw_fresh": []}
    try:
        for name, mode in (("raw", _RAW_ARRAY), ("raw_fresh", _RAW_ARRAY_FRESH)):
            socks[name] = socket.create_connection(("127.0.0.1", raw_port), SOCKET_TIMEOUT_S)
            socks[name].sendall(mode)
        await _timed(_start(comm, "array"))
        # One untimed round each first: it maps the preallocated buffer's pages.
        for sock in socks.values():
            raw_transfer(sock, arr)
        await _timed(shoal_transfer(comm, arr))
        for _ in range(runs):  # interleaved, so drift on the machine hits all alike
            for name, sock in socks.items():
                times[name].append(raw_transfer(sock, arr))
            times["shoal"].append(await _timed(shoal_transfer(comm, arr)))
    finally:
        for sock in socks.values():
            sock.close()
        await comm.close()
    result: dict[str, Any] = {k: _bandwidth_summary(arr.nbytes, v) for k, v in times.items()}
    for base in ("raw", "raw_fresh"):
        suffix = "" if base == "raw" else "_fresh"
        result["ratio_best" + suffix] = result["shoal"]["best_gb_s"] / result[base]["best_gb_s"]
        result["ratio_median" + suffix] = (
            result["shoal"]["median_gb_s"] / result[base]["median_gb_s"]
        )
    return result


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    return {
        "load_average_at_start": os.getloadavg(),
        "cpus": os.cpu_count(),
        "cpus_usable": usable,
        "cpu_model": model or platform.processor(),
        "machine": platform.machine(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "numpy": np.__version__,
        "msgpack": ".".join(map(str, msgpack.version)),
        "shoal": shoal.__version__,
    }


def _fmt_rate(summary: dict[str, Any]) -> str:
    return f"{summary['median_per_s']:>12,.0f} {summary['best_per_s']:>12,.0f}"


def report(result: dict[str, Any]) -> str:
    m, cfg = result["machine"], result["config"]
    small, rtt, big = result["small"], result["round_trips"], result["transfer"]
    width = 78
    lines = [
        "shoal wire-protocol benchmark",
        "=" * width,
        f"machine : {m['cpus']} CPUs ({m['cpus_usable']} usable), {m['cpu_model']}, {m['machine']}",
        f"          {m['platform']}, load average at start "
        f"{' '.join(f'{x:.2f}' for x in m['load_average_at_start'])}",
        f"software: {m['implementation']} {m['python']}, numpy {m['numpy']}, "
        f"msgpack {m['msgpack']}, shoal {m['shoal']}",
        "setup   : client and server in two processes, one TCP connection over 127.0.0.1,",
        f"          event loop {cfg.get('loop', 'asyncio')} in both",
        "",
        f"1. Small messages, N = {cfg['small_n']:,}, {cfg['small_runs']} runs, "
        f"drain() every {CHUNK:,}",
        f"   {'':<50}{'median/s':>12} {'best/s':>12}",
        f"   {'client -> server  GetData(1 key)':<50}{_fmt_rate(small['client_to_server'])}",
        f"   {'server -> client  DataSent(empty data)':<50}{_fmt_rate(small['server_to_client'])}",
        f"   {'echo  GetData -> DataSent, ' + f'{ECHO_WINDOW:,} in flight':<50}"
        f"{_fmt_rate(small['echo'])}",
        "   (echo counts answers received: each is one message each way)",
        "",
        f"2. Sequential round trips, {cfg['rtt_n']:,} of each",
        f"   {'':<50}{'median us':>12} {'p99 us':>12}",
    ]
    rows = (
        ("ping", "comm.ping()"),
        ("getdata", "GetData -> DataSent(1 small payload), handler"),
        ("raw", f"raw socket, {RAW_PING_BYTES} bytes each way (baseline)"),
    )
    for key, label in rows:
        s = rtt[key]
        lines.append(f"   {label:<50}{s['median_us']:>12.1f} {s['p99_us']:>12.1f}")
    mib = cfg["array_bytes"] / 2**20
    lines += [
        "",
        f"3. Array transfer, {mib:.0f} MiB float64 client -> server, "
        f"{cfg['array_runs']} runs, GB/s = 1e9 bytes/s",
        f"   {'':<50}{'best GB/s':>12} {'median GB/s':>12}",
        f"   {'shoal  DataSent(serialize(array)), to ack':<50}"
        f"{big['shoal']['best_gb_s']:>12.2f} {big['shoal']['median_gb_s']:>12.2f}",
        f"   {'raw    sendall / recv_into preallocated, to ack':<50}"
        f"{big['raw']['best_gb_s']:>12.2f} {big['raw']['median_gb_s']:>12.2f}",
        f"   {'raw    sendall / recv_into new np.empty, to ack':<50}"
        f"{big['raw_fresh']['best_gb_s']:>12.2f} {big['raw_fresh']['median_gb_s']:>12.2f}",
        f"   {'shoal / raw (preallocated)':<50}"
        f"{big['ratio_best']:>12.0%} {big['ratio_median']:>12.0%}",
        f"   {'shoal / raw (new buffer each time)':<50}"
        f"{big['ratio_best_fresh']:>12.0%} {big['ratio_median_fresh']:>12.0%}",
        "",
        "Aims: 100,000 small messages/s each way; array transfer at 80% of raw or more.",
    ]
    least = min(small[k]["median_per_s"] for k in ("client_to_server", "server_to_client"))
    lines += [
        f"   slower direction, median: {least:,.0f} msg/s "
        f"({'met' if least >= 100_000 else 'NOT met'})",
        f"   transfer, median: {big['ratio_median']:.0%} of raw preallocated "
        f"({'met' if big['ratio_median'] >= 0.8 else 'NOT met'}), "
        f"{big['ratio_median_fresh']:.0%} of raw into new buffers",
    ]
    return "\n".join(lines)


async def run(quick: bool, loop: str = "asyncio") -> dict[str, Any]:
    cfg = {
        "quick": quick,
        "loop": loop,
        "small_n": SMALL_N_QUICK if quick else SMALL_N,
        "small_runs": SMALL_RUNS,
        "chunk": CHUNK,
        "echo_window": ECHO_WINDOW,
        "rtt_n": RTT_N_QUICK if quick else RTT_N,
        "array_bytes": ARRAY_BYTES,
        "array_runs": ARRAY_RUNS_QUICK if quick else ARRAY_RUNS,
    }
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "config": cfg,
    }
    with ServerProcess(loop) as server:
        result["small"] = await run_small(server.shoal_address, cfg["small_n"], SMALL_RUNS)
        result["round_trips"] = await run_round_trips(
            server.shoal_address, server.raw_port, cfg["rtt_n"]
        )
        result["transfer"] = await run_transfer(
            server.shoal_address, server.raw_port, ARRAY_BYTES, cfg["array_runs"]
        )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.protocol",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="fewer messages and runs")
    parser.add_argument("--out", metavar="FILE.json", help="also write the figures as JSON")
    parser.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="the event loop of both processes (uvloop: pip install uvloop, in the bench extra)",
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.loop == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    if args.serve:
        asyncio.run(_serve())
        return 0
    result = asyncio.run(run(args.quick, args.loop))
    print(report(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
