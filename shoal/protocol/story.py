"""The story told when a core raises: which keys an event names, and the
recent transitions of those keys as text.

Both shells (scheduler and worker) log it once, in the ERROR line of an
internal error. Nothing here decides anything or reads a core's state.
"""

from __future__ import annotations

from collections.abc import Sequence

from shoal.errors import InvalidTransition

# (key, start, finish, stimulus, now): the shape of both cores' history entries.
Entry = tuple[object, str, str, object, float]

# The fields of messages and events that hold keys, single or many.
_ONE_KEY = ("key",)
_MANY_KEYS = ("keys", "tasks", "data", "who_has")


def keys_named(event: object, exc: BaseException | None = None, limit: int = 20) -> list[object]:
    """The keys an internal error is about: the key of an InvalidTransition, then
    those `event` names, at most `limit` (a graph names thousands)."""
    found: dict[object, None] = {}
    if isinstance(exc, InvalidTransition):
        found[exc.key] = None
    for name in _ONE_KEY:
        key = getattr(event, name, None)
        if key is not None:
            found[key] = None
    for name in _MANY_KEYS:
        many = getattr(event, name, None)
        if isinstance(many, dict | tuple | list):
            for key in many:
                if len(found) >= limit:
                    return list(found)
                found[key] = None
    return list(found)[:limit]


def tell(entries: Sequence[Entry]) -> str:
    """A story as text, one line an entry: `key: start -> finish (stimulus S, t=now)`."""
    if not entries:
        return "  (no recorded transitions)"
    return "\n".join(
        f"  {key!r}: {start} -> {finish} (stimulus {stimulus}, t={now:.3f})"
        for key, start, finish, stimulus, now in entries
    )
