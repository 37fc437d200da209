"""Parsing command-line values: byte sizes and resource lists.

Each parser raises ValueError with a message fit for `argparse` to print.
"""

from __future__ import annotations

import re

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


def parse_bytes(text: str) -> int:
    """'8e9', '4GB', '512MiB', '0' -> bytes.

    Raises:
        ValueError: not a number with an optional unit (B, kB, MB, GB, TB, KiB...).
    """
    match = _SIZE.match(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise ValueError(f"not a size: {text!r} (try 8e9, 4GB or 512MiB)")
    return int(float(match.group(1)) * _UNITS[unit])


def parse_resources(text: str) -> dict[str, float]:
    """'GPU=1,MEM=8e9' -> {'GPU': 1.0, 'MEM': 8e9}.

    Raises:
        ValueError: an item is not NAME=NUMBER, or a number is negative.
    """
    resources: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, amount = item.partition("=")
        try:
            value = float(amount)
        except ValueError:
            value = -1.0
        if not sep or not name.strip() or value < 0:
            raise ValueError(f"not a resource: {item!r} (expected NAME=NUMBER, e.g. GPU=1)")
        resources[name.strip()] = value
    return resources
