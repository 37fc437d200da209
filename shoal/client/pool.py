"""Fetching values from workers: one pooled connection per request, per worker address.

Owns the client's data connections (role "client") and the retry rule: a key
a worker lacks is looked up once more with the scheduler; a key a worker holds
but cannot send within this client's limits fails at once (ValueTooLarge).
Never touches the scheduler connection itself; it is handed a `who_has`
coroutine for that.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

from shoal.errors import CommClosedError, FetchError, ValueTooLarge
from shoal.protocol.answers import Parts
from shoal.protocol.comm import Comm, connect
from shoal.protocol.limits import DEFAULT_LIMITS, Limits
from shoal.protocol.messages import (
    DataSent,
    DataStored,
    FileStored,
    FunctionRan,
    GetData,
    PutData,
    RunFunction,
    StoreFile,
)
from shoal.protocol.schema import Message
from shoal.protocol.serialize import Serialized
from shoal.protocol.tls import TLSConfig

log = logging.getLogger(__name__)

Key = str | tuple[str | int, ...]
WhoHasFn = Callable[[list[Key]], Awaitable[dict[Key, tuple[str, ...]]]]
Answer = TypeVar("Answer", DataSent, DataStored, FunctionRan, FileStored)

# Idle connections kept per worker; more concurrent fetches open more, then close them.
IDLE_PER_WORKER = 2


class DataPool:
    """Connections to workers' data servers, reused between fetches."""

    def __init__(
        self,
        token: str | bytes | None,
        tls: TLSConfig | None,
        timeout: float,
        name: str = "",
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self._token, self._tls, self._timeout, self._name = token, tls, timeout, name
        self.limits = limits  # what this client accepts in one batch from a worker
        self._idle: dict[str, list[Comm]] = {}
        self._busy: set[Comm] = set()
        self._ids = itertools.count(1)
        self._closed = False

    async def _acquire(self, address: str) -> Comm:
        idle = self._idle.get(address)
        while idle:
            comm = idle.pop()
            if not comm.closed:
                self._busy.add(comm)
                return comm
        comm = await connect(
            address, role="client", name=self._name, token=self._token, tls=self._tls,
            timeout=self._timeout, limits=self.limits,
        )  # fmt: skip
        self._busy.add(comm)
        return comm

    def _give_back(self, address: str, comm: Comm) -> None:
        self._busy.discard(comm)
        idle = self._idle.setdefault(address, [])
        if self._closed or comm.closed or len(idle) >= IDLE_PER_WORKER:
            comm.abort("not needed any more")
        else:
            idle.append(comm)

    async def get_data(self, address: str, keys: list[Key]) -> DataSent:
        """Ask the worker at `address` for `keys`; the answer's parts put together.

        Raises:
            OSError, TimeoutError, CommClosedError: the worker could not be reached.
            HandshakeError: the worker refused the connection.
        """
        parts = Parts(keys)
        return await self._exchange(
            address, lambda rid: GetData(keys=tuple(keys), request_id=rid), DataSent, parts.add
        )

    async def put_data(self, address: str, data: dict[Key, Serialized]) -> DataStored:
        """Hand the worker at `address` values to hold; raises as get_data does."""
        return await self._exchange(
            address, lambda rid: PutData(data=data, request_id=rid), DataStored
        )

    async def run_function(self, address: str, call: Serialized) -> FunctionRan:
        """Have the worker at `address` call the pickled `(func, args, kwargs)` outside
        its tasks (Client.run); raises as get_data does."""
        make = lambda rid: RunFunction(call=call, request_id=rid)  # noqa: E731
        return await self._exchange(address, make, FunctionRan)

    async def store_file(self, address: str, filename: str, data: bytes) -> FileStored:
        """Have the worker at `address` keep a file tasks import from; raises as get_data."""
        make = lambda rid: StoreFile(filename=filename, data=data, request_id=rid)  # noqa: E731
        return await self._exchange(address, make, FileStored)

    async def _exchange(
        self,
        address: str,
        make: Callable[[int], Message],
        answer: type[Answer],
        whole: Callable[[Answer], Answer | None] = lambda msg: msg,
    ) -> Answer:
        """Send one request; its answer, once `whole` makes one of the parts received."""
        comm = await self._acquire(address)
        reply = None
        try:
            request_id = next(self._ids)
            comm.send(make(request_id))
            while reply is None:
                for msg in await comm.read():
                    if type(msg) is answer and msg.request_id == request_id:
                        reply = whole(msg)
                    else:
                        log.debug("ignoring %s from worker %s", msg.op, address)
        finally:
            if reply is None:  # cancelled or failed midway: the stream is not reusable
                self._busy.discard(comm)
                comm.abort("fetch did not complete")
            else:
                self._give_back(address, comm)
        return reply

    async def fetch(
        self, holders: dict[Key, tuple[str, ...]], who_has: WhoHasFn
    ) -> dict[Key, Serialized]:
        """Values of keys from the workers holding them.

        Each holder is tried in turn; keys none of them gave are looked up once
        with `who_has` and tried again.

        Raises:
            ValueTooLarge: a worker holds a value over this client's limits, naming
                its size and the limits.
            FetchError: naming the keys no worker could provide.
            CommClosedError: the scheduler connection was lost during the lookup.
        """
        values, missing = await self._fetch_round(holders)
        if missing:
            fresh = await who_has(missing)
            more, missing = await self._fetch_round({k: fresh.get(k, ()) for k in missing})
            values.update(more)
        if missing:
            raise FetchError(f"no worker could provide the values of {missing[:10]!r}")
        return values

    async def _fetch_round(
        self, holders: dict[Key, tuple[str, ...]]
    ) -> tuple[dict[Key, Serialized], list[Key]]:
        holders = dict(holders)  # narrowed below as holders turn out to lack keys
        values: dict[Key, Serialized] = {}
        missing: list[Key] = []
        todo = {key: list(addresses) for key, addresses in holders.items()}
        while todo:
            by_address: dict[str, list[Key]] = {}
            for key, addresses in todo.items():
                if addresses:
                    by_address.setdefault(addresses[0], []).append(key)
                else:
                    missing.append(key)
            async with asyncio.TaskGroup() as group:
                asks = {a: group.create_task(self._ask(a, ks)) for a, ks in by_address.items()}
            todo = {}
            for address, task in asks.items():
                got = task.result()
                self._check_sizes(address, got.too_large)
                values.update(got.data)
                for key in _lacking(by_address[address], got.data):
                    todo[key] = holders_left = [a for a in holders[key] if a != address]
                    holders[key] = tuple(holders_left)
        return values, missing

    async def _ask(self, address: str, keys: list[Key]) -> DataSent:
        """What the worker gave of `keys`; nothing when it cannot be reached."""
        try:
            return await self.get_data(address, keys)
        except (OSError, TimeoutError, CommClosedError) as exc:
            log.warning("fetching %d keys from worker %s failed: %s", len(keys), address, exc)
            return DataSent(data={})

    def _check_sizes(self, address: str, too_large: dict[Key, int]) -> None:
        """Every holder of a value has it at the same size: over the limits here is final.

        Raises:
            ValueTooLarge: naming the first such key, its size and the limits.
        """
        if too_large:
            key, nbytes = next(iter(too_large.items()))
            limits = self.limits
            raise ValueTooLarge(
                f"the value of {key!r} ({nbytes} bytes, held by worker {address}) is over "
                f"the limits this client accepts from a worker (max_batch_bytes="
                f"{limits.max_batch_bytes}, max_header_bytes={limits.max_header_bytes}, "
                f"max_frames={limits.max_frames}); the worker keeps it"
            )

    async def close(self) -> None:
        """Close every connection, idle or in use."""
        self._closed = True
        comms = [c for idle in self._idle.values() for c in idle] + list(self._busy)
        self._idle.clear()
        self._busy.clear()
        for comm in comms:
            await comm.close("client closing")


def _lacking(keys: Iterable[Key], got: dict[Key, Serialized]) -> list[Key]:
    return [key for key in keys if key not in got]
