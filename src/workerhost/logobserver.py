"""The observer that turns lifecycle events into log lines.

Every line about a task carries ``task_id`` (the correlation id),
``namespace`` and ``pid`` as bound fields, so JSON logs can be filtered on them.
"""

from __future__ import annotations

from loguru import logger

from . import events as ev

_WORKER_LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}

#: The level (loguru's number) of the line each of a task's events makes.
_TASK_LINE_LEVELS = {ev.TaskStarted: 10, ev.TaskReceived: 10, ev.TaskCompleted: 20}


def _min_level() -> float:
    """The lowest level any loguru sink takes now (inf: no sink; 0: unknown, log everything).

    Read from loguru's core, which keeps it for its own first check; it is
    not public API, hence the fallback.
    """
    try:
        return float(logger._core.min_level)  # type: ignore[attr-defined]
    except (AttributeError, TypeError, ValueError):
        return 0


class LoggingObserver:
    # The fields go to each call as keyword arguments, which loguru adds to
    # the record's ``extra`` (``opt(capture=True)``, its default) exactly as
    # ``bind`` would. Unlike ``bind``, which builds a new logger for every
    # event, a keyword call below every sink's level returns at loguru's
    # first check: at the usual INFO or WARNING, the three DEBUG/INFO lines
    # of every task cost ~1 µs each instead of ~3-4 µs.
    def __call__(self, event: ev.Event) -> None:
        # A task's three lines are DEBUG and INFO; at the usual WARNING they
        # are dropped before the fields are even gathered. Under load this
        # was a few µs of a ~50 µs round trip (benchmarks/: observers on and off).
        line_level = _TASK_LINE_LEVELS.get(type(event))
        if line_level is not None and line_level < _min_level():
            return
        fields = {"namespace": event.namespace, "pid": getattr(event, "worker_pid", None),
                  "task_id": getattr(event, "task_id", None)}
        log = logger
        match event:
            # Every task's three events first (no event class derives from another).
            case ev.TaskStarted(attempt=attempt):
                log.debug("task started (attempt {})", attempt, **fields)
            case ev.TaskCompleted(duration=duration, attempt=attempt):
                log.info("task completed in {:.3f}s (attempt {})", duration, attempt, **fields)
            case ev.TaskReceived(task_type=task_type):
                log.debug("task received ({})", task_type, **fields)
            case ev.WorkerLog(level=level, message=message):
                level = level.upper()
                log.log(level if level in _WORKER_LEVELS else "INFO", "[worker] {}", message, **fields)
            case ev.TaskRetried(error=error, delay=delay, attempt=attempt):
                log.warning("task attempt {} failed ({}: {}); retry in {:.2f}s", attempt, error.type,
                            error.message, delay, **fields)
            case ev.TaskFailed(error=error, attempt=attempt):
                log.error("task failed after {} attempt(s): {}: {}", attempt, error.type, error.message, **fields)
            case ev.TaskProgress(progress=progress, message=message):
                log.debug("task progress {}% {}", progress, message or "", **fields)
            case ev.WorkerReady(startup_seconds=startup, python=python):
                log.info("worker ready in {:.3f}s (Python {})", startup, python, **fields)
            case ev.WorkerRecycled(reason=reason):
                log.info("worker recycled ({})", reason, **fields)
            case ev.WorkerExited(reason=reason, exit_code=code, tasks_run=tasks):
                log.info("worker exited ({}, exit code {}, {} tasks)", reason, code, tasks, **fields)
            case ev.WorkerStartFailed(reason=reason, retry_in=retry_in):
                log.error("worker start failed: {} (retry in {:.1f}s)", reason, retry_in, **fields)
            case _:
                pass
