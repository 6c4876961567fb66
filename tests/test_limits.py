"""Resource limits and recycling, with real worker processes that leak, balloon and spin."""

from __future__ import annotations

import asyncio
import functools
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import namespace, pid_alive
from workerhost import events as ev
from workerhost.config import Config
from workerhost.errors import ConfigError
from workerhost.limits import LimitsMonitor, TreeProbe, tree_pids
from workerhost.limits_config import LimitsConfig
from workerhost.pool import Pool
from workerhost.records import FailureKind, Task
from workerhost.supervisor import Supervisor

MIB = 1024 * 1024


def lns(name: str, function: str, **extra: Any) -> dict[str, Any]:
    """A namespace running ``limits_handlers.<function>``."""
    return namespace(name, function, module="limits_handlers", **extra)


class Recorder:
    def __init__(self) -> None:
        self.events: list[ev.Event] = []

    def __call__(self, event: ev.Event) -> None:
        self.events.append(event)

    def exits(self, reason: str) -> list[ev.WorkerExited]:
        return [e for e in self.events if isinstance(e, ev.WorkerExited) and e.reason == reason]


def pool_of(sup: Supervisor, name: str) -> Pool:
    pool = sup.pools[name]
    assert isinstance(pool, Pool)
    return pool


def idle_exits_reach(pool: Pool, n: int) -> bool:
    return pool.restarts["idle"] == n


async def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> float:
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)
    return time.monotonic() - start


@pytest.mark.timeout(90)
async def test_soft_limit_recycles_a_leaking_worker_before_it_passes_the_limit_by_much(
    make_config: Callable[..., Config],
) -> None:
    cfg = make_config([lns("leaky", "leak", min_workers=1, max_workers=1, limits={"memory_soft_mb": 150})])
    rec = Recorder()
    async with Supervisor(cfg, observers=[rec]) as sup:
        results = [await sup.run("leaky", {"mb": 20}) for _ in range(25)]
        assert all(r.ok for r in results), [r.error for r in results if not r.ok]
        rss = [r.result["rss"] for r in results]
        pids = [r.result["pid"] for r in results]
        # Each worker is recycled right after the first task that takes it
        # past 150 MiB: at most one 20 MiB step beyond the limit (+ slack
        # for allocator overhead), never the 500 MiB that 25 tasks would leak.
        assert max(rss) < (150 + 20 + 10) * MIB, f"peak {max(rss) / MIB:.0f} MiB"
        assert len(set(pids)) >= 3, "25 tasks of 20 MiB under 150 MiB need several workers"
        # A recycled worker never serves again: each pid's tasks are contiguous.
        runs = [p for i, p in enumerate(pids) if i == 0 or pids[i - 1] != p]
        assert len(runs) == len(set(runs)), pids
        pool = pool_of(sup, "leaky")
        # Exits are counted by the pool's exit watcher, a moment after the task returns.
        await wait_for(lambda: pool.restarts["memory_soft"] >= 2, 10, "the recycled workers to exit")
        await wait_for(lambda: len(pool.live) == 1, 10, "the pool back to one warm worker")
        live = pool.live[0]
        assert pool.recycle_reason(live) == "memory_soft"
        row = next(w for w in sup.snapshot()["namespaces"][0]["workers"] if w["pid"] == live.pid)
        assert row["recycle_reason"] == "memory_soft"
    recycled = [e for e in rec.events if isinstance(e, ev.WorkerRecycled)]
    assert recycled and all(e.reason == "memory_soft" for e in recycled)
    assert len(rec.exits("memory_soft")) >= 2


@pytest.mark.timeout(90)
async def test_hard_limit_kills_a_ballooning_worker_within_seconds(make_config: Callable[..., Config]) -> None:
    cfg = make_config([lns("balloon", "balloon", min_workers=1, max_workers=1,
                           limits={"memory_hard_mb": 300, "sample_interval": 0.2})])
    rec = Recorder()
    async with Supervisor(cfg, observers=[rec]) as sup:
        pool = pool_of(sup, "balloon")
        victim = pool.live[0].pid
        task = Task(type="balloon", params={"mb": 1024, "hold": 30})
        started = time.monotonic()
        outcome = await sup.attempt(task)
        elapsed = time.monotonic() - started
        assert outcome.error is not None
        assert outcome.error.type == "MemoryLimitExceeded"
        assert outcome.error.kind is FailureKind.WORKER_LOST
        assert "hard memory limit" in outcome.error.message and "300 MiB" in outcome.error.message
        # Allocating 1 GiB takes a few hundred ms; with 0.2 s sampling the kill
        # follows within about a second (slack for a loaded 2-core machine).
        assert elapsed < 5.0, f"killed after {elapsed:.2f}s"
        print(f"hard limit: 1 GiB balloon killed {elapsed:.2f}s after the task started")
        # Retriable, on the worker-lost budget.
        decision = sup.decide(task, outcome)
        assert decision.retry and decision.next_task is not None
        assert decision.next_task.worker_losses == 1 and decision.next_task.failures == 0
        assert not pid_alive(victim)
        await wait_for(lambda: len(pool.live) == 1 and pool.live[0].pid != victim, 15, "a fresh worker")
        await wait_for(lambda: pool.restarts["memory_hard"] == 1, 10, "the kill to be counted")
        # The pool serves again.
        again = await sup.run("balloon", {"mb": 1, "hold": 0})
        assert again.ok
    assert len(rec.exits("memory_hard")) == 1


@pytest.mark.timeout(90)
async def test_hard_limit_counts_the_workers_children(make_config: Callable[..., Config], tmp_path: Path) -> None:
    cfg = make_config([lns("tree", "balloon_child", min_workers=1, max_workers=1, max_worker_lost=0,
                           limits={"memory_hard_mb": 300, "sample_interval": 0.2})])
    pidfile = tmp_path / "child.pid"
    async with Supervisor(cfg) as sup:
        result = await sup.run("tree", {"mb": 400, "pidfile": str(pidfile)})
        assert not result.ok and result.error is not None
        assert result.error.type == "MemoryLimitExceeded"
        assert "2 processes" in result.error.message
        child = int(pidfile.read_text())
        await wait_for(lambda: not pid_alive(child), 5, "the child to go with its worker")


@pytest.mark.timeout(120)
async def test_cpu_time_limit_kills_a_spinning_task(make_config: Callable[..., Config]) -> None:
    cfg = make_config([lns("spin", "spin", min_workers=1, max_workers=1, max_worker_lost=0,
                           limits={"cpu_time_limit": 1.0, "sample_interval": 0.2})])
    async with Supervisor(cfg) as sup:
        pool = pool_of(sup, "spin")
        started = time.monotonic()
        result = await sup.run("spin", {"seconds": 60})
        elapsed = time.monotonic() - started
        assert not result.ok and result.error is not None
        assert result.error.type == "CpuLimitExceeded"
        assert "CPU seconds" in result.error.message
        assert elapsed < 40, f"a 1 s CPU limit took {elapsed:.1f}s"
        await wait_for(lambda: pool.restarts["cpu"] == 1, 10, "the kill to be counted")
        # A task that waits rather than computes stays well under the limit.
        calm = await sup.run("spin", {"seconds": 0})
        assert calm.ok


@pytest.mark.timeout(120)
async def test_cpu_time_limit_counts_the_workers_children(
    make_config: Callable[..., Config], tmp_path: Path,
) -> None:
    cfg = make_config([
        lns("spin", "spin_child", min_workers=1, max_workers=1, max_worker_lost=0,
            limits={"cpu_time_limit": 1.0, "sample_interval": 0.2}),
        lns("rest", "rest", min_workers=1, max_workers=1, limits={"cpu_time_limit": 0.5, "sample_interval": 0.1}),
    ])
    pidfile = tmp_path / "spinner.pid"
    async with Supervisor(cfg) as sup:
        result, calm = await asyncio.gather(
            sup.run("spin", {"pidfile": str(pidfile)}), sup.run("rest", {"seconds": 2}),
        )
        assert not result.ok and result.error is not None and result.error.type == "CpuLimitExceeded"
        child = int(pidfile.read_text())
        await wait_for(lambda: not pid_alive(child), 5, "the spinning child to die with its worker")
        # Two seconds of sleeping under a 0.5 CPU-second limit: not killed.
        assert calm.ok, calm.error


@pytest.mark.timeout(120)
async def test_sustained_cpu_percent_limit(make_config: Callable[..., Config]) -> None:
    cfg = make_config([lns("hot", "spin", min_workers=1, max_workers=1, max_worker_lost=0,
                           limits={"cpu_percent_limit": 40, "cpu_percent_window": 1.0, "sample_interval": 0.2})])
    async with Supervisor(cfg) as sup:
        result = await sup.run("hot", {"seconds": 60})
        assert not result.ok and result.error is not None
        assert result.error.type == "CpuLimitExceeded"
        assert "above 40%" in result.error.message


@pytest.mark.timeout(120)
async def test_idle_pool_shrinks_to_min_and_grows_under_load(make_config: Callable[..., Config]) -> None:
    cfg = make_config([lns("elastic", "rest", min_workers=1, max_workers=3, limits={"idle_timeout": 1.0})])
    rec = Recorder()
    async with Supervisor(cfg, observers=[rec]) as sup:
        pool = pool_of(sup, "elastic")
        for round_ in range(2):
            assert len(pool.live) == 1
            peak = 0

            async def watch() -> None:
                nonlocal peak
                while True:
                    peak = max(peak, len(pool.live))
                    await asyncio.sleep(0.02)

            watcher = asyncio.create_task(watch())
            results = await asyncio.gather(*(sup.run("elastic", {"seconds": 0.8}) for _ in range(6)))
            watcher.cancel()
            assert all(r.ok for r in results)
            assert peak == 3, f"round {round_}: grew to {peak} workers under load, expected the max of 3"
            waited = await wait_for(lambda: len(pool.live) == 1, 15, "the pool to shrink back to min")
            assert waited >= 0.5, "shrank before the idle timeout"
            retired = 2 * (round_ + 1)
            await wait_for(functools.partial(idle_exits_reach, pool, retired), 10, "the idle workers to exit")
        await asyncio.sleep(1.5)
        assert len(pool.live) == 1, "shrank below min_workers"
        assert pool.restarts["idle"] == 4
    assert len(rec.exits("idle")) == 4


@pytest.mark.timeout(120)
async def test_max_age_recycles_workers_without_losing_tasks(make_config: Callable[..., Config]) -> None:
    cfg = make_config([lns("aging", "rest", min_workers=1, max_workers=2,
                           limits={"max_age": 1.0, "max_age_jitter": 0.5})])
    async with Supervisor(cfg) as sup:
        pool = pool_of(sup, "aging")
        pids = set()
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline:
            result = await sup.run("aging", {"seconds": 0.1})
            assert result.ok, result.error
            pids.add(result.result["pid"])
        assert len(pids) >= 2
        await wait_for(lambda: pool.restarts["max_age"] >= 1, 10, "an aged worker to exit")
        for w in pool.live:
            assert time.monotonic() - w.started_at < 1.5 + 2.0


@pytest.mark.timeout(120)
async def test_memory_budget_caps_scale_up(make_config: Callable[..., Config]) -> None:
    probe_cfg = make_config([lns("budget", "rest", min_workers=1, max_workers=1)], name="probe.yaml")
    async with Supervisor(probe_cfg) as sup:
        one = TreeProbe(pool_of(sup, "budget").live[0].pid).sample(uss=False)
        assert one is not None
    # Room for two workers of this size, not three.
    budget_mb = one.rss * 2.5 / MIB
    cfg = make_config([lns("budget", "rest", min_workers=1, max_workers=4,
                           limits={"memory_budget_mb": round(budget_mb, 1)})])
    async with Supervisor(cfg) as sup:
        pool = pool_of(sup, "budget")
        peak = 0

        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max(peak, len([w for w in pool.workers if w.alive]))
                await asyncio.sleep(0.01)

        watcher = asyncio.create_task(watch())
        results = await asyncio.gather(*(sup.run("budget", {"seconds": 0.5}) for _ in range(8)))
        watcher.cancel()
        assert all(r.ok for r in results)
        assert peak == 2, f"budget {budget_mb:.0f} MiB for workers of {one.rss / MIB:.0f} MiB allowed {peak}"


def test_tree_probe_sees_grandchildren_and_reuses_process_objects(tmp_path: Path) -> None:
    script = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']); time.sleep(30)"
    root = subprocess.Popen([sys.executable, "-c", f"import subprocess, sys; subprocess.Popen([sys.executable, '-c', {script!r}]); import time; time.sleep(30)"])
    try:
        deadline = time.monotonic() + 10
        while len(tree_pids(root.pid)) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        pids = tree_pids(root.pid)
        assert len(pids) == 3  # root, child, grandchild
        expected = {root.pid} | {c.pid for c in psutil.Process(root.pid).children(recursive=True)}
        assert set(pids) == expected
        probe = TreeProbe(root.pid)
        first = probe.sample(uss=True)
        objects = dict(probe._procs)
        second = probe.sample(uss=True)
        assert first is not None and second is not None
        assert first.processes == 3 and second.uss is not None and second.uss < second.rss
        assert all(probe._procs[pid] is obj for pid, obj in objects.items())
        psutil_rss = sum(psutil.Process(p).memory_info().rss for p in pids)
        assert abs(second.rss - psutil_rss) < 0.1 * psutil_rss
    finally:
        for pid in tree_pids(root.pid)[::-1]:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        root.wait()
    assert TreeProbe(root.pid).sample(uss=False) is None


def test_limits_config_errors_name_the_field(make_config: Callable[..., Config]) -> None:
    with pytest.raises(ConfigError) as info:
        make_config([lns("x", "rest", limits={"memory_soft_mb": 300, "memory_hard_mb": 200})])
    assert info.value.field == "workers[0].limits.memory_soft_mb"
    with pytest.raises(ConfigError) as info:
        make_config([lns("x", "rest", limits={"memory_metric": "pss"})])
    assert info.value.field == "workers[0].limits.memory_metric"
    with pytest.raises(ConfigError) as info:
        make_config([lns("x", "rest", limits={"idle_timeout": -1})])
    assert info.value.field == "workers[0].limits.idle_timeout"
    with pytest.raises(ConfigError) as info:
        make_config([lns("x", "rest", limits={"memory_hard": 1})])
    assert info.value.field == "workers[0].limits.memory_hard"


def test_monitor_decisions_without_processes() -> None:
    """Policy arithmetic: idle retirement keeps min_workers; no limits means no sampling work."""
    monitor = LimitsMonitor(LimitsConfig())
    assert monitor.policies([], time.monotonic(), surplus=3) == []
    assert monitor.fits_budget([], starting=5)
