"""Answering get-data within the requester's limits, and putting the parts together.

The holder's rule (`send_data`): one data-sent if it fits, else one part per value
(each flagged `more`, the batches packed by the outbox) and a last part naming the
values that do not fit even alone in `too_large`. A value is never called missing
because it is large. The requester's `Parts` collects the parts of one request.
"""

from __future__ import annotations

import logging
from collections.abc import Collection

from shoal.errors import MessageTooLarge
from shoal.protocol.connection import Comm
from shoal.protocol.messages import DataSent
from shoal.protocol.schema import Key
from shoal.protocol.serialize import Serialized

log = logging.getLogger(__name__)


def send_data(
    comm: Comm, request_id: int, data: dict[Key, Serialized], missing: tuple[Key, ...]
) -> None:
    """Queue the answer to one get-data: within the peer's limits, in parts if need be.

    Raises:
        CommClosedError: the connection is closed.
    """
    try:
        comm.send(DataSent(data=data, request_id=request_id, missing=missing))
        return
    except MessageTooLarge:
        pass  # too large as one message: each value in a part of its own
    too_large: dict[Key, int] = {}
    for key, payload in data.items():
        try:
            comm.send(DataSent(data={key: payload}, request_id=request_id, more=True))
        except MessageTooLarge as exc:
            too_large[key] = payload.nbytes
            log.warning("cannot send the value of %r to %s: %s", key, comm.peer_address, exc)
    comm.send(DataSent(data={}, request_id=request_id, missing=missing, too_large=too_large))


class Parts:
    """The parts of one get-data answer received so far, for the keys asked.

    Values of keys not asked for are dropped, so the parts hold at most one value
    per key asked, however many parts a peer sends.
    """

    __slots__ = ("data", "keys", "too_large")

    def __init__(self, keys: Collection[Key]) -> None:
        self.keys = frozenset(keys)
        self.data: dict[Key, Serialized] = {}
        self.too_large: dict[Key, int] = {}

    def add(self, msg: DataSent) -> DataSent | None:
        """Take one part; the whole answer once its last part arrived, else None."""
        keys = self.keys
        self.data.update((k, v) for k, v in msg.data.items() if k in keys)
        self.too_large.update((k, n) for k, n in msg.too_large.items() if k in keys)
        if msg.more:
            return None
        missing = tuple(k for k in msg.missing if k in keys)
        return DataSent(
            data=self.data, request_id=msg.request_id, missing=missing, too_large=self.too_large
        )
