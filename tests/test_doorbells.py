"""An idle supervisor claims a new task at once, without waiting for its next poll.

Every dispatcher here polls only every 30 s, so a task finished within the
15 s the test waits was claimed because the source told the dispatcher it
arrived: the embedded queue's socket doorbell, RabbitMQ's bell exchange,
Redis's blocking XREAD. A delayed retry must not wait out the 30 s either:
the wait is cut short when it falls due.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from tests.conftest import namespace
from tests.helpers.services import AMQP_URL, REDIS_URL
from workerhost.config import Config
from workerhost.dispatch import Dispatcher, DispatchOptions
from workerhost.records import TaskError
from workerhost.sources._doorbell import Chime, SocketBell, ring_folder
from workerhost.sources.base import WaitsForTasks
from workerhost.supervisor import Supervisor

pytestmark = pytest.mark.timeout(90)

ERR = TaskError(type="RetriableError", message="try again")

#: Polling alone would take 30 s to see a task: longer than any wait below.
SLOW_POLL = DispatchOptions(poll_interval=30.0, poll_max_interval=30.0)


@pytest.fixture(params=["embedded", "redis", "amqp"])
def source_pair(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Any, Any]]:
    """A source and a producer, not connected yet (the dispatcher connects the source)."""
    kind = request.param
    if kind == "embedded":
        from workerhost.sources.embedded import EmbeddedProducer, EmbeddedSource

        yield EmbeddedSource(tmp_path / "queue.db"), EmbeddedProducer(tmp_path / "queue.db")
    elif kind == "redis":
        from workerhost.sources.redis import RedisConfig, RedisSource
        from workerhost.sources.redis_producer import RedisProducer

        config = RedisConfig(url=REDIS_URL, prefix=request.getfixturevalue("redis_prefix"), lease_timeout=30)
        yield RedisSource(config), RedisProducer(config)
    else:
        from workerhost.sources.amqp import AmqpConfig, AmqpSource
        from workerhost.sources.amqp_producer import AmqpProducer

        config = AmqpConfig(url=AMQP_URL, prefix=request.getfixturevalue("amqp_prefix"))
        yield AmqpSource(config), AmqpProducer(config, reply_queue="r")


async def test_an_idle_supervisor_claims_a_new_task_at_once(
    source_pair: tuple[Any, Any], make_config: Callable[..., Config],
) -> None:
    source, producer = source_pair
    assert isinstance(source, WaitsForTasks)
    config = make_config([namespace("Echo", "echo", min_workers=1, max_workers=1)])
    async with Supervisor(config, log_events=False) as sup:
        dispatcher = Dispatcher(sup, source, options=SLOW_POLL)
        await dispatcher.start()
        try:
            # The first task may be met by the first claim; after it the
            # claim loop is idle, and only the doorbell can bring the next ones.
            first = await producer.submit("Echo", {"n": 0})
            assert (await producer.wait(first, timeout=15)).status == "completed"
            for n in range(1, 4):
                await asyncio.sleep(0.3)
                task_id = await producer.submit("Echo", {"n": n})
                record = await producer.wait(task_id, timeout=15)
                assert record.status == "completed" and record.result["params"] == {"n": n}
        finally:
            await dispatcher.stop(5)
            await producer.close()


async def test_a_delayed_retry_is_claimed_when_it_falls_due(
    source_pair: tuple[Any, Any], make_config: Callable[..., Config],
) -> None:
    source, producer = source_pair
    if source.kind == "amqp":
        # The broker moves an expired retry back a moment after its time;
        # the dispatcher must be able to poll briefly then (see the test below).
        options = DispatchOptions(poll_interval=0.05, poll_max_interval=30.0)
    else:
        options = SLOW_POLL
    config = make_config([namespace("Flaky", "fail_until", min_workers=1, max_workers=1, max_retries=3,
                                    retry={"backoff": 0.6, "backoff_max": 0.6, "jitter": False})])
    async with Supervisor(config, log_events=False) as sup:
        dispatcher = Dispatcher(sup, source, options=options)
        await dispatcher.start()
        try:
            t0 = time.monotonic()
            task_id = await producer.submit("Flaky", {"succeed_on": 3})
            record = await producer.wait(task_id, timeout=20)
        finally:
            await dispatcher.stop(5)
            await producer.close()
    assert record.status == "completed" and record.result == {"attempt": 3}
    # Two retries of 0.6 s each (RabbitMQ rounds them up to its 1 s bucket).
    assert time.monotonic() - t0 >= 1.2


async def test_amqp_wait_ends_when_a_retry_it_delayed_is_back(amqp_prefix: str) -> None:
    from workerhost.sources.amqp import AmqpConfig, AmqpSource
    from workerhost.sources.amqp_producer import AmqpProducer

    config = AmqpConfig(url=AMQP_URL, prefix=amqp_prefix)
    source, producer = AmqpSource(config), AmqpProducer(config, reply_queue="r")
    await source.connect()
    try:
        task_id = await producer.submit("Flaky", {})
        [claimed] = await source.claim(["Flaky"], 1)
        t0 = time.monotonic()
        await source.retry(claimed, attrs.evolve(claimed.task, attempt=2), 1.0, ERR)
        await asyncio.sleep(0.2)  # the submit's ring has landed by now...
        assert await source.claim(["Flaky"], 1) == []  # ...and this claim answers it
        assert await source.wait_for_tasks(["Flaky"], 30) is True  # nobody rang: the source knew when
        assert 0.95 < time.monotonic() - t0 < 10
        for _ in range(50):  # the broker moves it back a moment after its TTL
            batch = await source.claim(["Flaky"], 1)
            if batch:
                break
            await asyncio.sleep(0.05)
        assert [c.task.id for c in batch] == [task_id] and batch[0].task.attempt == 2
    finally:
        await source.close()
        await producer.close()


# -- the pieces ------------------------------------------------------------------------------
async def test_chime_answers_rings_since_the_last_claim_for_its_types_only() -> None:
    chime = Chime()
    chime.mark(["A"])
    assert await chime.wait(["A"], 0.01) is False
    chime.mark(["A"])  # a claim starts...
    chime.ring("A")  # ...and a task arrives while it runs: the next wait must not miss it
    assert await chime.wait(["A"], 5) is True
    chime.ring("A")  # a ring before the next claim is answered by that claim
    chime.mark(["A"])
    assert await chime.wait(["A"], 0.01) is False
    chime.ring("B")  # another type's ring does not wake A's loop
    assert await chime.wait(["A"], 0.05) is False
    waiters = [asyncio.ensure_future(chime.wait(types, 5)) for types in (["A"], ["B", "C"], ["D"])]
    await asyncio.sleep(0.01)
    chime.ring(None)  # a ring that does not say its type wakes every loop
    assert await asyncio.gather(*waiters) == [True, True, True]


async def test_socket_bell_rings_and_stale_sockets_are_removed(tmp_path: Path) -> None:
    folder = tmp_path / "queue.db.bells"
    bell = SocketBell(folder)
    assert bell.open()
    # A supervisor that died without cleaning up left its socket behind.
    stale = folder / "99999-deadbeef.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dead.bind(str(stale))
    dead.close()
    bell.chime.mark(["Echo"])
    assert await bell.chime.wait(["Echo"], 0.01) is False
    ring_folder(folder, ["Other"])
    assert await bell.chime.wait(["Echo"], 0.05) is False
    ring_folder(folder, ["Echo", "Other"])
    assert await bell.chime.wait(["Echo"], 5) is True
    assert not stale.exists(), "a socket nobody listens on is removed by the next ring"
    bell.close()
    assert os.listdir(folder) == []
    ring_folder(folder)  # nobody listening: nothing happens, nothing raises
    ring_folder(tmp_path / "no-such-folder")


async def test_a_path_too_long_for_a_socket_falls_back_to_polling(tmp_path: Path,
                                                                  make_config: Callable[..., Config]) -> None:
    from workerhost.sources.embedded import EmbeddedProducer, EmbeddedSource

    deep = tmp_path / ("d" * 100) / ("e" * 60)
    deep.mkdir(parents=True)
    source, producer = EmbeddedSource(deep / "queue.db"), EmbeddedProducer(deep / "queue.db")
    config = make_config([namespace("Echo", "echo", min_workers=1, max_workers=1)])
    async with Supervisor(config, log_events=False) as sup:
        dispatcher = Dispatcher(sup, source, options=DispatchOptions(poll_interval=0.05, poll_max_interval=0.2))
        await dispatcher.start()
        try:
            assert await source.wait_for_tasks(["Echo"], 1.0) is None  # no doorbell: the dispatcher polls
            # ...backing off as polling does (0.05 s doubling to 0.2 s: ~10 claims in 1.5 s), not
            # at the short pause kept for a ring that brought nothing (~40 claims).
            claims = 0
            real_claim = source.claim

            async def counting_claim(*args: Any, **kwargs: Any) -> Any:
                nonlocal claims
                claims += 1
                return await real_claim(*args, **kwargs)

            source.claim = counting_claim  # type: ignore[method-assign]
            await asyncio.sleep(1.5)
            assert 3 <= claims <= 20, claims
            task_id = await producer.submit("Echo", {})
            assert (await producer.wait(task_id, timeout=15)).status == "completed"
        finally:
            await dispatcher.stop(5)
            await producer.close()


async def test_redis_wait_claims_nothing_and_is_safe_to_cancel(redis_prefix: str) -> None:
    from workerhost.sources.redis import RedisConfig, RedisSource
    from workerhost.sources.redis_producer import RedisProducer

    config = RedisConfig(url=REDIS_URL, prefix=redis_prefix, lease_timeout=30)
    source, producer = RedisSource(config), RedisProducer(config)
    await source.connect()
    try:
        assert await source.claim(["Echo"], 5) == []
        waiting = asyncio.ensure_future(source.wait_for_tasks(["Echo"], 10))
        await asyncio.sleep(0.2)
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        task_id = await producer.submit("Echo", {})
        assert await source.wait_for_tasks(["Echo"], 10) is True  # answered at once: it is there
        assert await source.wait_for_tasks(["Echo"], 10) is True  # and stays there until claimed
        pending = await source.client.xpending(source.keys.stream("Echo"), source.keys.group)
        assert pending["pending"] == 0, "waiting put nothing in the pending list"
        [claimed] = await source.claim(["Echo"], 5)
        assert claimed.task.id == task_id and claimed.task.attempt == 1
        await source.complete(claimed, {})
        assert await source.wait_for_tasks(["Echo"], 0.2) is False
    finally:
        await source.close()
        await producer.close()
