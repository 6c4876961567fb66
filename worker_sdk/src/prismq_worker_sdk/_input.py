"""The protocol's input, read by whichever of two threads may read it now.

The main thread reads it between tasks, so a task frame goes straight to
its handler with no thread hand-off on the way: a hand-off through a queue
(or any wake-up of another thread per task) costs more on a busy 2-core
machine than the whole round trip of a bare pipe.

While a handler runs, something must still answer ``ping``, act on
``cancel`` and notice the end of input (the supervisor died). That is the
watcher thread: once a handler has run for :data:`WATCH_AFTER` seconds
the watcher takes over the input and reads it until the task ends. Short
tasks never signal the watcher at all; it looks on its own, a few times a
second, and only while tasks are coming. After :data:`PARK_AFTER` seconds
without a task it parks until the next one starts, so an idle worker makes
no wake-ups at all.

``_lock`` guards the hand-over: the main thread reads only while the
watcher is not watching, the watcher reads only under the lock while it
is, and ending a task takes the lock, so it waits out a read in progress.
"""

from __future__ import annotations

import os
import select
import sys
import threading
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional

from .protocol import FrameDecoder, ProtocolError

#: Seconds a handler runs before the watcher reads the input beside it:
#: how late a ping or cancel may be answered while a task runs.
WATCH_AFTER = 0.1
#: Seconds without a task after which the watcher sleeps until the next one.
PARK_AFTER = 2.0

EXIT_OK = 0
EXIT_PROTOCOL = 4

Frame = Dict[str, Any]


class Input:
    def __init__(self, fd: int, decoder: FrameDecoder, on_control: Callable[[Frame], None]) -> None:
        self._fd = fd
        self._decoder = decoder
        #: Handles ping/cancel frames (and unknown ones) on whichever thread read them.
        self._on_control = on_control
        #: Frames read but not handled yet, in order; task and shutdown frames
        #: the watcher reads wait here for the main thread.
        self.pending: Deque[Frame] = deque()
        self._lock = threading.Lock()
        self._running = False
        self._started_at = 0.0
        self._last_end = time.monotonic()
        self._watching = False
        self._parked = False
        self._unpark = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)

    # -- main thread ---------------------------------------------------
    def next_frame(self) -> Frame:
        """The next task, shutdown or control frame (blocks between tasks)."""
        while not self.pending:
            self.pending.extend(self._read())
        return self.pending.popleft()

    def task_started(self) -> None:
        with self._lock:
            self._running = True
            self._started_at = time.monotonic()
            unpark, self._parked = self._parked, False
        if unpark:
            self._unpark.set()

    def task_finished(self) -> None:
        """Take the input back (call after the result went out: off the round trip)."""
        with self._lock:
            self._running = False
            self._last_end = time.monotonic()
            watching, self._watching = self._watching, False
        if watching:
            try:
                os.write(self._wake_w, b"\0")  # pull the watcher out of its poll
            except BlockingIOError:
                pass  # the pipe is full of wake-ups already

    # -- watcher thread ------------------------------------------------
    def watch_forever(self) -> None:
        wait_readable = _readable_waiter(self._fd, self._wake_r)
        while True:
            wait: Optional[float] = WATCH_AFTER
            with self._lock:
                now = time.monotonic()
                if self._running:
                    wait = self._started_at + WATCH_AFTER - now
                    self._watching = wait <= 0
                elif now - self._last_end >= PARK_AFTER:
                    self._parked = True
                    wait = None
                watching = self._watching
            if watching:
                self._watch(wait_readable)
            elif wait is None:
                self._unpark.wait()
                self._unpark.clear()
            else:
                time.sleep(wait)

    def _watch(self, wait_readable: Callable[[], List[int]]) -> None:
        """Read and handle frames until the task ends."""
        while True:
            ready = wait_readable()
            with self._lock:
                if self._wake_r in ready:
                    os.read(self._wake_r, 4096)
                if not self._watching:
                    return
                if self._fd not in ready:
                    continue
                for frame in self._read():
                    if frame["op"] in ("task", "shutdown"):
                        self.pending.append(frame)
                    else:
                        self._on_control(frame)

    # -- either thread -------------------------------------------------
    def _read(self) -> List[Frame]:
        try:
            data = os.read(self._fd, 65536)
        except OSError:
            data = b""
        if not data:
            # The supervisor is gone or closed our input: nobody can
            # receive a result any more, so do not finish the task.
            _exit_with_group(EXIT_OK)
        try:
            return self._decoder.feed(data)
        except ProtocolError as exc:
            sys.stderr.write("prismq-worker: bad frame from supervisor: %s\n" % exc)
            sys.stderr.flush()
            os._exit(EXIT_PROTOCOL)


def _exit_with_group(code: int) -> None:
    """Exit now, taking the processes the handler started along.

    The supervisor starts each worker as the leader of its own process
    group; when that supervisor is gone, nobody else will reap the
    handler's children. Run by hand (not a group leader), only we exit.
    """
    sys.stderr.flush()
    if hasattr(os, "killpg") and os.getpgrp() == os.getpid():
        import signal

        try:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        except ValueError:
            pass  # not the main thread (the watcher saw the end of input): SIGKILL needs no reset
        try:
            os.killpg(os.getpid(), signal.SIGKILL)
        except OSError:
            pass
    os._exit(code)


def _readable_waiter(*fds: int) -> Callable[[], List[int]]:
    """A call that blocks until one of ``fds`` is readable (or closed) and returns those that are."""
    if not hasattr(select, "poll"):  # pragma: no cover - no poll() on this platform
        return lambda: select.select(list(fds), [], [])[0]
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    return lambda: [fd for fd, _ in poller.poll()]
