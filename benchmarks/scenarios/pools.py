"""The standard library's process pools doing the same work (pickle over pipes).

``concurrent.futures.ProcessPoolExecutor`` and ``multiprocessing.Pool``
with the default start method of this platform, one task per dispatch
(``chunksize=1``: batching several tasks per message would measure a
different, batch-friendly workload than one task at a time).
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import sys
from typing import Any

from ._common import WORKERS, cpu_seconds, now, payload, rss_bytes, us


def _handler() -> Any:
    if str(WORKERS) not in sys.path:
        sys.path.insert(0, str(WORKERS))
    import bench_handlers  # the same handler the workers run

    return bench_handlers.echo


class _Pool:
    """One interface over both pools: ``call`` one task, ``map`` many."""

    def __init__(self, kind: str, workers: int) -> None:
        self.kind = kind
        self.fn = _handler()
        if kind == "ppe":
            self._ex: Any = concurrent.futures.ProcessPoolExecutor(max_workers=workers)
        else:
            self._ex = multiprocessing.Pool(processes=workers)

    def call(self, task: dict[str, Any]) -> Any:
        if self.kind == "ppe":
            return self._ex.submit(self.fn, task).result()
        return self._ex.apply(self.fn, (task,))

    def map(self, tasks: list[dict[str, Any]]) -> list[Any]:
        if self.kind == "ppe":
            return list(self._ex.map(self.fn, tasks, chunksize=1))
        return list(self._ex.imap_unordered(self.fn, tasks, chunksize=1))

    def close(self) -> None:
        if self.kind == "ppe":
            self._ex.shutdown(wait=True)
        else:
            self._ex.close()
            self._ex.join()


def latency(*, kind: str, samples: dict[str, int], warmup: int) -> dict[str, Any]:
    """Sequential round trips, one task at a time, per payload (µs)."""
    pool = _Pool(kind, 1)
    out: dict[str, list[float]] = {}
    try:
        for name, n in samples.items():
            task = {"id": "t", "type": "echo", "params": payload(name)}
            for _ in range(warmup):
                pool.call(task)
            times = []
            for _ in range(n):
                t0 = now()
                pool.call(task)
                times.append(us(now() - t0))
            out[name] = times
    finally:
        pool.close()
    return {"samples_us": out, "start_method": multiprocessing.get_start_method()}


def throughput(*, kind: str, workers: int, tasks: int, payload_name: str = "noop") -> dict[str, Any]:
    pool = _Pool(kind, workers)
    task = {"id": "t", "type": "echo", "params": payload(payload_name)}
    try:
        pool.map([task] * (20 * workers))  # every worker started and warm
        cpu0, t0 = cpu_seconds(), now()
        results = pool.map([task] * tasks)
        wall, cpu = now() - t0, cpu_seconds() - cpu0
        rss = rss_bytes()
    finally:
        pool.close()
    if len(results) != tasks:
        raise RuntimeError("lost results")
    return {"tasks": tasks, "wall_s": wall, "tasks_per_s": tasks / wall, "parent_cpu_us_per_task": us(cpu) / tasks,
            "parent_rss_bytes": rss, "start_method": multiprocessing.get_start_method()}
