"""The producer side of the Redis source: submit, read results, dead letters.

A task is an entry in its type's stream plus a hash that carries its state
and, once finished, its result (kept ``result_ttl`` seconds). ``wait``
polls that hash (every 20 ms at first, backing off to 0.5 s), which costs a
few round trips and survives reconnects, unlike a pub/sub notification that
is lost if it fires before the subscription.

Statuses: pending, claimed, delayed (a retry waiting for its backoff),
completed, dead (retries spent) and failed (not retriable); dead and failed
tasks sit in the dead-letter stream until requeued.
Streams have no priority: ``priority`` is accepted and ignored.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

from redis.exceptions import RedisError, ResponseError

from workerhost.producer import poll_until_final
from workerhost.records import Task, new_task_id
from workerhost.sources import _redis_lua as lua
from workerhost.sources.base import TaskRecord
from workerhost.sources.redis import Keys, RedisConfig, connect_client, dumps, translated


class RedisProducer:
    def __init__(self, config: RedisConfig) -> None:
        self.config = config
        self.keys = Keys(config.prefix)
        self._client = connect_client(config)
        self._submit = self._client.register_script(lua.SUBMIT)
        self._requeue = self._client.register_script(lua.REQUEUE)

    async def close(self) -> None:
        try:
            await self._client.aclose()
        except (RedisError, OSError):
            pass

    async def submit(
        self, task_type: str, params: dict[str, Any], *, priority: int = 0, dedupe_key: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> str:
        task = Task(type=task_type, params=params, id=new_task_id(), metadata=metadata or {})
        keys = [self.keys.stream(task_type), self.keys.task(task.id)]
        if dedupe_key is not None:
            keys.append(self.keys.dedupe(dedupe_key))
        with translated("submit", self.config):
            task_id = await self._submit(keys=keys, args=[task.id, dumps(task.to_wire()), task_type, dumps(params),
                                                          time.time(), int(self.config.result_ttl)])
        return str(task_id)

    async def submit_many(self, tasks: Iterable[tuple[str, dict[str, Any]]]) -> list[str]:
        """Enqueue many tasks in one pipelined round trip (bulk loads)."""
        ids = []
        with translated("submit", self.config):
            async with self._client.pipeline(transaction=False) as pipe:
                for task_type, params in tasks:
                    task = Task(type=task_type, params=params, id=new_task_id())
                    ids.append(task.id)
                    await self._submit(keys=[self.keys.stream(task_type), self.keys.task(task.id)],
                                       args=[task.id, dumps(task.to_wire()), task_type, dumps(params), time.time(),
                                             int(self.config.result_ttl)], client=pipe)
                await pipe.execute()
        return ids

    async def get(self, task_id: str) -> TaskRecord | None:
        with translated("get", self.config):
            data: Any = await self._client.hgetall(self.keys.task(task_id))
        return _record(task_id, data) if data else None

    async def wait(self, task_id: str, *, timeout: float | None = None) -> TaskRecord:
        """Poll until the task is completed, failed or dead; raise TimeoutError after ``timeout`` seconds."""
        return await poll_until_final(self.get, task_id, timeout=timeout)

    # -- inspection and dead letters ------------------------------------------------
    async def counts(self) -> dict[str, int]:
        """Tasks waiting, held by a supervisor, waiting for a retry, and dead (cheap: no scan of tasks)."""
        out = {"pending": 0, "claimed": 0, "delayed": 0, "dead": 0}
        with translated("counts", self.config):
            async for stream in self._client.scan_iter(match=self.keys.stream("*"), count=500):
                length = await self._client.xlen(stream)
                claimed = 0
                if length:
                    try:
                        claimed = int((await self._client.xpending(stream, self.keys.group))["pending"])
                    except ResponseError:
                        claimed = 0  # no group yet: nothing was claimed
                # Finished entries are deleted, so a stream holds waiting and held ones only.
                out["pending"] += length - claimed
                out["claimed"] += claimed
            out["delayed"] = await self._client.zcard(self.keys.delayed)
            out["dead"] = await self._client.xlen(self.keys.dead)
        return out

    async def list_tasks(self, *, status: str | None = None, limit: int = 100) -> list[TaskRecord]:
        """Tasks whose hash still exists (finished ones for ``result_ttl``); scans the key space."""
        out: list[TaskRecord] = []
        with translated("list", self.config):
            async for key in self._client.scan_iter(match=self.keys.task("*"), count=500):
                data: Any = await self._client.hgetall(key)
                if data and (status is None or data.get("status") == status):
                    out.append(_record(key.rsplit(":", 1)[-1], data))
                    if len(out) >= limit:
                        break
        return out

    async def dead_letters(self, *, limit: int = 100) -> list[TaskRecord]:
        """The oldest ``limit`` dead letters."""
        with translated("dead letters", self.config):
            entries: Any = await self._client.xrange(self.keys.dead, count=limit)
        out = []
        for _entry_id, fields in entries:
            wire = json.loads(fields["task"])
            out.append(TaskRecord(id=wire["id"], type=wire["type"], status=fields.get("status") or "dead",
                                  params=wire.get("params") or {}, error=json.loads(fields.get("error") or "null"),
                                  attempts=int(wire.get("attempt", 1))))
        return out

    async def requeue(self, task_id: str) -> bool:
        """Put a dead task back to work with fresh retry budgets; False if it is not dead."""
        with translated("requeue", self.config):
            entry_id = await self._client.hget(self.keys.task(task_id), "dead_entry")
            if not entry_id:
                return False
            entries: Any = await self._client.xrange(self.keys.dead, min=entry_id, max=entry_id)
            if not entries:
                return False
            task = Task.from_wire(json.loads(entries[0][1]["task"]))
            task.attempt += 1
            task.failures = task.worker_losses = task.route_index = 0
            done = await self._requeue(keys=[self.keys.dead, self.keys.stream(task.type), self.keys.task(task_id)],
                                       args=[entry_id, dumps(task.to_wire()), task.attempt, time.time()])
        return bool(done)

    async def requeue_all(self) -> int:
        """Requeue every dead letter; return how many went back to work."""
        count = 0
        while True:
            batch = await self.dead_letters(limit=500)
            if not batch:
                return count
            moved = [await self.requeue(record.id) for record in batch]
            count += sum(moved)
            if not any(moved):
                return count  # what is left is not requeueable (its task hash is gone)


def _record(task_id: str, data: dict[str, str]) -> TaskRecord:
    def loads(name: str) -> Any:
        text = data.get(name)
        return json.loads(text) if text else None

    progress = data.get("progress")
    return TaskRecord(
        id=data.get("id") or task_id, type=data.get("type", ""), status=data.get("status", "pending"),
        params=loads("params") or {}, result=loads("result"), error=loads("error"),
        attempts=int(data.get("attempts") or 0), progress=int(progress) if progress else None,
        created_at=float(data["created_at"]) if data.get("created_at") else None,
    )
