"""A payload whose unpickling leaves a trace: proof of who ran pickle.loads."""

from __future__ import annotations

UNPICKLED: list[str] = []


def record_unpickling(tag: str) -> str:
    UNPICKLED.append(tag)
    return tag


class SideEffect:
    """Unpickling one appends "unpickled" to UNPICKLED."""

    def __reduce__(self):
        return (record_unpickling, ("unpickled",))
