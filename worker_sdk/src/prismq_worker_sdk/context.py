"""What a handler may ask of the worker while its task runs."""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Dict, Optional

from .errors import TaskCancelled

Send = Callable[[Dict[str, Any]], None]


class Context:
    """Passed to handlers that accept a second argument.

    ``progress()`` and ``log`` send frames to the supervisor at once; the
    cancellation flag is set from the worker's reader thread when the
    supervisor sends ``cancel``, so a long handler should poll
    ``cancelled`` or call ``check_cancelled()`` between steps.
    """

    def __init__(
        self,
        *,
        task_id: str,
        task_type: str,
        attempt: int,
        deadline: Optional[float],
        metadata: Dict[str, Any],
        send: Send,
        logger: logging.Logger,
    ) -> None:
        self.task_id = task_id
        self.task_type = task_type
        self.attempt = attempt
        #: Wall-clock (``time.time()``) instant after which the supervisor
        #: stops the task, or None.
        self.deadline = deadline
        self.metadata = metadata
        self._send = send
        self._logger = logger
        self._log: Optional[logging.LoggerAdapter] = None  # type: ignore[type-arg]
        # A plain flag, not a threading.Event: it is only ever set (by the
        # input watcher thread) and read, a bool assignment is atomic, and
        # an Event (with its Condition and Lock) was a fifth of the SDK's
        # own time per no-op task.
        self._cancelled = False

    @property
    def log(self) -> logging.LoggerAdapter:  # type: ignore[type-arg]
        """A `logging.LoggerAdapter` whose records carry the task id to the supervisor's log."""
        if self._log is None:
            self._log = logging.LoggerAdapter(self._logger, {"task_id": self.task_id})
        return self._log

    def progress(self, percent: int, message: Optional[str] = None) -> None:
        percent = int(percent)
        if not 0 <= percent <= 100:
            raise ValueError("progress must be within 0..100, got %d" % percent)
        frame: Dict[str, Any] = {"op": "progress", "id": self.task_id, "progress": percent}
        if message is not None:
            frame["message"] = str(message)
        self._send(frame)

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def check_cancelled(self) -> None:
        if self._cancelled:
            raise TaskCancelled("task %s was cancelled by the supervisor" % self.task_id)

    def time_left(self) -> Optional[float]:
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.time())

    def _request_cancel(self) -> None:
        self._cancelled = True
