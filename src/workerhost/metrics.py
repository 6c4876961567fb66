"""Prometheus metrics of one supervisor: an event observer plus gauges read at scrape time.

Counters and histograms move with lifecycle events (the observer half);
gauges -- workers by state, memory, queue depth -- are read from the
supervisor's status snapshot when ``/metrics`` is scraped, so they are
never stale and never need updating from the dispatch path.

Every supervisor gets its own ``CollectorRegistry``: two supervisors in
one process (tests, embedding) never share or clash over metrics.

Label values are bounded: a task type that no namespace serves is counted
as ``unknown``, so clients sending random types cannot grow the series
without limit. Per-worker gauges carry a ``pid`` label; their series come
and go with workers (the namespace totals are the stable ones to alert on).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from . import events as ev
from ._task_metrics import TaskSeries

#: Seconds; from fast in-memory handlers up to the default 300 s timeout.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
STARTUP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
WORKER_STATES = ("starting", "idle", "busy", "stopping")
NAMESPACE_STATES = ("starting", "ok", "degraded", "draining", "stopped")

Snapshot = Callable[[], Mapping[str, Any]]


class Metrics:
    """The Prometheus side of one supervisor; call it with events (it is an observer)."""

    def __init__(
        self, *, task_types: Collection[str] | Callable[[str], bool] = (), snapshot: Snapshot | None = None,
    ) -> None:
        """``task_types``: the served types, or a predicate (it follows config reloads)."""
        self.registry = CollectorRegistry(auto_describe=True)
        self._known: Callable[[str], bool] = (
            task_types if callable(task_types) else frozenset(task_types).__contains__
        )
        self._gauges = _SnapshotCollector(snapshot)
        r = self.registry
        # The per-task series: plain numbers, exported at scrape time (see _task_metrics).
        self.task_series = TaskSeries(buckets=DURATION_BUCKETS)
        r.register(self.task_series)
        self.restarts = Counter(
            "workerhost_worker_restarts", "Worker exits by reason (max_tasks, max_age, idle, memory_soft, "
            "memory_hard, cpu, timeout, crash, protocol_error, shutdown, reload, ...).",
            ["namespace", "reason"], registry=r,
        )
        self.recycles = Counter(
            "workerhost_worker_recycles", "Planned worker retirements by reason.", ["namespace", "reason"], registry=r,
        )
        self.start_failures = Counter(
            "workerhost_worker_start_failures", "Workers that failed to start.", ["namespace"], registry=r,
        )
        self.startup = Histogram(
            "workerhost_worker_startup_seconds", "Time from spawn to the worker's hello.", ["namespace"],
            buckets=STARTUP_BUCKETS, registry=r,
        )
        r.register(self._gauges)
        self._handlers: dict[type[ev.Event], Callable[[Any, str], None]] = {
            ev.TaskStarted: self._on_started, ev.TaskCompleted: self._on_completed, ev.TaskFailed: self._on_failed,
            ev.TaskRetried: self._on_retried, ev.WorkerExited: self._on_exited, ev.WorkerRecycled: self._on_recycled,
            ev.WorkerStartFailed: self._on_start_failed, ev.WorkerReady: self._on_ready,
        }

    def attach(self, snapshot: Snapshot) -> None:
        """Read gauges from ``snapshot`` (the supervisor's status) at scrape time."""
        self._gauges.snapshot = snapshot

    def set_source_counts(self, counts: Mapping[str, int] | None) -> None:
        """Tasks in the source by state, when the source can count them (read by the control server)."""
        self._gauges.source_counts = dict(counts) if counts is not None else None

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # -- the observer --------------------------------------------------------
    def _type(self, task_type: str) -> str:
        return task_type if self._known(task_type) else "unknown"

    def __call__(self, event: ev.Event) -> None:
        # By exact type (no event class derives from another): one dict
        # lookup instead of walking a chain of class patterns for each of a
        # task's three events.
        handler = self._handlers.get(type(event))
        if handler is not None:
            handler(event, event.namespace or "none")

    def _on_started(self, event: Any, ns: str) -> None:
        self.task_series.attempt(ns, self._type(event.task_type))

    def _on_completed(self, event: Any, ns: str) -> None:
        self.task_series.ended(ns, self._type(event.task_type), "completed", event.duration)

    def _on_failed(self, event: Any, ns: str) -> None:
        self.task_series.ended(ns, self._type(event.task_type), "failed", event.duration)

    def _on_retried(self, event: Any, ns: str) -> None:
        self.task_series.ended(ns, self._type(event.task_type), "retried")

    def _on_exited(self, event: Any, ns: str) -> None:
        self.restarts.labels(ns, event.reason).inc()

    def _on_recycled(self, event: Any, ns: str) -> None:
        self.recycles.labels(ns, event.reason).inc()

    def _on_start_failed(self, event: Any, ns: str) -> None:
        self.start_failures.labels(ns).inc()

    def _on_ready(self, event: Any, ns: str) -> None:
        self.startup.labels(ns).observe(event.startup_seconds)


class _SnapshotCollector(Collector):
    """Gauges computed from the status snapshot on each scrape."""

    def __init__(self, snapshot: Snapshot | None) -> None:
        self.snapshot = snapshot
        self.source_counts: dict[str, int] | None = None

    def describe(self) -> list[Metric]:
        return []  # unchecked collector: its series depend on the running pools

    def collect(self) -> Iterator[Metric]:
        if self.snapshot is None:
            return
        snap = self.snapshot()
        uptime = GaugeMetricFamily("workerhost_uptime_seconds", "Seconds since the supervisor started.")
        uptime.add_metric([], float(snap.get("uptime") or 0.0))
        yield uptime
        g = {
            "workers": GaugeMetricFamily("workerhost_workers", "Worker processes by state.", labels=["namespace", "state"]),
            "min": GaugeMetricFamily("workerhost_pool_min_workers", "Configured minimum of warm workers.",
                                     labels=["namespace"]),
            "max": GaugeMetricFamily("workerhost_pool_max_workers", "Configured maximum of workers.",
                                     labels=["namespace"]),
            "state": GaugeMetricFamily("workerhost_namespace_state", "1 for the namespace's current state.",
                                       labels=["namespace", "state"]),
            "busy": GaugeMetricFamily("workerhost_tasks_in_progress", "Tries running on a worker now.",
                                      labels=["namespace"]),
            "queued": GaugeMetricFamily("workerhost_queue_depth", "Tasks inside the supervisor waiting for a worker.",
                                        labels=["namespace"]),
            "ns_mem": GaugeMetricFamily("workerhost_namespace_memory_bytes", "Memory of all the namespace's "
                                        "workers (the figure its limits compare: RSS or USS of each tree).",
                                        labels=["namespace"]),
            "mem": GaugeMetricFamily("workerhost_worker_memory_bytes", "Memory of one worker's process tree.",
                                     labels=["namespace", "pid", "kind"]),
            "cpu": GaugeMetricFamily("workerhost_worker_cpu_percent", "CPU percent of one worker's process tree "
                                     "(100 = one core), between its last two samples.", labels=["namespace", "pid"]),
        }
        for ns in snap.get("namespaces", []):
            name = str(ns["name"])
            counts = dict.fromkeys(WORKER_STATES, 0)
            for w in ns.get("workers", []):
                counts[w["state"]] = counts.get(w["state"], 0) + 1
                pid = str(w["pid"])
                for kind in ("rss", "uss"):
                    if w.get(kind) is not None:
                        g["mem"].add_metric([name, pid, kind], float(w[kind]))
                if w.get("cpu_percent") is not None:
                    g["cpu"].add_metric([name, pid], float(w["cpu_percent"]))
            for state, n in counts.items():
                if state != "exited":
                    g["workers"].add_metric([name, state], n)
            for state in NAMESPACE_STATES:
                g["state"].add_metric([name, state], 1.0 if ns["state"] == state else 0.0)
            g["min"].add_metric([name], ns["min_workers"])
            g["max"].add_metric([name], ns["max_workers"])
            g["busy"].add_metric([name], ns["busy"])
            g["queued"].add_metric([name], ns["queued"])
            if ns.get("memory_bytes") is not None:
                g["ns_mem"].add_metric([name], ns["memory_bytes"])
        yield from g.values()
        if self.source_counts is not None:
            src = GaugeMetricFamily("workerhost_source_tasks", "Tasks held by the task source, by state "
                                    "(where the source can count them).", labels=["state"])
            for state, n in sorted(self.source_counts.items()):
                src.add_metric([state], n)
            yield src
