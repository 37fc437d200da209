"""The side-by-side table: per metric, each system's median with min..max and the ratio.

Values come in as lists, one per repetition; the ratio is shoal's median over
dask's. A "raw" system (the plain-socket baseline of the transfer) is shown
on a line of its own under its metric, with both systems' ratios to it.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str


def spread(values: list[float]) -> dict[str, Any]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "values": values,
    }


def summarize(metrics: list[Metric], values: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
    """`values[metric key][system]` lists -> one JSON-ready row per metric."""
    table: dict[str, Any] = {}
    for metric in metrics:
        row: dict[str, Any] = {"label": metric.label, "unit": metric.unit}
        for system, found in values.get(metric.key, {}).items():
            if found:
                row[system] = spread(found)
        for a, b in (("shoal", "dask"), ("shoal", "raw"), ("dask", "raw")):
            if a in row and b in row and row[b]["median"]:
                row[f"{a}/{b}"] = row[a]["median"] / row[b]["median"]
        table[metric.key] = row
    return table


def format_table(table: dict[str, Any]) -> str:
    columns = ("shoal median (min..max)", "dask median (min..max)")
    head = f"{'metric':52} {columns[0]:>26} {columns[1]:>26} {'shoal/dask':>10}"
    lines = [head, "-" * len(head)]
    for row in table.values():
        label = f"{row['label']} [{row['unit']}]"
        cells = [_cell(row.get(system)) for system in ("shoal", "dask")]
        ratio = _ratio(row, "shoal/dask")
        lines.append(f"{label:52} {cells[0]:>26} {cells[1]:>26} {ratio:>10}")
        if "raw" in row:
            raw = f"  raw socket, same rounds [{row['unit']}]"
            ratios = f"shoal/raw {_ratio(row, 'shoal/raw')}, dask/raw {_ratio(row, 'dask/raw')}"
            lines.append(f"{raw:52} {_cell(row['raw']):>26} {ratios:>37}")
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
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"
