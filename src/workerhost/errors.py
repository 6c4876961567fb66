"""The one exception tree of prismq-workerhost.

    WorkerHostError
    ├── ConfigError            a config file is invalid (names file, field, reason)
    ├── WorkerError            something went wrong with a worker *process*
    │   ├── WorkerStartError   it could not start: spawn failed, handler import
    │   │                      failed, no hello within start_timeout, version mismatch
    │   ├── WorkerLost         it died or was killed while it held a task
    │   └── WorkerProtocolError it broke protocol v1 (garbage, oversized frame)
    ├── TaskFailed             the *task* failed: the handler raised, timed out,
    │                          or its type is unknown; carries a TaskError record
    ├── NamespaceUnavailable   no worker can be had: the namespace is degraded or draining
    ├── SourceError            a task source failed (connection, auth, protocol)
    │   └── SourceFatal        retrying cannot help (authentication failed): stop that source
    └── SupervisorClosed       the supervisor is shutting down / not started

"The task raised" (TaskFailed) and "the worker died" (WorkerLost) are
different errors with different retry budgets. Errors from libraries are
translated at the boundary with ``raise X from exc``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .records import TaskError


class WorkerHostError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(WorkerHostError):
    def __init__(self, reason: str, *, field: str | None = None, file: str | None = None) -> None:
        self.reason = reason
        self.field = field
        self.file = file
        where = ": ".join(p for p in (file, field) if p)
        super().__init__(f"{where}: {reason}" if where else reason)


class WorkerError(WorkerHostError):
    """A worker process failed; the task it held (if any) may be retried."""


class WorkerStartError(WorkerError):
    pass


class WorkerLost(WorkerError):
    pass


class WorkerProtocolError(WorkerError):
    pass


class TaskFailed(WorkerHostError):
    """Raised by ``TaskResult.unwrap()`` for a task that ended failed."""

    def __init__(self, error: TaskError) -> None:
        self.error = error
        super().__init__(f"{error.type}: {error.message}")


class NamespaceUnavailable(WorkerHostError):
    pass


class SourceError(WorkerHostError):
    pass


class SourceFatal(SourceError):
    """The source refuses us for good (bad credentials): stop polling it rather than spin."""


class SupervisorClosed(WorkerHostError):
    pass
