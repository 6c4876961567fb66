"""The control server: ``/healthz``, ``/readyz``, ``/status`` and ``/metrics`` over HTTP.

Served by aiohttp inside the supervisor's own event loop, so a wedged
loop shows up as a health check that does not answer. It only reads the
supervisor's public surface (``snapshot()``, ``metrics``, ``closed``) and
the optional ``source`` (a :class:`~workerhost.dispatch.Dispatcher`, or any
object with the same optional attributes: ``snapshot()``, ``state``,
``last_source_error``, ``connected``; a source that can count its tasks
(``counts()``) also feeds ``workerhost_source_tasks``).

=============  ===========================================================
``/healthz``   200 while the loop turns and the supervisor runs, else 503
``/readyz``    200 when every namespace is ``ok`` with its minimum of
               warm (or starting) workers and the source is connected;
               503 with the reasons otherwise
``/status``    the JSON behind ``workerhost-supervisor status``
``/metrics``   Prometheus text format (prometheus_client)
=============  ===========================================================

Off unless ``monitoring.enabled``; loopback by default. A ``token`` is
required to bind beyond loopback, and when one is set every endpoint
wants ``Authorization: Bearer <token>`` (compared in constant time).
Bodies are passed through the config's secret redactor, and no access
log is written (headers would carry the token).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from loguru import logger
from prometheus_client import CONTENT_TYPE_LATEST

from . import __version__
from ._tasks import TaskOwner
from .config import MonitoringConfig
from .errors import ConfigError
from .logsetup import Redactor, config_secrets
from .metrics import Metrics
from .supervisor import Supervisor

#: The loop beat; /healthz fails when the last beat is older than STALE_AFTER.
BEAT_INTERVAL = 0.5
STALE_AFTER = 5.0
#: How long /metrics waits for the source to count its tasks.
SOURCE_COUNT_TIMEOUT = 1.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ControlServer:
    def __init__(self, supervisor: Supervisor, monitoring: MonitoringConfig, source: Any = None) -> None:
        if not is_loopback(monitoring.host) and not monitoring.token:
            raise ConfigError(f"is required when the endpoints bind beyond loopback ({monitoring.host})",
                              field="monitoring.token")
        self.supervisor = supervisor
        self.monitoring = monitoring
        self.source = source
        self.metrics: Metrics = supervisor.metrics
        self._redactor: tuple[object, Redactor] | None = None
        self._token = monitoring.token.encode() if monitoring.token else None
        self._runner: web.AppRunner | None = None
        self._owner = TaskOwner("control")
        self._beat = time.monotonic()
        self._lag = 0.0
        self.port: int | None = None

    @property
    def url(self) -> str:
        host = self.monitoring.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port if self.port is not None else self.monitoring.port}"

    async def start(self) -> None:
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/status", self._status)
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.monitoring.host, self.monitoring.port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(f"cannot listen on {self.monitoring.host}:{self.monitoring.port}: "
                              f"{exc.strerror or exc}", field="monitoring.port") from exc
        self._runner = runner
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self.monitoring.port
        self._beat = time.monotonic()
        self._owner.spawn(self._heartbeat(), name="beat")
        logger.info("control server on {} (/healthz /readyz /status /metrics{})", self.url,
                    ", bearer token required" if self._token else "")

    async def stop(self) -> None:
        await self._owner.aclose()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> ControlServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.stop()

    async def _heartbeat(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(BEAT_INTERVAL)
            self._beat = time.monotonic()
            self._lag = max(0.0, self._beat - before - BEAT_INTERVAL)

    # -- auth ----------------------------------------------------------
    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self._token is not None:
            given = request.headers.get("Authorization", "")
            scheme, _, value = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), self._token):
                return web.json_response({"error": "a bearer token is required"}, status=401,
                                         headers={"WWW-Authenticate": 'Bearer realm="workerhost"'})
        return await handler(request)

    # -- endpoints -----------------------------------------------------
    def _redact(self, text: str) -> str:
        """Mask the config's secrets; rebuilt when a reload replaced the config."""
        config = self.supervisor.config
        if self._redactor is None or self._redactor[0] is not config:
            extra = [self.monitoring.token] if self.monitoring.token else []
            self._redactor = (config, Redactor(config_secrets(config) + extra))
        return self._redactor[1](text)

    def _json(self, doc: Any, *, status: int = 200) -> web.Response:
        body = self._redact(json.dumps(doc, default=str))
        return web.Response(text=body, status=status, content_type="application/json")

    async def _healthz(self, request: web.Request) -> web.Response:
        sup = self.supervisor
        age = time.monotonic() - self._beat
        problems = []
        if sup.started_at is None:
            problems.append("supervisor not started")
        if sup.closed:
            problems.append("supervisor closed")
        if age > STALE_AFTER:
            problems.append(f"event loop beat is {age:.1f}s old")
        doc = {"status": "ok" if not problems else "failing", "problems": problems,
               "loop_lag": round(self._lag, 4), "version": __version__}
        return self._json(doc, status=200 if not problems else 503)

    async def _readyz(self, request: web.Request) -> web.Response:
        reasons = readiness_problems(self.supervisor.snapshot())
        problem = self._source_problem()
        if problem is not None:
            reasons.append(problem)
        if self.supervisor.closed:
            reasons.append("supervisor closed")
        return self._json({"ready": not reasons, "reasons": reasons}, status=200 if not reasons else 503)

    async def _status(self, request: web.Request) -> web.Response:
        doc = dict(self.supervisor.snapshot())
        doc["version"] = __version__
        if self.source is not None and callable(getattr(self.source, "snapshot", None)):
            doc["source"] = self.source.snapshot()
        return self._json(doc)

    async def _metrics(self, request: web.Request) -> web.Response:
        self.metrics.set_source_counts(await self._source_counts())
        body = self._redact(self.metrics.render().decode())
        return web.Response(body=body.encode(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    # -- the source --------------------------------------------------------
    def _source_problem(self) -> str | None:
        src = self.source
        if src is None:
            return None
        state = getattr(src, "state", None)
        state = getattr(state, "value", state)
        if state in ("failed", "stopping", "stopped"):
            failure = getattr(src, "failure", None)
            return f"task source {state}" + (f": {failure}" if failure else "")
        error = getattr(src, "last_source_error", None)
        if error:
            return f"task source unreachable: {error}"
        if getattr(src, "connected", True) is False:
            return "task source not connected"
        return None

    async def _source_counts(self) -> dict[str, int] | None:
        src = getattr(self.source, "source", self.source)
        counts = getattr(src, "counts", None)
        if not callable(counts):
            return None
        try:
            result = await asyncio.wait_for(counts(), SOURCE_COUNT_TIMEOUT)
        except Exception as exc:  # a scrape must not fail because the source is slow or down
            logger.debug("source counts unavailable for /metrics: {!r}", exc)
            return None
        return {str(k): int(v) for k, v in result.items()} if isinstance(result, dict) else None


def readiness_problems(snapshot: dict[str, Any]) -> list[str]:
    """Why the supervisor is not ready: a namespace not ok, or short of its minimum workers."""
    reasons = []
    for ns in snapshot.get("namespaces", []):
        if ns.get("mode") == "oneshot":
            if ns["state"] != "ok":
                reasons.append(f"namespace {ns['name']} is {ns['state']}")
            continue
        # Starting workers count: a recycle's successor is on its way.
        coming = sum(1 for w in ns.get("workers", []) if w.get("state") == "starting")
        if ns["state"] != "ok":
            detail = f": {ns['last_error']}" if ns.get("last_error") else ""
            reasons.append(f"namespace {ns['name']} is {ns['state']}{detail}")
        elif ns["warm"] + coming < ns["min_workers"]:
            reasons.append(f"namespace {ns['name']} has {ns['warm']} warm workers of {ns['min_workers']} minimum")
    return reasons
