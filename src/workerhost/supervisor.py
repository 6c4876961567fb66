"""The supervisor: owns one pool per namespace, routes tasks, applies retries.

In-process use (tests, benchmarks, the task sources)::

    async with Supervisor(config) as sup:
        result = await sup.run("Example.Echo", {"text": "hi"})
        print(result.unwrap())

``run`` waits out retry backoffs itself, without holding a worker. A task
source instead calls ``attempt`` for one try and ``decide`` for what to do
next, so that a delayed retry can live in the source and survive a restart.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

from . import events as ev
from .config import Config, NamespaceConfig
from .errors import SupervisorClosed
from .logobserver import LoggingObserver
from .metrics import Metrics
from .observers import load_observers
from .oneshot import OneshotPool
from .pool import Pool, PoolState
from .records import FailureKind, Outcome, Task, TaskError, TaskResult, TaskStatus
from .retry import Decision, decide


class Supervisor:
    def __init__(
        self, config: Config, *, observers: Iterable[ev.Observer] = (), log_events: bool = True
    ) -> None:
        self.config = config
        self.bus = ev.EventBus([LoggingObserver()] if log_events else [])
        for observer in observers:
            self.bus.subscribe(observer)
        #: Prometheus metrics (own registry per supervisor), served by the control server.
        self.metrics = Metrics(task_types=lambda t: t in self.config.routes, snapshot=self.snapshot)
        self.bus.subscribe(self.metrics)
        for observer in load_observers(config.observers):
            self.bus.subscribe(observer)
        self.retried: Counter[str] = Counter()
        self.pools: dict[str, Pool | OneshotPool] = {}
        self.started_at: float | None = None
        self._closed = False

    # -- lifecycle -----------------------------------------------------
    async def __aenter__(self) -> Supervisor:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    async def start(self) -> None:
        """Start every namespace's pool; a namespace that fails to start shows degraded."""
        if self.pools:
            raise RuntimeError("supervisor already started")
        self.started_at = time.monotonic()
        for ns in self.config.namespaces:
            self.pools[ns.name] = make_pool(ns, bus=self.bus)
        await asyncio.gather(*(pool.start() for pool in self.pools.values()))

    async def close(self, *, timeout: float = 30.0) -> None:
        """Let running tasks finish within ``timeout``, then stop every worker."""
        if self._closed:
            return
        self._closed = True
        await asyncio.gather(*(pool.close(timeout=timeout) for pool in self.pools.values()))

    @property
    def closed(self) -> bool:
        return self._closed

    # -- routing ---------------------------------------------------------
    def route(self, task_type: str) -> tuple[str, ...]:
        return self.config.routes.get(task_type, ())

    def namespace_for(self, task: Task) -> NamespaceConfig | None:
        route = self.route(task.type)
        if not route:
            return None
        return self.config.namespace(route[min(task.route_index, len(route) - 1)])

    # -- running -----------------------------------------------------------
    async def attempt(self, task: Task) -> Outcome:
        """One try of ``task`` on its route's current namespace."""
        if self._closed or not self.pools:
            raise SupervisorClosed("the supervisor is not running")
        route = self.config.routes.get(task.type, ())
        if not route or not isinstance(task.params, dict):
            rejected = self._validate(task)
            assert rejected is not None
            return Outcome(error=rejected)
        # A reload may have shortened the route under a task already on it.
        index = task.route_index
        if index >= len(route):
            index = task.route_index = len(route) - 1
        if len(route) > 1:
            # Skip namespaces that cannot serve at all when the route has a fallback.
            while index + 1 < len(route) and self._unavailable(route[index]):
                index = task.route_index = index + 1
        return await self.pools[route[index]].execute(task)

    def _unavailable(self, name: str) -> bool:
        pool = self.pools[name]
        return pool.state in (PoolState.DEGRADED, PoolState.DRAINING, PoolState.STOPPED) and not pool.live

    def _validate(self, task: Task) -> TaskError | None:
        if not self.route(task.type):
            known = ", ".join(sorted(self.config.routes)) or "none"
            return TaskError(type="UnknownTaskType", message=f"no namespace serves task type {task.type!r} "
                             f"(known: {known})", retry_possible=False, kind=FailureKind.REJECTED)
        if not isinstance(task.params, dict):
            return TaskError(type="InvalidParams", message=f"params must be an object, got "
                             f"{type(task.params).__name__}", retry_possible=False, kind=FailureKind.REJECTED)
        return None

    def decide(self, task: Task, outcome: Outcome) -> Decision:
        """Retry or not, after a failed try (see :mod:`workerhost.retry`)."""
        assert outcome.error is not None
        ns = self.namespace_for(task)
        if ns is None:
            return Decision(retry=False)
        return decide(task, outcome.error, ns, route_length=len(self.route(task.type)))

    async def run(
        self, task: Task | str, params: dict[str, Any] | None = None, *, metadata: dict[str, Any] | None = None
    ) -> TaskResult:
        """Run a task to its end (retries included) and return its result; never raises for task failure."""
        if isinstance(task, str):
            task = Task(type=task, params=params if params is not None else {}, metadata=metadata or {})
        self.bus.emit(ev.TaskReceived(task_id=task.id, task_type=task.type))
        while True:
            outcome = await self.attempt(task)
            if outcome.ok:
                self.report_completed(task, outcome)
                return TaskResult(task_id=task.id, type=task.type, status=TaskStatus.COMPLETED,
                                  result=outcome.result, attempts=task.attempt, namespace=outcome.namespace)
            decision = self.decide(task, outcome)
            if not decision.retry or decision.next_task is None:
                self.report_failed(task, outcome)
                return TaskResult(task_id=task.id, type=task.type, status=TaskStatus.FAILED, error=outcome.error,
                                  attempts=task.attempt, namespace=outcome.namespace)
            self.report_retry(task, outcome, decision)
            await asyncio.sleep(decision.delay)
            if self._closed:
                raise SupervisorClosed("the supervisor closed while a retry was waiting")
            task = decision.next_task

    # Events are emitted here, not in pools, so a source-driven run reports
    # exactly the same things as an in-process one.
    def report_completed(self, task: Task, outcome: Outcome) -> None:
        self.bus.emit(ev.TaskCompleted(namespace=outcome.namespace, task_id=task.id, task_type=task.type,
                                       attempt=task.attempt, duration=outcome.duration, worker_pid=outcome.worker_pid))

    def report_failed(self, task: Task, outcome: Outcome) -> None:
        assert outcome.error is not None
        self.bus.emit(ev.TaskFailed(namespace=outcome.namespace, task_id=task.id, task_type=task.type,
                                    attempt=task.attempt, error=outcome.error, duration=outcome.duration,
                                    worker_pid=outcome.worker_pid))

    def report_retry(self, task: Task, outcome: Outcome, decision: Decision) -> None:
        assert outcome.error is not None
        self.retried[outcome.namespace or "none"] += 1
        self.bus.emit(ev.TaskRetried(namespace=outcome.namespace, task_id=task.id, task_type=task.type,
                                     attempt=task.attempt, error=outcome.error, delay=decision.delay))

    # -- capacity (for sources) ----------------------------------------------
    def free_slots(self, namespace: str) -> int:
        pool = self.pools.get(namespace)
        return pool.free_slots() if pool is not None else 0

    def task_types(self, namespace: str) -> tuple[str, ...]:
        return self.config.namespace(namespace).task_types

    # -- status -------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready picture of every namespace and worker (the body of ``status``)."""
        now = time.monotonic()
        namespaces = []
        for name, pool in self.pools.items():
            limits = getattr(pool, "limits", None)
            recycle_reason = getattr(pool, "recycle_reason", lambda w: None)
            workers = [
                {
                    "pid": w.pid,
                    "state": w.state.value,
                    "age": round(now - w.started_at, 3),
                    "tasks_run": w.tasks_run,
                    "current_task": w.current_task.id if w.current_task else None,
                    "task_running_for": round(now - w.task_started_at, 3) if w.task_started_at else None,
                    "python": w.hello.get("python"),
                    "last_stop_reason": w.stop_reason,
                    "recycle_reason": recycle_reason(w),
                    **(limits.usage(w) if limits is not None else {}),
                }
                for w in pool.workers
            ]
            namespaces.append({
                "name": name,
                "state": pool.state.value,
                "mode": pool.ns.mode,
                "warm": len(pool.live),
                "min_workers": pool.ns.min_workers,
                "max_workers": pool.ns.max_workers,
                "busy": pool.busy,
                "queued": pool.waiting,
                "tasks_done": pool.tasks_done,
                "tasks_failed": pool.tasks_failed,
                "tasks_retried": self.retried[name],
                "restarts": dict(pool.restarts),
                "memory_bytes": limits.total(pool.workers) if limits is not None else None,
                "memory_metric": pool.ns.limits.memory_metric,
                "limits": _limits_summary(pool.ns),
                "last_error": pool.last_error,
                "workers": workers,
            })
        return {
            "pid": os.getpid(),
            "uptime": round(now - self.started_at, 3) if self.started_at else 0.0,
            "closed": self._closed,
            "namespaces": namespaces,
        }


def _limits_summary(ns: NamespaceConfig) -> dict[str, Any]:
    """The namespace's configured limits that are set (status shows them beside the figures)."""
    keys = ("memory_soft_mb", "memory_hard_mb", "memory_budget_mb", "cpu_time_limit", "cpu_percent_limit",
            "max_age", "idle_timeout")
    out: dict[str, Any] = {k: getattr(ns.limits, k) for k in keys if getattr(ns.limits, k) is not None}
    if ns.max_tasks_per_worker:
        out["max_tasks"] = ns.max_tasks_per_worker
    return out


def make_pool(ns: NamespaceConfig, *, bus: ev.EventBus) -> Pool | OneshotPool:
    return OneshotPool(ns, bus=bus) if ns.mode == "oneshot" else Pool(ns, bus=bus)

