"""The producer side of the PrismQ TaskManager: create tasks, read them back, list them.

``POST /tasks {type, params}`` needs a non-empty params object and dedupes
on type + params for ever (the same params return the old task, whatever
its state); it takes no priority and no dedupe key of ours. ``GET /tasks/{id}``
gives ``data.items[0]`` (empty ``items`` for an unknown id).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

from loguru import logger

from ..errors import SourceError
from ..producer import poll_until_final
from .base import TaskRecord
from .http_api import HttpConfig, TaskManagerApi

#: Server states, for ``counts``.
STATES = ("pending", "claimed", "completed", "failed")
#: Page size of the list endpoint used by ``counts``.
COUNT_LIMIT = 10_000


class HttpProducer:
    kind = "http"

    def __init__(self, config: HttpConfig) -> None:
        self.api = TaskManagerApi(config)

    async def submit(
        self, task_type: str, params: dict[str, Any], *, priority: int = 0, dedupe_key: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> str:
        if not isinstance(params, dict) or not params:
            raise SourceError("the TaskManager needs params to be a non-empty JSON object")
        if priority or dedupe_key:
            raise SourceError("the TaskManager API takes no priority or dedupe key (it dedupes on type + params)")
        reply = await self.api.request("POST", "/tasks", {"type": task_type, "params": params})
        if not reply.ok:
            reply.raise_for(f"creating a {task_type!r} task")
        data = reply.data or {}
        if data.get("deduplicated"):
            logger.info("TaskManager returned existing task {} for the same type and params", data.get("id"))
        return str(data["id"])

    async def submit_many(self, tasks: Iterable[tuple[str, dict[str, Any]]]) -> list[str]:
        """One request per task: the API has no bulk create."""
        return [await self.submit(t, p) for t, p in tasks]

    async def wait(self, task_id: str, *, timeout: float | None = None) -> TaskRecord:
        """Poll until the task is completed or failed; raise TimeoutError after ``timeout`` seconds."""
        return await poll_until_final(self.get, task_id, timeout=timeout, first=0.2, cap=2.0)

    async def get(self, task_id: str) -> TaskRecord | None:
        reply = await self.api.request("GET", "/tasks/" + quote(str(task_id), safe=""))
        if not reply.ok:
            if reply.status == 404:
                return None
            reply.raise_for(f"reading task {task_id}")
        items = (reply.data or {}).get("items") or []
        return _record(items[0]) if items else None

    async def list_tasks(self, *, status: str | None = None, limit: int = 100) -> list[TaskRecord]:
        query: dict[str, Any] = {"limit": limit}
        if status:
            query["status"] = status
        reply = await self.api.request("GET", "/tasks", params=query)
        if not reply.ok:
            reply.raise_for("listing tasks")
        return [_record(item) for item in (reply.data or {}).get("items") or []]

    async def counts(self) -> dict[str, int]:
        """Counted from the list endpoint (it has no count endpoint), up to COUNT_LIMIT per state."""
        return {state: len(await self.list_tasks(status=state, limit=COUNT_LIMIT)) for state in STATES}

    async def close(self) -> None:
        await self.api.close()


def _record(item: dict[str, Any]) -> TaskRecord:
    result = item.get("result")
    error = item.get("error_message")
    params = item.get("params")
    return TaskRecord(
        id=str(item["id"]), type=str(item.get("type") or ""), status=str(item.get("status") or ""),
        params=params if isinstance(params, dict) else {}, result=result,
        error={"message": error} if error else None,
        attempts=_int(item.get("attempts")), progress=_int(item.get("progress")) if item.get("progress") is not None
        else None, priority=_int(item.get("priority")),
    )


def _int(value: Any) -> int:
    # The server returns numbers as strings or integers depending on the endpoint.
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0
