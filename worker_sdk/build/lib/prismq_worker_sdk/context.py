"""What a handler may ask of the worker while its task runs."""

from __future__ import annotations

import logging
import threading
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
        self._cancel = threading.Event()
        self.log = logging.LoggerAdapter(logger, {"task_id": task_id})

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
        return self._cancel.is_set()

    def check_cancelled(self) -> None:
        if self._cancel.is_set():
            raise TaskCancelled("task %s was cancelled by the supervisor" % self.task_id)

    def time_left(self) -> Optional[float]:
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.time())

    def _request_cancel(self) -> None:
        self._cancel.set()
