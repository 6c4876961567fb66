"""Shutdown: SIGTERM drains and hands back, and no worker outlives its supervisor -- even a SIGKILLed one."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from workerhost.config import load_config
from workerhost.errors import ConfigError
from workerhost.sources.embedded import EmbeddedProducer

from .conftest import WORKERS, namespace, pid_alive
from .helpers.ops import MARK, Started, marked, wait_for

FAST_TM = {"type": "embedded", "poll_interval": 0.02, "poll_max_interval": 0.2, "lease_seconds": 2.0}


@pytest.fixture
def started(tmp_path: Path) -> Iterator[Started]:
    s = Started(tmp_path)
    yield s
    s.cleanup()


def linger_ns(mark: str, **extra: Any) -> dict[str, Any]:
    return namespace("work", "linger", module="shutdown_handlers", task_types=["Linger"],
                     env={MARK: mark}, **extra)


def queue_of(tmp_path: Path) -> EmbeddedProducer:
    return EmbeddedProducer(tmp_path / ".workerhost" / "queue.db")


async def counted(prod: EmbeddedProducer, state: str, *, at_least: int) -> bool:
    return (await prod.counts())[state] >= at_least


async def until(check: Callable[[], Awaitable[Any]], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := await check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.1)
    return value


@pytest.mark.timeout(300)
async def test_sigterm_with_200_tasks_loses_none_and_leaves_no_worker(tmp_path: Path, write_config: Any,
                                                                      started: Started) -> None:
    marker = tmp_path / "finish-now"
    config = write_config([linger_ns(started.mark, min_workers=4, max_workers=4, kill_grace=1.0)],
                          task_manager=FAST_TM, shutdown={"graceful_timeout": 2})
    prod = queue_of(tmp_path)
    # Three tasks outlast the graceful timeout (one even ignores SIGTERM); the rest are quick.
    slow = [await prod.submit("Linger", {"n": n, "marker": str(marker), "stubborn": n == 0}, priority=10)
            for n in range(3)]
    quick = await prod.submit_many([("Linger", {"n": n, "seconds": 0.05}) for n in range(3, 200)])
    ids = slow + quick
    proc = started.start(config)
    await until(lambda: counted(prod, "completed", at_least=20), 120, "20 completed tasks")
    workers = marked(started.mark)
    assert len(workers) == 4
    before = await prod.counts()
    assert before["pending"] > 100 and before["claimed"] >= 3, before  # in flight and queued

    began = time.monotonic()
    assert await asyncio.to_thread(started.stop, proc, signal.SIGTERM) == 0, started.log()
    took = time.monotonic() - began
    after = await prod.counts()
    assert after["claimed"] == 0 and after["failed"] == 0 and after["dead"] == 0, after
    assert after["completed"] + after["pending"] == 200, after
    assert sum(after.values()) == 200
    for task_id in slow:  # cut off by the graceful timeout: handed back untouched
        rec = await prod.get(task_id)
        assert rec is not None and rec.status == "pending" and rec.attempts == 0, rec
    assert marked(started.mark) == [] and not any(pid_alive(p) for p in workers)
    assert took < 60, f"shutdown took {took:.1f}s"

    # Nothing was lost: a new supervisor finishes every task.
    marker.touch()
    proc = started.start(config)
    await until(lambda: counted(prod, "completed", at_least=200), 180, "all 200 tasks completed")
    assert await asyncio.to_thread(started.stop, proc) == 0
    records = await prod.list_tasks(limit=500)
    assert sorted(r.id for r in records) == sorted(ids)
    assert sorted(r.result["n"] for r in records) == list(range(200))
    assert marked(started.mark) == []
    await prod.close()


@pytest.mark.timeout(120)
async def test_sigkill_of_the_supervisor_leaves_no_worker(tmp_path: Path, write_config: Any,
                                                          started: Started) -> None:
    config = write_config([linger_ns(started.mark, min_workers=3, max_workers=3)], task_manager=FAST_TM)
    prod = queue_of(tmp_path)
    await prod.submit("Linger", {"n": 1, "seconds": 120})
    await prod.submit("Linger", {"n": 2, "seconds": 120, "stubborn": True})
    proc = started.start(config)
    await until(lambda: counted(prod, "claimed", at_least=2), 60, "two running tasks")
    workers = await asyncio.to_thread(wait_for, lambda: (lambda m: m if len(m) == 3 else None)(marked(started.mark)),
                                      30, "three workers")
    proc.kill()
    proc.wait(10)
    # Busy or idle, SIGTERM-proof or not: every worker notices its supervisor is gone.
    await asyncio.to_thread(wait_for, lambda: not marked(started.mark), 10, "the workers to exit")
    assert not any(pid_alive(p) for p in workers)
    await prod.close()


PARENT = r"""
import os, subprocess, sys, time
r, w = os.pipe()
worker = subprocess.Popen([sys.executable, "-m", "prismq_worker_sdk", "shutdown_handlers:linger"],
                          stdin=r, stdout=subprocess.PIPE, cwd=sys.argv[1])
os.close(r)
# Another process holds the write end: the worker's input never ends, only the parent-death signal can stop it.
holder = subprocess.Popen(["sleep", "60"], pass_fds=[w])
worker.stdout.readline()  # the hello frame: the worker is past PR_SET_PDEATHSIG
task = b'{"op": "task", "id": "t1", "type": "Linger", "params": {"seconds": 60}, "attempt": 1}\n'
os.write(w, task)
print(worker.pid, holder.pid, flush=True)
time.sleep(60)
"""


@pytest.mark.timeout(60)
def test_parent_death_signal_stops_a_worker_whose_input_stays_open() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(WORKERS)], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        worker_pid, holder_pid = map(int, parent.stdout.readline().split())
        time.sleep(0.3)  # let the task start
        assert pid_alive(worker_pid)
        parent.kill()
        parent.wait(10)
        wait_for(lambda: not pid_alive(worker_pid), 5, "the worker to die with its parent")
        assert pid_alive(holder_pid)  # its input really was still open
    finally:
        for pid in (locals().get("worker_pid"), locals().get("holder_pid")):
            if pid and pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        if parent.poll() is None:
            parent.kill()


def test_graceful_timeout_is_validated(write_config: Any) -> None:
    ok = load_config(write_config([namespace("a", "echo")], shutdown={"graceful_timeout": 0}))
    assert ok.shutdown.graceful_timeout == 0
    assert load_config(write_config([namespace("a", "echo")], name="d.yaml")).shutdown.graceful_timeout == 30
    with pytest.raises(ConfigError, match=r"shutdown\.graceful_timeout: must be at least 0"):
        load_config(write_config([namespace("a", "echo")], shutdown={"graceful_timeout": -1}))
    with pytest.raises(ConfigError, match=r"shutdown\.graceful_timeout: must be a number"):
        load_config(write_config([namespace("a", "echo")], shutdown={"graceful_timeout": "soon"}))
    with pytest.raises(ConfigError, match=r"shutdown\.grace: unknown key"):
        load_config(write_config([namespace("a", "echo")], shutdown={"grace": 3}))
