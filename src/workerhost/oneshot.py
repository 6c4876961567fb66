"""``mode: oneshot`` namespaces: the design's spawn-per-task protocol.

For workers that do not use the SDK, in any language: one process per
task, the task as one JSON document on stdin, the result as one JSON
document on stdout, and the design's exit codes (0 ok, 1 retriable,
2 not retriable, 3 timeout, 130 interrupted). Slower than a warm pool by
the cost of a process start, which is why ``persistent`` is the default.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import Counter
from typing import Any

from loguru import logger

from . import events as ev
from .config import NamespaceConfig
from .errors import NamespaceUnavailable
from .pool import PoolState
from .records import FailureKind, Outcome, Task, TaskError
from .worker import describe_exit

EXIT_RETRIABLE, EXIT_NOT_RETRIABLE, EXIT_TIMEOUT, EXIT_INTERRUPTED = 1, 2, 3, 130
#: Bytes of a one-shot worker's stderr kept for the log (its last lines).
STDERR_TAIL = 256 * 1024


class OneshotPool:
    """Same surface as :class:`~workerhost.pool.Pool`, one process per task."""

    def __init__(self, ns: NamespaceConfig, *, bus: ev.EventBus) -> None:
        self.ns = ns
        self.bus = bus
        self.state = PoolState.STARTING
        self.workers: list[Any] = []
        self.last_error: str | None = None
        self.restarts: Counter[str] = Counter()
        self.tasks_done = 0
        self.tasks_failed = 0
        self._slots = asyncio.Semaphore(ns.max_workers)
        self._running = 0
        self._log = logger.bind(namespace=ns.name)

    def argv(self) -> list[str]:
        if self.ns.command:
            return list(self.ns.command)
        return [str(self.ns.python), "-m", str(self.ns.module), str(self.ns.function)]

    async def start(self) -> None:
        self.state = PoolState.OK

    async def close(self, *, timeout: float = 30.0, reason: str = "shutdown") -> None:
        self.state = PoolState.DRAINING
        deadline = time.monotonic() + timeout
        while self._running and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self.state = PoolState.STOPPED

    @property
    def live(self) -> list[Any]:
        return []

    @property
    def busy(self) -> int:
        return self._running

    @property
    def waiting(self) -> int:
        return 0

    def free_slots(self) -> int:
        if self.state in (PoolState.DRAINING, PoolState.STOPPED):
            return 0
        return max(0, self.ns.max_workers - self._running)

    async def execute(self, task: Task) -> Outcome:
        if self.state in (PoolState.DRAINING, PoolState.STOPPED):
            exc = NamespaceUnavailable(f"namespace {self.ns.name} is {self.state.value}")
            return Outcome(error=TaskError(type="NamespaceUnavailable", message=str(exc),
                                           kind=FailureKind.UNAVAILABLE), namespace=self.ns.name)
        async with self._slots:
            self._running += 1
            try:
                return await self._run(task)
            finally:
                self._running -= 1

    async def _run(self, task: Task) -> Outcome:
        started = time.monotonic()
        doc = {"id": task.id, "type": task.type, "params": task.params, "metadata": task.metadata,
               "attempt": task.attempt}
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv(), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, cwd=self.ns.project_path, env=self.ns.worker_env(),
                start_new_session=True,
            )
        except OSError as exc:
            self.last_error = str(exc)
            return self._fail(task, "WorkerStartError", f"cannot start {self.argv()[0]}: {exc}",
                              kind=FailureKind.WORKER_LOST, started=started)
        self.bus.emit(ev.TaskStarted(namespace=self.ns.name, task_id=task.id, task_type=task.type,
                                     attempt=task.attempt, worker_pid=proc.pid))
        try:
            out, err = await asyncio.wait_for(self._exchange(proc, json.dumps(doc).encode()), self.ns.timeout)
        except asyncio.TimeoutError:
            _killpg(proc.pid)
            await proc.wait()
            return self._fail(task, "TaskTimeout", f"task ran past its timeout of {self.ns.timeout}s and was killed",
                              kind=FailureKind.TIMEOUT, started=started, pid=proc.pid)
        finally:
            _killpg(proc.pid)  # children it left behind go with it
        for line in err.decode("utf-8", "replace").splitlines()[-200:]:
            if line.strip():
                self.bus.emit(ev.WorkerLog(namespace=self.ns.name, worker_pid=proc.pid, level="WARNING",
                                           message=line[:4096], task_id=task.id))
        return self._interpret(task, proc.returncode, out, started, proc.pid)

    async def _exchange(self, proc: asyncio.subprocess.Process, data: bytes) -> tuple[bytes, bytes]:
        """Send the task, read the outputs until the process is done; keep only their tails.

        Not ``communicate()``: that buffers everything, and a worker writing
        gigabytes would take the supervisor's memory with it.
        """
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        readers = asyncio.gather(_tail(proc.stdout, self.ns.max_frame_bytes), _tail(proc.stderr, STDERR_TAIL))
        try:
            proc.stdin.write(data)
            await proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass  # it exited without reading its task: its exit code says why
        finally:
            proc.stdin.close()
        try:
            await proc.wait()
            # A child left holding the pipes must not keep us waiting for their end.
            _killpg(proc.pid)
            out, err = await readers
        finally:
            readers.cancel()
        return out, err

    def _interpret(self, task: Task, code: int | None, out: bytes, started: float, pid: int) -> Outcome:
        doc = _last_json(out)
        if code == 0 and doc is not None and doc.get("success", True):
            self.tasks_done += 1
            return Outcome(result=doc.get("result"), namespace=self.ns.name, worker_pid=pid,
                           duration=time.monotonic() - started)
        err: dict[str, Any] = doc["error"] if doc and isinstance(doc.get("error"), dict) else {}
        if code == 0:
            return self._fail(task, "WorkerProtocolError", "exit code 0 without a JSON result on stdout",
                              kind=FailureKind.WORKER_LOST, started=started, pid=pid)
        if code == EXIT_TIMEOUT:
            return self._fail(task, err.get("type") or "TaskTimeout", err.get("message") or "worker reported a timeout",
                              kind=FailureKind.TIMEOUT, started=started, pid=pid)
        if code in (EXIT_RETRIABLE, EXIT_NOT_RETRIABLE, EXIT_INTERRUPTED):
            return self._fail(task, err.get("type") or "TaskError", err.get("message") or f"exit code {code}",
                              kind=FailureKind.RAISED, retry=code != EXIT_NOT_RETRIABLE, started=started, pid=pid,
                              traceback=err.get("traceback"))
        # describe_exit: "signal SIGSEGV" rather than a bare negative return code.
        return self._fail(task, "WorkerLost", f"worker exited with {describe_exit(code)}", kind=FailureKind.WORKER_LOST,
                          started=started, pid=pid)

    def _fail(self, task: Task, type_: str, message: str, *, kind: FailureKind, started: float,
              retry: bool = True, pid: int | None = None, traceback: str | None = None) -> Outcome:
        self.tasks_failed += 1
        return Outcome(error=TaskError(type=type_, message=message, kind=kind, retry_possible=retry,
                                       traceback=traceback),
                       namespace=self.ns.name, worker_pid=pid, duration=time.monotonic() - started)


async def _tail(stream: asyncio.StreamReader, limit: int) -> bytes:
    """Read to the end, keeping the last ``limit`` bytes (the result is the last JSON line)."""
    buf = bytearray()
    while chunk := await stream.read(1 << 16):
        buf += chunk
        if len(buf) > limit:
            del buf[: len(buf) - limit]
    return bytes(buf)


def _killpg(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _last_json(out: bytes) -> dict[str, Any] | None:
    """The result document: the whole stdout, or its last line that parses."""
    text = out.decode("utf-8", "replace").strip()
    for candidate in [text, *reversed(text.splitlines())]:
        try:
            doc = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(doc, dict):
            return doc
    return None
