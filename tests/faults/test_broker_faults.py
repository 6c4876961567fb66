"""The broker goes away during a run and comes back: the supervisor reconnects and no task is lost.

Never the machine's shared brokers: Redis is a private ``redis-server`` on
a free port (append-only file, fsync always: a restarted broker that forgot
its data would lose tasks by itself), killed and started again; RabbitMQ
is reached through a TCP proxy that cuts every connection, as a broker
restart does to its clients. The supervisor is the real CLI.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.ops import Started, free_port, marked
from tests.helpers.services import AMQP_URL, require
from tests.test_amqp_source import Proxy
from workerhost.sources.amqp import AmqpConfig
from workerhost.sources.amqp_producer import AmqpProducer
from workerhost.sources.redis import RedisConfig
from workerhost.sources.redis_producer import RedisProducer

from .conftest import eventually, fns

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

TASKS = 300


class PrivateRedis:
    def __init__(self, exe: str, folder: Path) -> None:
        self.exe, self.folder, self.port = exe, folder, free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
             "--appendfsync", "always", "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("the private redis-server did not start")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    exe = shutil.which("redis-server")
    if exe is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is required under CI")
        pytest.skip("redis-server is not installed")
    folder = tmp_path / "redis-data"
    folder.mkdir()
    server = PrivateRedis(exe, folder)
    server.start()
    yield server
    if server.proc is not None and server.proc.poll() is None:
        server.kill()


async def test_redis_restarted_during_a_run(private_redis: PrivateRedis, write_config: Any, tmp_path: Path,
                                            mark: str) -> None:
    config = write_config(
        [fns("work", "ok", task_types=["Work"], mark=mark, min_workers=2, max_workers=2)],
        task_manager={"type": "redis", "url": private_redis.url, "prefix": "chaos", "lease_timeout": 3,
                      "poll_interval": 0.02, "poll_max_interval": 0.3},
        logging={"level": "WARNING"})
    producer = RedisProducer(RedisConfig(url=private_redis.url, prefix="chaos"))
    started = Started(tmp_path)
    try:
        ids = await producer.submit_many([("Work", {"n": i, "sleep": 0.03}) for i in range(TASKS)])
        proc = started.start(config)

        async def completed() -> int:
            return sum([1 for i in ids if (r := await producer.get(i)) is not None and r.status == "completed"])

        await eventually(lambda: _at_least(completed, TASKS // 4), 60, "a quarter of the tasks")
        for _ in range(2):  # twice: the reconnect must work more than once
            assert await completed() < TASKS, "the run ended before the broker went away: nothing was tested"
            private_redis.kill()
            await asyncio.sleep(1.5)  # the supervisor meets a closed port for a while
            assert proc.poll() is None, started.log()
            private_redis.start()
            await asyncio.sleep(1.0)
        await eventually(lambda: _at_least(completed, TASKS), 120, "every task completed after the restarts")
        records = [await producer.get(i) for i in ids]
        assert sorted(r.params["n"] for r in records if r is not None) == list(range(TASKS))
        assert all(r is not None and r.result["n"] == r.params["n"] for r in records)
        assert await producer.counts() == {"pending": 0, "claimed": 0, "delayed": 0, "dead": 0}
        assert proc.poll() is None
        assert started.stop(proc) == 0, started.log()
    finally:
        started.cleanup()
        await producer.close()
    assert marked(mark) == []


async def test_rabbitmq_connection_cut_during_a_run(amqp_prefix: str, write_config: Any, tmp_path: Path,
                                                    mark: str) -> None:
    require("rabbitmq")
    proxy = Proxy()
    await proxy.start()
    config = write_config(
        [fns("Echo", "ok", task_types=["Echo"], mark=mark, min_workers=2, max_workers=2)],
        task_manager={"type": "amqp", "url": f"amqp://guest:guest@127.0.0.1:{proxy.port}/", "prefix": amqp_prefix,
                      "op_timeout": 3, "poll_interval": 0.02, "poll_max_interval": 0.3},
        logging={"level": "WARNING"})
    producer = AmqpProducer(AmqpConfig(url=AMQP_URL, prefix=amqp_prefix), reply_queue="r", task_types=["Echo"])
    started = Started(tmp_path)
    try:
        ids = await producer.submit_many([("Echo", {"n": i, "sleep": 0.03}) for i in range(TASKS)])
        proc = started.start(config)

        async def completed() -> int:
            return sum([1 for i in ids if (r := await producer.get(i)) is not None and r.status == "completed"])

        await eventually(lambda: _at_least(completed, TASKS // 4), 60, "a quarter of the tasks")
        for _ in range(2):
            assert await completed() < TASKS, "the run ended before the broker went away: nothing was tested"
            await proxy.cut()
            await asyncio.sleep(1.5)
            assert proc.poll() is None, started.log()
            await proxy.start()
            await asyncio.sleep(1.0)
        await eventually(lambda: _at_least(completed, TASKS), 120, "every task completed after the cuts")
        records = [await producer.get(i) for i in ids]
        assert sorted(r.params["n"] for r in records if r is not None) == list(range(TASKS))
        assert await producer.counts() == {"pending": 0, "delayed": 0, "dead": 0}
        assert started.stop(proc) == 0, started.log()
    finally:
        started.cleanup()
        await producer.close()
        await proxy.cut()
    assert marked(mark) == []


async def _at_least(count: Any, n: int) -> bool:
    return bool(await count() >= n)
