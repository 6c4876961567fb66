"""The RabbitMQ source's wire: queue and exchange names, their declaration, and the messages.

Shared by the source (:mod:`.amqp`) and the producer (:mod:`.amqp_producer`);
the topology itself is described in :mod:`.amqp`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable
from typing import Any

import aio_pika
import attrs
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from workerhost.records import Task

#: Delays (seconds) a retry can wait in the broker; a delay is rounded up to
#: the next one (the last one caps it). Each bucket is one queue.
DELAY_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 24 * 3600)
#: Retry delays shorter than this go straight back to the work queue.
MIN_DELAY = 0.05
WORK_ARGS: dict[str, Any] = {"x-max-priority": 10}


@attrs.frozen
class Topology:
    prefix: str

    def work(self, task_type: str) -> str:
        return f"{self.prefix}.task.{task_type}"

    def delay(self, bucket_ms: int) -> str:
        return f"{self.prefix}.delay.{bucket_ms}"

    @property
    def dead(self) -> str:
        return f"{self.prefix}.dead"

    @property
    def bell(self) -> str:
        return f"{self.prefix}.bell"


def delay_bucket(delay: float) -> int | None:
    """The bucket (ms) a retry delay waits in, or None to go straight back to work."""
    if delay < MIN_DELAY:
        return None
    bucket = next((b for b in DELAY_BUCKETS if b >= delay), DELAY_BUCKETS[-1])
    return int(bucket * 1000)


class Declared:
    """Declares queues and exchanges once per channel (a robust channel re-declares them after a reconnect)."""

    def __init__(self, channel: AbstractChannel, topology: Topology, *,
                 bell_channel: AbstractChannel | None = None) -> None:
        self.channel = channel
        self.topology = topology
        #: Rings go out here: a channel without publisher confirms, so a ring
        #: costs a write, not a round trip (it is only a hint).
        self.bell_channel = bell_channel or channel
        self._queues: dict[str, AbstractQueue] = {}
        self._delays: dict[int, aio_pika.abc.AbstractExchange] = {}
        self._bell: aio_pika.abc.AbstractExchange | None = None

    async def work(self, task_type: str) -> AbstractQueue:
        name = self.topology.work(task_type)
        if name not in self._queues:
            self._queues[name] = await self.channel.declare_queue(name, durable=True, arguments=WORK_ARGS)
        return self._queues[name]

    async def dead(self) -> AbstractQueue:
        name = self.topology.dead
        if name not in self._queues:
            self._queues[name] = await self.channel.declare_queue(name, durable=True)
        return self._queues[name]

    async def delay(self, bucket_ms: int) -> aio_pika.abc.AbstractExchange:
        if bucket_ms not in self._delays:
            name = self.topology.delay(bucket_ms)
            exchange = await self.channel.declare_exchange(name, aio_pika.ExchangeType.FANOUT, durable=True)
            # No x-dead-letter-routing-key: an expired message keeps its own
            # routing key, the name of the work queue it came from.
            queue = await self.channel.declare_queue(
                name, durable=True, arguments={"x-message-ttl": bucket_ms, "x-dead-letter-exchange": ""})
            await queue.bind(exchange)
            self._queues[name] = queue
            self._delays[bucket_ms] = exchange
        return self._delays[bucket_ms]

    async def delay_queue(self, bucket_ms: int) -> AbstractQueue:
        await self.delay(bucket_ms)
        return self._queues[self.topology.delay(bucket_ms)]

    async def publish_work(self, message: aio_pika.Message, task_type: str) -> None:
        await self.work(task_type)
        await self.channel.default_exchange.publish(message, routing_key=self.topology.work(task_type))

    async def bell(self) -> aio_pika.abc.AbstractExchange:
        if self._bell is None:
            self._bell = await self.bell_channel.declare_exchange(
                self.topology.bell, aio_pika.ExchangeType.FANOUT, durable=True)
        return self._bell

    async def ring(self, task_types: Iterable[str]) -> None:
        """Tell idle supervisors that tasks of these types were queued (a hint: see :mod:`._doorbell`).

        Call it once the tasks' publishes are confirmed, so the broker has
        queued them by the time a supervisor hears the ring. Not mandatory:
        with no supervisor listening it is simply dropped.
        """
        exchange = await self.bell()
        await asyncio.gather(*(
            exchange.publish(aio_pika.Message(b"", delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT),
                             routing_key=t, mandatory=False)
            for t in set(task_types)))


#: Header of a task message: how many supervisors were lost while holding it.
REDELIVERIES = "x-redeliveries"


def task_message(task: Task, *, reply_to: str | None, priority: int = 0, redeliveries: int = 0) -> aio_pika.Message:
    headers: dict[str, Any] = {"x-task-type": task.type}
    if redeliveries:
        headers[REDELIVERIES] = redeliveries
    return aio_pika.Message(
        json.dumps(task.to_wire(), separators=(",", ":"), default=str).encode(),
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=task.id,
        correlation_id=task.id,
        reply_to=reply_to,
        priority=max(0, min(10, priority)),
        timestamp=time.time(),
        headers=headers,
    )


def redeliveries(message: AbstractIncomingMessage) -> int:
    """How many supervisors were lost holding this task (its ``x-redeliveries`` header)."""
    value = (message.headers or {}).get(REDELIVERIES)
    return value if isinstance(value, int) and value > 0 else 0


def reply_message(body: dict[str, Any], *, task_id: str, persistent: bool) -> aio_pika.Message:
    mode = aio_pika.DeliveryMode.PERSISTENT if persistent else aio_pika.DeliveryMode.NOT_PERSISTENT
    return aio_pika.Message(json.dumps(body, separators=(",", ":"), default=str).encode(),
                            content_type="application/json", delivery_mode=mode, correlation_id=task_id)
