"""The side-by-side table: per metric, each system's median with min..max, ratios, load.

Values come in as lists, one per round. Systems are shown in the order of
benchmarks.systems.SYSTEMS. The ratios compare each project at its best:
`shoal/dask` is the better of shoal's two shapes over the better of dask's
two (better: higher for rates, lower for times, bytes and CPU), and
`shoal/ray` the same against Ray. A "raw" system (the plain-socket baseline
of the transfer) gets a line of its own under its metric, with every
system's ratio to it. The load column is the 1-minute load average at the
start of the rounds that gave the row, min..max.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from benchmarks.systems import SYSTEMS, family

PEERS = ("dask", "ray")


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    lower: bool = False  # lower is better (times, bytes, CPU)


def spread(values: list[float]) -> dict[str, Any]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "values": values,
    }


def best(row: dict[str, Any], project: str, lower: bool) -> float | None:
    """The better median among `project`'s shapes in this row, or None."""
    found = [row[s]["median"] for s in SYSTEMS if family(s) == project and s in row]
    if not found:
        return None
    return min(found) if lower else max(found)


def summarize(
    metrics: list[Metric],
    values: dict[str, dict[str, list[float]]],
    loads: dict[str, list[float]] | None = None,
) -> dict[str, Any]:
    """`values[metric key][system]` lists -> one JSON-ready row per metric."""
    table: dict[str, Any] = {}
    for metric in metrics:
        row: dict[str, Any] = {"label": metric.label, "unit": metric.unit, "lower": metric.lower}
        for system, found in values.get(metric.key, {}).items():
            if found:
                row[system] = spread(found)
        ours = best(row, "shoal", metric.lower)
        for peer in PEERS:
            theirs = best(row, peer, metric.lower)
            if ours is not None and theirs:
                row[f"shoal/{peer}"] = ours / theirs
        if "raw" in row and row["raw"]["median"]:
            for system in SYSTEMS:
                if system in row:
                    row[f"{system}/raw"] = row[system]["median"] / row["raw"]["median"]
        if loads and loads.get(metric.key):
            row["load"] = spread(loads[metric.key])
        table[metric.key] = row
    return table


def format_table(table: dict[str, Any]) -> str:
    shown = [s for s in SYSTEMS if any(s in row for row in table.values())]
    head = f"{'metric':50}" + "".join(f" {s:>24}" for s in shown)
    head += f" {'shoal/dask':>10} {'shoal/ray':>9} {'load':>10}"
    lines = [head, "-" * len(head)]
    for row in table.values():
        if not any(s in row for s in shown):
            continue
        label = f"{row['label']} [{row['unit']}]"
        cells = "".join(f" {_cell(row.get(s)):>24}" for s in shown)
        ratios = f" {_ratio(row, 'shoal/dask'):>10} {_ratio(row, 'shoal/ray'):>9}"
        load = row.get("load")
        where = f"{load['min']:.1f}..{load['max']:.1f}" if load else "-"
        lines.append(f"{label[:50]:50}{cells}{ratios} {where:>10}")
        if "raw" in row:
            raw = f"  raw socket, same rounds [{row['unit']}]"
            ratios = ", ".join(f"{s}/raw {_ratio(row, f'{s}/raw')}" for s in shown if s in row)
            lines.append(f"{raw:50} {_cell(row['raw']):>24}   {ratios}")
    return "\n".join(lines)


def _cell(cell: dict[str, Any] | None) -> str:
    if not cell:
        return "-"
    return f"{fmt(cell['median'])} ({fmt(cell['min'])}..{fmt(cell['max'])})"


def _ratio(row: dict[str, Any], name: str) -> str:
    return f"{row[name]:.2f}" if name in row else "-"


def fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"
