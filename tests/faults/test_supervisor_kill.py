"""SIGKILL the supervisor mid-run on Redis, start it again: nothing lost, nothing claimed forever, no orphan.

The embedded queue's version of this scenario is tests/test_cli_start.py
(1,000 tasks, kill, restart) plus tests/test_shutdown.py (no worker outlives
a SIGKILLed supervisor); two supervisors on Redis with one killed is
tests/test_multi_supervisor.py. What is left is the lone supervisor on
Redis: nobody else takes over its claims, its own successor must.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.ops import Started, marked
from tests.helpers.services import REDIS_URL
from workerhost.sources.redis import RedisConfig
from workerhost.sources.redis_producer import RedisProducer

from .conftest import eventually, fns

pytestmark = [pytest.mark.redis, pytest.mark.slow, pytest.mark.timeout(240)]

TASKS = 600


async def test_redis_supervisor_sigkill_and_restart(redis_prefix: str, write_config: Any, tmp_path: Path,
                                                    mark: str) -> None:
    config = write_config(
        [fns("work", "ok", task_types=["Work"], mark=mark, min_workers=3, max_workers=3)],
        task_manager={"type": "redis", "url": REDIS_URL, "prefix": redis_prefix, "lease_timeout": 2,
                      "poll_interval": 0.02, "poll_max_interval": 0.2},
        logging={"level": "WARNING"})
    producer = RedisProducer(RedisConfig(url=REDIS_URL, prefix=redis_prefix))
    started = Started(tmp_path)
    try:
        ids = await producer.submit_many([("Work", {"n": i, "sleep": 0.02}) for i in range(TASKS)])

        async def completed() -> int:
            records = [await producer.get(i) for i in ids]
            return sum(1 for r in records if r is not None and r.status == "completed")

        first = started.start(config)
        await eventually(lambda: _at_least(completed, TASKS // 4), 90, "a quarter of the tasks")
        await eventually(lambda: len(marked(mark)) == 3, 10, "three workers")
        first.kill()
        first.wait(10)
        at_kill = await producer.counts()
        assert at_kill["claimed"] >= 1, f"the kill landed while nothing was held: {at_kill}"
        done_at_kill = await completed()
        assert done_at_kill < TASKS
        # No orphan: the dead supervisor's workers notice and go, busy or idle.
        await eventually(lambda: marked(mark) == [], 10, "the killed supervisor's workers to exit")

        started.start(config)
        began = time.monotonic()
        await eventually(lambda: _at_least(completed, TASKS), 150, "every task completed after the restart")
        print(f"completed at the kill: {done_at_kill}/{TASKS}; the rest took {time.monotonic() - began:.1f}s")
        records = [await producer.get(i) for i in ids]
        assert sorted(r.params["n"] for r in records if r is not None) == list(range(TASKS))  # none lost
        assert all(r is not None and r.result["n"] == r.params["n"] for r in records)
        # The tasks the killed supervisor held were taken over by its successor once their leases ran out.
        assert any(r is not None and r.attempts >= 2 for r in records)
        assert await producer.counts() == {"pending": 0, "claimed": 0, "delayed": 0, "dead": 0}
        assert started.stop(started.procs[-1]) == 0
        await eventually(lambda: marked(mark) == [], 10, "no worker left after a clean stop")
    finally:
        started.cleanup()
        await producer.close()


async def _at_least(count: Any, n: int) -> bool:
    return bool(await count() >= n)
