"""The audit log writer: one JSON object per line, flushed as it is written.

Fed by the Audit commands of the core (graphs, cancels, workers joining and
dying) and by the shell's connection events (accepted, refused, revoked,
tokens reloaded). Each line holds `time` (UTC, ISO 8601), `event` and the
event's fields: names, counts, reasons; never a payload, never a secret.
Rotating is the operator's tool's job: `reopen()` (on SIGHUP) starts writing
to the path afresh.
"""

from __future__ import annotations

import datetime
import json
import logging
from typing import IO

log = logging.getLogger(__name__)


def audit_line(event: str, fields: dict[str, object], when: float) -> str:
    """One line of the log: the event at `when` (seconds since the epoch)."""
    stamp = datetime.datetime.fromtimestamp(when, datetime.UTC).isoformat(timespec="milliseconds")
    record = {"time": stamp.replace("+00:00", "Z"), "event": event, **fields}
    # ensure_ascii: a peer's name cannot put a raw control character in the file.
    return json.dumps(record, ensure_ascii=True, separators=(",", ":"), default=str) + "\n"


class AuditLog:
    """Appends audit events to the file at `path`.

    Raises:
        OSError: from the constructor, when the file cannot be opened.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.lines = 0  # written since it was opened first
        self.failed = 0  # lines that could not be written
        self._file: IO[str] | None = self._open()

    def _open(self) -> IO[str]:
        return open(self.path, "a", encoding="ascii")

    def write(self, event: str, fields: dict[str, object], when: float) -> None:
        """Write and flush one event. A failed write is logged (once until the next
        success) and counted; the scheduler keeps running."""
        line = audit_line(event, fields, when)
        try:
            if self._file is None:
                self._file = self._open()
            self._file.write(line)
            self._file.flush()
        except OSError as exc:
            if not self.failed:
                log.error("cannot write the audit log %s: %s", self.path, exc)
            self.failed += 1
            return
        if self.failed:
            log.warning("audit log %s written again; %d line(s) were lost", self.path, self.failed)
            self.failed = 0
        self.lines += 1

    def reopen(self) -> None:
        """Close the file and open the path again (after the operator moved it)."""
        self.close()
        try:
            self._file = self._open()
        except OSError as exc:
            log.error("cannot reopen the audit log %s: %s", self.path, exc)

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError as exc:
                log.error("closing the audit log %s: %s", self.path, exc)
            self._file = None
