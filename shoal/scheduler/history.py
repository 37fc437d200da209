"""The scheduler core's record of its latest transitions, kept small.

Each transition is (key, start, finish, stimulus, now): the stimulus is the
number of the call to `handle` or `lost` that made it. The five lie flat in a
bounded deque, one slot each: 40 bytes a transition, where a tuple per
transition takes 88. Nothing here makes decisions. `story` tells what
happened to some keys, for the one ERROR line of an internal error.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Collection, Iterator

Entry = tuple[object, str, str, int, float]


class History:
    """The last `size` transitions, oldest first when read.

    `record((key, start, finish, stimulus, now))` adds one: it is the deque's
    own extend, so that the core pays one call in C per transition.
    """

    __slots__ = ("_flat", "record")

    def __init__(self, size: int) -> None:
        # Five slots per entry and a multiple of five long: dropping the oldest
        # entry drops all five of its slots.
        self._flat: deque = deque(maxlen=5 * size)
        self.record = self._flat.extend

    def __len__(self) -> int:
        return len(self._flat) // 5

    def __iter__(self) -> Iterator[Entry]:
        it = iter(self._flat)
        return zip(it, it, it, it, it, strict=True)

    def __reversed__(self) -> Iterator[Entry]:
        """Newest first, lazily: reading the last few costs a few steps, not the whole."""
        it = reversed(self._flat)
        for now, stimulus, finish, start, key in zip(it, it, it, it, it, strict=True):
            yield key, start, finish, stimulus, now

    def tail(self, n: int) -> list[Entry]:
        """The last `n` entries, oldest first."""
        return list(itertools.islice(reversed(self), n))[::-1]

    def story(self, keys: Collection[object], limit: int = 50) -> list[Entry]:
        """The last `limit` entries about `keys`, oldest first.

        Walks the whole record: for an error report, never for a decision.
        """
        return [entry for entry in self if entry[0] in keys][-limit:]
