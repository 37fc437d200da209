"""How often refused connections are logged: a few lines per peer host, then a count.

A stranger can open thousands of connections a second, each refused; a
WARNING for each would flood the log and bury everything else. Pure: the
listener passes in the time and logs the lines this returns.
"""

from __future__ import annotations

from dataclasses import dataclass

# Refusals logged in full per host in each window; the rest are counted.
REFUSALS_LOGGED = 5
REFUSAL_WINDOW_S = 10.0
# Hosts tracked at once; the oldest window is closed (and summarised) first.
REFUSAL_HOSTS = 1024


@dataclass(frozen=True, slots=True)
class Summary:
    """Refusals of one host left out of the log in one window: how many, over how
    many seconds, and the last one's reason."""

    host: str
    count: int
    seconds: float
    last_reason: str

    def __str__(self) -> str:
        return (
            f"refused {self.count} more connection(s) from {self.host} in the last "
            f"{self.seconds:.0f} s, not logged one by one (the last: {self.last_reason})"
        )


class _Window:
    __slots__ = ("last_reason", "logged", "start", "suppressed")

    def __init__(self, start: float) -> None:
        self.start = start
        self.logged = 0
        self.suppressed = 0
        self.last_reason = ""


class RefusalLog:
    """Decides which refusals are logged in full and summarises the others.

    Each host gets a window of `window_s` seconds from its first refusal: the
    first `burst` refusals in it are logged, the others only counted; when the
    window is over (seen at the next refusal from anyone, or at `close()`),
    one line says how many were left out and the last reason.
    """

    def __init__(
        self,
        burst: int = REFUSALS_LOGGED,
        window_s: float = REFUSAL_WINDOW_S,
        max_hosts: int = REFUSAL_HOSTS,
    ) -> None:
        self.burst = burst
        self.window_s = window_s
        self.max_hosts = max_hosts
        # By host, oldest window first: windows are as long as each other, so
        # the ones that are over are always at the front.
        self._windows: dict[str, _Window] = {}

    def refused(self, host: str, reason: str, now: float) -> tuple[bool, list[Summary]]:
        """One connection from `host` was refused for `reason`.

        Returns whether to log this refusal in full, and summaries now due.
        """
        due = self._expire(now)
        window = self._windows.get(host)
        if window is None:
            if len(self._windows) >= self.max_hosts:
                oldest = next(iter(self._windows))
                due.extend(self._summary(oldest, self._windows.pop(oldest), now))
            window = self._windows[host] = _Window(now)
        if window.logged < self.burst:
            window.logged += 1
            return True, due
        window.suppressed += 1
        window.last_reason = reason
        return False, due

    def close(self, now: float) -> list[Summary]:
        """Summaries of every open window (the listener stops)."""
        due: list[Summary] = []
        for host, window in self._windows.items():
            due.extend(self._summary(host, window, now))
        self._windows.clear()
        return due

    def expire(self, now: float) -> list[Summary]:
        """Summaries of the windows that are over by `now` (closed meanwhile)."""
        return self._expire(now)

    @property
    def pending(self) -> bool:
        """Some open window has refusals left out, to be summarised when it ends."""
        return any(window.suppressed for window in self._windows.values())

    def _expire(self, now: float) -> list[Summary]:
        due: list[Summary] = []
        windows = self._windows
        while windows:
            host, window = next(iter(windows.items()))
            if now < window.start + self.window_s:
                break
            del windows[host]
            due.extend(self._summary(host, window, now))
        return due

    def _summary(self, host: str, window: _Window, now: float) -> list[Summary]:
        if not window.suppressed:
            return []
        return [Summary(host, window.suppressed, now - window.start, window.last_reason)]
