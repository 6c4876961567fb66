"""Issue 3's check: 1,000 tasks, two supervisors on one Redis / one RabbitMQ, one SIGKILLed mid-run.

Every task must still complete (the killed supervisor's tasks are redelivered
to the survivor), none may be lost, and each must have its result. The
supervisors are real processes running ``workerhost-supervisor start``.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import namespace
from tests.helpers.services import AMQP_URL, REDIS_URL
from workerhost.sources.amqp import AmqpConfig
from workerhost.sources.amqp_producer import AmqpProducer
from workerhost.sources.base import TaskRecord
from workerhost.sources.redis import RedisConfig
from workerhost.sources.redis_producer import RedisProducer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

TASKS = 1000
#: Long enough per task that the kill lands while the victim holds tasks.
SECONDS = 0.03


def start_supervisor(config: Path, log: Path) -> subprocess.Popen[bytes]:
    cli = Path(sys.executable).parent / "workerhost-supervisor"
    # Two supervisors share a directory here: each needs its own pid file.
    pid_file = log.with_suffix(".pid")
    with log.open("wb") as out:
        return subprocess.Popen([str(cli), "start", "-c", str(config), "--pid-file", str(pid_file)],
                                stdout=out, stderr=subprocess.STDOUT)


def supervisor_config(write_config: Callable[..., Path], task_manager: dict[str, Any], name: str) -> Path:
    ns = namespace("Slow", "sleep", task_types=["Slow"], min_workers=2, max_workers=2)
    return write_config([ns], name=name, task_manager=task_manager, logging={"level": "WARNING"})


async def run_with_a_kill(
    tmp_path: Path, config_a: Path, config_b: Path, records: Callable[[], Awaitable[list[TaskRecord]]],
) -> list[TaskRecord]:
    """Start two supervisors, SIGKILL the first once a quarter of the tasks are done, wait for the rest."""
    victim = start_supervisor(config_a, tmp_path / "victim.log")
    survivor = start_supervisor(config_b, tmp_path / "survivor.log")
    try:
        deadline = time.monotonic() + 90
        while sum(r.status == "completed" for r in await records()) < TASKS // 4:
            assert victim.poll() is None, (tmp_path / "victim.log").read_text()
            assert time.monotonic() < deadline, "the supervisors did not get a quarter of the work done in 90 s"
            await asyncio.sleep(0.1)
        workers = psutil.Process(victim.pid).children(recursive=True)
        assert workers, "the victim runs no workers"
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        done_at_kill = sum(r.status == "completed" for r in await records())
        assert done_at_kill < TASKS, "the run ended before the kill: nothing was tested"
        # Its workers see their channel close and exit: no orphans keep running.
        _, alive = psutil.wait_procs(workers, timeout=15)
        assert not alive, f"workers of the killed supervisor still running: {alive}"
        deadline = time.monotonic() + 100
        while True:
            final = await records()
            if sum(r.status == "completed" for r in final) == TASKS:
                break
            assert survivor.poll() is None, (tmp_path / "survivor.log").read_text()
            assert time.monotonic() < deadline, (
                f"{sum(r.status == 'completed' for r in final)}/{TASKS} completed 100 s after the kill; "
                f"statuses: { {r.status for r in final} }")
            await asyncio.sleep(0.2)
        print(f"completed at the kill: {done_at_kill}/{TASKS}; "
              f"ran again after it: {sum(r.attempts >= 2 for r in final)}")
        survivor.send_signal(signal.SIGTERM)
        assert survivor.wait(timeout=30) == 0, (tmp_path / "survivor.log").read_text()
        return final
    finally:
        for proc in (victim, survivor):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def check(final: list[TaskRecord], ids: list[str]) -> None:
    assert sorted(r.id for r in final) == sorted(ids)  # none lost
    assert all(r.status == "completed" and r.result["slept"] == SECONDS for r in final)
    # The tasks the victim held when it died ran again on the survivor.
    assert any(r.attempts >= 2 for r in final)


@pytest.mark.redis
async def test_two_supervisors_on_redis_one_killed(
    redis_prefix: str, write_config: Callable[..., Path], tmp_path: Path,
) -> None:
    task_manager = {"type": "redis", "url": REDIS_URL, "prefix": redis_prefix, "lease_timeout": 2, "prefetch": 1}
    config_a = supervisor_config(write_config, task_manager, "a.yaml")
    config_b = supervisor_config(write_config, task_manager, "b.yaml")
    producer = RedisProducer(RedisConfig(url=REDIS_URL, prefix=redis_prefix))
    try:
        ids = await producer.submit_many([("Slow", {"seconds": SECONDS, "i": i}) for i in range(TASKS)])

        async def records() -> list[TaskRecord]:
            found = [await producer.get(i) for i in ids]
            return [r for r in found if r is not None]

        final = await run_with_a_kill(tmp_path, config_a, config_b, records)
        check(final, ids)
        assert await producer.counts() == {"pending": 0, "claimed": 0, "delayed": 0, "dead": 0}
    finally:
        await producer.close()


@pytest.mark.rabbitmq
async def test_two_supervisors_on_rabbitmq_one_killed(
    amqp_prefix: str, write_config: Callable[..., Path], tmp_path: Path,
) -> None:
    task_manager = {"type": "amqp", "url": AMQP_URL, "prefix": amqp_prefix, "prefetch": 1}
    config_a = supervisor_config(write_config, task_manager, "a.yaml")
    config_b = supervisor_config(write_config, task_manager, "b.yaml")
    producer = AmqpProducer(AmqpConfig(url=AMQP_URL, prefix=amqp_prefix), reply_queue="multi", task_types=["Slow"])
    try:
        ids = await producer.submit_many([("Slow", {"seconds": SECONDS, "i": i}) for i in range(TASKS)])

        async def records() -> list[TaskRecord]:
            found = [await producer.get(i) for i in ids]
            return [r for r in found if r is not None]

        final = await run_with_a_kill(tmp_path, config_a, config_b, records)
        check(final, ids)
        assert await producer.counts() == {"pending": 0, "delayed": 0, "dead": 0}
    finally:
        await producer.close()


@pytest.mark.redis
@pytest.mark.rabbitmq
@pytest.mark.parametrize("kind", ["redis", "amqp"])
def test_cli_round_trip(kind: str, request: pytest.FixtureRequest, write_config: Callable[..., Path],
                        tmp_path: Path) -> None:
    """start + submit --wait + tasks + dead through the real CLI, on each broker source."""
    prefix = request.getfixturevalue("redis_prefix" if kind == "redis" else "amqp_prefix")
    url = REDIS_URL if kind == "redis" else AMQP_URL
    config = write_config(
        [namespace("Echo", "echo"), namespace("Fail", "fail", max_retries=1)],
        # result_ttl: the CLI's reply queues (random names, not known to the cleanup) expire a minute after use.
        task_manager={"type": kind, "url": url, "prefix": prefix, "result_ttl": 60}, logging={"level": "WARNING"})
    cli = str(Path(sys.executable).parent / "workerhost-supervisor")
    supervisor = start_supervisor(config, tmp_path / "start.log")
    try:
        done = subprocess.run([cli, "submit", "-c", str(config), "Echo", "--params", '{"x": 1}', "--wait",
                               "--timeout", "60"], capture_output=True, text=True, timeout=90)
        assert done.returncode == 0, done.stderr
        record = json.loads(done.stdout)
        assert record["status"] == "completed" and record["result"]["params"] == {"x": 1}
        lines = '{"type": "Fail", "params": {"kind": "validation"}}\n{"type": "Echo", "params": {"n": 2}}\n'
        batch = subprocess.run([cli, "submit", "-c", str(config), "--wait", "--timeout", "60"], input=lines,
                               capture_output=True, text=True, timeout=90)
        assert batch.returncode == 1, batch.stderr  # one of them failed
        statuses = [json.loads(line)["status"] for line in batch.stdout.splitlines()]
        assert statuses == ["failed", "completed"]
        tasks = subprocess.run([cli, "tasks", "-c", str(config), "--json"], capture_output=True, text=True,
                               timeout=60)
        assert tasks.returncode == 0, tasks.stderr
        assert json.loads(tasks.stdout)["counts"]["dead"] == 1
        dead = subprocess.run([cli, "dead", "-c", str(config), "--json"], capture_output=True, text=True, timeout=60)
        assert [r["status"] for r in json.loads(dead.stdout)] == ["failed"]
    finally:
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=30) == 0, (tmp_path / "start.log").read_text()
