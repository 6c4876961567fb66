"""The dispatch loop against real worker pools and a small in-memory source.

The source here is a test double of the *source* only (a list with leases);
the supervisor, pools and workers are the real ones.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import attrs
import pytest

from tests.conftest import namespace
from workerhost.dispatch import Dispatcher, DispatchOptions, DispatchState
from workerhost.errors import SourceError, SourceFatal
from workerhost.records import Task, TaskError
from workerhost.sources.base import Claimed, TaskSource
from workerhost.supervisor import Supervisor


@attrs.define
class MemorySource:
    """Records every call; optionally fails its first claims or refuses us for good."""

    kind: str = "memory"
    durable_retries: bool = True
    pending: list[Task] = attrs.field(factory=list)
    delayed: list[tuple[float, Task]] = attrs.field(factory=list)
    claims: list[tuple[tuple[str, ...], int, int]] = attrs.field(factory=list)
    completed: dict[str, Any] = attrs.field(factory=dict)
    failed: dict[str, TaskError] = attrs.field(factory=dict)
    retried: list[tuple[str, int, float]] = attrs.field(factory=list)
    released: list[str] = attrs.field(factory=list)
    progress_seen: list[tuple[str, int, str | None]] = attrs.field(factory=list)
    claim_errors: int = 0
    fatal: bool = False
    connected: bool = False
    closed: bool = False

    async def connect(self) -> None:
        self.connected = True

    async def close(self) -> None:
        self.closed = True

    async def claim(self, task_types: Sequence[str], limit: int) -> list[Claimed]:
        if self.fatal:
            raise SourceFatal("authentication failed")
        if self.claim_errors:
            self.claim_errors -= 1
            raise SourceError("connection refused")
        now = time.monotonic()
        due = [t for at, t in self.delayed if at <= now]
        self.delayed = [(at, t) for at, t in self.delayed if at > now]
        self.pending.extend(due)
        out = [t for t in self.pending if t.type in task_types][:limit]
        for t in out:
            self.pending.remove(t)
        self.claims.append((tuple(task_types), limit, len(out)))
        return [Claimed(task=t) for t in out]

    async def complete(self, claimed: Claimed, result: Any) -> None:
        self.completed[claimed.task.id] = result

    async def retry(self, claimed: Claimed, next_task: Task, delay: float, error: TaskError) -> None:
        self.retried.append((claimed.task.id, next_task.attempt, delay))
        self.delayed.append((time.monotonic() + delay, next_task))

    async def fail(self, claimed: Claimed, error: TaskError) -> None:
        self.failed[claimed.task.id] = error

    async def progress(self, claimed: Claimed, percent: int, message: str | None) -> None:
        self.progress_seen.append((claimed.task.id, percent, message))

    async def release(self, claimed: Claimed) -> None:
        self.released.append(claimed.task.id)
        self.pending.append(claimed.task)


FAST = DispatchOptions(prefetch=1, poll_interval=0.01, poll_max_interval=0.05, error_backoff=0.01,
                       error_backoff_max=0.05)


async def wait_for(predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


def test_memory_source_follows_the_contract() -> None:
    assert isinstance(MemorySource(), TaskSource)


@pytest.mark.timeout(60)
async def test_tasks_complete_and_progress_is_forwarded(make_config: Any) -> None:
    config = make_config([namespace("echo", "echo"), namespace("prog", "progress")])
    source = MemorySource(pending=[Task(type="echo", params={"n": i}) for i in range(10)]
                          + [Task(type="prog", id="p1")])
    received: list[str] = []
    async with Supervisor(config) as sup:
        sup.bus.subscribe(lambda e: received.append(e.task_id) if type(e).__name__ == "TaskReceived" else None)
        d = Dispatcher(sup, source, options=FAST)
        await d.start()
        await wait_for(lambda: len(source.completed) == 11)
        await d.stop(5)
    assert source.connected and source.closed
    assert d.state is DispatchState.STOPPED
    assert sorted(r["params"]["n"] for k, r in source.completed.items() if k != "p1") == list(range(10))
    assert [p for t, p, _ in source.progress_seen if t == "p1"][-1] == 100
    assert len(received) == 11
    assert d.counters["completed"] == 11 and d.held == 0


@pytest.mark.timeout(60)
async def test_claims_never_exceed_free_slots_plus_prefetch(make_config: Any) -> None:
    config = make_config([namespace("slow", "sleep", max_workers=2), namespace("fast", "echo", max_workers=1)])
    source = MemorySource(pending=[Task(type="slow", params={"seconds": 1.0}) for _ in range(6)]
                          + [Task(type="fast", params={"n": i}) for i in range(20)])
    async with Supervisor(config) as sup:
        d = Dispatcher(sup, source, options=FAST)
        await d.start()
        # The fast namespace drains its 20 tasks while the slow one is still busy: no starvation.
        await wait_for(lambda: sum(1 for r in source.completed.values() if "params" in r) == 20)
        slow_done_when_fast_finished = sum(1 for r in source.completed.values() if "slept" in r)
        await wait_for(lambda: len(source.completed) == 26)
        await d.stop(5)
    assert slow_done_when_fast_finished < 6
    for types, limit, _ in source.claims:
        cap = 2 + 1 if types == ("slow",) else 1 + 1
        assert limit <= cap, (types, limit)


@pytest.mark.timeout(60)
async def test_failures_retry_in_the_source_then_fail(make_config: Any) -> None:
    config = make_config([namespace("f", "fail_until", max_retries=2), namespace("bad", "fail", max_retries=1)])
    source = MemorySource(pending=[Task(type="f", id="ok", params={"succeed_on": 3}),
                                   Task(type="bad", id="never", params={"kind": "retriable"}),
                                   Task(type="bad", id="val", params={"kind": "validation"}),
                                   Task(type="nosuch", id="unknown")])
    async with Supervisor(config) as sup:
        d = Dispatcher(sup, source, options=FAST)
        await d.start()
        await wait_for(lambda: "ok" in source.completed and {"never", "val"} <= set(source.failed))
        await d.stop(5)
    assert source.completed["ok"] == {"attempt": 3}
    assert [a for t, a, _ in source.retried if t == "ok"] == [2, 3]
    assert [a for t, a, _ in source.retried if t == "never"] == [2]
    assert source.failed["val"].retry_possible is False
    assert "unknown" not in source.completed  # no namespace claims a type nobody serves


@pytest.mark.timeout(60)
async def test_non_durable_source_retries_in_memory(make_config: Any) -> None:
    config = make_config([namespace("f", "fail_until", max_retries=3)])
    source = MemorySource(durable_retries=False, pending=[Task(type="f", id="t", params={"succeed_on": 3})])
    async with Supervisor(config) as sup:
        d = Dispatcher(sup, source, options=FAST)
        await d.start()
        await wait_for(lambda: "t" in source.completed)
        await d.stop(5)
    assert source.completed["t"] == {"attempt": 3}
    assert source.retried == []


@pytest.mark.timeout(60)
async def test_stop_releases_waiting_and_unfinished_tasks(make_config: Any) -> None:
    config = make_config([namespace("slow", "sleep", max_workers=1, min_workers=1)])
    source = MemorySource(pending=[Task(type="slow", id=f"s{i}", params={"seconds": 30}) for i in range(3)])
    async with Supervisor(config) as sup:
        d = Dispatcher(sup, source, options=FAST)
        await d.start()
        await wait_for(lambda: d.held == 2 and sup.pools["slow"].busy == 1)
        started = time.monotonic()
        await d.stop(0.5)
        took = time.monotonic() - started
        await sup.close(timeout=0)
    assert sorted(source.released) == ["s0", "s1"]  # the running one and the prefetched one
    assert len(source.pending) == 3 and not source.completed
    assert took < 15


@pytest.mark.timeout(60)
async def test_graceful_stop_lets_running_tasks_finish(make_config: Any) -> None:
    config = make_config([namespace("slow", "sleep", max_workers=1, min_workers=1)])
    source = MemorySource(pending=[Task(type="slow", id=f"s{i}", params={"seconds": 1}) for i in range(3)])
    async with Supervisor(config) as sup:
        d = Dispatcher(sup, source, options=FAST)
        await d.start()
        await wait_for(lambda: sup.pools["slow"].busy == 1 and d.held == 2)
        await d.stop(30)
    assert list(source.completed) == ["s0"]
    assert source.released == ["s1"]  # prefetched, never started: given back at once


@pytest.mark.timeout(60)
async def test_source_errors_back_off_and_recover(make_config: Any) -> None:
    config = make_config([namespace("echo", "echo")])
    source = MemorySource(claim_errors=5, pending=[Task(type="echo", id="a")])
    async with Supervisor(config) as sup:
        d = Dispatcher(sup, source, options=FAST)
        await d.start()
        await wait_for(lambda: "a" in source.completed)
        assert d.last_source_error is None
        await d.stop(5)


@pytest.mark.timeout(60)
async def test_fatal_source_error_stops_claiming(make_config: Any) -> None:
    config = make_config([namespace("echo", "echo")])
    source = MemorySource(fatal=True, pending=[Task(type="echo", id="a")])
    async with Supervisor(config) as sup:
        d = Dispatcher(sup, source, options=FAST)
        await d.start()
        await asyncio.wait_for(d.wait(), 10)
        assert d.state is DispatchState.FAILED and d.failure == "authentication failed"
        await d.stop(1)
    assert d.state is DispatchState.FAILED
    assert len(source.claims) == 0
