"""How an idle claim loop waits: for the source's word that tasks arrived, a stop, or a timeout.

A source that implements :class:`~workerhost.sources.base.WaitsForTasks`
(Redis: a blocking XREAD; RabbitMQ and the embedded queue: a doorbell the
producers ring) lets a task sent to an idle supervisor be claimed within a
round trip, where polling alone made it wait for the next poll (up to
``poll_max_interval``). The wait never claims, so cancelling it on stop
loses nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from loguru import logger

from .errors import SourceError
from .sources.base import WaitsForTasks


async def wait_for_tasks(
    source: WaitsForTasks, task_types: Sequence[str], *, timeout: float, stopping: asyncio.Event,
    wake: asyncio.Event,
) -> bool | None:
    """Wait for the source's word, ``wake`` (room freed, a retry recorded), a stop, or ``timeout``.

    True only when the source answered that tasks may be there (or failed
    to say: the caller claims again either way); None when the source
    cannot wait (the caller sleeps as it would polling); False otherwise.
    """
    if stopping.is_set():
        return False
    wake.clear()
    waiting = asyncio.ensure_future(source.wait_for_tasks(task_types, timeout))
    others = [asyncio.ensure_future(stopping.wait()), asyncio.ensure_future(wake.wait())]
    try:
        # A little past the source's own timeout: a source that overruns it
        # (a slow network) is cut off here rather than holding the loop.
        await asyncio.wait({waiting, *others}, timeout=timeout + 1.0, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (waiting, *others):
            task.cancel()
        await asyncio.gather(waiting, *others, return_exceptions=True)
    if not waiting.done() or waiting.cancelled():
        return False
    exc = waiting.exception()
    if exc is None:
        result = waiting.result()
        return None if result is None else bool(result)
    if not isinstance(exc, SourceError):
        raise exc
    # The claim that follows meets the same trouble and backs off; True
    # makes the loop sleep, not wait, after that claim if it comes back empty.
    logger.debug("waiting for new tasks failed: {}", exc)
    return True
