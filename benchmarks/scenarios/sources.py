"""End to end through a task source: producer ``submit`` -> source -> dispatcher -> warm pool -> result.

The producer, the dispatcher and the supervisor share this process (and
the machine's two cores); the source is the real thing: the embedded
SQLite queue, the machine's Redis, the machine's RabbitMQ. Each run uses
a unique key/queue prefix and deletes what it created.

- throughput: submit N tasks back to back, time until the dispatcher has
  reported all N complete to the source;
- latency: one task at a time, from ``submit`` until the producer can
  read it completed (read every millisecond, so the figure is ~1 ms coarse).

An idle dispatcher waits for the source's word that a task arrived (a
doorbell for the embedded queue and RabbitMQ, a blocking XREAD for Redis;
see ``workerhost/_idle.py``), so one-at-a-time latency is the source's own
round trips (submit, claim, complete, the producer reading the result),
not a poll interval.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from ._common import now, payload, quiet_logging, us
from .supervisor import namespace

REDIS_URL = "redis://127.0.0.1:6379/0"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
TASK_TYPE = "echo"


def _task_manager(kind: str, prefix: str, tmp: Path) -> dict[str, Any]:
    if kind == "embedded":
        return {"type": "embedded", "path": str(tmp / "queue.db")}
    if kind == "redis":
        return {"type": "redis", "url": REDIS_URL, "prefix": prefix}
    return {"type": "amqp", "url": AMQP_URL, "prefix": prefix}


async def e2e(*, kind: str, tasks: int, latency_samples: int, workers: int = 2, codec: str = "json") -> dict[str, Any]:
    quiet_logging()
    try:
        from workerhost.dispatch import Dispatcher
        from workerhost.sources import make_producer, make_source, read_settings
    except ImportError as exc:
        return {"skipped": f"the sources are not in this checkout ({exc})"}
    from workerhost import Supervisor
    from workerhost.config import parse_config
    from workerhost.errors import ConfigError, SourceError

    prefix = f"bench-{uuid.uuid4().hex[:10]}"
    with tempfile.TemporaryDirectory(prefix="wh-bench-") as tmpdir:
        tmp = Path(tmpdir)
        doc = {"version": "1.0", "workers": [namespace(TASK_TYPE, codec=codec, workers=workers)],
               "task_manager": _task_manager(kind, prefix, tmp)}
        try:
            config = parse_config(doc, base_dir=tmp, path=tmp / "workerhost.yaml")
            settings = read_settings(config)
            source = make_source(config, settings)
            producer = make_producer(config, settings)
        except ConfigError as exc:
            return {"skipped": f"{kind} source unavailable: {exc}"}
        try:
            return await _measure(Supervisor(config), Dispatcher, source, producer, settings, tasks=tasks,
                                  latency_samples=latency_samples)
        except (SourceError, OSError, TimeoutError) as exc:
            return {"skipped": f"{kind} source unreachable: {exc!r}"}
        finally:
            await _cleanup(kind, prefix)


async def _measure(sup: Any, dispatcher_cls: Any, source: Any, producer: Any, settings: Any, *, tasks: int,
                   latency_samples: int) -> dict[str, Any]:
    params = payload("noop")
    async with sup:
        dispatcher = dispatcher_cls(sup, source, options=settings.dispatch_options())
        await dispatcher.start()
        try:
            await _wait_done(dispatcher, [await producer.submit(TASK_TYPE, params) for _ in range(10)], 10, producer)
            done_before = dispatcher.counters["completed"]
            t0 = now()
            ids = [await producer.submit(TASK_TYPE, params) for _ in range(tasks)]
            submit_s = now() - t0
            await _wait_done(dispatcher, ids, done_before + tasks, producer)
            wall = now() - t0
            latencies = []
            for _ in range(latency_samples):
                t1 = now()
                task_id = await producer.submit(TASK_TYPE, params)
                while True:
                    record = await producer.get(task_id)
                    if record is not None and record.status == "completed":
                        break
                    if record is not None and record.status in ("failed", "dead"):
                        raise RuntimeError(f"task {task_id} {record.status}: {record.error}")
                    await asyncio.sleep(0.001)
                latencies.append(us(now() - t1))
        finally:
            await dispatcher.stop(10)
            await producer.close()
    return {"tasks": tasks, "wall_s": wall, "tasks_per_s": tasks / wall, "submit_per_s": tasks / submit_s,
            "samples_us": {"noop": latencies}}


async def _wait_done(dispatcher: Any, ids: list[str], target: int, producer: Any, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while dispatcher.counters["completed"] < target:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {dispatcher.counters['completed']} of {target} tasks completed")
        await asyncio.sleep(0.002)
    # Results may reach the producer a moment after the source has them
    # (RabbitMQ sends them to its reply queue).
    while True:
        record = await producer.get(ids[-1])
        if record is not None and record.status == "completed":
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"last task not readable as completed: {record}")
        await asyncio.sleep(0.002)


async def _cleanup(kind: str, prefix: str) -> None:
    """Delete what the run created on the shared servers (best effort)."""
    try:
        if kind == "redis":
            import redis.asyncio as aioredis

            client = aioredis.Redis.from_url(REDIS_URL)
            try:
                keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
                for i in range(0, len(keys), 500):
                    await client.delete(*keys[i:i + 500])
            finally:
                await client.aclose()
        elif kind == "amqp":
            await asyncio.wait_for(_delete_amqp(prefix), 30)
    except Exception:  # noqa: BLE001 - cleanup must not hide the figures
        pass


async def _delete_amqp(prefix: str) -> None:
    import aio_pika

    from workerhost.sources.amqp import DELAY_BUCKETS, Topology

    topology = Topology(prefix)
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        delays = [topology.delay(int(b * 1000)) for b in DELAY_BUCKETS]
        for name in [topology.work(TASK_TYPE), topology.dead, *delays]:
            await channel.queue_delete(name)
        for name in [*delays, topology.bell]:
            await channel.exchange_delete(name)
        # The producer's reply queue has a random name under the prefix; it
        # expires by itself (x-expires) after result_ttl unused.
    finally:
        await connection.close()
