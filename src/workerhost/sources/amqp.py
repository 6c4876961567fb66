"""The RabbitMQ task source (aio-pika, AMQP 0-9-1).

Topology under a ``prefix`` (all durable, persistent messages, publisher confirms)::

    {prefix}.task.{type}      work queue per task type (x-max-priority 10), via the default exchange
    {prefix}.delay.{ms}       fanout exchange + queue per delay bucket: x-message-ttl = ms,
                              dead-lettered to the default exchange with the message's own
                              routing key, i.e. back to its work queue when the delay is over
    {prefix}.dead             dead letters: the task, ``x-error`` and ``x-status`` headers (dead
                              when its retries were spent, failed when it could not be retried)
    reply_to queues           one per producer: final results and progress, correlation id = task id

- producers ring ``{prefix}.bell`` (a fanout exchange; each supervisor
  consumes it through an exclusive queue) after they publish tasks, so an
  idle supervisor claims at once instead of at its next poll.
- claim is ``basic.get`` (pull), at most ``limit`` messages, manual ack. A
  push consumer would hold up to its ``basic.qos`` prefetch whatever the
  pool's state; pulling exactly what the dispatcher asks for (free worker
  slots + its prefetch) ties the unacked count to the free slots with no
  buffer, and a supervisor that dies hands every unacked message back to
  the broker at once (redelivered to the other supervisors).
- complete / retry / fail publish first (result, delayed copy, dead letter;
  each confirmed by the broker) and ack after: a crash in between runs the
  task again (at-least-once), never loses it.
- A retry delay is rounded up to the next bucket of :data:`DELAY_BUCKETS`
  (one TTL per queue, so no message waits behind a longer one).
- release publishes the task again, unchanged, and acks the message it
  came in: a task handed back at shutdown does not count a try (a
  ``nack(requeue=True)`` would come back marked "redelivered", which is how
  a lost supervisor shows). It goes to the back of its queue.
- A message that comes back "redelivered" was held by a supervisor that was
  lost (killed, cut off). Its try counts: the task is published again with
  one more attempt and an ``x-redeliveries`` header, and the original
  acked, so the count survives the next loss; past ``max_redeliveries``
  the task is dead-lettered (LeaseExpired) instead, so a task that takes
  its supervisor down every time cannot do so forever.
- The connection is ``connect_robust``: after a broker restart it reconnects
  and re-declares the topology; operations fail fast (``op_timeout``) with
  SourceError meanwhile. Messages held across the break were handed back by
  the broker: their reports are dropped (logged) and they run again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Awaitable, Iterator, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aio_pika
import attrs
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from aio_pika.exceptions import AMQPError, AuthenticationError, ChannelInvalidStateError, ProbableAuthenticationError
from loguru import logger

from workerhost._schema import Reader
from workerhost.errors import SourceError, SourceFatal
from workerhost.records import FailureKind, Task, TaskError
from workerhost.sources._amqp_wire import (
    DELAY_BUCKETS,
    REDELIVERIES,
    Declared,
    Topology,
    delay_bucket,
    redeliveries,
    reply_message,
    task_message,
)
from workerhost.sources._common import final_status, redact
from workerhost.sources._doorbell import Chime
from workerhost.sources.base import Claimed

__all__ = [
    "DELAY_BUCKETS", "REDELIVERIES", "AmqpConfig", "AmqpSource", "Declared", "Topology", "connect", "delay_bucket",
    "read_config", "redeliveries", "reply_message", "task_message", "translated",
]

T = TypeVar("T")
DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
#: Seconds after a delayed retry's time during which an idle wait keeps
#: ending at once to look for it (see AmqpSource.wait_for_tasks).
DUE_GRACE = 2.0


@attrs.frozen(kw_only=True)
class AmqpConfig:
    #: Holds the password: kept out of repr and logs (use ``display_url``).
    url: str = attrs.field(default=DEFAULT_URL, repr=False)
    prefix: str = "workerhost"
    #: A producer's reply queue (its results) is deleted after this long unused.
    result_ttl: float = 24 * 3600.0
    #: How long one broker operation may take before it fails (e.g. while reconnecting).
    op_timeout: float = 10.0
    #: Times a task may be lost with its supervisor (redelivered by the
    #: broker) before it is dead-lettered instead of handed out again.
    max_redeliveries: int = 5

    @property
    def display_url(self) -> str:
        return redact(self.url)


def read_config(reader: Reader) -> AmqpConfig:
    """Read the amqp keys of ``task_manager`` (``type`` is read by the caller)."""
    url = reader.str("url", DEFAULT_URL)
    if urlsplit(url).scheme not in ("amqp", "amqps"):
        raise reader.error("url", f"must be an amqp:// or amqps:// URL, got {redact(url)!r}")
    prefix = reader.str("prefix", "workerhost")
    if any(c.isspace() for c in prefix):
        raise reader.error("prefix", f"must not contain spaces, got {prefix!r}")
    return AmqpConfig(
        url=url,
        prefix=prefix,
        result_ttl=float(reader.number("result_ttl", 24 * 3600.0, positive=True)),
        op_timeout=float(reader.number("op_timeout", 10.0, positive=True)),
        max_redeliveries=int(reader.int("max_redeliveries", 5, minimum=0)),
    )


@contextlib.contextmanager
def translated(what: str, config: AmqpConfig) -> Iterator[None]:
    """Library errors become SourceError here (never with the password)."""
    try:
        yield
    except (AuthenticationError, ProbableAuthenticationError) as exc:
        raise SourceFatal(f"amqp authentication failed ({config.display_url}): {exc}") from exc
    except asyncio.TimeoutError as exc:
        raise SourceError(f"amqp {what} timed out ({config.display_url}): broker unreachable?") from exc
    except (AMQPError, OSError, RuntimeError) as exc:
        raise SourceError(f"amqp {what} failed ({config.display_url}): {exc!r}") from exc


async def connect(config: AmqpConfig) -> AbstractRobustConnection:
    with translated("connect", config):
        return await asyncio.wait_for(
            aio_pika.connect_robust(config.url, reconnect_interval=1.0, timeout=config.op_timeout),
            config.op_timeout)


class AmqpSource:
    kind = "amqp"
    durable_retries = True

    def __init__(self, config: AmqpConfig) -> None:
        self.config = config
        self.topology = Topology(config.prefix)
        self._connection: AbstractRobustConnection | None = None
        self._declared: Declared | None = None
        self._rr = 0
        self._chime = Chime()
        self._listening = False
        #: (monotonic time, type) at which a retry this source delayed is back in its work queue.
        self._due: list[tuple[float, str]] = []

    async def connect(self) -> None:
        self._connection = await connect(self.config)
        with translated("connect", self.config):
            channel = await self._timed(self._connection.channel(publisher_confirms=True, on_return_raises=True))
            bells = await self._timed(self._connection.channel(publisher_confirms=False))
        self._declared = Declared(channel, self.topology, bell_channel=bells)
        self._listening = await self._listen_for_bells()
        logger.info("amqp source connected to {}", self.config.display_url)

    async def _listen_for_bells(self) -> bool:
        """An exclusive queue on the bell exchange, consumed without acks (the robust channel restores it)."""
        try:
            with translated("bell", self.config):
                exchange = await self._timed(self.declared.bell())
                queue = await self._timed(self.declared.channel.declare_queue(
                    f"{self.topology.bell}.{uuid.uuid4().hex[:12]}", exclusive=True, auto_delete=True,
                    arguments={"x-max-length": 16}))
                await self._timed(queue.bind(exchange))
                await self._timed(queue.consume(self._on_bell, no_ack=True))
        except SourceError as exc:
            logger.warning("amqp: no doorbell ({}): an idle supervisor polls instead", exc)
            return False
        return True

    async def _on_bell(self, message: AbstractIncomingMessage) -> None:
        self._chime.ring(message.routing_key or None)

    async def wait_for_tasks(self, task_types: Sequence[str], timeout: float) -> bool | None:
        """Wait for a producer's ring, or until a retry this source delayed is back in its work queue.

        None without a doorbell (the dispatcher polls).
        """
        if not self._listening:
            return None
        now = time.monotonic()
        # A retry is looked for during DUE_GRACE after its time (the broker
        # moves an expired message a moment late); claims in that window
        # come back empty at worst, and the dispatcher sleeps between them.
        self._due = [(at, t) for at, t in self._due if at > now - DUE_GRACE]
        wanted = set(task_types)
        due = [at for at, task_type in self._due if task_type in wanted]
        return await self._chime.wait(task_types, timeout, due_in=min(due) - now if due else None)

    async def close(self) -> None:
        connection, self._connection, self._declared = self._connection, None, None
        self._listening = False
        if connection is not None:
            with contextlib.suppress(AMQPError, OSError, RuntimeError, asyncio.TimeoutError):
                await asyncio.wait_for(connection.close(), self.config.op_timeout)

    @property
    def declared(self) -> Declared:
        if self._declared is None:
            raise SourceError("the amqp source is not connected")
        return self._declared

    async def _timed(self, op: Awaitable[T]) -> T:
        return await asyncio.wait_for(op, self.config.op_timeout)

    async def _ready(self) -> None:
        """Wait (up to op_timeout) until the robust connection and channel are restored after a break."""
        ready = getattr(self.declared.channel, "ready", None)
        if ready is not None:
            await self._timed(ready())

    # -- claiming ----------------------------------------------------------------
    async def claim(self, task_types: Sequence[str], limit: int) -> list[Claimed]:
        if limit <= 0 or not task_types:
            return []
        self._chime.mark(task_types)
        start = self._rr % len(task_types)
        self._rr += 1
        out: list[Claimed] = []
        try:
            with translated("claim", self.config):
                await self._ready()
                for task_type in (*task_types[start:], *task_types[:start]):
                    queue = await self._timed(self.declared.work(task_type))
                    while len(out) < limit:
                        message = await queue.get(no_ack=False, fail=False, timeout=self.config.op_timeout)
                        if message is None:
                            break
                        if message.redelivered:
                            await self._count_lost(message)
                            continue  # its copy is at the back of the queue (or dead)
                        out.append(self._take(message))
        except SourceError as exc:
            if not out:
                raise
            # Messages already taken are ours until acked: hand them to the
            # dispatcher rather than leave them unacked on this channel.
            logger.warning("{}; returning the {} task(s) claimed before it", exc, len(out))
        return out

    def _take(self, message: AbstractIncomingMessage) -> Claimed:
        return Claimed(task=Task.from_wire(json.loads(message.body)), receipt=message)

    async def _count_lost(self, message: AbstractIncomingMessage) -> None:
        """A message whose supervisor was lost holding it: count the try where the next loss can see it."""
        claimed = self._take(message)
        task = claimed.task
        task.attempt += 1  # the lost supervisor's try counts
        lost = redeliveries(message) + 1
        log = logger.bind(task_id=task.id)
        if lost > self.config.max_redeliveries:
            log.error("amqp: task {} ({}) lost its supervisor {} times; dead-lettered", task.id, task.type, lost)
            await self.fail(claimed, TaskError(
                type="LeaseExpired", kind=FailureKind.WORKER_LOST,
                message=f"its supervisor was lost while holding it {lost} times (max_redeliveries)"))
            return
        log.warning("amqp: task {} ({}) came back from a lost supervisor; queued again as attempt {}",
                    task.id, task.type, task.attempt)
        copy = task_message(task, reply_to=message.reply_to, priority=message.priority or 0, redeliveries=lost)
        await self._timed(self.declared.publish_work(copy, task.type))
        await self._timed(message.ack())

    # -- results -------------------------------------------------------------------
    async def complete(self, claimed: Claimed, result: Any) -> None:
        if self._handed_back(claimed, "complete"):
            return
        with translated("complete", self.config):
            await self._ready()
            await self._reply(claimed, {"status": "completed", "result": result}, persistent=True)
        await self._settle(claimed, "complete")

    async def retry(self, claimed: Claimed, next_task: Task, delay: float, error: TaskError) -> None:
        if self._handed_back(claimed, "retry"):
            return
        message: AbstractIncomingMessage = claimed.receipt
        copy = task_message(next_task, reply_to=message.reply_to, priority=message.priority or 0)
        bucket = delay_bucket(delay)
        with translated("retry", self.config):
            await self._ready()
            if bucket is None:
                await self._timed(self.declared.publish_work(copy, next_task.type))
                await self._timed(self.declared.ring([next_task.type]))
            else:
                exchange = await self._timed(self.declared.delay(bucket))
                # The routing key is the work queue: the delay queue dead-letters
                # the message back there with it when its TTL is over.
                await self._timed(exchange.publish(copy, routing_key=self.topology.work(next_task.type)))
                # Nobody rings when the broker moves it back: this supervisor's
                # idle wait ends by itself then; other supervisors see it at
                # their next look.
                self._due.append((time.monotonic() + bucket / 1000, next_task.type))
        await self._settle(claimed, "retry")

    async def fail(self, claimed: Claimed, error: TaskError) -> None:
        if self._handed_back(claimed, "fail"):
            return
        message: AbstractIncomingMessage = claimed.receipt
        dead = task_message(claimed.task, reply_to=message.reply_to, priority=message.priority or 0)
        status = final_status(error)
        dead.headers["x-error"] = json.dumps(error.to_dict(), default=str)
        dead.headers["x-status"] = status
        dead.headers["x-failed-at"] = time.time()
        with translated("fail", self.config):
            await self._ready()
            await self._timed(self.declared.dead())
            await self._timed(self.declared.channel.default_exchange.publish(dead, routing_key=self.topology.dead))
            await self._reply(claimed, {"status": status, "error": error.to_dict()}, persistent=True)
        await self._settle(claimed, "fail")

    async def release(self, claimed: Claimed) -> None:
        if self._handed_back(claimed, "release"):
            return
        message: AbstractIncomingMessage = claimed.receipt
        copy = task_message(claimed.task, reply_to=message.reply_to, priority=message.priority or 0,
                            redeliveries=redeliveries(message))
        with translated("release", self.config):
            await self._ready()
            await self._timed(self.declared.publish_work(copy, claimed.task.type))
            await self._timed(self.declared.ring([claimed.task.type]))
        await self._settle(claimed, "release")

    async def progress(self, claimed: Claimed, percent: int, message: str | None) -> None:
        if self._handed_back(claimed, None):
            return
        with translated("progress", self.config):
            await self._reply(claimed, {"status": "claimed", "progress": int(percent), "message": message},
                              persistent=False)

    async def _reply(self, claimed: Claimed, body: dict[str, Any], *, persistent: bool) -> None:
        message: AbstractIncomingMessage = claimed.receipt
        if not message.reply_to:
            return
        task = claimed.task
        body = {"id": task.id, "type": task.type, "attempts": task.attempt, **body}
        # Not mandatory: a reply queue that expired (its producer went away for
        # longer than result_ttl) must not make the task's report fail forever.
        await self._timed(self.declared.channel.default_exchange.publish(
            reply_message(body, task_id=task.id, persistent=persistent), routing_key=message.reply_to,
            mandatory=False))

    def _handed_back(self, claimed: Claimed, what: str | None) -> bool:
        """True if the channel the task came on is gone: the broker requeued it, it is not ours.

        Reporting it anyway would publish a result (or worse, a retry copy: two
        live copies of one task) for a task that is already on its way to
        another supervisor.
        """
        message: AbstractIncomingMessage = claimed.receipt
        try:
            message.channel  # noqa: B018 - raises once the channel is closed
        except ChannelInvalidStateError:
            if what is not None:
                logger.bind(task_id=claimed.task.id).warning(
                    "amqp: task {} ({}) was handed back by the broker when the connection broke; "
                    "its {} is dropped and it will run again", claimed.task.id, claimed.task.type, what)
            return True
        return False

    async def _settle(self, claimed: Claimed, what: str) -> None:
        """Ack a held message once its fate is recorded; skip one the broker already took back."""
        message: AbstractIncomingMessage = claimed.receipt
        try:
            await self._timed(message.ack())
        except (AMQPError, RuntimeError, OSError, asyncio.TimeoutError) as exc:
            # The channel it came on is gone (broker restart, connection cut): the
            # broker has requeued the message, so it is no longer ours to settle.
            logger.bind(task_id=claimed.task.id).warning(
                "amqp: task {} ({}) was handed back by the broker before its {} could be acked "
                "({!r}); it will run again", claimed.task.id, claimed.task.type, what, exc)
