"""Plain records that travel between sources, the supervisor and pools."""

from __future__ import annotations

import enum
import os
from typing import Any

import attrs

from .errors import TaskFailed


def new_task_id() -> str:
    """A random (version 4) UUID as 32 hex digits, like ``uuid.uuid4().hex``.

    Built from ``os.urandom`` directly: ``uuid.uuid4()`` goes through a UUID
    object and costs ~3.5 µs, a good share of a no-op task's supervisor time.
    Random, so unique across processes and restarts (sources rely on that).
    """
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # RFC 4122 variant
    return raw.hex()


@attrs.define(kw_only=True)
class Task:
    """One unit of work. ``attempt`` is 1 on the first try and counts every try."""

    type: str
    params: dict[str, Any] = attrs.field(factory=dict)
    id: str = attrs.field(factory=new_task_id, converter=str)
    metadata: dict[str, Any] = attrs.field(factory=dict)
    attempt: int = 1
    #: Tries that ended with the handler's own failure (or a timeout).
    failures: int = 0
    #: Tries that ended with the worker dying or being killed under the task.
    worker_losses: int = 0
    #: Position in the task type's ordered fallback route.
    route_index: int = 0

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "params": self.params,
            "metadata": self.metadata,
            "attempt": self.attempt,
            "failures": self.failures,
            "worker_losses": self.worker_losses,
            "route_index": self.route_index,
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Task:
        return cls(
            id=data["id"],
            type=data["type"],
            params=data.get("params") or {},
            metadata=data.get("metadata") or {},
            attempt=int(data.get("attempt") or 1),
            failures=int(data.get("failures") or 0),
            worker_losses=int(data.get("worker_losses") or 0),
            route_index=int(data.get("route_index") or 0),
        )


class FailureKind(enum.Enum):
    RAISED = "raised"  # the handler raised / returned a failure
    TIMEOUT = "timeout"  # the task ran past its timeout and was stopped
    WORKER_LOST = "worker_lost"  # the worker died or was killed under the task
    UNAVAILABLE = "unavailable"  # no worker could be had (namespace degraded)
    REJECTED = "rejected"  # the supervisor refused the task (unknown type, bad params)


@attrs.frozen(kw_only=True)
class TaskError:
    """The design's error object plus what kind of failure it was."""

    type: str
    message: str
    retry_possible: bool = True
    traceback: str | None = None
    kind: FailureKind = FailureKind.RAISED

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "message": self.message,
            "traceback": self.traceback,
            "retry_possible": self.retry_possible,
            "kind": self.kind.value,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskError:
        return cls(
            type=str(data.get("type") or "Error"),
            message=str(data.get("message") or ""),
            traceback=data.get("traceback"),
            retry_possible=bool(data.get("retry_possible", True)),
            kind=FailureKind(data.get("kind") or "raised"),
        )


@attrs.frozen(kw_only=True)
class Outcome:
    """What one try of a task on one worker produced."""

    result: Any = None
    error: TaskError | None = None
    namespace: str | None = None
    worker_pid: int | None = None
    duration: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


class TaskStatus(enum.Enum):
    COMPLETED = "completed"
    FAILED = "failed"


@attrs.frozen(kw_only=True)
class TaskResult:
    """The final word on a task, after its retries."""

    task_id: str
    type: str
    status: TaskStatus
    result: Any = None
    error: TaskError | None = None
    attempts: int = 1
    namespace: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is TaskStatus.COMPLETED

    def unwrap(self) -> Any:
        """The result, or raise :class:`TaskFailed` with the task's error."""
        if self.error is not None:
            raise TaskFailed(self.error)
        return self.result

    def to_dict(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "type": self.type,
            "status": self.status.value,
            "result": self.result,
            "error": self.error.to_dict() if self.error else None,
            "attempts": self.attempts,
            "namespace": self.namespace,
        }
