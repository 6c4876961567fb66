"""Typed lifecycle events and the observer list they go to (the design's Observer).

Logging, metrics and status are observers; a user adds more through the
config (``observers: ["package.module:factory"]``) or ``Supervisor(observers=...)``.
An observer that raises is logged and skipped: it never breaks dispatch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from loguru import logger

from .records import TaskError


@attrs.frozen(kw_only=True)
class Event:
    namespace: str | None = None


@attrs.frozen(kw_only=True)
class TaskReceived(Event):
    task_id: str
    task_type: str


@attrs.frozen(kw_only=True)
class TaskStarted(Event):
    task_id: str
    task_type: str
    attempt: int
    worker_pid: int | None


@attrs.frozen(kw_only=True)
class TaskProgress(Event):
    task_id: str
    progress: int
    message: str | None
    worker_pid: int | None


@attrs.frozen(kw_only=True)
class TaskCompleted(Event):
    task_id: str
    task_type: str
    attempt: int
    duration: float
    worker_pid: int | None


@attrs.frozen(kw_only=True)
class TaskFailed(Event):
    """A task ended failed for good (no retry left)."""

    task_id: str
    task_type: str
    attempt: int
    error: TaskError
    duration: float = 0.0
    worker_pid: int | None = None


@attrs.frozen(kw_only=True)
class TaskRetried(Event):
    task_id: str
    task_type: str
    attempt: int
    error: TaskError
    delay: float


@attrs.frozen(kw_only=True)
class WorkerSpawned(Event):
    worker_pid: int | None


@attrs.frozen(kw_only=True)
class WorkerReady(Event):
    worker_pid: int | None
    startup_seconds: float
    python: str | None = None


@attrs.frozen(kw_only=True)
class WorkerStartFailed(Event):
    reason: str
    retry_in: float


@attrs.frozen(kw_only=True)
class WorkerRecycled(Event):
    worker_pid: int | None
    reason: str


@attrs.frozen(kw_only=True)
class WorkerExited(Event):
    worker_pid: int | None
    reason: str
    exit_code: int | None
    tasks_run: int


@attrs.frozen(kw_only=True)
class WorkerLog(Event):
    worker_pid: int | None
    level: str
    message: str
    task_id: str | None


Observer = Callable[[Event], Any]


class EventBus:
    """Calls every observer with every event, synchronously, in order."""

    def __init__(self, observers: list[Observer] | tuple[Observer, ...] = ()) -> None:
        # A tuple, replaced on (un)subscribe: emit() walks it without a copy
        # (three times per task), and an observer that unsubscribes during an
        # emit does not disturb the walk in progress.
        self._observers: tuple[Observer, ...] = tuple(observers)

    @property
    def observers(self) -> tuple[Observer, ...]:
        """The observers, in the order they are called."""
        return self._observers

    def subscribe(self, observer: Observer) -> Callable[[], None]:
        self._observers = (*self._observers, observer)
        return lambda: self.unsubscribe(observer)

    def unsubscribe(self, observer: Observer) -> None:
        """Remove an observer (no error if it is not there)."""
        self._observers = tuple(o for o in self._observers if o is not observer)

    def emit(self, event: Event) -> None:
        for observer in self._observers:
            try:
                observer(event)
            except Exception as exc:
                logger.opt(exception=exc).error("observer {!r} failed on {}", observer, type(event).__name__)
