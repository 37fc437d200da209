"""The same core's keepers of keys no client holds: published datasets, and keys
a client fired and forgot.

A keeper is a ClientInfo with no connection behind it (its peer is a name no
connection has, so reports to it go nowhere): a dataset's keeper holds the
dataset's keys until it is unpublished; the fire-and-forget keeper holds each
of its keys until the key is done. Datasets' payloads are the client's pickled
structure, kept unopened: the scheduler never unpickles. A mixin of
SchedulerState (shoal.scheduler.state); it never does I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from shoal.protocol import messages as m
from shoal.protocol.serialize import Serialized
from shoal.scheduler.core import CoreBase
from shoal.scheduler.model import ClientInfo, Send, Status, TaskState

FIRE_AND_FORGET = "fire-and-forget"
DATASET = "dataset:"  # + the dataset's name: the peer of its keeper
KEEPERS = (FIRE_AND_FORGET, DATASET)


def is_keeper(client: ClientInfo) -> bool:
    return client.peer.startswith(KEEPERS)


class ClusterKeepers(CoreBase):
    """Datasets and fire-and-forget (see SchedulerState)."""

    datasets: dict[str, tuple[Serialized, tuple[Any, ...]]]
    _fired_done: list[TaskState]
    _fire_keeper: ClientInfo | None

    def _keeper_handlers(self) -> dict[tuple[str, type[m.Message]], Callable[[str, Any], None]]:
        """The handlers of the messages of keepers and of the cluster-wide helpers."""
        self.datasets = {}  # name -> (payload, keys)
        self._fired_done = []  # fire-and-forget keys done in this call, let go at its end
        self._fire_keeper = None  # while it holds keys (also in self.clients)
        handlers: dict[tuple[str, type[m.Message]], Callable[[str, Any], None]] = {
            ("client", m.PublishDataset): self._publish_dataset,
            ("client", m.UnpublishDataset): self._unpublish_dataset,
            ("client", m.GetDataset): self._get_dataset,
            ("client", m.ListDatasets): self._list_datasets,
            ("client", m.FireAndForget): self._fire_and_forget,
            ("worker", m.TaskSeceded): self._task_seceded,
        }
        handlers.update(self._restart_handlers())
        return handlers

    def _dropped_keepers(self) -> None:
        """Every key was let go (a restart): no dataset or fired key is left."""
        self.datasets.clear()
        self._fire_keeper, self._fired_done = None, []

    def _keeper(self, peer: str, create: bool) -> ClientInfo | None:
        keeper = self.clients.get(peer)
        if keeper is None and create:
            keeper = self.clients[peer] = ClientInfo(peer, peer, peer)
        return keeper

    def _keep(self, keeper: ClientInfo, tasks: Iterable[TaskState]) -> None:
        again: list[TaskState] = []
        for ts in tasks:
            again += self._want_known(keeper, ts)
        self._recompute(again)

    # -- datasets ------------------------------------------------------------------

    def _publish_dataset(self, peer: str, msg: m.PublishDataset) -> None:
        answer = lambda error="": self._send(  # noqa: E731
            peer, m.DatasetAnswer(request_id=msg.request_id, error=error)
        )
        if msg.name in self.datasets and not msg.override:
            return answer(f"a dataset named {msg.name!r} is published already")
        unknown = [key for key in msg.keys if key not in self.tasks]
        if unknown:
            return answer(f"the scheduler does not know the keys {unknown[:5]!r}")
        tasks = [self.tasks[key] for key in msg.keys]
        old = self._keeper(DATASET + msg.name, create=False)
        fresh = ClientInfo(DATASET + msg.name, DATASET + msg.name, msg.name)
        self.clients[fresh.peer] = fresh
        self._keep(fresh, tasks)  # before the old keeper lets go: shared keys stay
        if old is not None:
            self._remove_client(old)
        self.datasets[msg.name] = (msg.payload, tuple(msg.keys))
        return answer()

    def _unpublish_dataset(self, peer: str, msg: m.UnpublishDataset) -> None:
        error = ""
        if self.datasets.pop(msg.name, None) is None:
            error = f"no dataset named {msg.name!r}"
        else:
            keeper = self.clients.pop(DATASET + msg.name)
            self._remove_client(keeper)
        self._send(peer, m.DatasetAnswer(request_id=msg.request_id, error=error))

    def _get_dataset(self, peer: str, msg: m.GetDataset) -> None:
        found = self.datasets.get(msg.name)
        if found is None:
            answer = m.DatasetAnswer(request_id=msg.request_id, error=f"no dataset {msg.name!r}")
        else:  # the client then asks for the keys as for any known key (submit-graph)
            answer = m.DatasetAnswer(request_id=msg.request_id, payload=found[0], keys=found[1])
        self._send(peer, answer)

    def _list_datasets(self, peer: str, msg: m.ListDatasets) -> None:
        names = tuple(sorted(self.datasets))
        self._send(peer, m.DatasetAnswer(request_id=msg.request_id, names=names))

    # -- fire and forget -------------------------------------------------------------

    def _fire_and_forget(self, peer: str, msg: m.FireAndForget) -> None:
        pending = [
            ts
            for key in msg.keys
            if (ts := self.tasks.get(key)) is not None
            and ts.status not in (Status.MEMORY, Status.ERRED)
        ]
        if pending:
            keeper = self._fire_keeper = self._keeper(FIRE_AND_FORGET, create=True)
            assert keeper is not None
            self._keep(keeper, pending)

    def _report_memory(self, ts: TaskState, clients: Iterable[ClientInfo]) -> None:
        super()._report_memory(ts, clients)
        self._note_done(ts)

    def _report_error(self, ts: TaskState, clients: Iterable[ClientInfo]) -> None:
        super()._report_error(ts, clients)
        self._note_done(ts)

    def _note_done(self, ts: TaskState) -> None:
        keeper = self._fire_keeper
        if keeper is not None and ts in keeper.wants:
            self._fired_done.append(ts)

    def _settle_keepers(self) -> None:
        """At the end of a call: the fire-and-forget keeper lets go of its keys that
        are done (not while their transition runs: a cascade must not nest), and
        the reports addressed to keepers are dropped."""
        done, self._fired_done = self._fired_done, []
        keeper = self._fire_keeper
        if keeper is not None or self.datasets:  # what was said to a keeper goes nowhere
            self._out = [
                c for c in self._out if not (type(c) is Send and c.peer.startswith(KEEPERS))
            ]
        if keeper is None:
            return
        for ts in done:
            if ts in keeper.wants:
                self._unwant(keeper, ts)
        if not keeper.wants:
            del self.clients[FIRE_AND_FORGET]
            self._fire_keeper = None
