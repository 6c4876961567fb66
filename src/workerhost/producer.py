"""Producer helpers shared by the sources: wait for a task to reach a final state.

The producer classes live with their sources (``sources/embedded.py``,
``sources/http_producer.py``, ...) and are built with
:func:`workerhost.sources.make_producer`::

    producer = make_producer(load_config("workerhost.yaml"))
    task_id = await producer.submit("Example.Echo", {"text": "hi"})
    record = await producer.wait(task_id, timeout=60)
    print(record.status, record.result)
    await producer.close()
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from .errors import SourceError
from .sources.base import TaskRecord

#: States after which a task does not change by itself (a dead one can be requeued).
FINAL = frozenset({"completed", "failed", "dead"})


async def poll_until_final(
    get: Callable[[str], Awaitable[TaskRecord | None]], task_id: str, *, timeout: float | None,
    first: float = 0.02, cap: float = 0.5,
) -> TaskRecord:
    """Read the task until it is final; raise TimeoutError after ``timeout`` seconds."""
    deadline = None if timeout is None else time.monotonic() + timeout
    pause = first
    while True:
        record = await get(task_id)
        if record is None:
            raise SourceError(f"no task {task_id!r}")
        if record.status in FINAL:
            return record
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise TimeoutError(f"task {task_id} still {record.status} after {timeout}s")
        await asyncio.sleep(pause if left is None else min(pause, left))
        pause = min(pause * 1.5, cap)
