"""The small contract every task source implements.

A source hands out tasks (``claim``) and takes back their fate
(``complete``, ``retry``, ``fail``, ``release``). Delivery is at-least-once:
a task claimed by a supervisor that dies is handed out again once its
lease runs out, so handlers must be idempotent (docs/workers.md).

Sources never see workers, and workers never see sources; the dispatcher
(:mod:`workerhost.dispatch`) sits between them. Sources are passed in
explicitly; there is no global registry.

Error contract: a method raises :class:`~workerhost.errors.SourceError`
(translated ``from`` the library's exception) when the source cannot be
reached; the dispatcher logs it, backs off with jitter and calls again, so
a source reconnects by itself on a later call (``connect`` is called once).
:class:`~workerhost.errors.SourceFatal` (bad credentials) makes the
dispatcher stop polling that source. A report about a task that is no
longer ours (its lease expired and it went to someone else) is logged by
the source and returns normally: there is nothing left to retry.

Optional capabilities are separate protocols, checked with ``isinstance``:
:class:`RenewsLeases` (the dispatcher heartbeats the claims it holds),
:class:`WaitsForTasks` (an idle dispatcher waits for new tasks instead of
polling), :class:`Inspectable` (``tasks`` command) and :class:`DeadLetters`
(``dead`` command).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import attrs

from ..records import Task, TaskError


@attrs.define(kw_only=True)
class Claimed:
    """A task this supervisor holds, plus the source's handle on it."""

    task: Task
    #: Source-specific receipt: a lease token, a stream entry id, a message.
    receipt: Any = None


@attrs.frozen(kw_only=True)
class TaskRecord:
    """What a producer can read back about a task."""

    id: str
    type: str
    status: str  # pending | claimed | completed | failed | dead (source-specific extras allowed)
    params: dict[str, Any] = attrs.field(factory=dict)
    result: Any = None
    error: dict[str, Any] | None = None
    attempts: int = 0
    progress: int | None = None
    priority: int = 0
    #: Unix time the task was created, where the source knows it.
    created_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@runtime_checkable
class TaskSource(Protocol):
    #: Short name for logs and status: "embedded", "http", "redis", "amqp".
    kind: str
    #: True when ``retry`` can hold a delayed retry durably in the source.
    durable_retries: bool

    async def connect(self) -> None: ...

    async def close(self) -> None: ...

    async def claim(self, task_types: Sequence[str], limit: int) -> list[Claimed]:
        """Claim up to ``limit`` tasks of these types; return at once (maybe empty)."""
        ...

    async def complete(self, claimed: Claimed, result: Any) -> None: ...

    async def retry(self, claimed: Claimed, next_task: Task, delay: float, error: TaskError) -> None:
        """Hand the task back for another try after ``delay`` seconds."""
        ...

    async def fail(self, claimed: Claimed, error: TaskError) -> None:
        """The task failed for good: record it (dead-letter where the source has one)."""
        ...

    async def progress(self, claimed: Claimed, percent: int, message: str | None) -> None: ...

    async def release(self, claimed: Claimed) -> None:
        """Give an unfinished task back untouched (shutdown); it will be handed out again."""
        ...


@runtime_checkable
class Producer(Protocol):
    async def submit(
        self, task_type: str, params: dict[str, Any], *, priority: int = 0, dedupe_key: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> str:
        """Enqueue a task; return its id."""
        ...

    async def get(self, task_id: str) -> TaskRecord | None: ...

    async def close(self) -> None: ...


@runtime_checkable
class RenewsLeases(Protocol):
    """A source whose claims expire unless renewed while the task runs."""

    #: Seconds between renewals (well below the lease time).
    renew_interval: float

    async def renew(self, claimed: Sequence[Claimed]) -> None:
        """Extend the lease of every task in ``claimed``; lost leases are logged, not raised."""
        ...


@runtime_checkable
class WaitsForTasks(Protocol):
    """A source that can tell when new tasks arrive, so an idle dispatcher need not poll.

    Without it the dispatcher polls an idle source with a growing interval
    (``poll_interval`` doubling up to ``poll_max_interval``), so a task sent
    to an idle supervisor waits for the next poll; with it the task is
    claimed within a round trip of its submit.
    """

    async def wait_for_tasks(self, task_types: Sequence[str], timeout: float) -> bool | None:
        """Return True as soon as tasks of these types may be ready to claim, False after ``timeout`` s.

        None when the source cannot wait right now (the dispatcher polls
        instead). Claims nothing, so it is safe to cancel at any point. A
        spurious True only costs an empty claim. Raises SourceError like ``claim``.
        """
        ...


@runtime_checkable
class Inspectable(Protocol):
    """A source (or producer) that can list its tasks and count them by state."""

    async def list_tasks(self, *, status: str | None = None, limit: int = 100) -> list[TaskRecord]: ...

    async def counts(self) -> dict[str, int]: ...


@runtime_checkable
class DeadLetters(Protocol):
    """A source (or producer) with a dead-letter a user can list and requeue."""

    async def dead_letters(self, *, limit: int = 100) -> list[TaskRecord]: ...

    async def requeue(self, task_id: str) -> bool:
        """Move one dead (or failed) task back to pending with fresh budgets; False if unknown."""
        ...

    async def requeue_all(self) -> int:
        """Requeue every dead task; return how many."""
        ...
