"""The per-task series are kept as plain numbers: they must export exactly what prometheus_client would."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from workerhost import events as ev
from workerhost.metrics import DURATION_BUCKETS, Metrics
from workerhost.records import TaskError


def _samples(text: bytes) -> dict[str, float]:
    """name{labels} -> value, without the _created series (timestamps differ)."""
    out = {}
    for line in text.decode().splitlines():
        if line.startswith("#") or "_created" in line:
            continue
        key, value = line.rsplit(" ", 1)
        out[key] = float(value)
    return out


def test_task_series_match_prometheus_client_counters_and_histograms() -> None:
    rng = random.Random(7)
    # Bucket bounds themselves (a value equal to a bound belongs to it), values
    # between them, zero and past the last bound (+Inf).
    durations = [*DURATION_BUCKETS, 0.0, 301.0, 1e9] + [rng.uniform(0, 400) for _ in range(300)]
    reference = CollectorRegistry()
    tasks = Counter("workerhost_tasks", "x", ["namespace", "type", "outcome"], registry=reference)
    attempts = Counter("workerhost_task_attempts", "x", ["namespace", "type"], registry=reference)
    hist = Histogram("workerhost_task_duration_seconds", "x", ["namespace", "type", "outcome"],
                     buckets=DURATION_BUCKETS, registry=reference)
    metrics = Metrics(task_types={"a.t", "b.t"})
    error = TaskError(type="E", message="m")
    for i, d in enumerate(durations):
        ns, task_type = ("ns1", "a.t") if i % 3 else ("ns2", "b.t")
        metrics(ev.TaskStarted(namespace=ns, task_id=str(i), task_type=task_type, attempt=1, worker_pid=1))
        attempts.labels(ns, task_type).inc()
        if i % 5 == 0:
            metrics(ev.TaskRetried(namespace=ns, task_id=str(i), task_type=task_type, attempt=1, error=error,
                                   delay=0.1))
            tasks.labels(ns, task_type, "retried").inc()
        if i % 4 == 0:
            metrics(ev.TaskFailed(namespace=ns, task_id=str(i), task_type=task_type, attempt=1, error=error,
                                  duration=d))
            outcome = "failed"
        else:
            metrics(ev.TaskCompleted(namespace=ns, task_id=str(i), task_type=task_type, attempt=1, duration=d,
                                     worker_pid=1))
            outcome = "completed"
        tasks.labels(ns, task_type, outcome).inc()
        hist.labels(ns, task_type, outcome).observe(d)
    # A type no namespace serves is folded to "unknown", as before.
    metrics(ev.TaskStarted(namespace="ns1", task_id="x", task_type="random-junk", attempt=1, worker_pid=1))
    attempts.labels("ns1", "unknown").inc()

    ours = {k: v for k, v in _samples(metrics.render()).items() if k.startswith("workerhost_task")}
    theirs = _samples(generate_latest(reference))
    assert ours == theirs
    assert ours['workerhost_task_duration_seconds_bucket{le="+Inf",namespace="ns1",outcome="completed",type="a.t"}'] \
        == ours['workerhost_task_duration_seconds_count{namespace="ns1",outcome="completed",type="a.t"}'] > 0


def test_created_series_are_exported_for_every_task_series() -> None:
    metrics = Metrics(task_types={"a.t"})
    metrics(ev.TaskStarted(namespace="ns", task_id="1", task_type="a.t", attempt=1, worker_pid=1))
    metrics(ev.TaskCompleted(namespace="ns", task_id="1", task_type="a.t", attempt=1, duration=0.2, worker_pid=1))
    text = metrics.render().decode()
    for name in ("workerhost_tasks_created", "workerhost_task_attempts_created",
                 "workerhost_task_duration_seconds_created"):
        assert f'{name}{{' in text, name
    assert "# TYPE workerhost_task_duration_seconds histogram" in text
    assert "# TYPE workerhost_tasks_total counter" in text
