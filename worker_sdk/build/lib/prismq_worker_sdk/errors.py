"""Exceptions a handler raises to say how its task failed.

    TaskError                 base; retry_possible=True unless told otherwise
    ├── RetriableError        transient trouble: try again later
    └── NonRetriableError     retrying cannot help
        └── ValidationError   the task's params are wrong (as in the design)

Any other exception escaping a handler counts as retriable, as in the
design's worker template. ``TaskCancelled`` is raised by
``Context.check_cancelled()`` when the supervisor asked for a stop.
"""

from __future__ import annotations


class TaskError(Exception):
    """A task failed; ``retry_possible`` tells the supervisor whether to retry."""

    retry_possible = True

    def __init__(self, message: str = "", *, retry_possible: "bool | None" = None) -> None:
        super().__init__(message)
        if retry_possible is not None:
            self.retry_possible = retry_possible


class RetriableError(TaskError):
    retry_possible = True


class NonRetriableError(TaskError):
    retry_possible = False


class ValidationError(NonRetriableError):
    """The params of a task are invalid: retrying cannot help."""


class TaskCancelled(Exception):
    """The supervisor cancelled the running task (timeout or shutdown)."""
