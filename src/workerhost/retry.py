"""What happens after a failed try: retry (when, where) or give up.

Two budgets, kept apart on purpose: ``max_retries`` bounds tries that the
task itself failed (it raised, or ran past its timeout); ``max_worker_lost``
bounds tries whose worker died or was killed under it, so a task that kills
its worker every time cannot loop forever. A non-retriable error ends the
task at once. When a budget is spent and the task type has an explicit
fallback route, the next namespace on it gets a fresh pair of budgets.
"""

from __future__ import annotations

import random

import attrs

from .config import NamespaceConfig
from .records import FailureKind, Task, TaskError


@attrs.frozen(kw_only=True)
class Decision:
    retry: bool
    delay: float = 0.0
    #: The task as it should be tried next (attempt and budgets advanced).
    next_task: Task | None = None


def backoff(ns: NamespaceConfig, n: int) -> float:
    """Delay before retry number ``n`` (1-based): exponential, capped, jittered."""
    base = min(ns.retry.backoff * 2 ** (n - 1), ns.retry.backoff_max)
    return base * random.uniform(0.5, 1.0) if ns.retry.jitter else base


def decide(task: Task, error: TaskError, ns: NamespaceConfig, *, route_length: int) -> Decision:
    if error.kind is FailureKind.REJECTED:
        return Decision(retry=False)
    lost = error.kind in (FailureKind.WORKER_LOST, FailureKind.UNAVAILABLE)
    if not lost and not error.retry_possible:
        return Decision(retry=False)
    failures = task.failures + (0 if lost else 1)
    losses = task.worker_losses + (1 if lost else 0)
    within = losses <= ns.max_worker_lost if lost else failures <= ns.max_retries
    degraded = error.kind is FailureKind.UNAVAILABLE
    has_next = task.route_index + 1 < route_length
    if within and not (degraded and has_next):
        n = losses if lost else failures
        nxt = attrs.evolve(task, attempt=task.attempt + 1, failures=failures, worker_losses=losses)
        return Decision(retry=True, delay=backoff(ns, n), next_task=nxt)
    if has_next:
        nxt = attrs.evolve(task, attempt=task.attempt + 1, failures=0, worker_losses=0, route_index=task.route_index + 1)
        return Decision(retry=True, delay=0.0, next_task=nxt)
    return Decision(retry=False)
