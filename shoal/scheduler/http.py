"""The scheduler's HTTP endpoints (tornado): /health, /ready, /metrics, /api/v1/*, the page.

A thin shell like server.py: each route reads the core (its tally and worker
records, through shoal.scheduler.views) on the event loop, between messages,
and changes nothing. Guarded and served as shoal.protocol.web says.
"""

from __future__ import annotations

import time
from importlib import resources
from typing import TYPE_CHECKING, Any

from shoal.protocol.comm import EventHook
from shoal.protocol.tls import TLSConfig
from shoal.protocol.tokens import Keyring
from shoal.protocol.web import (
    TOKEN_COOKIE,
    Handler,
    HealthHandler,
    MetricsHandler,
    ReadyHandler,
    WebServer,
    registry_for,
)
from shoal.scheduler import views
from shoal.scheduler.metrics import SchedulerCollector
from shoal.scheduler.tally import desired_workers

if TYPE_CHECKING:
    from shoal.scheduler.server import Scheduler

# The page's files, from the package (setuptools package data).
PAGE_FILES = {
    "index.html": "text/html; charset=utf-8",
    "dashboard.js": "application/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}


def page_files() -> dict[str, tuple[str, bytes]]:
    folder = resources.files("shoal.scheduler") / "dashboard"
    return {name: (kind, (folder / name).read_bytes()) for name, kind in PAGE_FILES.items()}


class _SchedulerHandler(Handler):
    @property
    def scheduler(self) -> Scheduler:
        scheduler: Scheduler = self.given["scheduler"]
        return scheduler

    def _float(self, name: str) -> float:
        text = self.get_query_argument(name, "0")
        try:
            value = float(text)
        except ValueError:
            value = 0.0
        return value if value == value else 0.0  # NaN: none given


class PageHandler(_SchedulerHandler):
    """The dashboard's files. `/?token=...` keeps the token in a cookie for the
    page's own requests (a browser cannot send a bearer header by itself)."""

    def prepare(self) -> None:
        token = self.get_query_argument("token", None)
        if token is not None and self.request.path == "/":
            secure = self.request.protocol == "https"
            self.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict", secure=secure)
            self.redirect("/")
            return
        super().prepare()

    def get(self, name: str = "") -> None:
        files: dict[str, tuple[str, bytes]] = self.given["files"]
        found = files.get(name or "index.html")
        if found is None:
            self.set_status(404)
            self.finish("no such page\n")
            return
        kind, body = found
        self.set_header("Content-Type", kind)
        self.finish(body)


class InfoHandler(_SchedulerHandler):
    def get(self) -> None:
        self.write_json(self.scheduler.state.info())


class WorkersHandler(_SchedulerHandler):
    def get(self) -> None:
        self.write_json({"workers": views.workers(self.scheduler.state)})


class TasksHandler(_SchedulerHandler):
    def get(self) -> None:
        state = self.scheduler.state
        self.write_json({"states": views.task_counts(state), "prefixes": views.prefixes(state)})


class StreamHandler(_SchedulerHandler):
    def get(self) -> None:
        state = self.scheduler.state
        runs = views.stream(state, self._float("since"))
        self.write_json({"now": time.monotonic(), "runs": runs})


class StoryHandler(_SchedulerHandler):
    def get(self) -> None:
        key = self.get_query_argument("key", "")
        if not key:
            self.set_status(400)
            self.write_json({"error": "give the key: /api/v1/story?key=KEY"})
            return
        self.write_json({"key": key, "transitions": views.story(self.scheduler.state, key)})


class EventsHandler(_SchedulerHandler):
    def get(self) -> None:
        self.write_json({"events": views.events(self.scheduler.state)})


class DesiredWorkersHandler(_SchedulerHandler):
    def get(self) -> None:
        state = self.scheduler.state
        self.write_json(
            {"desired_workers": desired_workers(state), "workers": len(state.placement.workers)}
        )


class DashboardDataHandler(_SchedulerHandler):
    def get(self) -> None:
        state = self.scheduler.state
        self.write_json(views.dashboard(state, time.monotonic(), self._float("since")))


def scheduler_ready(scheduler: Scheduler) -> str | None:
    if scheduler.failure is not None:
        return f"stopped by an internal error: {type(scheduler.failure).__name__}"
    if not scheduler.accepting:
        return "not accepting connections"
    return None


def scheduler_web(
    scheduler: Scheduler,
    *,
    host: str,
    port: int,
    keyring: Keyring | None,
    tls: TLSConfig | None,
    allow_insecure: bool,
    fallback: bool = False,
    require_tls: bool = False,
    on_event: EventHook | None = None,
) -> WebServer:
    """The scheduler's HTTP server, not started (see WebServer for `fallback`)."""
    options: dict[str, Any] = {"scheduler": scheduler}
    files = {"scheduler": scheduler, "files": page_files()}
    server = WebServer(
        [],
        host=host,
        port=port,
        keyring=keyring,
        tls=tls,
        allow_insecure=allow_insecure,
        require_tls=require_tls,
        fallback=fallback,
        on_event=on_event,
    )
    registry = registry_for("shoal_scheduler", server.loop, SchedulerCollector(scheduler.state))
    server.add(
        [
            (r"/health", HealthHandler),
            (r"/ready", ReadyHandler, {"ready": lambda: scheduler_ready(scheduler)}),
            (r"/metrics", MetricsHandler, {"registry": registry}),
            (r"/api/v1/info", InfoHandler, options),
            (r"/api/v1/workers", WorkersHandler, options),
            (r"/api/v1/tasks", TasksHandler, options),
            (r"/api/v1/stream", StreamHandler, options),
            (r"/api/v1/story", StoryHandler, options),
            (r"/api/v1/events", EventsHandler, options),
            (r"/api/v1/desired-workers", DesiredWorkersHandler, options),
            (r"/api/v1/dashboard", DashboardDataHandler, options),
            (r"/", PageHandler, files),
            (r"/dashboard/([a-z.]+)", PageHandler, files),
        ]
    )
    return server
