"""The HTTP side of a scheduler or worker process (tornado), guarded like its TCP port.

Serves the routes a process gives it on its event loop. Each route has its
row in shoal.protocol.permissions (the roles whose token may read it):
/health and /ready are open; the others need a token of a role in their row,
as a bearer header (or the cookie the dashboard page sets from `?token=`),
except that a request from loopback without a token has the read role. A
refused request is 401 (no token, or a wrong one) or 403 (a token of another
role, named with the role needed), logged and audited a few per host, then
counted. The server speaks TLS when the cluster does. Also here: what every
process measures of itself for /metrics (event-loop lag, garbage collection
time). Nothing here knows about tasks; the scheduler and the worker bring
their own routes and collectors.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import tornado.escape
import tornado.httpserver
import tornado.netutil
import tornado.web
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from shoal.protocol.address import parse_address
from shoal.protocol.comm import EventHook, RefusalReporter
from shoal.protocol.permissions import ADMIN, OPEN, READ, Role, refusal, role_words, route_roles
from shoal.protocol.refusals import RefusalLog
from shoal.protocol.tls import TLSConfig
from shoal.protocol.tokens import Keyring

log = logging.getLogger(__name__)

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


class Refused:
    """Why a request may not read a route: the HTTP status (401 or 403) and the text."""

    __slots__ = ("status", "text")

    def __init__(self, status: int, text: str) -> None:
        self.status, self.text = status, text


class Guard:
    """Who may read which route: the keyring's tokens, each with its role.

    `token` (one secret, the admin role) or `keyring`; with neither, everyone
    may read everything (a server on loopback, or one allowed to be insecure).
    """

    def __init__(
        self, token: str | bytes | Keyring | None = None, keyring: Keyring | None = None
    ) -> None:
        if isinstance(token, Keyring):
            token, keyring = None, token
        if token is not None:
            keyring = Keyring.single(token.encode() if isinstance(token, str) else token)
        self.keyring = keyring

    def check(
        self, route: str, method: str, remote_ip: str, secret: bytes | None
    ) -> tuple[Role, str] | Refused:
        """The role and token name a request reads `route` with, or why it may not."""
        roles = route_roles(route)
        if self.keyring is None or roles == OPEN:
            return ADMIN, ""
        what = f"{method} {route}"
        if secret is not None:
            token = self.keyring.holding(secret)
            if token is None:
                return Refused(401, f"{what}: wrong token")
            role, name = token.role, token.name
        elif READ in roles and is_loopback(remote_ip):
            role, name = READ, ""
        else:
            return Refused(401, f"{what} needs a token (Authorization: Bearer TOKEN)")
        if role not in roles:
            if not name:
                words = role_words(roles)
                return Refused(
                    401, f"{what} needs {words}; a request with no token has the read role"
                )
            return Refused(403, refusal(what, roles, role, name, asker="request"))
        return role, name

    def allows(self, handler: tornado.web.RequestHandler, route: str = "/metrics") -> bool:
        """Whether the request of `handler` may read `route`."""
        decided = self.check(route, "GET", handler.request.remote_ip or "", _secret_of(handler))
        return not isinstance(decided, Refused)


def _secret_of(handler: tornado.web.RequestHandler) -> bytes | None:
    """The token a request came with: its bearer header, else the page's cookie."""
    given = _bearer(handler.request.headers.get("Authorization", ""))
    if given is None:
        cookie = handler.get_cookie(TOKEN_COOKIE)
        given = cookie.encode() if cookie else None
    return given


def _bearer(header: str) -> bytes | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip().encode()


class Handler(tornado.web.RequestHandler):
    """The base of every route: the guard runs before each request (WebServer.add
    gives each handler its route's pattern)."""

    def initialize(self, **options: Any) -> None:
        self.route: str = options.pop("route", "")
        self.given = options

    def prepare(self) -> None:
        guard: Guard = self.settings["shoal_guard"]
        request = self.request
        remote = request.remote_ip or ""
        decided = guard.check(self.route, request.method or "GET", remote, _secret_of(self))
        if not isinstance(decided, Refused):
            self.role, self.token_name = decided
            return
        self.set_status(decided.status)
        if decided.status == 401:
            self.set_header("WWW-Authenticate", 'Bearer realm="shoal"')
        self.finish(decided.text + "\n")
        reporter: RefusalReporter = self.settings["shoal_refusals"]
        shown = f"[{remote}]" if ":" in remote else remote
        fields = {"peer": remote, "method": request.method, "path": request.path}
        reporter.refused(
            f"http://{shown}:0", f"refused HTTP request from {remote}: {decided.text}", fields
        )

    def set_default_headers(self) -> None:
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")

    def write_json(self, data: object) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(tornado.escape.json_encode(data))


class HealthHandler(Handler):
    """Liveness: the event loop answers."""

    def get(self) -> None:
        self.finish("ok\n")


class ReadyHandler(Handler):
    """Readiness: `ready()` gives None when ready, else why not (503)."""

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
    """Requests at DEBUG (a scraper calls every few seconds), as refusals (the
    guard logged them, a few per host); other errors at INFO."""
    status = handler.get_status()
    level = logging.DEBUG if status < 400 or status in (401, 403) else logging.INFO
    request = handler.request
    log.log(level, "%d %s %s from %s", status, request.method, request.path, request.remote_ip)


class WebServer:
    """An HTTP(S) server for `routes` at `host`:`port` (0: any free port).

    `address` is http(s)://host:port once `start()` returned. Requests are
    guarded by `token` (admin) or `keyring` (see Guard). Beyond loopback
    without a token it refuses to start unless `allow_insecure`; with
    `require_tls`, without TLS. With `fallback`, a port already taken is
    replaced by any free one (a warning says so), as for a default port.
    `on_event` hears of refused requests, as a Listener's does of refused
    connections. Routes are added with `add()`, which gives each its pattern.
    """

    def __init__(
        self,
        routes: list[Any],
        *,
        host: str,
        port: int,
        token: str | bytes | None = None,
        keyring: Keyring | None = None,
        tls: TLSConfig | None = None,
        allow_insecure: bool = False,
        require_tls: bool = False,
        static_path: str | None = None,
        fallback: bool = False,
        on_event: EventHook | None = None,
    ) -> None:
        self.host, self.port, self.fallback = host, port, fallback
        self.guard = Guard(token, keyring)
        self._tls, self._allow_insecure, self._require_tls = tls, allow_insecure, require_tls
        self.refusals = RefusalReporter(on_event, "http-refused", "http-refusals", RefusalLog())
        settings: dict[str, Any] = {
            "shoal_guard": self.guard,
            "shoal_refusals": self.refusals,
            "log_function": _log_request,
        }
        if static_path is not None:
            settings["static_path"] = static_path
        self.app = tornado.web.Application([], **settings)
        self.routes: list[str] = []  # the patterns served, each with its row of roles
        self.add(routes)
        self.address = ""
        self.loop = LoopWatch()
        self._server: tornado.httpserver.HTTPServer | None = None
        self._watch: asyncio.Task[None] | None = None

    def add(self, routes: list[Any]) -> None:
        """Serve `routes`, (pattern, handler[, options]) each; every handler is told
        its pattern, by which the guard finds the roles that may read it."""
        rules = []
        for pattern, handler, *options in routes:
            rules.append((pattern, handler, {**(options[0] if options else {}), "route": pattern}))
            self.routes.append(pattern)
        self.app.add_handlers(r".*", rules)

    async def start(self) -> WebServer:
        """Bind and serve.

        Raises:
            PermissionError: beyond loopback without a token (see allow_insecure),
                or without TLS where it is required.
            OSError: the port cannot be bound.
        """
        host = self.host.strip("[]")
        if self._require_tls and self._tls is None:
            raise PermissionError(f"HTTP on {self.host} requires TLS (--require-tls)")
        if self.guard.keyring is None and not is_loopback(host) and not self._allow_insecure:
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
        self.refusals.close()
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
