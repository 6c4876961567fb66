"""Doorbells: how producers tell idle supervisors that tasks arrived.

A ring is only a hint; the task itself is already in the queue. A ring
that is lost (nobody listening, a full socket buffer, a broker hiccup)
costs at most the dispatcher's poll interval, never a task.

:class:`Chime` is the listening side's broadcast: every claim loop that
waits sees every ring for its task types, including one that came while
it was claiming.

:class:`SocketBell` and :func:`ring_folder` are the embedded queue's bell:
one datagram socket per listening source in a folder beside the queue
file (``queue.db.bells/``); a producer sends the task types it queued to
each socket it finds there after its transaction commits. A socket nobody listens on any
more (its supervisor died) refuses the datagram and is removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

from loguru import logger


class Chime:
    """Rings counted per task type and broadcast to every waiter.

    A claim loop marks the count for its task types when it starts a
    claim; its next wait returns at once if a ring for one of its types
    came since (during the claim, or between the claim and the wait), so
    no ring is lost and none is counted twice. Rings carry the task type,
    so a submit of one type does not wake the claim loops of the others.
    """

    def __init__(self) -> None:
        self._by_type: dict[str, int] = {}
        #: Rings that did not say their type (wake everyone).
        self._untyped = 0
        self._marks: dict[tuple[str, ...], int] = {}
        self._waiters: list[asyncio.Future[None]] = []

    def _count(self, types: tuple[str, ...]) -> int:
        return self._untyped + sum(self._by_type.get(t, 0) for t in types)

    def ring(self, task_type: str | None = None) -> None:
        if task_type is None:
            self._untyped += 1
        else:
            self._by_type[task_type] = self._by_type.get(task_type, 0) + 1
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def mark(self, task_types: Sequence[str]) -> None:
        """A claim of these types starts: rings so far are answered by it."""
        key = tuple(task_types)
        self._marks[key] = self._count(key)

    async def wait(self, task_types: Sequence[str], timeout: float, *, due_in: float | None = None) -> bool:
        """True once a ring for one of these types came since the last claim's mark; False after ``timeout`` s.

        ``due_in``: seconds until a task becomes claimable with nobody ringing
        (a delayed retry, an expired lease); the wait ends then, with True.
        """
        if due_in is not None and due_in < timeout:
            return await self._wait(task_types, due_in) or True
        return await self._wait(task_types, timeout)

    async def _wait(self, task_types: Sequence[str], timeout: float) -> bool:
        key = tuple(task_types)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        while True:
            if self._count(key) > self._marks.setdefault(key, self._count(key)):
                return True
            left = deadline - loop.time()
            if left <= 0:
                return False
            fut = loop.create_future()
            self._waiters.append(fut)
            try:
                await asyncio.wait_for(fut, left)
            except asyncio.TimeoutError:
                return False
            finally:
                if fut in self._waiters:
                    self._waiters.remove(fut)


#: Bytes of one ring: the task types it is for, one per line (empty: any type).
_MAX_DATAGRAM = 8192


def bell_folder(queue_path: Path) -> Path:
    return queue_path.with_name(queue_path.name + ".bells")


class SocketBell:
    """The listening side of the embedded queue's doorbell."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.chime = Chime()
        self._sock: socket.socket | None = None
        self._path: Path | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def open(self) -> bool:
        """Start listening; False (and polling goes on as before) if this platform or path cannot."""
        if not hasattr(socket, "AF_UNIX"):  # pragma: no cover - not POSIX
            return False
        path = self.folder / f"{os.getpid()}-{uuid.uuid4().hex[:8]}.sock"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self.folder.mkdir(exist_ok=True)
            sock.bind(str(path))
        except OSError as exc:  # a path past the ~108-byte limit, a read-only folder
            sock.close()
            logger.info("embedded queue: no doorbell ({}): an idle supervisor polls instead", exc)
            return False
        sock.setblocking(False)
        self._sock, self._path = sock, path
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._on_readable)
        return True

    def _on_readable(self) -> None:
        assert self._sock is not None
        while True:
            try:
                data = self._sock.recv(_MAX_DATAGRAM)
            except OSError:  # drained (BlockingIOError) or closed
                return
            names: list[str | None] = [n for n in data.decode("utf-8", "replace").split("\n") if n]
            for name in names or [None]:
                self.chime.ring(name)

    def close(self) -> None:
        if self._sock is None:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        self._sock = None
        if self._path is not None:
            with contextlib.suppress(OSError):
                self._path.unlink()


def ring_folder(folder: Path, task_types: Iterable[str] | None = None) -> None:
    """Ring every bell in ``folder`` for these task types (None: any type).

    Non-blocking; an error only ever costs a poll interval.
    """
    try:
        names = [n for n in os.listdir(folder) if n.endswith(".sock")]
    except OSError:
        return
    if not names:
        return
    payload = "\n".join(sorted(set(task_types))).encode() if task_types is not None else b""
    if len(payload) > _MAX_DATAGRAM:
        payload = b""  # too many types for one datagram: wake everyone
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        for name in names:
            path = folder / name
            try:
                sock.sendto(payload, str(path))
            except (ConnectionRefusedError, FileNotFoundError):
                # Nobody listens there: its supervisor died without cleaning up.
                with contextlib.suppress(OSError):
                    path.unlink()
            except OSError:
                pass  # a full buffer means it is rung already; anything else costs a poll
