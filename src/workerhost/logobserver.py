"""The observer that turns lifecycle events into log lines.

Every line about a task carries ``task_id`` (the correlation id),
``namespace`` and ``pid`` as bound fields, so JSON logs can be filtered on them.
"""

from __future__ import annotations

from loguru import logger

from . import events as ev

_WORKER_LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}


class LoggingObserver:
    def __call__(self, event: ev.Event) -> None:
        log = logger.bind(namespace=event.namespace, pid=getattr(event, "worker_pid", None),
                          task_id=getattr(event, "task_id", None))
        match event:
            case ev.WorkerLog(level=level, message=message):
                level = level.upper()
                log.log(level if level in _WORKER_LEVELS else "INFO", "[worker] {}", message)
            case ev.TaskReceived(task_type=task_type):
                log.debug("task received ({})", task_type)
            case ev.TaskStarted(attempt=attempt):
                log.debug("task started (attempt {})", attempt)
            case ev.TaskCompleted(duration=duration, attempt=attempt):
                log.info("task completed in {:.3f}s (attempt {})", duration, attempt)
            case ev.TaskRetried(error=error, delay=delay, attempt=attempt):
                log.warning("task attempt {} failed ({}: {}); retry in {:.2f}s", attempt, error.type,
                            error.message, delay)
            case ev.TaskFailed(error=error, attempt=attempt):
                log.error("task failed after {} attempt(s): {}: {}", attempt, error.type, error.message)
            case ev.TaskProgress(progress=progress, message=message):
                log.debug("task progress {}% {}", progress, message or "")
            case ev.WorkerReady(startup_seconds=startup, python=python):
                log.info("worker ready in {:.3f}s (Python {})", startup, python)
            case ev.WorkerRecycled(reason=reason):
                log.info("worker recycled ({})", reason)
            case ev.WorkerExited(reason=reason, exit_code=code, tasks_run=tasks):
                log.info("worker exited ({}, exit code {}, {} tasks)", reason, code, tasks)
            case ev.WorkerStartFailed(reason=reason, retry_in=retry_in):
                log.error("worker start failed: {} (retry in {:.1f}s)", reason, retry_in)
            case _:
                pass
