"""Parsing and checking option values: sizes, memory limits, resources, ports, seconds.

The command line and the Python keywords of LocalCluster check their values
here, so both refuse the same things with the same words. Each function raises
ValueError with a message fit for `argparse` to print on one line.
"""

from __future__ import annotations

import math
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

# A worker process with shoal and numpy imported uses about 80 MiB at rest: a
# limit below this would have its nanny kill it again and again as it starts.
MIN_MEMORY_LIMIT = 128 * 2**20
# Words that mean "no memory limit", besides 0.
NO_LIMIT = ("0", "none")
MAX_PORT = 65535
# A GPU worker may use this fraction of its device before its nanny restarts it.
DEFAULT_DEVICE_MEMORY_FRACTION = 0.8


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


def machine_memory() -> int:
    """This machine's total physical memory in bytes, or its container's memory
    limit when that is lower (see shoal.deploy.cgroup)."""
    import psutil

    from shoal.deploy.cgroup import read_limits

    total = int(psutil.virtual_memory().total)
    limit = read_limits().memory
    return min(total, limit) if limit else total


def memory_limit(value: str | float, nthreads: int, total: int | None = None) -> int:
    """A worker's memory limit in bytes; 0 means none.

    Accepted, as dask users write them: a size ('8GB', '512MiB', 8e9); a plain
    number above 0 and at most 1, the fraction of this machine's memory
    ('0.5'); 'auto', the machine's memory shared by its cores, `nthreads`
    of them for this worker; 0 or 'none' for no limit. `total` is the
    machine's memory (read from the system when None).

    Raises:
        ValueError: not one of those, or a limit below MIN_MEMORY_LIMIT, which
            a worker would cross as it starts.
    """
    text = str(value).strip().lower()
    if text in NO_LIMIT:
        return 0
    if text == "auto":
        from shoal.deploy.cgroup import read_limits, usable_cores

        share = min(1.0, nthreads / read_limits().threads(usable_cores()))
        limit = int((machine_memory() if total is None else total) * share)
    else:
        try:
            number = float(text)
        except ValueError:
            number = math.nan
        if 0 < number <= 1:
            limit = int((machine_memory() if total is None else total) * number)
        else:
            limit = parse_bytes(text)
    if limit == 0:
        return 0
    if limit < MIN_MEMORY_LIMIT:
        raise ValueError(
            f"memory limit {value!r} is {limit} bytes, below the {MIN_MEMORY_LIMIT // 2**20} MiB "
            "a worker needs to start (0 means no limit)"
        )
    return limit


def device_memory_limit(value: str | float, total: int) -> int:
    """A GPU worker's device memory limit in bytes; 0 means none.

    A number above 0 and at most 1, the fraction of the device's `total` bytes
    (0.8, the default, as dask-cuda's); 'auto', that default fraction; a size
    ('64GiB', 6e10); 0 or 'none' for no limit.

    Raises:
        ValueError: none of those.
    """
    text = str(value).strip().lower()
    if text in NO_LIMIT:
        return 0
    if text == "auto":
        return int(total * DEFAULT_DEVICE_MEMORY_FRACTION)
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if 0 < number <= 1:
        return int(total * number)
    return parse_bytes(text)


# Words that turn a memory threshold off.
OFF = ("off", "false", "none")


def fraction(text: str) -> float | None:
    """A memory threshold from the command line: '0.7' -> 0.7; 'off' -> None.

    Raises:
        ValueError: not a number above 0 and at most 1, nor one of OFF.
    """
    if text.strip().lower() in OFF:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= 1:
        raise ValueError(
            f"not a fraction of the memory limit: {text!r} (above 0, at most 1, or off)"
        )
    return value


def parse_resources(text: str) -> dict[str, float]:
    """'GPU=1,MEM=8e9' -> {'GPU': 1.0, 'MEM': 8e9}.

    Raises:
        ValueError: an item is not NAME=NUMBER, a number is negative or not
            finite, or a name is given twice.
    """
    resources: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, amount = item.partition("=")
        name = name.strip()
        try:
            value = float(amount)
        except ValueError:
            value = -1.0
        if not sep or not name or not (0 <= value < math.inf):
            raise ValueError(
                f"not a resource: {item!r} (expected NAME=NUMBER, a finite number "
                "at least 0, e.g. GPU=1)"
            )
        if name in resources:
            raise ValueError(f"resource {name!r} is given twice in {text!r}")
        resources[name] = value
    return resources


def check_resources(resources: object) -> dict[str, float]:
    """A resources mapping given from Python, checked like --resources.

    Raises:
        TypeError: not a dict of str to numbers.
        ValueError: an amount that is negative or not finite.
    """
    if not isinstance(resources, dict):
        raise TypeError(f"resources must be a dict such as {{'GPU': 1}}, not {resources!r}")
    out: dict[str, float] = {}
    for name, amount in resources.items():
        if not isinstance(name, str) or not name or isinstance(amount, bool):
            raise TypeError(f"resources must map names to numbers, not {name!r}: {amount!r}")
        if not isinstance(amount, int | float):
            raise TypeError(f"resource {name!r} must be a number, not {amount!r}")
        if not 0 <= amount < math.inf:
            raise ValueError(f"resource {name!r} must be finite and at least 0, not {amount!r}")
        out[name] = float(amount)
    return out


def port(text: str) -> int:
    """A TCP port to listen on: 0 (any free one) to 65535.

    Raises:
        ValueError: not a whole number in that range.
    """
    try:
        number = int(text)
    except ValueError:
        raise ValueError(f"not a port number: {text!r}") from None
    if not 0 <= number <= MAX_PORT:
        raise ValueError(f"port must be from 0 to {MAX_PORT}, not {number}")
    return number


def count(text: str, least: int) -> int:
    """A whole number at least `least` ('4' -> 4).

    Raises:
        ValueError: not a whole number, or below `least`.
    """
    try:
        number = int(text)
    except ValueError:
        raise ValueError(f"not a whole number: {text!r}") from None
    if number < least:
        raise ValueError(f"must be at least {least}, not {number}")
    return number


def seconds(text: str | float) -> float:
    """A duration: a finite number of seconds above 0.

    Raises:
        ValueError: not a number, not above 0, or not finite (nan, inf).
    """
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ValueError(f"not a number of seconds: {text!r}") from None
    if not 0 < value < math.inf:
        raise ValueError(f"must be a finite number of seconds above 0, not {text}")
    return value
