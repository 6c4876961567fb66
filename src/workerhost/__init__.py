"""prismq-workerhost: a supervisor of warm, isolated Python worker pools.

The public API is what this module exports; everything else lives in
private-by-convention modules and may change.
"""

from __future__ import annotations

from .config import Config, NamespaceConfig, load_config
from .errors import (
    ConfigError,
    NamespaceUnavailable,
    SourceError,
    SupervisorClosed,
    TaskFailed,
    WorkerError,
    WorkerHostError,
    WorkerLost,
    WorkerProtocolError,
    WorkerStartError,
)
from .events import Event, EventBus
from .records import FailureKind, Outcome, Task, TaskError, TaskResult, TaskStatus
from .supervisor import Supervisor

__version__ = "0.1.0"

__all__ = [
    "Config",
    "ConfigError",
    "Event",
    "EventBus",
    "FailureKind",
    "NamespaceConfig",
    "NamespaceUnavailable",
    "Outcome",
    "SourceError",
    "Supervisor",
    "SupervisorClosed",
    "Task",
    "TaskError",
    "TaskFailed",
    "TaskResult",
    "TaskStatus",
    "WorkerError",
    "WorkerHostError",
    "WorkerLost",
    "WorkerProtocolError",
    "WorkerStartError",
    "__version__",
    "load_config",
]
