"""The worker core's record of its latest transitions, their story, and counts.

Each entry is (key, start, finish, stimulus, now), the stimulus naming the
event that made it. As entries come, the log keeps how many keys are in each
status (a record is made released, so that status alone goes below zero),
for the worker's /metrics. Nothing here makes decisions.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection

Entry = tuple[object, str, str, str, float]


class TransitionLog(deque[Entry]):
    """A bounded deque of entries, oldest first; `story` picks those of some keys.

    `counts` holds, for each status, the keys moved into it less those moved
    out; `moves` counts (start, finish) pairs (fetches are ("flight", "memory")).
    """

    def __init__(self, maxlen: int) -> None:
        super().__init__(maxlen=maxlen)
        self.counts: dict[str, int] = {}
        self.moves: dict[tuple[str, str], int] = {}

    def append(self, entry: Entry) -> None:
        super().append(entry)
        _, start, finish, _, _ = entry
        counts = self.counts
        counts[start] = counts.get(start, 0) - 1
        counts[finish] = counts.get(finish, 0) + 1
        pair = (start, finish)
        self.moves[pair] = self.moves.get(pair, 0) + 1

    def story(self, keys: Collection[object], limit: int = 50) -> list[Entry]:
        """The last `limit` entries about `keys`, oldest first (for error reports)."""
        return [entry for entry in self if entry[0] in keys][-limit:]
