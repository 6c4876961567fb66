"""The per-task Prometheus series, kept as plain numbers and exported at scrape time.

A no-op task emits three events, and every one of them used to update a
prometheus_client ``Counter`` or ``Histogram`` child: each update takes a
lock and goes through a few layers of Python. On a busy 2-core machine the
observers were ~10 µs of a ~55 µs warm round trip (benchmarks/: observers
on and off, one competing busy process). Here an update is a dict lookup
and an add on the event loop's thread; the ``Metric`` families are built
only when ``/metrics`` is scraped, with the same names, labels, buckets and
``_created`` series the library's own classes export.

Reads and writes both happen on the event loop (the control server renders
on it), so no lock is needed; ``collect`` copies the dicts first anyway, so
a scrape from another thread sees a consistent-enough picture and never
"dictionary changed size during iteration".
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

TASK_LABELS = ("namespace", "type", "outcome")
ATTEMPT_LABELS = ("namespace", "type")


class _Count:
    __slots__ = ("value", "created")

    def __init__(self) -> None:
        self.value = 0
        self.created = time.time()


class _Histogram:
    __slots__ = ("counts", "total", "created")

    def __init__(self, size: int) -> None:
        #: Observations per bucket (not cumulative); the last one is +Inf.
        self.counts = [0] * size
        self.total = 0.0
        self.created = time.time()


class TaskSeries(Collector):
    """``workerhost_tasks``, ``workerhost_task_attempts`` and ``workerhost_task_duration_seconds``."""

    def __init__(self, *, buckets: Sequence[float]) -> None:
        self._bounds = [float(b) for b in buckets]
        self._les = [floatToGoString(b) for b in self._bounds] + ["+Inf"]
        self._tasks: dict[tuple[str, str, str], _Count] = {}
        self._attempts: dict[tuple[str, str], _Count] = {}
        self._durations: dict[tuple[str, str, str], _Histogram] = {}

    # -- updates (the observer calls these) ------------------------------------
    def attempt(self, namespace: str, task_type: str) -> None:
        key = (namespace, task_type)
        count = self._attempts.get(key)
        if count is None:
            count = self._attempts[key] = _Count()
        count.value += 1

    def ended(self, namespace: str, task_type: str, outcome: str, duration: float | None = None) -> None:
        """One more task with ``outcome``; a duration also goes to the histogram."""
        key = (namespace, task_type, outcome)
        count = self._tasks.get(key)
        if count is None:
            count = self._tasks[key] = _Count()
        count.value += 1
        if duration is None:
            return
        hist = self._durations.get(key)
        if hist is None:
            hist = self._durations[key] = _Histogram(len(self._les))
        # Prometheus buckets are "less than or equal": bisect_left finds the
        # first bound >= duration (len(bounds) = the +Inf bucket).
        hist.counts[bisect.bisect_left(self._bounds, duration)] += 1
        hist.total += duration

    # -- scrape ------------------------------------------------------------------
    def describe(self) -> list[Metric]:
        return []  # unchecked: its series depend on the tasks seen

    def collect(self) -> Iterator[Metric]:
        tasks = CounterMetricFamily(
            "workerhost_tasks", "Tasks that ended, and tries that were retried, by outcome "
            "(completed, failed, retried).", labels=TASK_LABELS,
        )
        for key, count in list(self._tasks.items()):
            tasks.add_metric(key, count.value, created=count.created)
        yield tasks
        attempts = CounterMetricFamily("workerhost_task_attempts", "Tries started on a worker.",
                                       labels=ATTEMPT_LABELS)
        for akey, count in list(self._attempts.items()):
            attempts.add_metric(akey, count.value, created=count.created)
        yield attempts
        name = "workerhost_task_duration_seconds"
        durations = HistogramMetricFamily(name, "Time a try spent on its worker, by outcome.", labels=TASK_LABELS)
        for key, hist in list(self._durations.items()):
            cumulative, buckets = 0, []
            for le, n in zip(self._les, list(hist.counts), strict=True):
                cumulative += n
                buckets.append((le, float(cumulative)))
            durations.add_metric(key, buckets, hist.total)
            durations.add_sample(f"{name}_created", dict(zip(TASK_LABELS, key, strict=True)), hist.created)
        yield durations

