"""The machine's Redis and RabbitMQ for integration tests, with a clean namespace per test.

A test that needs a service fails when it is down and CI=true (CI must have
it), and skips with the reason otherwise. Every test gets a unique key prefix
(Redis) or name prefix (RabbitMQ) and everything under it is deleted after.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from urllib.parse import urlsplit

import pytest

REDIS_URL = os.environ.get("WORKERHOST_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
AMQP_URL = os.environ.get("WORKERHOST_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
#: Task types the RabbitMQ tests may use; their queues are deleted after each test.
AMQP_TEST_TYPES = ("Echo", "Fail", "Flaky", "Slow", "A", "B", "Progress", "Crash")
AMQP_TEST_REPLIES = ("r", "r2", "multi")


def _answers(host: str, port: int, probe: bytes, expect: bytes) -> str | None:
    """None if the service answers, else why not."""
    try:
        with socket.create_connection((host, port), timeout=2) as sock:
            sock.settimeout(2)
            sock.sendall(probe)
            reply = sock.recv(16)
    except OSError as exc:
        return f"{host}:{port} unreachable: {exc}"
    return None if reply.startswith(expect) else f"{host}:{port} answered {reply!r}"


def require(service: str) -> None:
    url = urlsplit(REDIS_URL if service == "redis" else AMQP_URL)
    host = url.hostname or "127.0.0.1"
    if service == "redis":
        problem = _answers(host, url.port or 6379, b"PING\r\n", b"+PONG")
    else:
        problem = _answers(host, url.port or 5672, b"AMQP\x00\x00\x09\x01", b"\x01")
    if problem is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{service} is required under CI but {problem}")
    pytest.skip(f"{service} is not running here ({problem}); set CI=true to make this a failure")


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    """A unique key prefix on the real Redis; every key under it is deleted afterwards."""
    require("redis")
    import redis.asyncio as aioredis

    prefix = f"wht-{uuid.uuid4().hex[:10]}"
    yield prefix
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
        for i in range(0, len(keys), 500):
            await client.delete(*keys[i:i + 500])
    finally:
        await client.aclose()


async def delete_amqp(prefix: str, *, types: Iterable[str] = AMQP_TEST_TYPES,
                      replies: Iterable[str] = AMQP_TEST_REPLIES) -> None:
    import aio_pika

    from workerhost.sources.amqp import DELAY_BUCKETS, Topology

    topology = Topology(prefix)
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        names = [topology.work(t) for t in types] + [f"{prefix}.reply.{r}" for r in replies] + [topology.dead]
        delays = [topology.delay(int(b * 1000)) for b in DELAY_BUCKETS]
        for name in names + delays:
            await channel.queue_delete(name)
        for name in [*delays, topology.bell]:
            await channel.exchange_delete(name)
    finally:
        await connection.close()


@pytest.fixture
async def amqp_prefix() -> AsyncIterator[str]:
    """A unique name prefix on the real RabbitMQ; the test's queues and exchanges are deleted afterwards.

    Use task types from AMQP_TEST_TYPES and reply queue names from AMQP_TEST_REPLIES.
    """
    require("rabbitmq")
    prefix = f"wht-{uuid.uuid4().hex[:10]}"
    yield prefix
    await asyncio.wait_for(delete_amqp(prefix), 30)


def run_with_service_missing(
    test_file: str, test_name: str, *, env_var: str, url: str, ci: str | None
) -> subprocess.CompletedProcess[str]:
    """Run one test of ``test_file`` in a child pytest whose service URL points at a closed port."""
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env[env_var] = url
    if ci:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", f"{test_file}::{test_name}"],
        capture_output=True, text=True, env=env, cwd=Path(test_file).parent.parent, timeout=60,
    )


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
