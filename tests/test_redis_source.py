"""The Redis source against the machine's real Redis (and a private one for restarts)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.conftest import namespace
from tests.helpers.services import REDIS_URL, closed_port, run_with_service_missing
from workerhost._schema import Reader
from workerhost.dispatch import Dispatcher
from workerhost.errors import ConfigError, SourceError, SourceFatal
from workerhost.records import FailureKind, TaskError
from workerhost.sources.base import DeadLetters, Inspectable, RenewsLeases, TaskSource
from workerhost.sources.redis import RedisConfig, RedisSource, read_config
from workerhost.sources.redis_producer import RedisProducer
from workerhost.supervisor import Supervisor

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]

ERR = TaskError(type="RetriableError", message="try again")


def cfg(prefix: str, **kw: Any) -> RedisConfig:
    return RedisConfig(url=kw.pop("url", REDIS_URL), prefix=prefix, **kw)


@pytest.fixture
async def pair(redis_prefix: str) -> AsyncIterator[tuple[RedisSource, RedisProducer]]:
    config = cfg(redis_prefix, lease_timeout=30)
    source, producer = RedisSource(config), RedisProducer(config)
    await source.connect()
    yield source, producer
    await source.close()
    await producer.close()


async def test_implements_the_contract(pair: tuple[RedisSource, RedisProducer]) -> None:
    source, producer = pair
    assert isinstance(source, TaskSource) and isinstance(source, RenewsLeases)
    assert isinstance(producer, Inspectable) and isinstance(producer, DeadLetters)
    assert source.durable_retries


async def test_claim_complete_and_read_result(pair: tuple[RedisSource, RedisProducer], redis_prefix: str) -> None:
    source, producer = pair
    task_id = await producer.submit("Echo", {"n": 1}, metadata={"k": "v"})
    assert (await producer.get(task_id)).status == "pending"  # type: ignore[union-attr]
    [claimed] = await source.claim(["Echo"], 5)
    assert claimed.task.id == task_id and claimed.task.params == {"n": 1} and claimed.task.attempt == 1
    assert claimed.task.metadata == {"k": "v"}
    record = await producer.get(task_id)
    assert record is not None and record.status == "claimed" and record.attempts == 1
    await source.progress(claimed, 40, "almost")
    assert (await producer.get(task_id)).progress == 40  # type: ignore[union-attr]
    await source.complete(claimed, {"out": [1, 2]})
    record = await producer.wait(task_id, timeout=5)
    assert record.status == "completed" and record.result == {"out": [1, 2]}
    client = aioredis.Redis.from_url(REDIS_URL)
    ttl = await client.ttl(f"{redis_prefix}:task:{task_id}")
    stream_len = await client.xlen(f"{redis_prefix}:stream:Echo")
    await client.aclose()
    assert 0 < ttl <= 7 * 24 * 3600
    assert stream_len == 0  # acked entries are deleted, the stream does not grow
    assert await source.claim(["Echo"], 5) == []


async def test_claim_respects_limit_across_types(pair: tuple[RedisSource, RedisProducer]) -> None:
    source, producer = pair
    for i in range(4):
        await producer.submit("A", {"i": i})
        await producer.submit("B", {"i": i})
    first = await source.claim(["A", "B"], 3)
    assert len(first) == 3
    second = await source.claim(["A", "B"], 10)
    assert len(second) == 5
    assert sorted(c.task.type for c in first + second) == ["A"] * 4 + ["B"] * 4
    assert await source.claim(["A", "B"], 0) == []


async def test_delayed_retry_waits_in_redis(pair: tuple[RedisSource, RedisProducer]) -> None:
    source, producer = pair
    task_id = await producer.submit("Flaky", {})
    [claimed] = await source.claim(["Flaky"], 1)
    nxt = claimed.task
    nxt.attempt, nxt.failures = 2, 1
    await source.retry(claimed, nxt, 1.0, ERR)
    record = await producer.get(task_id)
    assert record is not None and record.status == "delayed" and record.error["message"] == "try again"
    assert (await producer.counts())["delayed"] == 1
    assert await source.claim(["Flaky"], 1) == []  # not due yet
    deadline = time.monotonic() + 10
    again: list[Any] = []
    while not again and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        again = await source.claim(["Flaky"], 1)
    assert again and again[0].task.id == task_id
    assert again[0].task.attempt == 2 and again[0].task.failures == 1
    # A retry with no delay goes straight back to the stream.
    await source.retry(again[0], again[0].task, 0.0, ERR)
    [third] = await source.claim(["Flaky"], 1)
    assert third.task.id == task_id


async def test_fail_dead_letters_and_requeue(pair: tuple[RedisSource, RedisProducer]) -> None:
    source, producer = pair
    ids = [await producer.submit("Fail", {"i": i}) for i in range(3)]
    claimed = await source.claim(["Fail"], 3)
    for c in claimed:
        c.task.failures = 4
        await source.fail(c, TaskError(type="RuntimeError", message="boom", kind=FailureKind.RAISED))
    record = await producer.wait(ids[0], timeout=5)
    assert record.status == "dead" and record.error["type"] == "RuntimeError"
    dead = await producer.dead_letters()
    assert sorted(r.id for r in dead) == sorted(ids)
    assert (await producer.counts())["dead"] == 3
    assert await producer.requeue(ids[0]) is True
    assert await producer.requeue(ids[0]) is False  # not dead any more
    assert await producer.requeue("no-such-task") is False
    [back] = await source.claim(["Fail"], 5)
    assert back.task.id == ids[0]
    assert back.task.attempt == 2 and back.task.failures == 0  # fresh budgets, attempts keep counting
    assert await producer.requeue_all() == 2
    assert len(await source.claim(["Fail"], 5)) == 2
    assert await producer.dead_letters() == []


async def test_release_hands_the_task_back_untouched(pair: tuple[RedisSource, RedisProducer]) -> None:
    source, producer = pair
    task_id = await producer.submit("Echo", {})
    [claimed] = await source.claim(["Echo"], 1)
    await source.release(claimed)
    assert (await producer.get(task_id)).status == "pending"  # type: ignore[union-attr]
    [again] = await source.claim(["Echo"], 1)
    assert again.task.id == task_id and again.task.attempt == 1


async def test_dedupe_key_returns_the_first_task(pair: tuple[RedisSource, RedisProducer]) -> None:
    _, producer = pair
    first = await producer.submit("Echo", {"a": 1}, dedupe_key="k1")
    assert await producer.submit("Echo", {"a": 2}, dedupe_key="k1") == first
    assert await producer.submit("Echo", {"a": 2}, dedupe_key="k2") != first


async def test_lease_expiry_hands_a_dead_consumers_task_to_another(redis_prefix: str) -> None:
    config = cfg(redis_prefix, lease_timeout=0.5)
    producer = RedisProducer(config)
    dead, alive = RedisSource(config), RedisSource(config)
    await dead.connect()
    await alive.connect()
    try:
        task_id = await producer.submit("Echo", {})
        [lost] = await dead.claim(["Echo"], 1)
        # "dead" stops renewing (as a killed supervisor would); the lease runs out.
        await asyncio.sleep(0.7)
        [taken] = await alive.claim(["Echo"], 1)
        assert taken.task.id == task_id
        assert taken.task.attempt == 2  # the lost try counts
        # The old holder's verdicts are ignored, except a completion (the work is done).
        await dead.fail(lost, ERR)
        assert (await producer.get(task_id)).status == "claimed"  # type: ignore[union-attr]
        await dead.complete(lost, "from the first")
        await alive.complete(taken, "from the second")  # already finished: a no-op
        record = await producer.get(task_id)
        assert record is not None and record.status == "completed" and record.result == "from the first"
    finally:
        await dead.close()
        await alive.close()
        await producer.close()


async def test_a_task_that_keeps_losing_its_supervisor_is_dead_lettered(redis_prefix: str) -> None:
    config = cfg(redis_prefix, lease_timeout=0.3, max_lease_expiries=1)
    producer = RedisProducer(config)
    sources = [RedisSource(config) for _ in range(3)]
    for source in sources:
        await source.connect()
    try:
        task_id = await producer.submit("Crash", {})
        assert len(await sources[0].claim(["Crash"], 1)) == 1
        await asyncio.sleep(0.45)
        [second] = await sources[1].claim(["Crash"], 1)  # one expiry: allowed
        assert second.task.attempt == 2
        await asyncio.sleep(0.45)
        assert await sources[2].claim(["Crash"], 1) == []  # two: dead-lettered, not handed out
        record = await producer.get(task_id)
        assert record is not None and record.status == "dead" and record.error["type"] == "LeaseExpired"
        assert [r.id for r in await producer.dead_letters()] == [task_id]
    finally:
        for source in sources:
            await source.close()
        await producer.close()


async def test_renewed_leases_are_not_taken_over(redis_prefix: str) -> None:
    config = cfg(redis_prefix, lease_timeout=0.6)
    producer = RedisProducer(config)
    holder, other = RedisSource(config), RedisSource(config)
    await holder.connect()
    await other.connect()
    try:
        await producer.submit("Slow", {})
        claimed = await holder.claim(["Slow"], 1)
        for _ in range(6):
            await asyncio.sleep(holder.renew_interval)
            await holder.renew(claimed)
            assert await other.claim(["Slow"], 1) == []
        await asyncio.sleep(0.8)  # renewals stop: now it can be taken
        assert len(await other.claim(["Slow"], 1)) == 1
    finally:
        await holder.close()
        await other.close()
        await producer.close()


async def test_list_tasks_and_counts(pair: tuple[RedisSource, RedisProducer]) -> None:
    source, producer = pair
    ids = [await producer.submit("Echo", {"i": i}) for i in range(3)]
    [claimed] = await source.claim(["Echo"], 1)
    assert await producer.counts() == {"pending": 2, "claimed": 1, "delayed": 0, "dead": 0}
    await source.complete(claimed, None)
    records = await producer.list_tasks()
    assert sorted(r.id for r in records) == sorted(ids)
    assert [r.id for r in await producer.list_tasks(status="completed")] == [claimed.task.id]


# -- configuration and secrets -------------------------------------------------------
def test_config_reader_names_the_field(tmp_path: Path) -> None:
    def read(data: dict[str, Any]) -> RedisConfig:
        reader = Reader(data, "task_manager", base_dir=tmp_path)
        config = read_config(reader)
        reader.finish()
        return config

    config = read({"url": "redis://:s3cret@localhost:6380/2", "prefix": "jobs", "lease_timeout": 5})
    assert config.lease_timeout == 5 and config.prefix == "jobs"
    assert "s3cret" not in repr(config) and "s3cret" not in config.display_url
    with pytest.raises(ConfigError, match=r"task_manager\.url: must be a redis://"):
        read({"url": "http://localhost"})
    with pytest.raises(ConfigError, match=r"task_manager\.lease_timeout: must be greater than 0"):
        read({"lease_timeout": 0})
    with pytest.raises(ConfigError, match=r"task_manager\.prefix"):
        read({"prefix": "a b"})
    with pytest.raises(ConfigError, match=r"task_manager\.lease: unknown key"):
        read({"lease": 3})


async def test_unreachable_redis_is_a_source_error_without_the_password() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    source = RedisSource(RedisConfig(url=f"redis://:hunter2@127.0.0.1:{port}/0"))
    with pytest.raises(SourceError) as info:
        await source.connect()
    assert "hunter2" not in str(info.value) and "***" in str(info.value)


# -- a Redis that restarts ------------------------------------------------------------------
@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[tuple[int, Any]]:
    """A redis-server of our own on a free port, with start() / kill() to restart it."""
    exe = shutil.which("redis-server")
    if exe is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is required under CI")
        pytest.skip("redis-server is not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs: list[subprocess.Popen[bytes]] = []

    class Server:
        def start(self) -> None:
            proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                     "--appendonly", "no", "--dir", str(tmp_path)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(proc)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    return
                except OSError:
                    time.sleep(0.05)
            raise RuntimeError("private redis-server did not start")

        def kill(self) -> None:
            procs[-1].kill()
            procs[-1].wait()

    server = Server()
    server.start()
    yield port, server
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_reconnects_after_redis_restarts(private_redis: tuple[int, Any]) -> None:
    port, server = private_redis
    config = RedisConfig(url=f"redis://127.0.0.1:{port}/0", prefix="restart")
    source, producer = RedisSource(config), RedisProducer(config)
    await source.connect()
    try:
        first = await producer.submit("Echo", {"n": 1})
        [claimed] = await source.claim(["Echo"], 1)
        await source.complete(claimed, 1)
        assert (await producer.get(first)).status == "completed"  # type: ignore[union-attr]
        server.kill()
        with pytest.raises(SourceError):
            await source.claim(["Echo"], 1)
        server.start()  # an empty Redis: streams and groups are gone
        second = await producer.submit("Echo", {"n": 2})
        [again] = await source.claim(["Echo"], 1)
        assert again.task.id == second
        await source.complete(again, 2)
        assert (await producer.wait(second, timeout=5)).result == 2
    finally:
        await source.close()
        await producer.close()


# -- end to end: a real Supervisor driven by the dispatcher ---------------------------------
async def test_supervisor_runs_tasks_from_redis(redis_prefix: str, make_config: Any) -> None:
    config = make_config([
        namespace("Echo", "echo"),
        namespace("Fail", "fail", max_retries=2, retry={"backoff": 0.3, "backoff_max": 0.3, "jitter": False}),
        namespace("Progress", "progress"),
    ])
    rcfg = cfg(redis_prefix, lease_timeout=5)
    producer = RedisProducer(rcfg)
    echo_ids = [await producer.submit("Echo", {"i": i}) for i in range(20)]
    fail_id = await producer.submit("Fail", {"kind": "retriable"})
    progress_id = await producer.submit("Progress", {})
    async with Supervisor(config, log_events=False) as sup:
        dispatcher = Dispatcher(sup, RedisSource(rcfg))
        await dispatcher.start()
        try:
            results = [await producer.wait(i, timeout=30) for i in echo_ids]
            failed = await producer.wait(fail_id, timeout=30)
            progressed = await producer.wait(progress_id, timeout=30)
        finally:
            await dispatcher.stop(5)
    assert all(r.status == "completed" for r in results)
    assert [r.result["params"]["i"] for r in results] == list(range(20))
    assert all(r.result["attempt"] == 1 for r in results)
    # Two retries went through the delayed set, then the task was dead-lettered.
    assert failed.status == "dead" and failed.attempts == 3 and failed.error["type"] == "RetriableError"
    assert [r.id for r in await producer.dead_letters()] == [fail_id]
    assert progressed.status == "completed" and progressed.progress == 100
    counts = await producer.counts()
    assert counts == {"pending": 0, "claimed": 0, "delayed": 0, "dead": 1}
    await producer.close()
    assert json.dumps(results[0].to_dict())  # records are JSON-ready for the CLI


# -- a missing service fails under CI, skips elsewhere ------------------------------------------
@pytest.mark.parametrize("ci", ["true", None])
def test_missing_redis_fails_under_ci_and_skips_locally(ci: str | None, tmp_path: Path) -> None:
    res = run_with_service_missing(__file__, "test_implements_the_contract", env_var="WORKERHOST_TEST_REDIS_URL",
                                   url=f"redis://127.0.0.1:{closed_port()}/0", ci=ci)
    if ci:
        assert res.returncode == 1 and "redis is required under CI" in res.stdout, res.stdout
    else:
        assert res.returncode == 0 and "1 skipped" in res.stdout and "CI=true" in res.stdout, res.stdout


async def test_bad_credentials_are_fatal_and_not_echoed(redis_prefix: str) -> None:
    source = RedisSource(RedisConfig(url="redis://nobody:not-the-password@127.0.0.1:6379/0", prefix=redis_prefix))
    with pytest.raises(SourceFatal, match="authentication failed") as info:
        await source.connect()
    assert "not-the-password" not in str(info.value)
