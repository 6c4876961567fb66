"""Scale: many namespaces, many workers; idle cost, dispatch cost, limit sampling, cold start."""

from __future__ import annotations

import asyncio
from typing import Any

from ._common import cpu_seconds, now, payload, rss_bytes, us, uss_bytes
from .supervisor import make_supervisor, namespace

#: Seconds after the pools are warm before the idle window opens (start-up
#: garbage, first heartbeats and first samples are not idle cost).
SETTLE = 1.5


def _ns_name(i: int) -> str:
    return f"ns{i:02d}"


async def _start(namespaces: list[dict[str, Any]]) -> tuple[Any, float, list[float]]:
    from workerhost import events as ev

    sup = make_supervisor(namespaces)
    ready: list[float] = []
    sup.bus.subscribe(lambda e: ready.append(e.startup_seconds) if isinstance(e, ev.WorkerReady) else None)
    t0 = now()
    await sup.start()
    start_s = now() - t0
    expected = sum(ns["min_workers"] for ns in namespaces)
    warm = sum(len(p.live) for p in sup.pools.values())
    if warm != expected:
        await sup.close()
        raise RuntimeError(f"only {warm} of {expected} workers warm after start")
    return sup, start_s, ready


async def _idle_cpu(window: float) -> float:
    """Percent of one core this process used over ``window`` seconds of doing nothing itself."""
    cpu0, t0 = cpu_seconds(), now()
    await asyncio.sleep(window)
    return 100.0 * (cpu_seconds() - cpu0) / (now() - t0)


async def namespaces(*, count: int, workers_per_ns: int = 1, idle_window: float, latency_samples: int,
                     limits: dict[str, Any] | None = None) -> dict[str, Any]:
    """``count`` namespaces warm: start time, idle CPU and RSS, then one-at-a-time tasks across them."""
    extra: dict[str, Any] = {"limits": limits} if limits else {}
    nss = [namespace(_ns_name(i), workers=workers_per_ns, function="work", **extra) for i in range(count)]
    sup, start_s, ready = await _start(nss)
    try:
        await asyncio.sleep(SETTLE)
        idle_pct = await _idle_cpu(idle_window)
        rss, uss = rss_bytes(), uss_bytes()
        params = payload("noop")
        for i in range(min(count, 50)):
            (await sup.run(_ns_name(i), params)).unwrap()
        times = []
        cpu0 = cpu_seconds()
        for i in range(latency_samples):
            t0 = now()
            (await sup.run(_ns_name(i % count), params)).unwrap()
            times.append(us(now() - t0))
        cpu_per_task = us(cpu_seconds() - cpu0) / max(1, latency_samples)
    finally:
        await sup.close()
    return {"namespaces": count, "workers": count * workers_per_ns, "start_s": start_s, "ready_s": ready,
            "idle_cpu_pct": idle_pct, "rss_bytes": rss, "uss_bytes": uss, "samples_us": {"noop": times},
            "cpu_us_per_task": cpu_per_task}


async def limits_cost(*, workers: int, window: float, tasks: int, limits: dict[str, Any] | None) -> dict[str, Any]:
    """One namespace of ``workers`` workers, with or without ``limits``: idle CPU, CPU while all are busy, CPU per task.

    Busy means every worker sleeps in its handler, so what the supervisor
    spends meanwhile is its own: heartbeats, maintenance and, with a hard
    limit set, psutil samples of each busy worker every ``sample_interval``.
    """
    extra: dict[str, Any] = {"limits": limits} if limits else {}
    sup, start_s, ready = await _start([namespace("ns", workers=workers, function="work", **extra)])
    try:
        await asyncio.sleep(SETTLE)
        idle_pct = await _idle_cpu(window)
        sleepers = [asyncio.ensure_future(sup.run("ns", {"sleep": window + 1.0})) for _ in range(workers)]
        await asyncio.sleep(0.5)  # every worker got its task
        busy_pct = await _idle_cpu(window)
        for r in await asyncio.gather(*sleepers):
            r.unwrap()
        params = payload("noop")
        cpu0 = cpu_seconds()
        for _ in range(tasks):
            (await sup.run("ns", params)).unwrap()
        cpu_per_task = us(cpu_seconds() - cpu0) / max(1, tasks)
        rss = rss_bytes()
    finally:
        await sup.close()
    return {"workers": workers, "limits": limits, "start_s": start_s, "idle_cpu_pct": idle_pct,
            "busy_cpu_pct": busy_pct, "cpu_us_per_task": cpu_per_task, "rss_bytes": rss}


async def cold_start(*, layouts: list[list[int]]) -> dict[str, Any]:
    """``Supervisor.start()`` until every pool is warm, for each [namespaces, workers each]."""
    out = []
    for count, per_ns in layouts:
        nss = [namespace(_ns_name(i), workers=per_ns, function="work") for i in range(count)]
        sup, start_s, ready = await _start(nss)
        await sup.close()
        out.append({"namespaces": count, "workers_per_ns": per_ns, "start_s": start_s, "ready_s": ready})
    return {"runs": out}
