"""Chaos: thousands of tasks across three namespaces while a saboteur SIGKILLs random workers.

The supervisor is the real CLI (``workerhost-supervisor start`` on the
embedded queue), so its RSS and open file descriptors are its own. The
chaos runs twice in the same supervisor: what it holds after the second
round must match what it held after the first (nothing per task or per
dead worker is kept), and every task of both rounds must end completed
(or dead-lettered as WorkerLost, its documented end when it lost its
worker more than ``max_worker_lost`` times), exactly once in the store.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.helpers.ops import Started
from workerhost.sources.embedded import EmbeddedProducer

from .conftest import eventually, fns

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

TASKS = 2000
TYPES = ("Alpha", "Beta", "Gamma")
#: Seconds between two kills (drawn uniformly).
KILL_EVERY = (0.15, 0.4)


def chaos_config(write_config: Any, mark: str) -> Path:
    workers = [
        fns(name.lower(), "ok", task_types=[name], mark=mark, min_workers=2, max_workers=2, max_worker_lost=5,
            respawn_backoff=0.05, respawn_backoff_max=0.5, retry={"backoff": 0.01, "backoff_max": 0.05})
        for name in TYPES
    ]
    return write_config(workers, task_manager={"type": "embedded", "poll_interval": 0.01, "poll_max_interval": 0.1,
                                               "prefetch": 2},
                        logging={"level": "WARNING"})


def workers_of(supervisor: psutil.Process) -> list[psutil.Process]:
    """The supervisor's direct children: its workers (a worker's own children are not targets)."""
    try:
        return [p for p in supervisor.children() if p.status() != psutil.STATUS_ZOMBIE]
    except psutil.Error:
        return []


async def saboteur(supervisor: psutil.Process, stop: asyncio.Event, kills: list[int]) -> None:
    while not stop.is_set():
        await asyncio.sleep(random.uniform(*KILL_EVERY))
        victims = workers_of(supervisor)
        if victims:
            victim = random.choice(victims)
            try:
                os.kill(victim.pid, signal.SIGKILL)
                kills.append(victim.pid)
            except ProcessLookupError:
                pass


async def one_round(producer: EmbeddedProducer, supervisor: psutil.Process, n: int) -> tuple[list[str], int]:
    items = [{"type": TYPES[i % 3], "params": {"n": i, "round": n, "sleep": 0.02}} for i in range(TASKS)]
    ids = await producer.submit_items(items)
    stop = asyncio.Event()
    kills: list[int] = []
    sabotage = asyncio.ensure_future(saboteur(supervisor, stop, kills))

    async def settled() -> bool:
        counts = await producer.counts()
        assert supervisor.is_running() and supervisor.status() != psutil.STATUS_ZOMBIE, "the supervisor died"
        return counts["pending"] == 0 and counts["claimed"] == 0

    try:
        await eventually(settled, 150, f"round {n}: every task to end", interval=0.25)
    finally:
        stop.set()
        await sabotage
    return ids, len(kills)


def footprint(proc: psutil.Process) -> tuple[int, int]:
    return proc.memory_info().rss, proc.num_fds()


async def test_chaos_loses_nothing_and_the_supervisor_does_not_grow(tmp_path: Path, write_config: Any,
                                                                    mark: str) -> None:
    config = chaos_config(write_config, mark)
    started = Started(tmp_path)
    producer = EmbeddedProducer(tmp_path / ".workerhost" / "queue.db")
    try:
        proc = started.start(config)
        supervisor = psutil.Process(proc.pid)
        await eventually(lambda: len(workers_of(supervisor)) == 6, 60, "six warm workers")
        began = time.monotonic()
        all_ids: list[str] = []
        shapes = []
        for n in (1, 2):
            ids, kills = await one_round(producer, supervisor, n)
            assert kills >= 10, f"round {n}: the saboteur only killed {kills} workers"
            all_ids += ids
            # Let the pools refill and settle before reading the supervisor's footprint.
            await eventually(lambda: len(workers_of(supervisor)) == 6, 30, "the pools back to size")
            await asyncio.sleep(1.0)
            shapes.append(footprint(supervisor))
            print(f"round {n}: {kills} workers killed; supervisor rss {shapes[-1][0] / 2**20:.1f} MiB, "
                  f"{shapes[-1][1]} fds; {time.monotonic() - began:.1f}s so far")
        assert proc.poll() is None, started.log()

        records = await producer.list_tasks(limit=10 * TASKS)
        by_id = Counter(r.id for r in records)
        assert len(records) == 2 * TASKS and set(by_id) == set(all_ids)  # every task, each exactly once
        assert all(count == 1 for count in by_id.values())
        statuses = Counter(r.status for r in records)
        assert set(statuses) <= {"completed", "dead"}, statuses
        for r in records:
            if r.status == "completed":
                assert r.result["n"] == r.params["n"] and r.result["attempt"] == r.attempts
            else:  # the documented end of a task that lost its worker max_worker_lost + 1 times
                assert r.error["type"] == "WorkerLost" and r.attempts == 6, r
        assert statuses["completed"] >= 2 * TASKS * 0.99, statuses
        retried = sum(1 for r in records if r.attempts > 1)
        assert retried >= 10, "no task was ever hit by the saboteur: the test proved nothing"

        (rss1, fds1), (rss2, fds2) = shapes
        assert fds2 <= fds1 + 2, f"file descriptors leak: {fds1} -> {fds2}"
        assert rss2 <= rss1 + 8 * 2**20, f"the supervisor grew from {rss1 / 2**20:.1f} to {rss2 / 2**20:.1f} MiB"
        assert started.stop(proc) == 0
    finally:
        await producer.close()
        started.cleanup()
