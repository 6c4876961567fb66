"""The PrismQ TaskManager's HTTP envelope, auth and rate limiting, shared by source and producer.

Success: ``{"success": true, "message": "Success", "data": {...}, "timestamp": <int>}``;
error: ``{"success": false, "error": "...", "details": [...]?, "timestamp": <int>}``.
401 and 429 come from the server's front controller in another shape
(``{"error", "message", "timestamp": <ISO>}``, Content-Type text/html), so
the body is parsed as JSON whatever its Content-Type says.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from typing import Any

import attrs
import httpx
from loguru import logger

from ..errors import SourceError, SourceFatal

#: Error strings meaning "the queue of this type is empty" (documented 404, and the
#: 500 the current server gives when it rolls back a transaction twice).
EMPTY_QUEUE_ERRORS = ("No available tasks", "There is no active transaction")
#: Error strings meaning "this claim is not ours any more" (it expired).
NOT_OURS_ERRORS = ("Task is not in claimed state", "Task is claimed by another worker")
#: 429 answers retried by one request before it gives up with a SourceError.
MAX_RATE_LIMITED = 5


@attrs.frozen(kw_only=True)
class HttpConfig:
    #: Base URL including the API prefix, e.g. https://host/api (no trailing slash).
    url: str
    api_key: str = attrs.field(repr=False)
    worker_id: str
    #: Seconds for one HTTP request.
    timeout: float = 30.0
    #: The server's TASK_CLAIM_TIMEOUT (for the start-up warning only).
    claim_timeout: float = 300.0
    #: The server's MAX_TASK_ATTEMPTS (its retry budget; claims count as attempts).
    max_attempts: int = 3
    sort_by: str | None = None
    sort_order: str | None = None
    #: Upsert each configured task type at start-up (POST /task-types/register).
    register_types: bool = False
    type_version: str = "1.0.0"
    param_schema: dict[str, Any] = attrs.field(factory=lambda: {"type": "object"})
    #: Upper bound on one Retry-After wait.
    max_retry_after: float = 300.0


@attrs.frozen
class Reply:
    status: int
    body: dict[str, Any]

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300 and self.body.get("success") is True

    @property
    def data(self) -> Any:
        return self.body.get("data")

    @property
    def error(self) -> str:
        return str(self.body.get("error") or self.body.get("message") or "")

    @property
    def details(self) -> Any:
        return self.body.get("details")

    def error_in(self, texts: tuple[str, ...]) -> bool:
        return any(t.lower() in self.error.lower() for t in texts)

    def raise_for(self, what: str) -> None:
        detail = f" {self.details}" if self.details else ""
        raise SourceError(f"TaskManager refused {what}: HTTP {self.status} {self.error}{detail}")


class TaskManagerApi:
    """One httpx client; every request sends X-API-Key and honours Retry-After."""

    def __init__(self, config: HttpConfig) -> None:
        self.config = config
        self._client: httpx.AsyncClient | None = None
        #: Monotonic time before which no request is sent (after a 429).
        self._quiet_until = 0.0
        self._log = logger.bind(source="http")

    async def open(self) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self.config.timeout, follow_redirects=False,
                headers={"X-API-Key": self.config.api_key, "Accept": "application/json"},
            )

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def request(self, method: str, path: str, body: dict[str, Any] | None = None,
                      params: dict[str, Any] | None = None) -> Reply:
        await self.open()
        assert self._client is not None
        url = self.config.url + path  # concatenation: urljoin would drop the /api prefix
        for _ in range(MAX_RATE_LIMITED + 1):
            wait = self._quiet_until - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                resp = await self._client.request(method, url, json=body, params=params)
            except httpx.HTTPError as exc:
                raise SourceError(f"TaskManager {method} {url} failed: {exc!r}") from exc
            if resp.status_code == 429:
                delay = self._retry_after(resp)
                self._quiet_until = max(self._quiet_until, time.monotonic() + delay)
                self._log.warning("TaskManager rate limit (429) on {} {}; waiting {:.1f}s", method, path, delay)
                continue
            reply = Reply(resp.status_code, _json_body(resp))
            if resp.status_code == 401:
                message = reply.body.get("message") or reply.error or "invalid or missing API key"
                raise SourceFatal(f"TaskManager authentication failed at {self.config.url}: {message} "
                                  "(check task_manager.api_key / TASKMANAGER_API_KEY)")
            if not reply.body and resp.status_code < 500:
                raise SourceError(f"TaskManager {method} {url}: HTTP {resp.status_code} with a body that is "
                                  f"not JSON: {resp.text[:200]!r}")
            return reply
        raise SourceError(f"TaskManager {method} {url}: still rate limited after {MAX_RATE_LIMITED} waits")

    def _retry_after(self, resp: httpx.Response) -> float:
        value = resp.headers.get("Retry-After", "").strip()
        seconds = 1.0
        if value.isdigit():
            seconds = float(value)
        elif value:
            try:
                seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
            except (TypeError, ValueError):
                pass
        return max(0.0, min(seconds, self.config.max_retry_after))


def _json_body(resp: httpx.Response) -> dict[str, Any]:
    try:
        body = resp.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
