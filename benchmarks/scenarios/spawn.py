"""The design's original worker: one Python process per task (the baseline we replace).

Two ways to pay for it, measured the same way as the warm contenders:

- ``raw``: a plain ``subprocess.run`` loop starting
  ``python -m prismq_worker_sdk --oneshot bench_handlers:echo`` per task,
  the task as JSON on stdin, the result as JSON on stdout;
- ``oneshot``: our supervisor's ``mode: oneshot``, which runs that same
  command per task with the design's exit codes.

The protocol is JSON only (the design's), so there is no msgpack row.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

from ._common import WORKERS, cpu_seconds, now, payload, rss_bytes, us
from .supervisor import make_supervisor, namespace, round_trips

COMMAND = [sys.executable, "-m", "prismq_worker_sdk", "--oneshot", "bench_handlers:echo"]


def raw(*, samples: dict[str, int], warmup: int = 1) -> dict[str, Any]:
    """Sequential ``subprocess.run`` per task, per payload (µs)."""
    out: dict[str, list[float]] = {}
    for name, n in samples.items():
        params = payload(name)
        doc = json.dumps({"id": "t", "type": "echo", "params": params}).encode()
        times = []
        for i in range(warmup + n):
            t0 = now()
            proc = subprocess.run(COMMAND, input=doc, cwd=WORKERS, capture_output=True, check=False)
            elapsed = us(now() - t0)
            if proc.returncode != 0 or json.loads(proc.stdout)["result"] != params:
                raise RuntimeError(f"one-shot worker failed: {proc.returncode} {proc.stderr[-500:]!r}")
            if i >= warmup:
                times.append(elapsed)
        out[name] = times
    return {"samples_us": out}


def _oneshot_ns(workers: int = 1) -> dict[str, Any]:
    return namespace("echo", mode="oneshot", command=COMMAND, workers=workers, min_workers=0)


async def oneshot(*, samples: dict[str, int], warmup: int = 1) -> dict[str, Any]:
    """Sequential round trips through the supervisor's ``mode: oneshot`` (µs)."""
    async with make_supervisor([_oneshot_ns()]) as sup:
        return {"samples_us": await round_trips(sup, samples=samples, warmup=warmup)}


async def oneshot_throughput(*, workers: int, tasks: int, payload_name: str = "noop") -> dict[str, Any]:
    """``tasks`` tasks through ``mode: oneshot`` with up to ``workers`` processes at once."""
    params = payload(payload_name)
    async with make_supervisor([_oneshot_ns(workers)]) as sup:
        cpu0, t0 = cpu_seconds(), now()
        results = await asyncio.gather(*(sup.run("echo", params) for _ in range(tasks)))
        wall, cpu = now() - t0, cpu_seconds() - cpu0
        rss = rss_bytes()
    if not all(r.ok for r in results):
        raise RuntimeError("a one-shot task failed")
    return {"tasks": tasks, "wall_s": wall, "tasks_per_s": tasks / wall, "parent_cpu_us_per_task": us(cpu) / tasks,
            "parent_rss_bytes": rss}
