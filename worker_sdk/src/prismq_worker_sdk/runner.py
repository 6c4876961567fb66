"""The persistent worker loop: handshake, then serve tasks until told to stop.

Threads, and why:

- the main thread runs handlers (so signal handling and C extensions that
  insist on the main thread behave as in a plain script), and between
  tasks it reads the protocol's input itself, so a task frame reaches its
  handler with no thread hand-off on the way;
- a watcher thread reads the input while a longer handler runs, so
  ``ping`` and ``cancel`` are answered and an end of input (the supervisor
  died) ends the process instead of leaving an orphan (see :mod:`._input`
  for the hand-over between the two);
- a capture thread turns whatever reaches fd 1 -- ``print()``, C code,
  child processes -- into ``log`` frames, because the protocol channel
  itself was moved off fd 1 before the handler was imported.
"""

from __future__ import annotations

import asyncio
import inspect
import io
import logging
import os
import platform
import sys
import threading
import time
import traceback
from typing import Any, Callable, Dict, Optional, Tuple

from . import __version__
from ._input import EXIT_PROTOCOL as EXIT_PROTOCOL  # re-exported: the exit codes live together
from ._input import Input, _exit_with_group, _readable_waiter
from .context import Context
from .errors import TaskCancelled, TaskError
from .loader import load_handler
from .protocol import (
    DEFAULT_MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    FrameDecoder,
    FrameEncoder,
    ProtocolError,
    error_payload,
)

try:
    import fcntl as _fcntl
    import termios as _termios
except ImportError:  # pragma: no cover - not POSIX: drain() then sends only what was read
    _fcntl = None  # type: ignore[assignment]
    _termios = None  # type: ignore[assignment]

#: A log frame carries at most this much of one line; the rest is cut so a
#: single enormous print() cannot make a frame the supervisor must refuse.
MAX_LOG_LINE = 64 * 1024

EXIT_OK = 0
EXIT_HANDLER_IMPORT = 2



class Channel:
    """Thread-safe frame writer over the protocol's private output fd."""

    def __init__(self, fd: int, encoder: FrameEncoder) -> None:
        self._fd = fd
        self._encoder = encoder
        self._lock = threading.Lock()

    def send(self, message: Dict[str, Any]) -> None:
        data = self._encoder.encode(message)
        with self._lock:
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]


class _FrameLogHandler(logging.Handler):
    def __init__(self, channel: Channel, current: "Callable[[], Optional[str]]") -> None:
        super().__init__()
        self._channel = channel
        self._current = current

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)[:MAX_LOG_LINE]
            task_id = getattr(record, "task_id", None) or self._current()
            self._channel.send(
                {
                    "op": "log",
                    "level": record.levelname,
                    "logger": record.name,
                    "message": message,
                    "task_id": task_id,
                }
            )
        except Exception:  # logging must never take the worker down
            self.handleError(record)


def _move_stdio_off_channel() -> Tuple[int, int, int]:
    """Give the protocol private copies of fd 0/1; return (in, out, capture_r).

    fd 0 becomes /dev/null so neither ``input()`` nor a child process can
    swallow task frames; fd 1 becomes a pipe read by the capture thread.
    """
    proto_in = os.dup(0)
    proto_out = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    capture_r, capture_w = os.pipe()
    os.dup2(capture_w, 1)
    os.close(capture_w)
    sys.stdin = open(os.devnull, "r")
    sys.stdout = io.TextIOWrapper(
        os.fdopen(1, "wb", buffering=0, closefd=False), encoding="utf-8", errors="replace",
        line_buffering=True,
    )
    return proto_in, proto_out, capture_r


def _set_parent_death_signal() -> None:
    """On Linux, have the kernel send SIGTERM when the supervisor dies.

    End of input covers the usual case; this covers a handler blocked in a
    call that never returns to let the reader see it. The SIGTERM handler
    takes the worker's process group along (the handler's children too),
    which is also what the supervisor's own SIGTERM escalation wants.
    """
    if not sys.platform.startswith("linux"):
        return
    import signal

    def _on_term(signum: int, frame: Any) -> None:
        _exit_with_group(128 + signum)

    signal.signal(signal.SIGTERM, _on_term)
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:  # best effort only
        return
    if os.getppid() == 1:  # the supervisor died before prctl took effect
        _exit_with_group(0)


class Worker:
    """One persistent worker process's state; built and run by :func:`serve`."""

    def __init__(self, handler: Callable[..., Any], channel: Channel) -> None:
        self.handler = handler
        self.channel = channel
        self.current: Optional[Context] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._async_task: "Optional[asyncio.Task[Any]]" = None
        self.capture: Optional[_Capture] = None
        self.input: Optional[Input] = None
        self._wants_context = _accepts_context(handler)
        self._is_async = inspect.iscoroutinefunction(handler)
        self._task_logger = logging.getLogger("prismq.task")

    def on_control(self, frame: Dict[str, Any]) -> None:
        """A frame other than task/shutdown, on whichever thread read it."""
        op = frame["op"]
        if op == "ping":
            self.channel.send({"op": "pong", "seq": frame.get("seq")})
        elif op == "cancel":
            ctx = self.current
            if ctx is not None and ctx.task_id == frame.get("id"):
                ctx._request_cancel()
                loop, task = self._loop, self._async_task
                if loop is not None and task is not None:
                    loop.call_soon_threadsafe(task.cancel)
        # Unknown ops are ignored so a newer supervisor can add optional ones.

    # -- main thread ---------------------------------------------------
    def serve_forever(self) -> None:
        assert self.input is not None
        while True:
            frame = self.input.next_frame()
            op = frame["op"]
            if op == "task":
                self.run_one(frame)
            elif op == "shutdown":
                return
            else:
                self.on_control(frame)

    def run_one(self, frame: Dict[str, Any]) -> None:
        task_id = str(frame.get("id"))
        ctx = Context(
            task_id=task_id,
            task_type=str(frame.get("type")),
            attempt=int(frame.get("attempt") or 1),
            deadline=frame.get("deadline"),
            metadata=frame.get("metadata") or {},
            send=self.channel.send,
            logger=self._task_logger,
        )
        task = {
            "id": task_id,
            "type": ctx.task_type,
            "params": frame.get("params") or {},
            "metadata": ctx.metadata,
            "attempt": ctx.attempt,
        }
        self.current = ctx
        assert self.input is not None
        self.input.task_started()
        try:
            reply = {"op": "result", "id": task_id, "success": True, "result": self._call(task, ctx)}
        except BaseException as exc:  # noqa: BLE001 - every failure becomes a result
            if isinstance(exc, KeyboardInterrupt):
                raise
            reply = {"op": "result", "id": task_id, "success": False, "error": describe_exception(exc)}
        finally:
            try:
                sys.stdout.flush()
            except Exception:
                pass
            # Output the task wrote must reach the supervisor before its
            # result, tagged with its id.
            if self.capture is not None:
                self.capture.drain()
            self.current = None
        try:
            self._send_result(reply)
        finally:
            self.input.task_finished()

    def _call(self, task: Dict[str, Any], ctx: Context) -> Any:
        args = (task, ctx) if self._wants_context else (task,)
        if not self._is_async:
            return self.handler(*args)
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        loop = self._loop
        self._async_task = loop.create_task(self.handler(*args))
        try:
            return loop.run_until_complete(self._async_task)
        except asyncio.CancelledError as exc:
            raise TaskCancelled("task %s was cancelled by the supervisor" % ctx.task_id) from exc
        finally:
            self._async_task = None

    def _send_result(self, reply: Dict[str, Any]) -> None:
        try:
            self.channel.send(reply)
        except ProtocolError as exc:
            # The handler returned something the codec cannot carry (or too
            # big): report that as the task's failure, the worker stays up.
            self.channel.send(
                {
                    "op": "result",
                    "id": reply["id"],
                    "success": False,
                    "error": error_payload("ResultNotSerializable", str(exc), retry_possible=False),
                }
            )


def describe_exception(exc: BaseException) -> Dict[str, Any]:
    if isinstance(exc, TaskError):
        retry = bool(exc.retry_possible)
    elif isinstance(exc, SystemExit):
        # A legacy handler that exits 2 says "not retriable", as in the design.
        retry = exc.code != 2
    else:
        retry = True
    return error_payload(
        type(exc).__name__,
        str(exc),
        traceback="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        retry_possible=retry,
    )


def _accepts_context(handler: Callable[..., Any]) -> bool:
    try:
        params = list(inspect.signature(handler).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [
        p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)


class _Capture:
    """Turns bytes written to fd 1 into ``log`` frames (the capture thread).

    Reads happen under ``_lock``, by the capture thread or by :meth:`drain`,
    so bytes read are always sent before ``drain`` returns: a flag set
    after the read (the earlier design) left a moment in which a line was
    neither in the pipe nor marked as being sent, and a result could
    overtake it.
    """

    def __init__(self, fd: int, worker: Worker) -> None:
        self.fd = fd
        self.worker = worker
        self._pending = b""
        self._lock = threading.Lock()
        os.set_blocking(fd, False)

    def _unread(self) -> int:
        if _fcntl is None:  # pragma: no cover - no FIONREAD on this platform
            return 0
        try:
            buf = _fcntl.ioctl(self.fd, _termios.FIONREAD, b"\0\0\0\0")
        except OSError:  # pragma: no cover - the pipe is gone
            return 0
        return int.from_bytes(buf, sys.byteorder)

    def drain(self, timeout: float = 0.5) -> None:
        """Send what was already written to fd 1 (for at most ``timeout`` s: a child may never stop).

        One lock and one ioctl when nothing was printed, which is the common case.
        """
        with self._lock:
            if self._unread() > 0:
                deadline = time.monotonic() + timeout
                while self._read() and self._unread() > 0 and time.monotonic() < deadline:
                    pass
            if self._pending:
                self._send(self._pending)
                self._pending = b""

    def run(self) -> None:
        wait_readable = _readable_waiter(self.fd)
        while True:
            wait_readable()
            with self._lock:
                if not self._read():
                    return

    def _read(self) -> bool:
        """Read and send one chunk (lock held); False at the end of the pipe or on a broken channel."""
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return True  # drain() took it first
        except OSError:
            return False
        if not data:
            return False
        try:
            chunk = self._pending + data
            lines = chunk.split(b"\n")
            self._pending = lines.pop()
            if len(self._pending) > MAX_LOG_LINE:
                lines.append(self._pending)
                self._pending = b""
            for line in lines:
                self._send(line)
        except (OSError, ProtocolError):
            return False
        return True

    def _send(self, line: bytes) -> None:
        ctx = self.worker.current
        self.worker.channel.send(
            {
                "op": "log",
                "level": "INFO",
                "logger": "stdout",
                "message": line[:MAX_LOG_LINE].decode("utf-8", "replace"),
                "task_id": ctx.task_id if ctx else None,
            }
        )


def serve(
    spec: str,
    *,
    codec: str = "json",
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    log_level: str = "INFO",
) -> int:
    """Run the persistent worker for handler ``spec`` (``module:function``)."""
    try:
        encoder = FrameEncoder(codec, max_frame_bytes)
        decoder = FrameDecoder(codec, max_frame_bytes)
    except ProtocolError as exc:
        sys.stderr.write("prismq-worker: %s\n" % exc)
        return EXIT_HANDLER_IMPORT
    proto_in, proto_out, capture_r = _move_stdio_off_channel()
    _set_parent_death_signal()
    channel = Channel(proto_out, encoder)
    try:
        handler = load_handler(spec)
    except Exception as exc:
        channel.send({"op": "fatal", "error": describe_exception(exc)})
        return EXIT_HANDLER_IMPORT
    worker = Worker(handler, channel)
    root = logging.getLogger()
    root.handlers[:] = [_FrameLogHandler(channel, lambda: worker.current.task_id if worker.current else None)]
    root.setLevel(log_level)
    # hello goes out before the reader starts, so it is always the first frame.
    channel.send(
        {
            "op": "hello",
            "protocol": PROTOCOL_VERSION,
            "sdk": __version__,
            "pid": os.getpid(),
            "python": platform.python_version(),
            "codec": codec,
        }
    )
    worker.capture = _Capture(capture_r, worker)
    worker.input = Input(proto_in, decoder, worker.on_control)
    threading.Thread(target=worker.capture.run, name="stdout-capture", daemon=True).start()
    threading.Thread(target=worker.input.watch_forever, name="proto-watcher", daemon=True).start()
    worker.serve_forever()
    try:
        sys.stdout.flush()
    except Exception:
        pass
    worker.capture.drain()
    return EXIT_OK
