"""The HTTP side of a scheduler or worker process (tornado), guarded like its TCP port.

Serves the routes a process gives it on its event loop: beyond loopback every
route but /health and /ready needs the cluster token as a bearer header (or
the cookie the dashboard page sets from `?token=`), and the server speaks TLS
when the cluster does. Also here: what every process measures of itself for
/metrics (event-loop lag, garbage collection time). Nothing here knows about
tasks; the scheduler and the worker bring their own routes and collectors.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import hmac
import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import tornado.escape
import tornado.httpserver
import tornado.netutil
import tornado.web
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from shoal.protocol.address import parse_address
from shoal.protocol.tls import TLSConfig

log = logging.getLogger(__name__)

# Routes anyone who reaches the port may read: they tell only whether it is up.
OPEN_ROUTES = frozenset({"/health", "/ready"})
TOKEN_COOKIE = "shoal-token"
# How often the event loop is sampled for lag.
LAG_SAMPLE_S = 0.1


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an IP address) is this machine's loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Guard:
    """Who may use the HTTP routes: loopback peers, and others with the token."""

    def __init__(self, token: str | bytes | None) -> None:
        self.token = token.encode() if isinstance(token, str) else token

    def allows(self, handler: tornado.web.RequestHandler) -> bool:
        remote = handler.request.remote_ip or ""
        if is_loopback(remote):
            return True
        if self.token is None:  # listening beyond loopback without a token was allowed
            return True
        given = _bearer(handler.request.headers.get("Authorization", ""))
        if given is None:
            cookie = handler.get_cookie(TOKEN_COOKIE)
            given = cookie.encode() if cookie else None
        return given is not None and hmac.compare_digest(given, self.token)


def _bearer(header: str) -> bytes | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip().encode()


class Handler(tornado.web.RequestHandler):
    """The base of every route: the guard runs before each request."""

    # What a route shows (for token roles): "health", "metrics" or "read".
    role: ClassVar[str] = "read"

    def initialize(self, **options: Any) -> None:
        self.given = options

    def prepare(self) -> None:
        if self.request.path in OPEN_ROUTES:
            return
        guard: Guard = self.settings["shoal_guard"]
        if not guard.allows(self):
            self.set_status(401)
            self.set_header("WWW-Authenticate", 'Bearer realm="shoal"')
            self.finish("the cluster token is needed (Authorization: Bearer TOKEN)\n")

    def set_default_headers(self) -> None:
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")

    def write_json(self, data: object) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(tornado.escape.json_encode(data))


class HealthHandler(Handler):
    """Liveness: the event loop answers."""

    role = "health"

    def get(self) -> None:
        self.finish("ok\n")


class ReadyHandler(Handler):
    """Readiness: `ready()` gives None when ready, else why not (503)."""

    role = "health"

    def get(self) -> None:
        ready: Callable[[], str | None] = self.given["ready"]
        why = ready()
        if why is None:
            self.finish("ready\n")
        else:
            self.set_status(503)
            self.finish(f"not ready: {why}\n")


class MetricsHandler(Handler):
    """The Prometheus text format of the process's registry."""

    role = "metrics"

    def get(self) -> None:
        registry: CollectorRegistry = self.given["registry"]
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(generate_latest(registry))


class LoopWatch:
    """Samples the event loop's lag every LAG_SAMPLE_S: the latest lag, and the
    longest stall since the last scrape (a long step of the core shows here)."""

    def __init__(self) -> None:
        self.lag_s = 0.0
        self.longest_s = 0.0  # since the last read of `take_longest`
        self.stalled_s = 0.0  # total lag seen

    async def run(self) -> None:
        while True:
            start = time.monotonic()
            await asyncio.sleep(LAG_SAMPLE_S)
            lag = max(0.0, time.monotonic() - start - LAG_SAMPLE_S)
            self.lag_s = lag
            self.stalled_s += lag
            self.longest_s = max(self.longest_s, lag)

    def take_longest(self) -> float:
        longest, self.longest_s = self.longest_s, self.lag_s
        return longest


class GCTimer:
    """Seconds the garbage collector ran in this process, by generation. One per
    process (see `gc_timer`): it hooks into gc.callbacks."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self._started = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started:
            generation = min(max(info.get("generation", 0), 0), 2)
            self.seconds[generation] += time.perf_counter() - self._started
            self._started = 0.0


_gc_timer: GCTimer | None = None


def gc_timer() -> GCTimer:
    global _gc_timer
    if _gc_timer is None:
        _gc_timer = GCTimer()
    return _gc_timer


class ProcessMetrics:
    """A collector of what every shoal process reports about itself."""

    def __init__(self, prefix: str, loop: LoopWatch) -> None:
        self.prefix, self.loop, self.gc = prefix, loop, gc_timer()

    def collect(self) -> Iterator[Metric]:
        p = self.prefix
        yield GaugeMetricFamily(
            f"{p}_event_loop_lag_seconds", "Latest lag of the event loop", self.loop.lag_s
        )
        yield GaugeMetricFamily(
            f"{p}_event_loop_longest_stall_seconds",
            "Longest time the event loop was held up since the last scrape",
            self.loop.take_longest(),
        )
        yield CounterMetricFamily(
            f"{p}_event_loop_stall_seconds",
            "Total lag of the event loop (the sum of sampled lags)",
            self.loop.stalled_s,
        )
        gc_seconds = CounterMetricFamily(
            f"{p}_gc_seconds", "Seconds spent in garbage collection", labels=["generation"]
        )
        for generation, seconds in enumerate(self.gc.seconds):
            gc_seconds.add_metric([str(generation)], seconds)
        yield gc_seconds


def registry_for(prefix: str, loop: LoopWatch, *collectors: Any) -> CollectorRegistry:
    """A registry of the process's own metrics, the standard process and Python
    ones (prometheus-client's), and `collectors`."""
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    registry.register(ProcessMetrics(prefix, loop))
    for collector in collectors:
        registry.register(collector)
    return registry


def _log_request(handler: tornado.web.RequestHandler) -> None:
    """Requests at DEBUG (a scraper calls every few seconds); refusals at INFO."""
    status = handler.get_status()
    level = logging.DEBUG if status < 400 else logging.INFO
    request = handler.request
    log.log(level, "%d %s %s from %s", status, request.method, request.path, request.remote_ip)


class WebServer:
    """An HTTP(S) server for `routes` at `host`:`port` (0: any free port).

    `address` is http(s)://host:port once `start()` returned. Beyond loopback
    without a token it refuses to start unless `allow_insecure`. With
    `fallback`, a port already taken is replaced by any free one (a warning
    says so), as for a default port.
    """

    def __init__(
        self,
        routes: list[Any],
        *,
        host: str,
        port: int,
        token: str | bytes | None = None,
        tls: TLSConfig | None = None,
        allow_insecure: bool = False,
        static_path: str | None = None,
        fallback: bool = False,
    ) -> None:
        self.host, self.port, self.fallback = host, port, fallback
        self._token, self._tls, self._allow_insecure = token, tls, allow_insecure
        settings: dict[str, Any] = {"shoal_guard": Guard(token), "log_function": _log_request}
        if static_path is not None:
            settings["static_path"] = static_path
        self.app = tornado.web.Application(routes, **settings)
        self.address = ""
        self.loop = LoopWatch()
        self._server: tornado.httpserver.HTTPServer | None = None
        self._watch: asyncio.Task[None] | None = None

    async def start(self) -> WebServer:
        """Bind and serve.

        Raises:
            PermissionError: beyond loopback without a token (see allow_insecure).
            OSError: the port cannot be bound.
        """
        host = self.host.strip("[]")
        if self._token is None and not is_loopback(host) and not self._allow_insecure:
            raise PermissionError(
                f"HTTP on {self.host} is beyond loopback: give a cluster token "
                "(the endpoints then need it as a bearer header), or allow_insecure"
            )
        try:
            sockets = tornado.netutil.bind_sockets(self.port, host or None, family=socket.AF_UNSPEC)
        except OSError as exc:
            if not (self.fallback and self.port and exc.errno == errno.EADDRINUSE):
                raise
            log.warning("HTTP port %d is taken; serving HTTP on a free port instead", self.port)
            sockets = tornado.netutil.bind_sockets(0, host or None, family=socket.AF_UNSPEC)
        ssl_options = self._tls.server_context() if self._tls is not None else None
        self._server = tornado.httpserver.HTTPServer(self.app, ssl_options=ssl_options)
        self._server.add_sockets(sockets)
        port = sockets[0].getsockname()[1]
        scheme = "https" if ssl_options is not None else "http"
        shown = f"[{host}]" if ":" in host else host
        self.address = f"{scheme}://{shown}:{port}"
        self._watch = asyncio.create_task(self.loop.run(), name=f"loop watch {self.address}")
        log.info("HTTP endpoints at %s", self.address)
        return self

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
            self._watch = None
        if self._server is not None:
            self._server.stop()
            await self._server.close_all_connections()
            self._server = None


def http_host(address: str) -> str:
    """The host to serve HTTP on for a process listening at `address` (tcp://h:p)."""
    parsed = parse_address(address)
    return "127.0.0.1" if parsed.scheme == "inproc" else parsed.host
