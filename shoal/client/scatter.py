"""Scatter: the client puts its own values on workers, straight to their data servers.

The values travel to the workers (not through the scheduler); the scheduler
then hears where they are with one AddData and treats them as results held
there. Keys name the content, so scattering the same value twice gives the
same key.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from shoal.client.link import SchedulerLink
from shoal.client.pool import DataPool, Key
from shoal.errors import CommClosedError, ShoalError
from shoal.protocol.messages import AddData
from shoal.protocol.serialize import Serialized, serialize

log = logging.getLogger(__name__)


def flatten(data: Any) -> tuple[list[Any], Callable[[list[Any]], Any]]:
    """The values to scatter from `data`, and how to give their futures its shape:
    a list, tuple or set gives a list, a dict a dict, anything else one future."""
    if isinstance(data, dict):
        names = list(data)
        return list(data.values()), lambda futures: dict(zip(names, futures, strict=True))
    if isinstance(data, list | tuple | set | frozenset):
        return list(data), list
    return [data], lambda futures: futures[0]


def scatter_key(payload: Serialized, typename: str, by_content: bool) -> Key:
    """`<type>-<hash of the pickled bytes>`, or a random suffix without `by_content`."""
    if not by_content:
        return f"{typename}-{uuid.uuid4().hex}"
    digest = hashlib.blake2b(digest_size=16)
    for frame in payload.frames:
        digest.update(frame)
    return f"{typename}-{digest.hexdigest()}"


def prepare(values: Iterable[Any], by_content: bool) -> list[tuple[Key, Serialized]]:
    """Pickle each value and name it (in the caller's thread).

    Raises:
        SerializationError: a value cannot be pickled.
    """
    entries = []
    for value in values:
        typename = type(value).__name__
        payload = serialize(value, f"scattered {typename}")
        entries.append((scatter_key(payload, typename, by_content), payload))
    return entries


async def choose_workers(link: SchedulerLink, workers: Iterable[str] | str | None) -> list[str]:
    """Data addresses of the workers to scatter to, in joining order.

    Raises:
        ValueError: none of `workers` (names or addresses) is in the cluster.
        TimeoutError: no worker joined within the client's timeout.
    """
    await link.wait_for_workers(1, link.timeout)
    info = await link.scheduler_info()
    everyone = [(name, w["address"]) for name, w in info["workers"].items()]
    if workers is None:
        return [address for _, address in everyone]
    allowed = {workers} if isinstance(workers, str) else set(workers)
    chosen = [address for name, address in everyone if name in allowed or address in allowed]
    if not chosen:
        raise ValueError(f"no worker of the cluster is among {sorted(allowed)!r}")
    return chosen


async def put(
    link: SchedulerLink,
    pool: DataPool,
    entries: list[tuple[Key, Serialized]],
    targets: list[str],
    broadcast: bool,
    start: int,
) -> None:
    """Put the values on `targets` (every one, or in turn from `start`), then tell
    the scheduler which worker holds what.

    Raises:
        ShoalError: a value could be put on no worker (the workers refused it or
            could not be reached); the others are registered all the same.
        CommClosedError: the scheduler connection is lost.
    """
    orders: dict[str, dict[Key, Serialized]] = {}
    for i, (key, payload) in enumerate(entries):
        chosen = targets if broadcast else [targets[(start + i) % len(targets)]]
        for address in chosen:
            orders.setdefault(address, {})[key] = payload
    async with asyncio.TaskGroup() as group:
        tasks = {a: group.create_task(_put_one(pool, a, data)) for a, data in orders.items()}
    who_has: dict[Key, list[str]] = {key: [] for key, _ in entries}
    for address, task in tasks.items():
        for key in task.result():
            who_has[key].append(address)
    stored = {key: tuple(holders) for key, holders in who_has.items() if holders}
    sizes = {key: payload.nbytes for key, payload in entries if key in stored}
    names = {key: payload.typename for key, payload in entries if key in stored}
    if stored:
        link.send(AddData(who_has=stored, nbytes=sizes, typenames=names))
    lost = [key for key in who_has if key not in stored]
    if lost:
        raise ShoalError(f"no worker took the scattered values {lost[:10]!r}; see the log")


async def _put_one(pool: DataPool, address: str, data: dict[Key, Serialized]) -> tuple[Key, ...]:
    """The keys the worker at `address` now holds; none when it cannot be reached."""
    try:
        reply = await pool.put_data(address, data)
    except (OSError, TimeoutError, CommClosedError) as exc:
        log.warning("scatter to %s failed: %s", address, exc)
        return ()
    return reply.keys
