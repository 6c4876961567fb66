"""The Redis task source (redis-py asyncio, streams).

One stream per task type, each with one consumer group named after the key
prefix: per task type rather than per namespace so that a task keeps its
queue when a type moves to another namespace in the config, and so that
``claim`` can take exactly as many entries of each type as it was asked
for. Every supervisor process is one consumer with a unique name
(host-pid-random).

- claim: due delayed retries are moved back to their streams, entries left
  pending by a dead consumer longer than ``lease_timeout`` are taken over
  (XAUTOCLAIM), then new entries are read (non-blocking XREADGROUP, COUNT
  limited to what is left of ``limit``). An idle dispatcher then blocks in
  :meth:`RedisSource.wait_for_tasks` (XREAD) until an entry arrives, so a
  task is claimed within a round trip of its XADD.
- While a task is held the dispatcher renews its lease every
  ``lease_timeout / 3`` (:meth:`RedisSource.renew`: XCLAIM JUSTID resets
  the idle time), so the lease can be short even for long tasks; only a
  supervisor that stops renewing (dead, frozen, cut off) loses its tasks.
- complete / retry / fail / release are one Lua script each time
  (:mod:`._redis_lua`): ack and delete the entry, then record the result,
  park the retry in the ``delayed`` sorted set, append to the ``dead``
  stream, or re-add the entry. Delivery is at-least-once.
- A task whose supervisor died under it more than ``max_lease_expiries``
  times is dead-lettered (LeaseExpired) instead of handed out again.
- A task that fails for good ends "dead" (its retries were spent) or
  "failed" (it could not be retried at all: a validation error, an unknown
  type); both go to the dead-letter stream, from where a user can list and
  requeue them.

Results live in a hash per task for ``result_ttl`` seconds, readable with
:class:`RedisProducer`. The URL may carry a password: it is never logged
(:func:`redact`).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

import attrs
import redis.asyncio as aioredis
from loguru import logger
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import AuthenticationError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from workerhost._schema import Reader
from workerhost.errors import SourceError, SourceFatal
from workerhost.records import FailureKind, Task, TaskError
from workerhost.sources import _redis_lua as lua
from workerhost.sources._common import final_status, redact
from workerhost.sources.base import Claimed

DEFAULT_URL = "redis://127.0.0.1:6379/0"
#: How many due retries one claim moves back to their streams at most.
PROMOTE_BATCH = 200


@attrs.frozen(kw_only=True)
class RedisConfig:
    #: May hold a password: kept out of repr and logs (use ``display_url``).
    url: str = attrs.field(default=DEFAULT_URL, repr=False)
    prefix: str = "workerhost"
    #: A claimed entry whose lease was not renewed for this long is handed out again.
    lease_timeout: float = 60.0
    #: How long a finished task's hash (result, error) stays readable.
    result_ttl: float = 7 * 24 * 3600.0
    #: Approximate cap on the dead-letter stream's length.
    dead_max: int = 100_000
    #: Leases a task may lose (its supervisor died under it) before it is
    #: dead-lettered instead of handed out again: a task that takes its
    #: supervisor down every time must not do so forever.
    max_lease_expiries: int = 5

    @property
    def display_url(self) -> str:
        return redact(self.url)


def read_config(reader: Reader) -> RedisConfig:
    """Read the redis keys of ``task_manager`` (``type`` is read by the caller)."""
    url = reader.str("url", DEFAULT_URL)
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise reader.error("url", f"must be a redis://, rediss:// or unix:// URL, got scheme {parts.scheme!r}")
    prefix = reader.str("prefix", "workerhost")
    if any(c in prefix for c in " {}*?[]"):
        raise reader.error("prefix", f"must not contain spaces, braces or glob characters, got {prefix!r}")
    return RedisConfig(
        url=url,
        prefix=prefix,
        lease_timeout=float(reader.number("lease_timeout", 60.0, positive=True)),
        result_ttl=float(reader.number("result_ttl", 7 * 24 * 3600.0, positive=True)),
        dead_max=int(reader.int("dead_max", 100_000, minimum=1)),
        max_lease_expiries=int(reader.int("max_lease_expiries", 5, minimum=0)),
    )


@attrs.frozen
class Keys:
    prefix: str

    @property
    def group(self) -> str:
        return self.prefix

    def stream(self, task_type: str) -> str:
        return f"{self.prefix}:stream:{task_type}"

    def task(self, task_id: str) -> str:
        return f"{self.prefix}:task:{task_id}"

    def dedupe(self, key: str) -> str:
        return f"{self.prefix}:dedupe:{key}"

    @property
    def delayed(self) -> str:
        return f"{self.prefix}:delayed"

    @property
    def dead(self) -> str:
        return f"{self.prefix}:dead"


def connect_client(config: RedisConfig) -> aioredis.Redis:
    """A client that retries a command on a fresh connection after Redis restarts."""
    return aioredis.Redis.from_url(
        config.url,
        decode_responses=True,
        socket_connect_timeout=5,
        socket_timeout=30,
        health_check_interval=15,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=5),
        retry_on_error=[RedisConnectionError, RedisTimeoutError, ConnectionResetError],
    )


@contextlib.contextmanager
def translated(what: str, config: RedisConfig) -> Iterator[None]:
    """Library errors become SourceError at this boundary (never with the password)."""
    try:
        yield
    except AuthenticationError as exc:
        raise SourceFatal(f"redis authentication failed ({config.display_url}): {exc}") from exc
    except (RedisError, OSError) as exc:
        raise SourceError(f"redis {what} failed ({config.display_url}): {exc}") from exc


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def _now_ms() -> int:
    return int(time.time() * 1000)


@attrs.frozen(kw_only=True)
class Receipt:
    stream: str
    entry_id: str


class RedisSource:
    kind = "redis"
    durable_retries = True

    def __init__(self, config: RedisConfig, *, consumer: str | None = None) -> None:
        self.config = config
        self.keys = Keys(config.prefix)
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._client: aioredis.Redis | None = None
        self._scripts: dict[str, Any] = {}
        self._groups: set[str] = set()
        self._next_reclaim: dict[str, float] = {}
        self._cursor: dict[str, str] = {}
        self._rr = 0

    # -- lifecycle -----------------------------------------------------------
    async def connect(self) -> None:
        client = connect_client(self.config)
        try:
            with translated("connect", self.config):
                await client.ping()
        except SourceError:
            await client.aclose()
            raise
        self._client = client
        self._scripts = {name: client.register_script(getattr(lua, name))
                         for name in ("MARK_CLAIMED", "FINISH", "PROMOTE", "REFRESH", "PRUNE")}
        logger.info("redis source connected to {} as consumer {}", self.config.display_url, self.consumer)

    async def close(self) -> None:
        if self._client is None:
            return
        client, self._client = self._client, None
        with contextlib.suppress(RedisError, OSError):
            for stream in self._groups:
                mine = await client.xpending_range(stream, self.keys.group, "-", "+", 1, consumername=self.consumer)
                if not mine:
                    await client.xgroup_delconsumer(stream, self.keys.group, self.consumer)
        with contextlib.suppress(RedisError, OSError):
            await client.aclose()

    @property
    def client(self) -> aioredis.Redis:
        if self._client is None:
            raise SourceError("the redis source is not connected")
        return self._client

    # -- claiming --------------------------------------------------------------
    async def claim(self, task_types: Sequence[str], limit: int) -> list[Claimed]:
        if limit <= 0 or not task_types:
            return []
        # Rotate the starting type so one busy type cannot starve the others.
        start = self._rr % len(task_types)
        self._rr += 1
        claimed: list[Claimed] = []
        try:
            with translated("claim", self.config):
                await self._scripts["PROMOTE"](keys=[self.keys.delayed],
                                               args=[_now_ms(), PROMOTE_BATCH, self.config.prefix, time.time()])
                for task_type in (*task_types[start:], *task_types[:start]):
                    if len(claimed) >= limit:
                        break
                    claimed += await self._claim_type(task_type, limit - len(claimed))
                if claimed:
                    await self._scripts["MARK_CLAIMED"](
                        keys=[self.keys.task(c.task.id) for c in claimed],
                        args=[self.consumer, time.time(), *(c.task.attempt for c in claimed)])
        except SourceError as exc:
            if not claimed:
                raise
            # Entries already read are pending under our name: run them now
            # rather than leave them to wait out their lease.
            logger.warning("{}; returning the {} task(s) claimed before it", exc, len(claimed))
        return claimed

    async def _claim_type(self, task_type: str, want: int) -> list[Claimed]:
        stream = self.keys.stream(task_type)
        await self._ensure_group(stream)
        out = await self._reclaim(stream, want)
        if len(out) < want:
            for entry_id, fields in await self._read_new(stream, want - len(out)):
                out.append(self._take(stream, entry_id, fields, redelivered=0))
        return out

    async def _read_new(self, stream: str, count: int) -> list[tuple[str, dict[str, str]]]:
        reply: Any
        try:
            reply = await self.client.xreadgroup(self.keys.group, self.consumer, {stream: ">"}, count=count)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # Redis lost the group (restarted without persistence): make it again.
            self._groups.discard(stream)
            await self._ensure_group(stream)
            reply = await self.client.xreadgroup(self.keys.group, self.consumer, {stream: ">"}, count=count)
        return [entry for _name, entries in reply or [] for entry in entries]

    async def _ensure_group(self, stream: str) -> None:
        if stream in self._groups:
            return
        try:
            # From id 0, not $: tasks submitted before any supervisor ran are served too.
            await self.client.xgroup_create(stream, self.keys.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._groups.add(stream)

    async def _reclaim(self, stream: str, want: int) -> list[Claimed]:
        """Take over entries whose lease ran out (their supervisor stopped renewing)."""
        now = time.monotonic()
        if now < self._next_reclaim.get(stream, 0.0):
            return []
        self._next_reclaim[stream] = now + self.config.lease_timeout / 4
        lease_ms = int(self.config.lease_timeout * 1000)
        cursor, entries, *_deleted = await self.client.xautoclaim(
            stream, self.keys.group, self.consumer, lease_ms, start_id=self._cursor.get(stream, "0-0"), count=want)
        self._cursor[stream] = cursor
        if cursor != "0-0":
            self._next_reclaim[stream] = now  # more to scan: look again on the next claim
        else:
            await self._scripts["PRUNE"](keys=[stream], args=[self.keys.group, lease_ms * 10, self.consumer])
        out = []
        for entry_id, fields in entries:
            if fields is None:
                continue
            info = await self.client.xpending_range(stream, self.keys.group, entry_id, entry_id, 1)
            expiries = int(info[0]["times_delivered"]) - 1 if info else 1
            claimed = self._take(stream, entry_id, fields, redelivered=expiries)
            log = logger.bind(task_id=claimed.task.id)
            if expiries > self.config.max_lease_expiries:
                log.error("redis: task {} ({}) lost its supervisor {} times; dead-lettered",
                          claimed.task.id, claimed.task.type, expiries)
                await self.fail(claimed, TaskError(
                    type="LeaseExpired", kind=FailureKind.WORKER_LOST,
                    message=f"its supervisor stopped renewing the claim {expiries} times (max_lease_expiries)"))
                continue
            log.warning("redis: took over task {} ({}) after its lease of {}s ran out; attempt {}",
                        claimed.task.id, claimed.task.type, self.config.lease_timeout, claimed.task.attempt)
            out.append(claimed)
        return out

    async def wait_for_tasks(self, task_types: Sequence[str], timeout: float) -> bool:
        """Block (XREAD) until an entry our group has not been given arrives; never claims.

        XREAD starts after each group's last-delivered id, so an entry added
        since the last claim answers at once (no lost wake-up), and reading
        with XREAD rather than XREADGROUP puts nothing in our pending list:
        cancelling the wait loses no task. The block is cut short when a
        delayed retry falls due or a lease check is due, which the next
        claim then handles.
        """
        if not task_types:
            return False
        streams = [self.keys.stream(t) for t in task_types]
        with translated("wait", self.config):
            for stream in streams:
                await self._ensure_group(stream)
            async with self.client.pipeline(transaction=False) as pipe:
                for stream in streams:
                    pipe.xinfo_groups(stream)
                pipe.zrange(self.keys.delayed, 0, 0, withscores=True)
                *groups, due = await pipe.execute()
            start: dict[Any, Any] = {
                stream: next((g["last-delivered-id"] for g in info if g["name"] == self.keys.group), "0-0")
                for stream, info in zip(streams, groups, strict=True)
            }
            block = timeout
            if due:
                block = min(block, due[0][1] / 1000 - time.time())
            now = time.monotonic()
            for stream in streams:
                if stream in self._next_reclaim:
                    block = min(block, self._next_reclaim[stream] - now)
            if block <= 0.001:
                return True
            reply = await self.client.xread(start, count=1, block=max(1, int(block * 1000)))
        # Cut short for a due retry or lease check: the next claim has work either way.
        return bool(reply) or block < timeout

    def _take(self, stream: str, entry_id: str, fields: dict[str, str], *, redelivered: int) -> Claimed:
        task = Task.from_wire(json.loads(fields["task"]))
        # Every delivery after the first was a try that a lost supervisor started.
        task.attempt += max(0, redelivered)
        return Claimed(task=task, receipt=Receipt(stream=stream, entry_id=entry_id))

    # -- results ---------------------------------------------------------------
    async def complete(self, claimed: Claimed, result: Any) -> None:
        await self._finish(claimed, "complete", dumps(result))

    async def retry(self, claimed: Claimed, next_task: Task, delay: float, error: TaskError) -> None:
        due = _now_ms() + int(max(0.0, delay) * 1000)
        await self._finish(claimed, "retry", dumps(next_task.to_wire()), due, dumps(error.to_dict()))

    async def fail(self, claimed: Claimed, error: TaskError) -> None:
        await self._finish(claimed, "fail", dumps(claimed.task.to_wire()), dumps(error.to_dict()), claimed.task.id,
                           final_status(error))

    async def release(self, claimed: Claimed) -> None:
        await self._finish(claimed, "release", dumps(claimed.task.to_wire()))

    async def progress(self, claimed: Claimed, percent: int, message: str | None) -> None:
        with translated("progress", self.config):
            await self.client.hset(self.keys.task(claimed.task.id),
                                   mapping={"progress": int(percent), "progress_message": message or "",
                                            "updated_at": time.time()})

    async def _finish(self, claimed: Claimed, mode: str, *extra: Any) -> None:
        receipt: Receipt = claimed.receipt
        try:
            with translated(mode, self.config):
                done = await self._scripts["FINISH"](
                    keys=[receipt.stream, self.keys.task(claimed.task.id), self.keys.delayed, self.keys.dead],
                    args=[self.keys.group, receipt.entry_id, self.consumer, mode, time.time(), _now_ms(),
                          int(self.config.result_ttl), self.config.dead_max, *extra])
        except SourceError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # Redis lost the stream's group, and with it this entry: nothing left to ack.
            logger.warning("redis: task {} lost with its consumer group (Redis restarted?): {} dropped",
                           claimed.task.id, mode)
            return
        if done == -1:
            logger.bind(task_id=claimed.task.id).warning(
                "redis: task {} ({}) was taken over by another supervisor after its lease ran out; "
                "leaving its {} to that one", claimed.task.id, claimed.task.type, mode)
        elif done == 0 and mode != "complete":
            logger.info("redis: task {} was already finished elsewhere; {} ignored", claimed.task.id, mode)

    # -- leases ------------------------------------------------------------------
    @property
    def renew_interval(self) -> float:
        return self.config.lease_timeout / 3

    async def renew(self, claimed: Sequence[Claimed]) -> None:
        """Reset the idle time of the entries we still hold (the dispatcher calls this)."""
        by_stream: dict[str, list[str]] = {}
        for c in claimed:
            by_stream.setdefault(c.receipt.stream, []).append(c.receipt.entry_id)
        for stream, ids in by_stream.items():
            with translated("lease renewal", self.config):
                lost = await self._scripts["REFRESH"](keys=[stream], args=[self.keys.group, self.consumer, *ids])
            for entry_id in lost or []:
                logger.warning("redis: lost the lease on entry {} of {}: another supervisor took it over",
                               entry_id, stream)
