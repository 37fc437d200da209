"""Fetching values from peer workers: one connection per address, answers matched to
requests, the parts of large answers put together. Counts what it fetched (for
the worker's /metrics). Outcomes go to the shell as FetchDone or FetchFailed.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from typing import Any

from shoal.errors import CommClosedError, ShoalError
from shoal.protocol.answers import Parts
from shoal.protocol.comm import Comm, connect
from shoal.protocol.messages import DataSent, GetData
from shoal.protocol.schema import Message
from shoal.worker.events import FetchDone, FetchFailed, Key

log = logging.getLogger(__name__)


class _Link:
    """One connection to a peer worker and the GetData requests it has not answered,
    with the parts of their answers received so far."""

    __slots__ = ("comm", "parts", "pending")

    def __init__(self) -> None:
        self.comm: Comm | None = None
        self.pending: dict[int, tuple[Key, ...]] = {}
        self.parts: dict[int, Parts] = {}


class PeerFetcher:
    """Fetches values from peer workers: one connection per address, requests matched to
    answers by request_id. Outcomes go to `on_event` as FetchDone or FetchFailed."""

    def __init__(
        self,
        group: asyncio.TaskGroup,
        on_event: Callable[[FetchDone | FetchFailed], None],
        connect_options: dict[str, Any],
    ) -> None:
        self._group = group
        self._on_event = on_event
        self._connect_options = connect_options
        self._links: dict[str, _Link] = {}
        self._request_ids = itertools.count(1)
        self.closing = False
        self.fetches = 0  # answers received whole
        self.fetched_keys = 0
        self.fetched_bytes = 0

    def fetch(self, address: str, keys: tuple[Key, ...]) -> None:
        link = self._links.get(address)
        if link is None:
            link = self._links[address] = _Link()
            self._group.create_task(self._serve_link(address, link), name=f"fetch {address}")
        request_id = next(self._request_ids)
        link.pending[request_id] = keys
        if link.comm is not None:
            self._request(link.comm, request_id, keys)

    @staticmethod
    def _request(comm: Comm, request_id: int, keys: tuple[Key, ...]) -> None:
        try:
            comm.send(GetData(keys=keys, request_id=request_id))
        except CommClosedError:
            log.debug("request %d not sent: the reader reports the closed connection", request_id)

    async def _serve_link(self, address: str, link: _Link) -> None:
        try:
            reason = await self._connect_and_read(address, link)
        finally:
            if self._links.get(address) is link:
                del self._links[address]
            if link.comm is not None:
                link.comm.abort("fetcher done with it")
        # Not reached when cancelled: a worker shutting down reports nothing.
        if link.pending and not self.closing:
            log.warning("fetching from %s failed: %s", address, reason)
            for keys in link.pending.values():
                self._on_event(FetchFailed(address, keys, reason))

    async def _connect_and_read(self, address: str, link: _Link) -> str:
        """Connect, send what is pending, deliver answers; return why the link ended."""
        try:
            link.comm = await connect(address, role="worker", **self._connect_options)
        except (OSError, TimeoutError, ValueError, ShoalError) as exc:
            return f"cannot connect: {exc}"
        for request_id, keys in list(link.pending.items()):
            self._request(link.comm, request_id, keys)
        return await self._read_answers(address, link, link.comm)

    async def _read_answers(self, address: str, link: _Link, comm: Comm) -> str:
        """Deliver answers until the connection ends; return why it ended."""
        while True:
            try:
                msgs = await comm.read()
            except CommClosedError as exc:
                return str(exc)
            reason = self._deliver(address, link, msgs)
            # Not kept in this frame while it waits: the values' memory is the core's
            # to free.
            del msgs
            if reason:
                return reason

    def _deliver(self, address: str, link: _Link, msgs: list[Message]) -> str:
        """Hand answers to the core; why the connection must end, if it must."""
        for msg in msgs:
            if type(msg) is not DataSent:
                return f"unexpected {msg.op} from a peer worker"
            keys = link.pending.get(msg.request_id)
            if keys is None:
                log.warning("%s answered unknown request %d", address, msg.request_id)
                continue
            parts = link.parts.get(msg.request_id)
            if parts is None:
                parts = link.parts[msg.request_id] = Parts(keys)
            answer = parts.add(msg)
            if answer is None:
                continue  # more parts follow
            del link.pending[msg.request_id], link.parts[msg.request_id]
            self.fetches += 1
            self.fetched_keys += len(answer.data)
            self.fetched_bytes += sum(payload.nbytes for payload in answer.data.values())
            self._on_event(FetchDone(address, keys, answer.data, answer.too_large))
        return ""
