"""The PrismQ TaskManager HTTP source (httpx, async), built against the server as it really behaves.

The server (PHP + MySQL, Nomoos/PrismQ.Client Backend/TaskManager) has no
long polling, claims one task of one numeric type id per call, has no
release endpoint and re-queues failed tasks itself::

    GET  /task-types/{name}        -> data.items[0].id   (unknown name: 200, empty items)
    POST /task-types/register      {name, version, param_schema}   (upsert; only when asked)
    POST /tasks/claim              {worker_id, task_type_id, sort_by?, sort_order?}
                                   -> data {id, type, params, attempts, priority}
                                      empty queue: 404 "No available tasks", or on the current
                                      server 500 "There is no active transaction"
    POST /tasks/{id}/progress      {worker_id, progress: int 0..100, message?}  (does not extend the claim)
    POST /tasks/{id}/complete      {worker_id, success: bool, result?: object, error?: str}
                                   -> data.status completed | failed | "pending (retry)"
                                      400 "Task is not in claimed state" / 403 "... another worker":
                                      our claim expired; the task is not ours any more
    401 (any endpoint)             bad key; body {"error","message","timestamp": ISO}, text/html
    429                            rate limited; honour Retry-After

Delivery is at-least-once: a claim the server considers expired
(TASK_CLAIM_TIMEOUT, 300 s by default, not extended by progress) is handed
to another worker. Retries are the server's: a failure reported while
``attempts`` (claims) is below its MAX_TASK_ATTEMPTS goes back to pending at
once (our backoff delay cannot be honoured). URLs are built by
concatenation on the configured base URL (``https://host/api``), never urljoin.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote, urlsplit

import attrs
from loguru import logger

from .._schema import Reader
from ..config import NamespaceConfig
from ..errors import SourceError
from ..records import Task, TaskError
from .base import Claimed
from .http_api import EMPTY_QUEUE_ERRORS, NOT_OURS_ERRORS, HttpConfig, TaskManagerApi

__all__ = ["HttpConfig", "HttpSource", "read_config"]

SORT_FIELDS = ("created_at", "priority", "id", "attempts")


def read_config(reader: Reader) -> HttpConfig:
    """Read the http keys of ``task_manager`` (``type`` and the poll keys are read by the caller)."""
    url = reader.str("url")
    if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc:
        raise reader.error("url", f"must be an http:// or https:// URL such as https://host/api, got {url!r}")
    api_key = reader.str("api_key")
    sort_by = reader.str("sort_by", None, choices=SORT_FIELDS)
    sort_order = reader.str("sort_order", None, choices=("asc", "desc", "ASC", "DESC"))
    schema = reader.mapping("param_schema", {"type": "object"})
    if "type" not in schema:
        raise reader.error("param_schema", "must have a \"type\" property (the TaskManager requires it)")
    return HttpConfig(
        url=url.rstrip("/"),
        api_key=api_key,
        worker_id=reader.str("worker_id", None) or f"workerhost-{socket.gethostname()}-{os.getpid()}",
        timeout=float(reader.number("timeout", 30.0, positive=True)),
        claim_timeout=float(reader.number("claim_timeout", 300.0, positive=True)),
        max_attempts=int(reader.int("max_attempts", 3, positive=True)),
        sort_by=sort_by,
        sort_order=sort_order.upper() if sort_order else None,
        register_types=bool(reader.bool("register_types", False)),
        type_version=reader.str("type_version", "1.0.0"),
        param_schema=schema,
        max_retry_after=float(reader.number("max_retry_after", 300.0, positive=True)),
    )


@attrs.frozen
class _Receipt:
    task_type_id: int
    #: Claims so far, as the server counts them (its retry budget).
    attempts: int


class HttpSource:
    kind = "http"
    #: The server holds the retry (it re-queues failures itself), though without our delay.
    durable_retries = True

    #: Seconds between tries to resolve a task type the server did not know.
    RESOLVE_EVERY = 60.0

    def __init__(self, config: HttpConfig, *, namespaces: Sequence[NamespaceConfig]) -> None:
        self.config = config
        self.api = TaskManagerApi(config)
        self.namespaces = tuple(namespaces)
        self._type_ids: dict[str, int] = {}
        self._unresolved_at: dict[str, float] = {}
        self._rotate = 0
        self._log = logger.bind(source="http")

    # -- lifecycle -----------------------------------------------------
    async def connect(self) -> None:
        await self.api.open()
        for ns in self.namespaces:
            if ns.timeout >= self.config.claim_timeout:
                self._log.warning(
                    "namespace {}: timeout {}s is not below the TaskManager claim timeout {}s; a long task's claim "
                    "can expire and the task be handed to another worker", ns.name, ns.timeout,
                    self.config.claim_timeout)
        for task_type in sorted({t for ns in self.namespaces for t in ns.task_types}):
            if self.config.register_types:
                await self._register(task_type)
            await self._resolve(task_type)

    async def close(self) -> None:
        await self.api.close()

    async def _register(self, name: str) -> None:
        reply = await self.api.request("POST", "/task-types/register", {
            "name": name, "version": self.config.type_version, "param_schema": self.config.param_schema})
        if not reply.ok:
            reply.raise_for(f"registering task type {name!r}")

    async def _resolve(self, name: str) -> int | None:
        reply = await self.api.request("GET", "/task-types/" + quote(name, safe=""))
        if not reply.ok:
            reply.raise_for(f"looking up task type {name!r}")
        items = (reply.data or {}).get("items") or []
        if not items:
            self._unresolved_at[name] = time.monotonic()
            self._log.warning("task type {!r} is not registered on the TaskManager; not claiming it "
                              "(set task_manager.register_types: true to register it)", name)
            return None
        type_id = int(items[0]["id"])
        self._type_ids[name] = type_id
        self._unresolved_at.pop(name, None)
        return type_id

    async def _type_id(self, name: str) -> int | None:
        if name in self._type_ids:
            return self._type_ids[name]
        if time.monotonic() - self._unresolved_at.get(name, float("-inf")) < self.RESOLVE_EVERY:
            return None
        return await self._resolve(name)

    # -- claiming ------------------------------------------------------
    async def claim(self, task_types: Sequence[str], limit: int) -> list[Claimed]:
        """One claim call per task, type by type (starting with a different type each time, for fairness)."""
        out: list[Claimed] = []
        types = list(task_types)
        if not types:
            return out
        self._rotate = (self._rotate + 1) % len(types)
        for task_type in types[self._rotate:] + types[:self._rotate]:
            type_id = await self._type_id(task_type)
            while type_id is not None and len(out) < limit:
                try:
                    claimed = await self._claim_one(task_type, type_id)
                except SourceError:
                    if out:  # keep what we hold; the error comes back on the next call
                        return out
                    raise
                if claimed is None:
                    break
                out.append(claimed)
        return out

    async def _claim_one(self, task_type: str, type_id: int) -> Claimed | None:
        body: dict[str, Any] = {"worker_id": self.config.worker_id, "task_type_id": type_id}
        if self.config.sort_by:
            body["sort_by"] = self.config.sort_by
        if self.config.sort_order:
            body["sort_order"] = self.config.sort_order
        reply = await self.api.request("POST", "/tasks/claim", body)
        if not reply.ok:
            if reply.error_in(EMPTY_QUEUE_ERRORS) and reply.status in (404, 500):
                return None
            reply.raise_for(f"claiming a {task_type!r} task")
        data = reply.data or {}
        attempts = int(data.get("attempts") or 1)
        params = data.get("params")
        task = Task(id=str(data["id"]), type=str(data.get("type") or task_type),
                    params=params if isinstance(params, dict) else {}, attempt=attempts,
                    # The server counts claims, not failures; earlier claims ended in failures or expiry.
                    failures=max(0, attempts - 1), metadata={"taskmanager": {"priority": data.get("priority")}})
        return Claimed(task=task, receipt=_Receipt(task_type_id=type_id, attempts=attempts))

    # -- reporting -----------------------------------------------------
    async def complete(self, claimed: Claimed, result: Any) -> None:
        body: dict[str, Any] = {"worker_id": self.config.worker_id, "success": True}
        if result is not None:
            # The API takes an object; other JSON values are wrapped. An empty object is stored as null.
            body["result"] = result if isinstance(result, dict) else {"value": result}
        await self._report(claimed, body, "complete")

    async def retry(self, claimed: Claimed, next_task: Task, delay: float, error: TaskError) -> None:
        status = await self._report(claimed, self._failure(error), "retry")
        if status == "failed":
            self._log.bind(task_id=claimed.task.id).warning(
                "the TaskManager marked the task failed (its MAX_TASK_ATTEMPTS reached) although our retry "
                "policy allowed another try")

    async def fail(self, claimed: Claimed, error: TaskError) -> None:
        status = await self._report(claimed, self._failure(error), "fail")
        if status == "pending (retry)":
            self._log.bind(task_id=claimed.task.id).info(
                "the TaskManager re-queues failed tasks until its MAX_TASK_ATTEMPTS; it will be tried again")

    async def progress(self, claimed: Claimed, percent: int, message: str | None) -> None:
        body: dict[str, Any] = {"worker_id": self.config.worker_id, "progress": max(0, min(100, int(percent)))}
        if message:
            body["message"] = message
        reply = await self.api.request("POST", f"/tasks/{quote(claimed.task.id, safe='')}/progress", body)
        if not reply.ok:
            if reply.status >= 500:
                reply.raise_for("reporting progress")
            self._log.bind(task_id=claimed.task.id).debug("progress not accepted: {} {}", reply.status, reply.error)

    async def release(self, claimed: Claimed) -> None:
        """No release endpoint: report the task failed so the server re-queues it, unless that would end it."""
        receipt: _Receipt = claimed.receipt
        if receipt.attempts >= self.config.max_attempts:
            self._log.bind(task_id=claimed.task.id).warning(
                "not giving back on its last attempt (the server would mark it failed); it is handed out again "
                "when its claim expires ({}s)", self.config.claim_timeout)
            return
        error = TaskError(type="Released", message="the supervisor shut down before the task finished")
        await self._report(claimed, self._failure(error), "release")

    def _failure(self, error: TaskError) -> dict[str, Any]:
        return {"worker_id": self.config.worker_id, "success": False, "error": f"{error.type}: {error.message}"}

    async def _report(self, claimed: Claimed, body: dict[str, Any], what: str) -> str | None:
        """POST complete; return the server's new status, or None when the task is no longer ours."""
        log = self._log.bind(task_id=claimed.task.id)
        reply = await self.api.request("POST", f"/tasks/{quote(claimed.task.id, safe='')}/complete", body)
        if reply.ok:
            return str((reply.data or {}).get("status"))
        if reply.status in (400, 403) and reply.error_in(NOT_OURS_ERRORS):
            log.warning("{} not accepted: our claim expired and the task is no longer ours ({})", what, reply.error)
            return None
        if reply.status >= 500:
            reply.raise_for(f"reporting {what}")
        # Any other refusal (404, validation) will not change by trying again.
        log.error("{} refused by the TaskManager: {} {} {}", what, reply.status, reply.error, reply.details or "")
        return None
