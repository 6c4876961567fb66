"""Where the supervisor's own time per task goes, layer by layer, with the worker's pipe taken out.

    python -m benchmarks.hotpath [--tasks N]

A real worker is started (so every object is what it is in production),
then its pipe writer is replaced by a stub that answers each task frame
on the next loop turn, without writing, reading or decoding anything (the
task frame is still encoded). What is left is the supervisor's Python
work per task, measured as CPU time of
this process, through each layer of the API and with the default
observers switched off one by one. The differences between rows are the
cost of a layer (or an observer); the absolute figures depend on the
machine and its load, so run it a few times.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .scenarios.supervisor import make_supervisor, namespace


async def _measure(fn: Callable[[], Awaitable[Any]], tasks: int) -> float:
    for _ in range(min(500, tasks)):
        await fn()
    t0 = time.process_time()
    for _ in range(tasks):
        await fn()
    return (time.process_time() - t0) / tasks * 1e6


async def run(tasks: int, rounds: int) -> list[tuple[str, list[float]]]:
    from workerhost.logobserver import LoggingObserver
    from workerhost.records import Task

    async with make_supervisor([namespace("echo")]) as sup:
        loop = asyncio.get_running_loop()
        pool = sup.pools["echo"]
        worker = pool.workers[0]
        real_write = worker._write

        def stub(data: bytes) -> None:
            task = worker.current_task
            if task is None:  # not a task frame (ping, shutdown): the real pipe
                real_write(data)
                return
            loop.call_soon(worker._dispatch, {"op": "result", "id": task.id, "success": True, "result": {}})

        observers = list(sup.bus.observers)
        no_log = [o for o in observers if not isinstance(o, LoggingObserver)]
        same = Task(type="echo")
        layers: list[tuple[str, list[Any], Callable[[], Awaitable[Any]]]] = [
            ("Supervisor.run, default observers", observers, lambda: sup.run("echo", {})),
            ("Supervisor.run, no logging observer", no_log, lambda: sup.run("echo", {})),
            ("Supervisor.run, no observers", [], lambda: sup.run("echo", {})),
            ("Supervisor.attempt(Task()), no observers", [], lambda: sup.attempt(Task(type="echo"))),
            ("Pool.execute(Task()), no observers", [], lambda: pool.execute(Task(type="echo"))),
            ("WorkerProcess.run(Task())", [], lambda: worker.run(Task(type="echo"), timeout=300)),
            ("WorkerProcess.run(same Task)", [], lambda: worker.run(same, timeout=300)),
        ]
        results: dict[str, list[float]] = {name: [] for name, _, _ in layers}
        worker._write = stub  # type: ignore[method-assign]
        try:
            for _ in range(rounds):
                for name, obs, fn in layers:
                    sup.bus._observers = tuple(obs)
                    results[name].append(await _measure(fn, tasks))
        finally:
            sup.bus._observers = tuple(observers)
            worker._write = real_write  # type: ignore[method-assign]
    return list(results.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hotpath", description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20000, help="tasks per measurement (default 20000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the median is shown (default 3)")
    args = parser.parse_args(argv)
    rows = asyncio.run(run(args.tasks, args.rounds))
    print("| Layer (worker I/O stubbed out) | CPU µs per task, median | rounds |")
    print("|---|---|---|")
    for name, values in rows:
        values = sorted(values)
        print(f"| {name} | {values[len(values) // 2]:.1f} | {', '.join(f'{v:.0f}' for v in values)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
