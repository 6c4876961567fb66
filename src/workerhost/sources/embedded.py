"""The embedded queue (the default source): a durable local queue in one SQLite file.

No server: several supervisors (processes) on one host can share the file,
and producers (``submit``, the Python API) write to it directly. Claims are
leases that the dispatcher renews while a task runs; a supervisor that dies
stops renewing, its leases run out and its tasks are handed out again
(at-least-once). Delayed retries wait in the file (``not_before``), so they
survive a restart. The storage and its schema live in :mod:`._sqlite_queue`.

An idle supervisor does not poll the file: producers ring a doorbell (a
datagram socket per supervisor in ``<queue>.bells/``, :mod:`._doorbell`)
after they commit, and the supervisor sleeps until a ring or until the
next delayed retry or lease expiry falls due.

SQLite calls block, so they run on one dedicated thread per source or
producer (which also owns the connection); the event loop never waits on
the disk or on another process's lock.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from loguru import logger

from ..errors import SourceError
from ..producer import poll_until_final
from ..records import FailureKind, Task, TaskError
from . import _sqlite_queue as store
from ._doorbell import SocketBell, bell_folder, ring_folder
from .base import Claimed, TaskRecord

T = TypeVar("T")


class _Db:
    """One thread that owns one SQLite connection; every call runs there."""

    def __init__(self, path: Path, *, busy_timeout: float) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._closed = False

    def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> concurrent.futures.Future[T]:
        if self._closed:
            raise SourceError(f"embedded queue {self.path}: closed")
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="workerhost-sqlite")
        return self._executor.submit(self._run, fn, args, kwargs)

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await self.wrap(self.submit(fn, *args, **kwargs))

    async def wrap(self, fut: concurrent.futures.Future[T]) -> T:
        try:
            return await asyncio.wrap_future(fut)
        except sqlite3.Error as exc:
            raise SourceError(f"embedded queue {self.path}: {exc}") from exc

    def _run(self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
        if self._conn is None:
            self._conn = store.connect(self.path, busy_timeout=self.busy_timeout)
        return fn(self._conn, *args, **kwargs)

    async def close(self) -> None:
        self._closed = True
        if self._executor is None:
            return
        executor, self._executor = self._executor, None
        await asyncio.wrap_future(executor.submit(self._close_conn))
        executor.shutdown(wait=False)

    def _close_conn(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class _Reader:
    """What producers and sources both offer: read, list, count, requeue."""

    _db: _Db

    async def get(self, task_id: str) -> TaskRecord | None:
        return await self._db.call(store.get, task_id=task_id)

    async def list_tasks(self, *, status: str | None = None, limit: int = 100) -> list[TaskRecord]:
        return await self._db.call(store.list_tasks, status=status, limit=limit)

    async def counts(self) -> dict[str, int]:
        return await self._db.call(store.counts)

    async def dead_letters(self, *, limit: int = 100) -> list[TaskRecord]:
        return await self.list_tasks(status="dead", limit=limit)

    async def requeue(self, task_id: str) -> bool:
        done = await self._db.call(store.requeue, task_id=task_id) == 1
        ring_folder(bell_folder(self._db.path))
        return done

    async def requeue_all(self) -> int:
        count = await self._db.call(store.requeue, task_id=None, states=("dead",))
        ring_folder(bell_folder(self._db.path))
        return count

    async def close(self) -> None:
        await self._db.close()


class EmbeddedSource(_Reader):
    kind = "embedded"
    durable_retries = True

    def __init__(
        self, path: Path, *, lease_seconds: float = 30.0, max_lease_expiries: int = 5, busy_timeout: float = 30.0,
        owner: str | None = None,
    ) -> None:
        self.path = path
        self.lease_seconds = lease_seconds
        self.max_lease_expiries = max_lease_expiries
        #: Renew three times per lease, so one late renewal does not lose it.
        self.renew_interval = lease_seconds / 3
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}"
        self._db = _Db(path, busy_timeout=busy_timeout)
        self._log = logger.bind(source="embedded")
        self._bell = SocketBell(bell_folder(path))
        self._listening = False

    async def connect(self) -> None:
        await self._db.call(store.counts)  # opens the file, creates the schema
        self._listening = self._bell.open()

    async def close(self) -> None:
        self._bell.close()
        self._listening = False
        await super().close()

    async def wait_for_tasks(self, task_types: Sequence[str], timeout: float) -> bool | None:
        """Wait for a producer's ring, or until a delayed retry or an expired lease falls due.

        None when there is no doorbell here (the dispatcher polls instead).
        """
        if not self._listening:
            return None
        if not task_types:
            return False
        due = await self._db.call(store.next_due, list(task_types))
        return await self._bell.chime.wait(task_types, timeout, due_in=None if due is None else due - time.time())

    async def claim(self, task_types: Sequence[str], limit: int) -> list[Claimed]:
        if not task_types or limit <= 0:
            return []
        self._bell.chime.mark(task_types)
        state = _ClaimState()
        fut = self._db.submit(self._claim_job, state, list(task_types), limit)
        try:
            rows = await asyncio.shield(self._db.wrap(fut))
        except asyncio.CancelledError:
            # The claim still runs on the queue's thread: give its tasks straight back rather
            # than leave them to their lease.
            with state.lock:
                state.cancelled = True
                finished = state.finished
            if finished:
                self._db.submit(_release_claimed, fut)
            raise
        return [Claimed(task=task, receipt=token) for task, token in rows]

    def _claim_job(self, conn: sqlite3.Connection, state: _ClaimState, task_types: list[str],
                   limit: int) -> list[tuple[Task, str]]:
        rows = store.claim(conn, task_types, limit, owner=self.owner, lease=self.lease_seconds,
                           max_lease_expiries=self.max_lease_expiries)
        with state.lock:
            if state.cancelled:
                store.release(conn, [(task.id, token) for task, token in rows])
                return []
            state.finished = True
        return rows

    async def complete(self, claimed: Claimed, result: Any) -> None:
        ok = await self._db.call(store.complete, claimed.task.id, claimed.receipt, result)
        self._check(ok, claimed, "complete")

    async def retry(self, claimed: Claimed, next_task: Task, delay: float, error: TaskError) -> None:
        ok = await self._db.call(store.retry, claimed.task.id, claimed.receipt, next_task, delay, error)
        self._check(ok, claimed, "retry")

    async def fail(self, claimed: Claimed, error: TaskError) -> None:
        # Retries spent -> dead-letter; a task that must not be retried at all -> failed.
        dead = error.retry_possible and error.kind is not FailureKind.REJECTED
        ok = await self._db.call(store.fail, claimed.task.id, claimed.receipt, error, dead=dead)
        self._check(ok, claimed, "fail")

    async def progress(self, claimed: Claimed, percent: int, message: str | None) -> None:
        await self._db.call(store.progress, claimed.task.id, claimed.receipt, percent, message)

    async def release(self, claimed: Claimed) -> None:
        await self._db.call(store.release, [(claimed.task.id, claimed.receipt)])
        ring_folder(bell_folder(self.path), [claimed.task.type])  # another supervisor on this file may take it now

    async def renew(self, claimed: Sequence[Claimed]) -> None:
        lost = await self._db.call(store.renew, [(c.task.id, c.receipt) for c in claimed], lease=self.lease_seconds)
        for task_id in lost:
            self._log.bind(task_id=task_id).warning("lease lost: the task may be running elsewhere too")

    def _check(self, ok: bool, claimed: Claimed, what: str) -> None:
        if not ok:
            self._log.bind(task_id=claimed.task.id).warning(
                "{} ignored: the claim expired and the task was handed out again", what)


class _ClaimState:
    """Hand-over between a claim running on the queue's thread and its (maybe cancelled) caller."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.cancelled = False
        self.finished = False


def _release_claimed(conn: sqlite3.Connection, fut: concurrent.futures.Future[list[tuple[Task, str]]]) -> None:
    # Runs on the queue's thread after the claim job, so its result is set.
    if not fut.cancelled() and fut.exception() is None:
        store.release(conn, [(task.id, token) for task, token in fut.result()])


class EmbeddedProducer(_Reader):
    """Submit tasks to the queue file and read them back."""

    kind = "embedded"

    def __init__(self, path: Path, *, busy_timeout: float = 30.0) -> None:
        self.path = path
        self._db = _Db(path, busy_timeout=busy_timeout)

    async def submit(
        self, task_type: str, params: dict[str, Any], *, priority: int = 0, dedupe_key: str | None = None,
        metadata: dict[str, Any] | None = None, delay: float = 0.0,
    ) -> str:
        item = {"type": task_type, "params": params, "priority": priority, "dedupe_key": dedupe_key,
                "metadata": metadata, "delay": delay}
        (task_id,) = await self.submit_items([item])
        return task_id

    async def submit_many(self, tasks: Iterable[tuple[str, dict[str, Any]]]) -> list[str]:
        """Enqueue many (type, params) tasks in one transaction."""
        return await self.submit_items([{"type": t, "params": p} for t, p in tasks])

    async def submit_items(self, items: Iterable[dict[str, Any]]) -> list[str]:
        """Enqueue many tasks in one transaction ({type, params, priority?, dedupe_key?, metadata?, delay?})."""
        items = list(items)
        ids = await self._db.call(store.submit_many, items)
        ring_folder(bell_folder(self.path), {str(item.get("type")) for item in items})
        return ids

    async def wait(self, task_id: str, *, timeout: float | None = None) -> TaskRecord:
        """Wait until the task is completed, failed or dead; raise TimeoutError after ``timeout`` seconds."""
        return await poll_until_final(self.get, task_id, timeout=timeout, cap=0.25)
