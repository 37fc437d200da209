"""The worker core's record of its latest transitions, and their story.

Each entry is (key, start, finish, stimulus, now), the stimulus naming the
event that made it. Nothing here makes decisions.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection

Entry = tuple[object, str, str, str, float]


class TransitionLog(deque[Entry]):
    """A bounded deque of entries, oldest first; `story` picks those of some keys."""

    def story(self, keys: Collection[object], limit: int = 50) -> list[Entry]:
        """The last `limit` entries about `keys`, oldest first (for error reports)."""
        return [entry for entry in self if entry[0] in keys][-limit:]
