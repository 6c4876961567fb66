"""The RabbitMQ source against the machine's real RabbitMQ."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from tests.conftest import namespace
from tests.helpers.services import AMQP_URL, closed_port, run_with_service_missing
from workerhost._schema import Reader
from workerhost.dispatch import Dispatcher
from workerhost.errors import ConfigError, SourceError, SourceFatal
from workerhost.records import FailureKind, TaskError
from workerhost.sources.amqp import AmqpConfig, AmqpSource, Topology, delay_bucket, read_config
from workerhost.sources.amqp_producer import AmqpProducer
from workerhost.sources.base import Claimed, DeadLetters, Inspectable, TaskSource
from workerhost.supervisor import Supervisor

pytestmark = [pytest.mark.rabbitmq, pytest.mark.timeout(90)]

ERR = TaskError(type="RetriableError", message="try again")


def cfg(prefix: str, **kw: Any) -> AmqpConfig:
    return AmqpConfig(url=kw.pop("url", AMQP_URL), prefix=prefix, **kw)


@pytest.fixture
async def pair(amqp_prefix: str) -> AsyncIterator[tuple[AmqpSource, AmqpProducer]]:
    config = cfg(amqp_prefix)
    source = AmqpSource(config)
    producer = AmqpProducer(config, reply_queue="r", task_types=["Echo", "A", "B", "Fail", "Flaky"])
    await source.connect()
    yield source, producer
    await source.close()
    await producer.close()


async def claim_until(
    source: AmqpSource, types: list[str], want: int, *, within: float = 10, errors: list[SourceError] | None = None,
) -> list[Claimed]:
    """Claim until ``want`` tasks came; with ``errors``, ride out (and collect) source errors like the dispatcher."""
    out: list[Claimed] = []
    deadline = time.monotonic() + within
    while len(out) < want and time.monotonic() < deadline:
        try:
            out += await source.claim(types, want - len(out))
        except SourceError as exc:
            if errors is None:
                raise
            errors.append(exc)
        if len(out) < want:
            await asyncio.sleep(0.05)
    return out


async def test_implements_the_contract(pair: tuple[AmqpSource, AmqpProducer]) -> None:
    source, producer = pair
    assert isinstance(source, TaskSource) and source.durable_retries
    assert isinstance(producer, Inspectable) and isinstance(producer, DeadLetters)


async def test_claim_complete_and_result_reaches_the_producer(pair: tuple[AmqpSource, AmqpProducer]) -> None:
    source, producer = pair
    task_id = await producer.submit("Echo", {"n": 1}, metadata={"k": "v"})
    assert (await producer.get(task_id)).status == "pending"  # type: ignore[union-attr]
    [claimed] = await claim_until(source, ["Echo"], 1)
    assert claimed.task.id == task_id and claimed.task.params == {"n": 1} and claimed.task.attempt == 1
    assert claimed.task.metadata == {"k": "v"}
    await source.progress(claimed, 40, "almost")
    await source.complete(claimed, {"out": [1, 2]})
    record = await producer.wait(task_id, timeout=10)
    assert record.status == "completed" and record.result == {"out": [1, 2]} and record.progress == 40
    assert await source.claim(["Echo"], 5) == []
    assert (await producer.counts())["pending"] == 0


async def test_claim_takes_no_more_than_the_limit(pair: tuple[AmqpSource, AmqpProducer]) -> None:
    source, producer = pair
    await producer.submit_many([("A", {"i": i}) for i in range(4)] + [("B", {"i": i}) for i in range(4)])
    first = await source.claim(["A", "B"], 3)
    assert len(first) == 3
    assert (await producer.counts())["pending"] == 5  # the rest stays in the broker, not in a buffer
    rest = await claim_until(source, ["A", "B"], 5)
    assert sorted(c.task.type for c in first + rest) == ["A"] * 4 + ["B"] * 4
    assert await source.claim(["A", "B"], 0) == []
    for c in first + rest:
        await source.complete(c, None)


def test_delay_buckets_round_up() -> None:
    assert delay_bucket(0.0) is None and delay_bucket(0.01) is None
    assert delay_bucket(0.3) == 500 and delay_bucket(1.5) == 2000 and delay_bucket(7) == 10_000
    assert delay_bucket(10 ** 9) == 24 * 3600 * 1000


async def test_delayed_retry_waits_in_the_broker(pair: tuple[AmqpSource, AmqpProducer]) -> None:
    source, producer = pair
    task_id = await producer.submit("Flaky", {})
    [claimed] = await claim_until(source, ["Flaky"], 1)
    nxt = claimed.task
    nxt.attempt, nxt.failures = 2, 1
    started = time.monotonic()
    await source.retry(claimed, nxt, 0.4, ERR)
    assert (await producer.counts())["delayed"] == 1
    assert await source.claim(["Flaky"], 1) == []
    [again] = await claim_until(source, ["Flaky"], 1)
    assert time.monotonic() - started >= 0.4
    assert again.task.id == task_id and again.task.attempt == 2 and again.task.failures == 1
    # No delay: straight back to the work queue.
    await source.retry(again, again.task, 0.0, ERR)
    [third] = await claim_until(source, ["Flaky"], 1, within=2)
    assert third.task.id == task_id
    await source.complete(third, "ok")
    assert (await producer.wait(task_id, timeout=10)).result == "ok"


async def test_fail_dead_letters_and_requeue(pair: tuple[AmqpSource, AmqpProducer]) -> None:
    source, producer = pair
    ids = [await producer.submit("Fail", {"i": i}) for i in range(3)]
    claimed = await claim_until(source, ["Fail"], 3)
    await source.fail(claimed[0], TaskError(type="RuntimeError", message="boom"))
    await source.fail(claimed[1], TaskError(type="RuntimeError", message="boom"))
    await source.fail(claimed[2], TaskError(type="ValidationError", message="bad", retry_possible=False))
    dead = await producer.wait(claimed[0].task.id, timeout=10)
    assert dead.status == "dead" and dead.error["type"] == "RuntimeError"
    assert (await producer.wait(claimed[2].task.id, timeout=10)).status == "failed"
    letters = await producer.dead_letters()
    assert sorted(r.id for r in letters) == sorted(ids)
    assert {r.status for r in letters} == {"dead", "failed"}
    assert (await producer.counts())["dead"] == 3  # browsing took nothing off the queue
    assert await producer.requeue(ids[1]) is True
    assert await producer.requeue("no-such-task") is False
    [back] = await claim_until(source, ["Fail"], 1)
    assert back.task.id == ids[1] and back.task.attempt == 2 and back.task.failures == 0
    await source.complete(back, "second time lucky")
    assert (await producer.wait(ids[1], timeout=10)).status == "completed"
    assert await producer.requeue_all() == 2
    assert len(await claim_until(source, ["Fail"], 2)) == 2
    assert await producer.dead_letters() == []


async def test_release_requeues_without_counting_a_try(pair: tuple[AmqpSource, AmqpProducer]) -> None:
    source, producer = pair
    task_id = await producer.submit("Echo", {"keep": "me"})
    [claimed] = await claim_until(source, ["Echo"], 1)
    await source.release(claimed)
    [again] = await claim_until(source, ["Echo"], 1)
    assert again.task.id == task_id and again.task.params == {"keep": "me"}
    assert again.task.attempt == 1  # handed back at shutdown: that was no try
    await source.complete(again, None)
    assert (await producer.wait(task_id, timeout=10)).status == "completed"


async def test_a_task_that_keeps_losing_its_supervisor_is_dead_lettered(amqp_prefix: str) -> None:
    config = cfg(amqp_prefix, max_redeliveries=2)
    producer = AmqpProducer(config, reply_queue="r")
    try:
        task_id = await producer.submit("Crash", {})
        for attempt in (1, 2, 3):
            doomed = AmqpSource(config)
            await doomed.connect()
            [held] = await claim_until(doomed, ["Crash"], 1)
            assert held.task.id == task_id and held.task.attempt == attempt
            await doomed.close()  # killed while holding it: the broker hands it back
        last = AmqpSource(config)
        await last.connect()
        try:
            # The third loss is one more than max_redeliveries: dead, not handed out again.
            assert await last.claim(["Crash"], 1) == []
        finally:
            await last.close()
        record = await producer.wait(task_id, timeout=10)
        assert record.status == "dead" and record.error["type"] == "LeaseExpired"
        assert "3 times" in record.error["message"]
        assert [r.id for r in await producer.dead_letters()] == [task_id]
    finally:
        await producer.close()


async def test_a_lost_connection_hands_unacked_tasks_to_another_source(amqp_prefix: str) -> None:
    config = cfg(amqp_prefix)
    producer = AmqpProducer(config, reply_queue="r")
    lost, other = AmqpSource(config), AmqpSource(config)
    await lost.connect()
    await other.connect()
    try:
        task_id = await producer.submit("Echo", {})
        [held] = await claim_until(lost, ["Echo"], 1)
        assert await other.claim(["Echo"], 1) == []  # unacked: nobody else gets it
        await lost.close()  # as a killed supervisor's connection would
        [taken] = await claim_until(other, ["Echo"], 1)
        assert taken.task.id == task_id and taken.task.attempt == 2
        await other.complete(taken, "done")
        assert (await producer.wait(task_id, timeout=10)).result == "done"
        assert held.task.id == task_id
    finally:
        await other.close()
        await producer.close()


# -- a broker that goes away and comes back ----------------------------------------------------
class Proxy:
    """A TCP proxy in front of RabbitMQ that can cut every connection, as a broker restart does."""

    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", 5672)
        self._writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        for w in self._writers:
            w.transport.abort()
        self._writers.clear()


async def test_reconnects_after_the_broker_goes_away(amqp_prefix: str) -> None:
    proxy = Proxy()
    await proxy.start()
    config = cfg(amqp_prefix, url=f"amqp://guest:guest@127.0.0.1:{proxy.port}/", op_timeout=2)
    source = AmqpSource(config)
    producer = AmqpProducer(cfg(amqp_prefix), reply_queue="r")
    await source.connect()
    try:
        first = await producer.submit("Echo", {"n": 1})
        [held] = await claim_until(source, ["Echo"], 1)
        await proxy.cut()
        with pytest.raises(SourceError):
            await source.claim(["Echo"], 1)
        # The broker took the unacked task back: its report is dropped, not published.
        await source.complete(held, "stale")
        await proxy.start()
        errors: list[SourceError] = []
        [again] = await claim_until(source, ["Echo"], 1, within=20, errors=errors)
        assert again.task.id == first and again.task.attempt == 2
        await source.complete(again, "after reconnect")
        assert (await producer.wait(first, timeout=10)).result == "after reconnect"
        second = await producer.submit("Echo", {"n": 2})
        [new] = await claim_until(source, ["Echo"], 1)
        assert new.task.id == second
        await source.complete(new, 2)
        assert (await producer.wait(second, timeout=10)).result == 2
        # The doorbell came back with the connection: a submit ends an idle wait at once.
        assert await source.claim(["Echo"], 1) == []
        waiting = asyncio.ensure_future(source.wait_for_tasks(["Echo"], 30))
        await asyncio.sleep(0.2)
        t0 = time.monotonic()
        third = await producer.submit("Echo", {"n": 3})
        assert await asyncio.wait_for(waiting, 10) is True
        assert time.monotonic() - t0 < 5
        [last] = await claim_until(source, ["Echo"], 1)
        assert last.task.id == third
        await source.complete(last, 3)
    finally:
        await source.close()
        await producer.close()
        await proxy.cut()


# -- configuration and secrets ---------------------------------------------------------------
def test_config_reader_names_the_field(tmp_path: Path) -> None:
    def read(data: dict[str, Any]) -> AmqpConfig:
        reader = Reader(data, "task_manager", base_dir=tmp_path)
        config = read_config(reader)
        reader.finish()
        return config

    config = read({"url": "amqp://user:s3cret@rabbit:5672/vh", "prefix": "jobs", "result_ttl": 60,
                   "max_redeliveries": 0})
    assert config.prefix == "jobs" and config.result_ttl == 60 and config.max_redeliveries == 0
    assert read({}).max_redeliveries == 5
    assert "s3cret" not in repr(config) and "s3cret" not in config.display_url
    with pytest.raises(ConfigError, match=r"task_manager\.url: must be an amqp://") as info:
        read({"url": "http://user:s3cret@rabbit/"})
    assert "s3cret" not in str(info.value)
    with pytest.raises(ConfigError, match=r"task_manager\.op_timeout: must be greater than 0"):
        read({"op_timeout": 0})
    with pytest.raises(ConfigError, match=r"task_manager\.queue: unknown key"):
        read({"queue": "x"})
    with pytest.raises(ConfigError, match=r"task_manager\.max_redeliveries: must be at least 0"):
        read({"max_redeliveries": -1})


async def test_unreachable_broker_is_a_source_error_without_the_password() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    source = AmqpSource(AmqpConfig(url=f"amqp://guest:hunter2@127.0.0.1:{port}/", op_timeout=3))
    with pytest.raises(SourceError) as info:
        await source.connect()
    assert "hunter2" not in str(info.value) and "***" in str(info.value)


async def test_topology_is_durable(pair: tuple[AmqpSource, AmqpProducer], amqp_prefix: str) -> None:
    source, producer = pair
    await producer.submit("Echo", {})
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        # A passive declare with durable=True fails (closing the channel) if the queue is not durable.
        await channel.declare_queue(Topology(amqp_prefix).work("Echo"), passive=True)
    finally:
        await connection.close()
    [claimed] = await claim_until(source, ["Echo"], 1)
    await source.complete(claimed, None)


# -- end to end: a real Supervisor driven by the dispatcher ---------------------------------------
async def test_supervisor_runs_tasks_from_rabbitmq(amqp_prefix: str, make_config: Any) -> None:
    config = make_config([
        namespace("Echo", "echo"),
        namespace("Fail", "fail", max_retries=2, retry={"backoff": 0.3, "backoff_max": 0.3, "jitter": False}),
        namespace("Progress", "progress"),
    ])
    acfg = cfg(amqp_prefix)
    producer = AmqpProducer(acfg, reply_queue="r", task_types=["Echo", "Fail", "Progress"])
    echo_ids = await producer.submit_many([("Echo", {"i": i}) for i in range(20)])
    fail_id = await producer.submit("Fail", {"kind": "retriable"})
    bad_id = await producer.submit("Fail", {"kind": "validation"})
    progress_id = await producer.submit("Progress", {})
    async with Supervisor(config, log_events=False) as sup:
        dispatcher = Dispatcher(sup, AmqpSource(acfg))
        await dispatcher.start()
        try:
            results = [await producer.wait(i, timeout=30) for i in echo_ids]
            failed = await producer.wait(fail_id, timeout=30)
            bad = await producer.wait(bad_id, timeout=30)
            progressed = await producer.wait(progress_id, timeout=30)
        finally:
            await dispatcher.stop(5)
    assert all(r.status == "completed" for r in results)
    assert [r.result["params"]["i"] for r in results] == list(range(20))
    # Two retries waited in the broker's delay queue, then the task was dead-lettered.
    assert failed.status == "dead" and failed.attempts == 3 and failed.error["type"] == "RetriableError"
    assert bad.status == "failed" and bad.attempts == 1 and bad.error["kind"] == FailureKind.RAISED.value
    assert sorted(r.id for r in await producer.dead_letters()) == sorted([fail_id, bad_id])
    assert progressed.status == "completed" and progressed.progress == 100
    assert await producer.counts() == {"pending": 0, "delayed": 0, "dead": 2}
    await producer.close()


# -- a missing service fails under CI, skips elsewhere --------------------------------------------
@pytest.mark.parametrize("ci", ["true", None])
def test_missing_rabbitmq_fails_under_ci_and_skips_locally(ci: str | None) -> None:
    res = run_with_service_missing(__file__, "test_implements_the_contract", env_var="WORKERHOST_TEST_AMQP_URL",
                                   url=f"amqp://guest:guest@127.0.0.1:{closed_port()}/", ci=ci)
    if ci:
        assert res.returncode == 1 and "rabbitmq is required under CI" in res.stdout, res.stdout
    else:
        assert res.returncode == 0 and "1 skipped" in res.stdout and "CI=true" in res.stdout, res.stdout


async def test_bad_credentials_are_fatal_and_not_echoed(amqp_prefix: str) -> None:
    source = AmqpSource(AmqpConfig(url="amqp://guest:not-the-password@127.0.0.1:5672/", op_timeout=10))
    with pytest.raises(SourceFatal, match="authentication failed") as info:
        await source.connect()
    assert "not-the-password" not in str(info.value)
