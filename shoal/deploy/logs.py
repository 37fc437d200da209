"""How the `shoal` command logs: text for people, or one JSON object a line.

Only the CLI configures handlers (nothing else in shoal does). A record may
carry `event` (what happened, e.g. "worker-died") and `fields` (its details)
as `extra`: the JSON format gives them as keys of their own.
"""

from __future__ import annotations

import datetime
import json
import logging

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JSONFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message,
    the event and its fields when the record has them, and the traceback."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        out: dict[str, object] = {
            "time": when.isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        event = getattr(record, "event", None)
        if event is not None:
            out["event"] = event
            fields = getattr(record, "fields", None)
            if isinstance(fields, dict):
                for name, value in fields.items():
                    out.setdefault(name, value)
        if record.exc_info:
            out["traceback"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(level: str, log_format: str = "text") -> None:
    """Log to stderr at `level` ("info", ...) as "text" or "json"."""
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])
