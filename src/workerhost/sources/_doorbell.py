"""Doorbells: how producers tell idle supervisors that tasks arrived.

A ring is only a hint; the task itself is already in the queue. A ring
that is lost (nobody listening, a full socket buffer, a broker hiccup)
costs at most the dispatcher's poll interval, never a task.

:class:`Chime` is the listening side's broadcast: every claim loop that
waits sees every ring, including one that came while it was claiming
(each caller's last look is kept, so nothing between two waits is missed).

:class:`SocketBell` and :func:`ring_folder` are the embedded queue's bell:
one datagram socket per listening source in a folder beside the queue
file (``queue.db.bells/``); a producer sends one byte to each socket it
finds there after its transaction commits. A socket nobody listens on any
more (its supervisor died) refuses the datagram and is removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import Hashable
from pathlib import Path

from loguru import logger


class Chime:
    """Rings counted and broadcast to every waiter."""

    def __init__(self) -> None:
        self._rings = 0
        self._seen: dict[Hashable, int] = {}
        self._waiters: list[asyncio.Future[None]] = []

    def ring(self) -> None:
        self._rings += 1
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def wait(self, who: Hashable, timeout: float) -> bool:
        """True once a ring newer than ``who``'s last look came; False after ``timeout`` s."""
        seen = self._seen.get(who)
        self._seen[who] = self._rings
        if seen is not None and self._rings > seen:
            return True
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await asyncio.wait_for(fut, max(0.0, timeout))
        except asyncio.TimeoutError:
            return False
        finally:
            if fut in self._waiters:
                self._waiters.remove(fut)
            self._seen[who] = self._rings
        return True


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
        with contextlib.suppress(OSError):
            while self._sock.recv(64):
                pass
        self.chime.ring()

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


def ring_folder(folder: Path) -> None:
    """Ring every bell in ``folder`` (non-blocking; errors only ever cost a poll interval)."""
    try:
        names = [n for n in os.listdir(folder) if n.endswith(".sock")]
    except OSError:
        return
    if not names:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        for name in names:
            path = folder / name
            try:
                sock.sendto(b"!", str(path))
            except (ConnectionRefusedError, FileNotFoundError):
                # Nobody listens there: its supervisor died without cleaning up.
                with contextlib.suppress(OSError):
                    path.unlink()
            except OSError:
                pass  # a full buffer means it is rung already; anything else costs a poll
