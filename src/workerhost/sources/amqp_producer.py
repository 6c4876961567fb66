"""The producer side of the RabbitMQ source: submit, results, dead letters.

AMQP has no place to look a task up by id, so results travel to the
producer: every task carries ``reply_to`` (this producer's durable reply
queue, ``{prefix}.reply.{name}``, deleted after ``result_ttl`` unused) and
``correlation_id`` (the task id). Supervisors publish progress and the final
outcome there; the producer consumes them into memory. ``get`` therefore
knows the tasks this producer (or an earlier one with the same
``reply_queue`` name) submitted, and returns None for any other id.

Statuses: pending (submitted), claimed (progress seen), completed, dead
(retries spent), failed (not retriable); dead and failed tasks wait in the
dead-letter queue until requeued.
RabbitMQ cannot count messages a consumer holds unacked over AMQP, so
``counts`` reports ready messages per state only. Dedupe keys are not
supported by this source.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Iterable
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue, AbstractRobustConnection
from aio_pika.exceptions import AMQPError
from loguru import logger

from workerhost.errors import SourceError
from workerhost.producer import FINAL
from workerhost.records import Task, new_task_id
from workerhost.sources._amqp_wire import DELAY_BUCKETS, Declared, Topology, task_message
from workerhost.sources.amqp import AmqpConfig, connect, translated
from workerhost.sources.base import TaskRecord


class AmqpProducer:
    def __init__(self, config: AmqpConfig, *, reply_queue: str | None = None, task_types: Iterable[str] = ()) -> None:
        self.config = config
        self.topology = Topology(config.prefix)
        self.reply_queue = f"{config.prefix}.reply.{reply_queue or uuid.uuid4().hex}"
        self.task_types = tuple(task_types)
        self._connection: AbstractRobustConnection | None = None
        self._declared: Declared | None = None
        self._reply: AbstractQueue | None = None
        self._consuming = False
        self._records: dict[str, TaskRecord] = {}
        self._changed = asyncio.Event()
        self._lock = asyncio.Lock()

    async def _channel(self) -> Declared:
        async with self._lock:
            if self._declared is None:
                self._connection = await connect(self.config)
                with translated("connect", self.config):
                    channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
                    bells = await self._connection.channel(publisher_confirms=False)
                self._declared = Declared(channel, self.topology, bell_channel=bells)
            return self._declared

    async def _replies(self) -> Declared:
        """The channel, with this producer's reply queue declared (only producers that submit or wait need one)."""
        declared = await self._channel()
        if self._reply is None:
            with translated("declare reply queue", self.config):
                self._reply = await declared.channel.declare_queue(
                    self.reply_queue, durable=True, arguments={"x-expires": int(self.config.result_ttl * 1000)})
        return declared

    async def close(self) -> None:
        connection, self._connection, self._declared = self._connection, None, None
        if connection is not None:
            with contextlib.suppress(AMQPError, OSError, RuntimeError, asyncio.TimeoutError):
                await asyncio.wait_for(connection.close(), self.config.op_timeout)

    # -- submitting --------------------------------------------------------------
    async def submit(
        self, task_type: str, params: dict[str, Any], *, priority: int = 0, dedupe_key: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> str:
        if dedupe_key is not None:
            raise SourceError("the amqp source does not support dedupe keys")
        declared = await self._replies()
        task = Task(type=task_type, params=params, id=new_task_id(), metadata=metadata or {})
        with translated("submit", self.config):
            await asyncio.wait_for(declared.publish_work(
                task_message(task, reply_to=self.reply_queue, priority=priority), task_type), self.config.op_timeout)
            await asyncio.wait_for(declared.ring([task_type]), self.config.op_timeout)
        self._records[task.id] = TaskRecord(id=task.id, type=task_type, status="pending", params=params)
        return task.id

    async def submit_many(self, tasks: Iterable[tuple[str, dict[str, Any]]]) -> list[str]:
        """Enqueue many tasks; publisher confirms are awaited together, not one by one."""
        declared = await self._replies()
        batch = [Task(type=t, params=p, id=new_task_id()) for t, p in tasks]
        with translated("submit", self.config):
            for task_type in {t.type for t in batch}:
                await declared.work(task_type)
            await asyncio.gather(*(declared.publish_work(task_message(t, reply_to=self.reply_queue), t.type)
                                   for t in batch))
            await declared.ring(t.type for t in batch)
        for t in batch:
            self._records[t.id] = TaskRecord(id=t.id, type=t.type, status="pending", params=t.params)
        return [t.id for t in batch]

    # -- results -------------------------------------------------------------------
    async def _listen(self) -> None:
        await self._replies()
        if self._consuming or self._reply is None:
            return
        with translated("consume", self.config):
            await self._reply.consume(self._on_reply, no_ack=True)
        self._consuming = True

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        try:
            body = json.loads(message.body)
            task_id = str(body["id"])
        except (ValueError, KeyError, TypeError):
            logger.warning("amqp: ignoring a malformed reply on {}", self.reply_queue)
            return
        old = self._records.get(task_id)
        if old is not None and old.status in FINAL and body.get("status") not in FINAL:
            return  # a late progress update must not reopen a finished task
        self._records[task_id] = TaskRecord(
            id=task_id, type=str(body.get("type") or (old.type if old else "")), status=str(body.get("status")),
            params=old.params if old else {}, result=body.get("result"), error=body.get("error"),
            attempts=int(body.get("attempts") or 0),
            progress=body.get("progress", old.progress if old else None),
        )
        self._changed.set()

    async def get(self, task_id: str) -> TaskRecord | None:
        await self._listen()
        return self._records.get(task_id)

    async def wait(self, task_id: str, *, timeout: float | None = None) -> TaskRecord:
        """Wait until the task is completed or dead; raise TimeoutError after ``timeout`` seconds."""
        await self._listen()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            record = self._records.get(task_id)
            if record is not None and record.status in FINAL:
                return record
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                raise TimeoutError(f"task {task_id} not finished after {timeout}s")
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)

    # -- inspection and dead letters ----------------------------------------------------
    async def counts(self) -> dict[str, int]:
        """Ready messages: pending (of the configured task types), delayed retries, dead."""
        declared = await self._channel()
        out = {"pending": 0, "delayed": 0, "dead": 0}
        with translated("counts", self.config):
            for task_type in self.task_types:
                out["pending"] += await _count(await declared.work(task_type))
            for bucket in DELAY_BUCKETS:
                out["delayed"] += await _count(await declared.delay_queue(int(bucket * 1000)))
            out["dead"] = await _count(await declared.dead())
        return out

    async def list_tasks(self, *, status: str | None = None, limit: int = 100) -> list[TaskRecord]:
        """Dead letters, then the tasks this producer knows of (AMQP cannot browse the rest)."""
        out = await self.dead_letters(limit=limit) if status in (None, "dead") else []
        known = [r for r in self._records.values() if status is None or r.status == status]
        seen = {r.id for r in out}
        out += [r for r in known if r.id not in seen]
        return out[:limit]

    async def dead_letters(self, *, limit: int = 100) -> list[TaskRecord]:
        """Browse the oldest ``limit`` dead letters without taking them off the queue."""
        return [_dead_record(m) for m in await self._browse_dead(limit=limit, take=None)]

    async def requeue(self, task_id: str) -> bool:
        """Put one dead task back to work with fresh retry budgets; False if it is not there."""
        return bool(await self._browse_dead(limit=None, take={task_id}))

    async def requeue_all(self) -> int:
        return len(await self._browse_dead(limit=None, take=None, requeue_all=True))

    async def _browse_dead(
        self, *, limit: int | None, take: set[str] | None, requeue_all: bool = False,
    ) -> list[AbstractIncomingMessage]:
        """Get dead letters unacked on a channel of its own; what is not moved goes back when it closes."""
        declared = await self._channel()
        assert self._connection is not None
        seen: list[AbstractIncomingMessage] = []
        moved: list[AbstractIncomingMessage] = []
        with translated("dead letters", self.config):
            channel: AbstractChannel = await self._connection.channel(publisher_confirms=True)
            try:
                queue = await channel.declare_queue(self.topology.dead, durable=True)
                while limit is None or len(seen) < limit:
                    message = await queue.get(no_ack=False, fail=False, timeout=self.config.op_timeout)
                    if message is None:
                        break
                    seen.append(message)
                    if requeue_all or (take is not None and message.message_id in take):
                        await self._requeue_one(declared, message)
                        moved.append(message)
                        if take is not None and not requeue_all and len(moved) == len(take):
                            break
            finally:
                # Closing the channel hands every message still unacked back to the dead queue.
                with contextlib.suppress(AMQPError, OSError, RuntimeError):
                    await channel.close()
        return moved if (take is not None or requeue_all) else seen

    async def _requeue_one(self, declared: Declared, message: AbstractIncomingMessage) -> None:
        task = Task.from_wire(json.loads(message.body))
        task.attempt += 1
        task.failures = task.worker_losses = task.route_index = 0
        await declared.publish_work(task_message(task, reply_to=message.reply_to, priority=message.priority or 0),
                                    task.type)
        await declared.ring([task.type])
        await message.ack()
        if task.id in self._records:
            old = self._records[task.id]
            self._records[task.id] = TaskRecord(id=task.id, type=task.type, status="pending", params=old.params)


async def _count(queue: AbstractQueue) -> int:
    # Declaring again (same arguments) is how AMQP reports a queue's ready messages.
    result = await queue.declare()
    return int(result.message_count or 0)


def _dead_record(message: AbstractIncomingMessage) -> TaskRecord:
    wire = json.loads(message.body)
    error = message.headers.get("x-error")
    return TaskRecord(id=wire["id"], type=wire["type"], status=str(message.headers.get("x-status") or "dead"),
                      params=wire.get("params") or {},
                      error=json.loads(str(error)) if error else None, attempts=int(wire.get("attempt") or 1))
