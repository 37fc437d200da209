"""The same core's cluster-wide requests: restarting every worker, and files
every worker gets (those that join later too).

`restart-workers` forgets every key of every client (each hears which of its
keys were cancelled), drops the datasets, and asks the nanny of each worker
to start it afresh; the worker is removed at once as if it had left, so its
death counts against nothing. Workers without a nanny stay, emptied.
Uploaded files are kept here unopened and sent to each worker that registers,
before any task. A mixin of SchedulerState (shoal.scheduler.state); no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shoal.protocol import messages as m
from shoal.scheduler.core import CoreBase
from shoal.scheduler.model import Send

RESTART_REASON = "the cluster restarted"


def upload_problem(filename: str) -> str | None:
    """Why a file may not be uploaded under `filename`, or None."""
    if not filename or "/" in filename or "\\" in filename or filename.startswith("."):
        return f"a file to upload needs a plain name, not {filename!r}"
    if not filename.endswith((".py", ".zip", ".egg")):
        return f"only .py, .zip and .egg files can be uploaded, not {filename!r}"
    return None


class ClusterRestarts(CoreBase):
    """Restarts and uploads (see SchedulerState)."""

    uploads: dict[str, bytes]

    def _restart_handlers(self) -> dict[tuple[str, type[m.Message]], Callable[[str, Any], None]]:
        self.uploads = {}  # filename -> contents, in the order uploaded
        return {
            ("client", m.RestartWorkers): self._restart_workers,
            ("client", m.UploadFile): self._upload_file,
        }

    def _restart_workers(self, peer: str, msg: m.RestartWorkers) -> None:
        before = len(self.placement.workers)
        for client in list(self.clients.values()):
            keys = tuple(ts.key for ts in client.wants)
            if client.peer in self.roles and keys:  # a connection: keepers hear nothing
                self._send(client.peer, m.KeysCancelled(keys=keys, reason=RESTART_REASON))
            self._remove_client(client)
            if client.peer not in self.roles:
                del self.clients[client.peer]
        self._dropped_keepers()
        restarting = 0
        for ws in list(self.placement.workers.values()):
            nanny = self.nanny_ids.get(ws.nanny_id) if ws.nanny_id else None
            if nanny is None:
                continue
            self._remove_worker(ws)  # on purpose: its end counts against nothing
            self._send(nanny.peer, m.RestartWorker(reason=RESTART_REASON))
            restarting += 1
        self._send(
            peer,
            m.WorkersRestarting(restarting=restarting, workers=before, request_id=msg.request_id),
        )

    def _upload_file(self, peer: str, msg: m.UploadFile) -> None:
        problem = upload_problem(msg.filename)
        if problem is None:
            self.uploads.pop(msg.filename, None)  # a new version goes last
            self.uploads[msg.filename] = msg.data
        self._send(peer, m.FileStored(request_id=msg.request_id, error=problem or ""))

    def _register_worker(self, peer: str, msg: m.RegisterWorker) -> None:
        """Register as usual; a worker that joins gets the uploaded files first."""
        at = len(self._out)
        super()._register_worker(peer, msg)
        if not self.uploads or peer not in self.workers:
            return
        files = [
            Send(peer, m.StoreFile(filename=name, data=data)) for name, data in self.uploads.items()
        ]
        out = self._out
        for i in range(at, len(out)):  # right after worker-registered, before any task
            command = out[i]
            if type(command) is Send and type(command.msg) is m.WorkerRegistered:
                out[i + 1 : i + 1] = files
                return
