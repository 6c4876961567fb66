"""Our supervisor through its Python API: latency, throughput, CPU per task, RSS."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from ._common import WORKERS, cpu_seconds, now, payload, quiet_logging, rss_bytes, us


def namespace(name: str, *, codec: str = "json", workers: int = 1, function: str = "echo",
              **extra: Any) -> dict[str, Any]:
    ns = {
        "name": name, "project_path": str(WORKERS), "venv_python": sys.executable,
        "module": "bench_handlers", "function": function, "task_types": [name],
        "min_workers": workers, "max_workers": workers, "codec": codec, "start_timeout": 120,
    }
    ns.update(extra)
    return ns


def make_supervisor(namespaces: list[dict[str, Any]], *, log_level: str = "WARNING") -> Any:
    from workerhost import Supervisor
    from workerhost.config import parse_config

    quiet_logging(log_level)
    config = parse_config({"version": "1.0", "workers": namespaces}, base_dir=WORKERS)
    return Supervisor(config)


async def latency(*, codec: str, samples: dict[str, int], warmup: int, log_level: str = "WARNING") -> dict[str, Any]:
    """Sequential round trips through ``Supervisor.run``, one task at a time, per payload (µs)."""
    async with make_supervisor([namespace("echo", codec=codec)], log_level=log_level) as sup:
        out = await round_trips(sup, samples=samples, warmup=warmup)
        rss = rss_bytes()
    return {"samples_us": out, "supervisor_rss_bytes": rss}


async def round_trips(sup: Any, *, samples: dict[str, int], warmup: int) -> dict[str, list[float]]:
    """``samples[payload]`` sequential ``echo`` tasks per payload, after ``warmup`` unmeasured ones (µs each)."""
    out: dict[str, list[float]] = {}
    for name, n in samples.items():
        params = payload(name)
        for _ in range(warmup):
            (await sup.run("echo", params)).unwrap()
        times = []
        for _ in range(n):
            t0 = now()
            r = await sup.run("echo", params)
            times.append(us(now() - t0))
            if not r.ok:
                raise RuntimeError(f"task failed: {r.error}")
        out[name] = times
    return out


async def throughput(*, codec: str, workers: int, tasks: int, payload_name: str = "noop") -> dict[str, Any]:
    """``tasks`` tasks on a pool of ``workers``, submitted by 2 x ``workers`` concurrent callers.

    Two callers per worker keep a task queued behind each running one, as a
    source's prefetch does, so a worker never waits for its next task.
    """
    params = payload(payload_name)
    async with make_supervisor([namespace("echo", codec=codec, workers=workers)]) as sup:
        await asyncio.gather(*(sup.run("echo", params) for _ in range(20 * workers)))
        clients = 2 * workers
        share = [tasks // clients + (1 if i < tasks % clients else 0) for i in range(clients)]
        failures = 0

        async def drive(n: int) -> None:
            nonlocal failures
            for _ in range(n):
                r = await sup.run("echo", params)
                failures += not r.ok

        cpu0, t0 = cpu_seconds(), now()
        await asyncio.gather(*(drive(n) for n in share))
        wall, cpu = now() - t0, cpu_seconds() - cpu0
        rss = rss_bytes()
        pids = {w.pid for w in sup.pools["echo"].workers}
    if failures:
        raise RuntimeError(f"{failures} tasks failed")
    return {"tasks": tasks, "wall_s": wall, "tasks_per_s": tasks / wall, "parent_cpu_us_per_task": us(cpu) / tasks,
            "parent_rss_bytes": rss, "workers_seen": len(pids)}
