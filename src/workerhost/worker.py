"""One warm worker process: spawn, handshake, run tasks, stop.

The process is started in its own session (so its whole process group can
be signalled) with the namespace's venv Python running
``python -m prismq_worker_sdk module:function``. Its stdout carries protocol
frames, read by a non-blocking reader registered on the event loop; its
stderr is read line by line into the log; its exit is watched through a
pidfd, so a death is noticed even when a forked child still holds the pipes
open (CPython's process pool waits on sentinels for the same reason).
"""

from __future__ import annotations

import asyncio
import enum
import errno
import os
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from loguru import logger
from prismq_worker_sdk.protocol import PROTOCOL_VERSION, FrameDecoder, FrameEncoder, ProtocolError

from .config import NamespaceConfig
from .errors import WorkerLost, WorkerProtocolError, WorkerStartError
from .records import FailureKind, Outcome, Task, TaskError

#: One stderr line is cut to this many characters in the log.
MAX_STDERR_LINE = 4096

#: What a task's result future holds when its timeout passed first.
_OVERDUE: dict[str, Any] = {"op": "overdue"}


class WorkerState(enum.Enum):
    #: Spawned; waiting for its hello frame.
    STARTING = "starting"
    #: Handshake done, no task: may be given one.
    IDLE = "idle"
    #: Running a task.
    BUSY = "busy"
    #: Asked to exit (shutdown frame, recycle, kill); no more tasks.
    STOPPING = "stopping"
    #: The process is gone and its resources are released.
    EXITED = "exited"


_ALLOWED = {
    WorkerState.STARTING: {WorkerState.IDLE, WorkerState.STOPPING, WorkerState.EXITED},
    WorkerState.IDLE: {WorkerState.BUSY, WorkerState.STOPPING, WorkerState.EXITED},
    WorkerState.BUSY: {WorkerState.IDLE, WorkerState.STOPPING, WorkerState.EXITED},
    WorkerState.STOPPING: {WorkerState.EXITED},
    WorkerState.EXITED: set(),
}

LogSink = Callable[["WorkerProcess", str, str, str | None], None]
ProgressSink = Callable[["WorkerProcess", str, int, str | None], None]


class WorkerProcess:
    """A handle on one worker process; every method runs on the event loop."""

    def __init__(
        self, ns: NamespaceConfig, *, on_log: LogSink | None = None, on_progress: ProgressSink | None = None
    ) -> None:
        self.ns = ns
        self.state = WorkerState.STARTING
        self.pid: int | None = None
        self.hello: dict[str, Any] = {}
        self.started_at = time.monotonic()
        self.ready_at: float | None = None
        self.tasks_run = 0
        self.current_task: Task | None = None
        self.task_started_at: float | None = None
        self.exit_code: int | None = None
        #: Why the worker was stopped or died (max_tasks, crash, timeout, ...).
        self.stop_reason: str | None = None
        self.last_pong = time.monotonic()
        self.stderr_tail: deque[str] = deque(maxlen=20)
        self._on_log = on_log
        self._on_progress = on_progress
        self._encoder = FrameEncoder(ns.codec, ns.max_frame_bytes)
        self._decoder = FrameDecoder(ns.codec, ns.max_frame_bytes)
        self._popen: subprocess.Popen[bytes] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._hello: asyncio.Future[dict[str, Any]] | None = None
        self._result: asyncio.Future[dict[str, Any]] | None = None
        #: A result that arrived in the same loop turn as its timeout.
        self._late_result: dict[str, Any] | None = None
        self._exited: asyncio.Future[int] | None = None
        self._out_buf = bytearray()
        self._stderr_pending = b""
        self._pidfd: int | None = None
        self._protocol_error: str | None = None
        self._ping_seq = 0
        #: The running task's timeout, on the monotonic clock (None between tasks).
        self._deadline: float | None = None
        #: The timer that checks ``_deadline``, and when it fires (see run()).
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    def __repr__(self) -> str:
        return f"<WorkerProcess {self.ns.name} pid={self.pid} {self.state.value}>"

    # -- state ---------------------------------------------------------
    def _to(self, new: WorkerState) -> None:
        if new not in _ALLOWED[self.state]:
            raise RuntimeError(f"worker {self.pid}: illegal transition {self.state.value} -> {new.value}")
        self.state = new

    @property
    def alive(self) -> bool:
        return self.state is not WorkerState.EXITED

    def argv(self) -> list[str]:
        if self.ns.command:
            return list(self.ns.command)
        return [
            str(self.ns.python), "-m", "prismq_worker_sdk", self.ns.handler,
            "--codec", self.ns.codec, "--max-frame-bytes", str(self.ns.max_frame_bytes),
        ]

    # -- start ---------------------------------------------------------
    async def start(self) -> None:
        """Spawn and wait for the hello frame; raise WorkerStartError on any failure."""
        loop = self._loop = asyncio.get_running_loop()
        self._hello = loop.create_future()
        self._exited = loop.create_future()
        try:
            # Never a shell: argv is passed as a list, so paths with spaces
            # or metacharacters are taken literally.
            self._popen = subprocess.Popen(
                self.argv(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                cwd=self.ns.project_path, env=self.ns.worker_env(), start_new_session=True, bufsize=0,
            )
        except OSError as exc:
            self.state = WorkerState.EXITED
            raise WorkerStartError(f"cannot start {self.ns.python}: {exc}") from exc
        self.pid = self._popen.pid
        for f in (self._popen.stdin, self._popen.stdout, self._popen.stderr):
            assert f is not None
            os.set_blocking(f.fileno(), False)
        assert self._popen.stdout is not None and self._popen.stderr is not None
        loop.add_reader(self._popen.stdout.fileno(), self._on_stdout)
        loop.add_reader(self._popen.stderr.fileno(), self._on_stderr)
        self._watch_exit(loop)
        try:
            hello = await asyncio.wait_for(asyncio.shield(self._hello), self.ns.start_timeout)
        except asyncio.TimeoutError:
            self.kill("start_timeout")
            raise WorkerStartError(
                f"worker pid {self.pid} did not say hello within {self.ns.start_timeout}s{self._stderr_hint()}"
            ) from None
        except WorkerStartError:
            self.kill("start_failed")
            raise
        except BaseException:
            self.kill("start_cancelled")
            raise
        if hello.get("protocol") != PROTOCOL_VERSION:
            self.kill("protocol_error")
            raise WorkerStartError(
                f"protocol version mismatch: supervisor speaks v{PROTOCOL_VERSION}, worker pid {self.pid} "
                f"(prismq-worker-sdk {hello.get('sdk')}) speaks v{hello.get('protocol')}"
            )
        if self.state is not WorkerState.STARTING:
            # Asked to stop (pool closing) while it was starting up.
            await self.terminate(grace=self.ns.kill_grace, reason=self.stop_reason or "shutdown")
            raise WorkerStartError(f"worker pid {self.pid} was stopped while starting")
        self.hello = hello
        self.ready_at = time.monotonic()
        self.last_pong = self.ready_at
        self._to(WorkerState.IDLE)

    def _watch_exit(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self.pid is not None
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            self._pidfd = None
        if self._pidfd is not None:
            loop.add_reader(self._pidfd, self._on_exit_ready)
        else:  # pragma: no cover - non-Linux fallback
            loop.call_later(0.05, self._poll_exit)

    def _poll_exit(self) -> None:  # pragma: no cover - non-Linux fallback
        assert self._popen is not None and self._loop is not None
        if self._popen.poll() is None:
            self._loop.call_later(0.05, self._poll_exit)
        else:
            self._finalize()

    def _on_exit_ready(self) -> None:
        assert self._popen is not None
        if self._popen.poll() is not None:
            self._finalize()

    # -- reading -------------------------------------------------------
    def _on_stdout(self) -> None:
        assert self._popen is not None and self._popen.stdout is not None
        fd = self._popen.stdout.fileno()
        try:
            data = os.read(fd, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._remove_reader(fd)
            return
        try:
            frames = self._decoder.feed(data)
        except ProtocolError as exc:
            self._protocol_failure(str(exc))
            return
        for frame in frames:
            self._dispatch(frame)

    def _dispatch(self, frame: dict[str, Any]) -> None:
        op = frame["op"]
        if op == "result":
            fut = self._result
            if fut is None or self.current_task is None or frame.get("id") != self.current_task.id:
                self._protocol_failure(f"unexpected result frame for task {frame.get('id')!r}")
            elif not fut.done():
                fut.set_result(frame)
            elif self._late_result is None and _holds(fut, _OVERDUE):
                self._late_result = frame
            else:
                self._protocol_failure(f"unexpected result frame for task {frame.get('id')!r}")
        elif op == "log":
            self._emit_log(str(frame.get("level", "INFO")), str(frame.get("message", "")), frame.get("task_id"))
        elif op == "progress":
            if self._on_progress and self.current_task is not None:
                try:
                    pct = int(frame.get("progress", 0))
                except (TypeError, ValueError):
                    pct = 0
                self._on_progress(self, self.current_task.id, pct, frame.get("message"))
        elif op == "pong":
            self.last_pong = time.monotonic()
        elif op == "hello":
            if self._hello is not None and not self._hello.done():
                self._hello.set_result(frame)
            else:
                self._protocol_failure("second hello frame")
        elif op == "fatal":
            err = frame.get("error") or {}
            exc = WorkerStartError(
                f"worker cannot serve {self.ns.handler}: {err.get('type')}: {err.get('message')}"
            )
            if self._hello is not None and not self._hello.done():
                self._hello.set_exception(exc)
            self.kill("start_failed")
        # Unknown ops are ignored: a newer SDK may send optional frames.

    def _on_stderr(self) -> None:
        assert self._popen is not None and self._popen.stderr is not None
        fd = self._popen.stderr.fileno()
        try:
            data = os.read(fd, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._remove_reader(fd)
            if self._stderr_pending:
                self._stderr_line(self._stderr_pending)
                self._stderr_pending = b""
            return
        chunk = self._stderr_pending + data
        lines = chunk.split(b"\n")
        self._stderr_pending = lines.pop()
        if len(self._stderr_pending) > MAX_STDERR_LINE:
            lines.append(self._stderr_pending)
            self._stderr_pending = b""
        for line in lines:
            self._stderr_line(line)

    def _stderr_line(self, raw: bytes) -> None:
        line = raw[:MAX_STDERR_LINE].decode("utf-8", "replace").rstrip()
        if not line:
            return
        self.stderr_tail.append(line)
        self._emit_log("WARNING", line, self.current_task.id if self.current_task else None, stream="stderr")

    def _emit_log(self, level: str, message: str, task_id: Any, *, stream: str = "worker") -> None:
        if self._on_log is not None:
            self._on_log(self, level, message, str(task_id) if task_id is not None else None)

    def _stderr_hint(self) -> str:
        return f"; last stderr: {self.stderr_tail[-1]}" if self.stderr_tail else ""

    def _protocol_failure(self, reason: str) -> None:
        if self._protocol_error is None:
            self._protocol_error = reason
            logger.bind(namespace=self.ns.name, pid=self.pid).error("worker broke the protocol: {}", reason)
        self.kill("protocol_error")

    # -- writing -------------------------------------------------------
    def send(self, message: dict[str, Any]) -> None:
        self._write(self._encoder.encode(message))

    def _write(self, data: bytes) -> None:
        if self._popen is None or self._popen.stdin is None or not self.alive:
            raise WorkerLost(f"worker pid {self.pid} is gone")
        if self._out_buf:
            self._out_buf += data
            return
        fd = self._popen.stdin.fileno()
        try:
            n = os.write(fd, data)
        except BlockingIOError:
            n = 0
        except OSError as exc:
            # EPIPE: the worker closed its input or died; the exit watcher
            # reports the death, the caller's task is failed from there.
            self.kill("protocol_error" if exc.errno == errno.EPIPE else "crash")
            raise WorkerLost(f"worker pid {self.pid}: cannot write: {exc}") from exc
        if n < len(data):
            self._out_buf += data[n:]
            assert self._loop is not None
            self._loop.add_writer(fd, self._flush)

    def _flush(self) -> None:
        assert self._popen is not None and self._popen.stdin is not None and self._loop is not None
        fd = self._popen.stdin.fileno()
        try:
            n = os.write(fd, self._out_buf)
        except BlockingIOError:
            return
        except OSError:
            self._loop.remove_writer(fd)
            self._out_buf.clear()
            self.kill("crash")
            return
        del self._out_buf[:n]
        if not self._out_buf:
            self._loop.remove_writer(fd)

    # -- tasks ---------------------------------------------------------
    async def run(self, task: Task, *, timeout: float) -> Outcome:
        """Run one task. Returns its outcome; raises WorkerLost if the worker died under it.

        On timeout the task is cancelled cooperatively, then the worker's
        process group gets SIGTERM and SIGKILL; the outcome is a TIMEOUT error.
        """
        assert self._loop is not None
        try:
            # Encoded before the worker turns busy: params no frame can carry
            # (over max_frame_bytes, not JSON) fail this task, not the worker.
            data = self._encoder.encode(_task_frame(task, deadline=time.time() + timeout))
        except ProtocolError as exc:
            return Outcome(
                error=TaskError(
                    type="InvalidParams", kind=FailureKind.REJECTED, retry_possible=False,
                    message=f"params cannot be sent to a worker of namespace {self.ns.name} "
                            f"(max_frame_bytes {self.ns.max_frame_bytes}): {exc}",
                ),
                namespace=self.ns.name, worker_pid=self.pid, duration=0.0,
            )
        if self.state is WorkerState.IDLE:  # the one legal way in; _to() raises for the others
            self.state = WorkerState.BUSY
        else:
            self._to(WorkerState.BUSY)
        self.current_task = task
        self.task_started_at = started = time.monotonic()
        self._result = fut = self._loop.create_future()
        self._late_result = None
        # A timer instead of wait_for(shield(fut)): that cost three extra
        # loop turns and ~25 µs per task; the timer leaves the future
        # pending-or-overdue and never cancels it. One timer per worker
        # outlives its task: when it fires early (armed for an earlier task)
        # it moves itself to the current task's deadline, so a stream of
        # short tasks costs no timer per task (a timer and its cancel were
        # ~2 µs of each no-op task).
        self._deadline = deadline = started + timeout
        if self._timer is None or self._timer_at > deadline:
            self._arm(deadline)
        timed_out = False
        try:
            self._write(data)
            frame = await fut
            if frame is _OVERDUE:
                late = await self._stop_overdue(task, timeout)
                # A handler that honoured the cancel keeps its worker; the
                # task still failed by timeout unless it finished after all.
                timed_out = late is None or not late.get("success")
                frame = late or {}
        finally:
            self._deadline = None
            self.current_task = None
            self.task_started_at = None
            self._result = None
        self.tasks_run += 1
        if self.state is WorkerState.BUSY:
            self.state = WorkerState.IDLE  # always legal from BUSY
        duration = time.monotonic() - started
        if timed_out:
            return Outcome(
                error=TaskError(
                    type="TaskTimeout", message=f"task ran past its timeout of {timeout}s and was stopped",
                    kind=FailureKind.TIMEOUT, retry_possible=True,
                ),
                namespace=self.ns.name, worker_pid=self.pid, duration=duration,
            )
        if frame.get("success"):
            return Outcome(result=frame.get("result"), namespace=self.ns.name, worker_pid=self.pid, duration=duration)
        err = frame.get("error") if isinstance(frame.get("error"), dict) else {}
        return Outcome(
            error=TaskError.from_dict({**err, "kind": "raised"}),
            namespace=self.ns.name, worker_pid=self.pid, duration=duration,
        )

    def _arm(self, deadline: float) -> None:
        assert self._loop is not None
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self._loop.call_later(max(0.0, deadline - time.monotonic()), self._on_deadline)

    def _on_deadline(self) -> None:
        """The timer fired: mark the running task overdue, or follow its later deadline."""
        self._timer = None
        fut, deadline = self._result, self._deadline
        if fut is None or deadline is None or fut.done():
            return  # between tasks (or already answered): the next task arms a timer
        if time.monotonic() < deadline:
            self._arm(deadline)
        else:
            fut.set_result(_OVERDUE)

    async def _stop_overdue(self, task: Task, timeout: float) -> dict[str, Any] | None:
        assert self._loop is not None
        # A fresh future for the late result (holding it already if it came
        # in the very turn the timeout fired).
        self._result = fut = self._loop.create_future()
        if self._late_result is not None:
            fut.set_result(self._late_result)
        try:
            self.send({"op": "cancel", "id": task.id})
            return await asyncio.wait_for(asyncio.shield(fut), self.ns.cancel_grace)
        except (asyncio.TimeoutError, WorkerLost):
            pass
        except WorkerProtocolError:
            raise
        if self.state is WorkerState.BUSY:
            self._to(WorkerState.STOPPING)
        self.stop_reason = self.stop_reason or "timeout"
        await self.terminate(grace=self.ns.kill_grace, reason="timeout")
        return None

    # -- stopping ------------------------------------------------------
    def ping(self) -> None:
        self._ping_seq += 1
        self.send({"op": "ping", "seq": self._ping_seq})

    def cancel_current(self) -> None:
        """Ask the running handler to stop (cooperative; the result still arrives)."""
        if self.current_task is None or self.state is not WorkerState.BUSY:
            return
        try:
            self.send({"op": "cancel", "id": self.current_task.id})
        except WorkerLost:
            pass

    async def shutdown(self, *, grace: float, reason: str) -> None:
        """Ask the worker to exit after its current task; escalate after ``grace``."""
        self.stop_reason = self.stop_reason or reason
        if self.state in (WorkerState.IDLE, WorkerState.BUSY, WorkerState.STARTING):
            self._to(WorkerState.STOPPING)
            try:
                self.send({"op": "shutdown"})
            except WorkerLost:
                pass
        await self.terminate(grace=grace, reason=reason)

    async def terminate(self, *, grace: float, reason: str) -> None:
        """Wait up to ``grace`` s for exit, then SIGTERM the group, then SIGKILL it."""
        self.stop_reason = self.stop_reason or reason
        if await self.wait(grace):
            return
        self._signal_group(signal.SIGTERM)
        if await self.wait(max(grace, 1.0)):
            return
        self.kill(reason)
        await self.wait(5.0)

    def kill(self, reason: str) -> None:
        """SIGKILL the worker's whole process group now, and its descendants that left the group."""
        self.stop_reason = self.stop_reason or reason
        if self.state not in (WorkerState.EXITED, WorkerState.STOPPING):
            self._to(WorkerState.STOPPING)
        self._signal_group(signal.SIGKILL)

    def _signal_strays(self, sig: int) -> None:
        """Signal descendants in another process group (``start_new_session=True`` children).

        Only possible while the worker lives: once it is gone they are
        re-parented away. Double-forked daemons escape even this (docs/workers.md).
        """
        if self.pid is None or self._popen is None or self._popen.returncode is not None:
            return
        from .limits import tree_pids  # limits imports this module

        for pid in tree_pids(self.pid)[1:]:
            try:
                if os.getpgid(pid) != self.pid:
                    os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def _signal_group(self, sig: int) -> None:
        if self.pid is None:
            return
        self._signal_strays(sig)
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait for the process to be gone; True if it is."""
        if self._exited is None:
            return True
        try:
            await asyncio.wait_for(asyncio.shield(self._exited), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    def _remove_reader(self, fd: int) -> None:
        if self._loop is not None:
            self._loop.remove_reader(fd)

    def _finalize(self) -> None:
        """The process exited: drain what it wrote, release everything, fail its task."""
        assert self._popen is not None and self._loop is not None
        if self.state is WorkerState.EXITED:
            return
        self.exit_code = self._popen.returncode
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        # Read what is already in the pipes (a result written just before
        # exit must not be lost); a forked child may keep them open, so
        # never wait for EOF here.
        for _ in range(64):
            if self._popen.stdout is None or self._popen.stdout.closed or self._result is None or self._result.done():
                break
            before = self._decoder.pending_bytes
            self._on_stdout()
            if self._decoder.pending_bytes == before:
                break
        if self._popen.stderr is not None and not self._popen.stderr.closed:
            self._on_stderr()
        # Orphans the worker left in its group go with it.
        self._signal_group(signal.SIGKILL)
        for f in (self._popen.stdin, self._popen.stdout, self._popen.stderr):
            if f is not None and not f.closed:
                self._loop.remove_reader(f.fileno())
                self._loop.remove_writer(f.fileno())
                f.close()
        self.state = WorkerState.EXITED
        reason = self.stop_reason or "crash"
        self.stop_reason = reason
        if self._hello is not None and not self._hello.done():
            self._hello.set_exception(
                WorkerStartError(f"worker exited during start with {describe_exit(self.exit_code)}{self._stderr_hint()}")
            )
        if self._exited is not None and not self._exited.done():
            self._exited.set_result(self.exit_code if self.exit_code is not None else -1)
        if self._result is not None and not self._result.done():
            exc_cls = WorkerProtocolError if self._protocol_error else WorkerLost
            unfinished = self._decoder.pending_bytes
            cut = f", in the middle of a frame ({unfinished} bytes of an unfinished frame)" if unfinished else ""
            detail = self._protocol_error or f"{describe_exit(self.exit_code)}{cut}{self._stderr_hint()}"
            # One loop turn after the exit is published: whoever watches the
            # exit (the pool's restart bookkeeping) runs before the task's
            # caller hears of the loss, as it did when run() waited through
            # wait_for(shield(...)).
            self._loop.call_soon(_fail, self._result, exc_cls(f"worker pid {self.pid} lost ({reason}): {detail}"))


def _task_frame(task: Task, *, deadline: float) -> dict[str, Any]:
    return {
        "op": "task", "id": task.id, "type": task.type, "params": task.params,
        "metadata": task.metadata, "attempt": task.attempt, "deadline": deadline,
    }


def _fail(fut: asyncio.Future[dict[str, Any]], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


def _holds(fut: asyncio.Future[dict[str, Any]], value: dict[str, Any]) -> bool:
    return not fut.cancelled() and fut.exception() is None and fut.result() is value


def describe_exit(code: int | None) -> str:
    if code is None:
        return "unknown exit status"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"
