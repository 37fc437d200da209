"""`shoal status ADDRESS`: the cluster at a glance, from the scheduler's info.

Connects as a client, asks once, prints the workers (name, address, threads,
CPU, memory, GPUs, tasks) and the task counts, and leaves.
"""

from __future__ import annotations

import json
from typing import Any

from shoal.protocol.tls import TLSConfig

STATES = ("waiting", "queued", "processing", "memory", "erred", "released")


def size(n: float) -> str:
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    i = 0
    while n >= 1024 and i < len(units) - 1:
        n /= 1024
        i += 1
    return f"{n:.0f} {units[i]}" if i == 0 else f"{n:.1f} {units[i]}"


def render(info: dict[str, Any]) -> str:
    """The text `shoal status` prints for a scheduler's info."""
    workers: dict[str, dict[str, Any]] = info.get("workers", {})
    lines = [f"scheduler {info.get('address', '?')}"]
    if info.get("dashboard"):
        lines[0] += f"  (dashboard {info['dashboard']})"
    threads = sum(w.get("nthreads", 0) for w in workers.values())
    lines.append(f"{len(workers)} workers, {threads} threads, {info.get('clients', 0)} clients")
    if workers:
        rows = [("NAME", "ADDRESS", "THREADS", "CPU", "MEMORY", "GPU", "TASKS", "RUNNING", "HELD")]
        for name, w in workers.items():
            limit = w.get("memory_limit", 0)
            memory = size(w.get("memory", 0)) + (f" / {size(limit)}" if limit else "")
            gpus = w.get("resources", {}).get("GPU", 0)
            rows.append(
                (
                    name,
                    w.get("address", ""),
                    str(w.get("nthreads", 0)),
                    f"{w.get('cpu', 0.0):.0f}%",
                    memory,
                    f"{gpus:g}" if gpus else "-",
                    str(w.get("processing", 0)),
                    str(w.get("executing", 0)),
                    f"{w.get('keys', 0)} ({size(w.get('nbytes', 0))})",
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
            lines.append("  ".join(cells).rstrip())
    tasks: dict[str, int] = info.get("tasks", {})
    shown = [f"{state} {tasks[state]}" for state in STATES if tasks.get(state)]
    lines.append("tasks: " + (", ".join(shown) if shown else "none"))
    return "\n".join(lines)


def status(
    address: str,
    *,
    token: str | None,
    tls: TLSConfig | None,
    timeout: float,
    as_json: bool,
) -> str:
    """The status text (or JSON) of the scheduler at `address`.

    Raises:
        OSError, TimeoutError, ShoalError: it cannot be reached or refused us.
    """
    from shoal.client.client import Client

    with Client(
        address, token=token, tls=tls, timeout=timeout, reconnect_timeout=None, name="shoal status"
    ) as client:
        info = client.scheduler_info()
    info["clients"] = max(0, info.get("clients", 1) - 1)  # not counting this one
    return json.dumps(info, indent=2, sort_keys=True) if as_json else render(info)
