"""Strings a peer sent, made safe to put in a log line or an error message.

A peer chooses every character of a reason, a name or a version: unescaped,
a newline in one forges a log line of its own. Nothing here decides anything.
"""

from __future__ import annotations

# Longer texts are cut: a peer must not make one log line megabytes long.
PEER_TEXT_LIMIT = 200


def peer_text(value: str, limit: int = PEER_TEXT_LIMIT) -> str:
    """`value` with every non-printable character escaped (a newline as `\\n`),
    cut to `limit` characters with "..." after it when it was longer."""
    cut = value[:limit]
    if not cut.isprintable():
        cut = "".join(c if c.isprintable() else repr(c)[1:-1] for c in cut)
    return cut + "..." if len(value) > limit else cut
