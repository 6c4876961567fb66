"""The design's original one-shot protocol: one task in, one result out.

Read one JSON task from stdin, run the handler, write one JSON result to
stdout and exit with the design's codes:

    0 success    1 failed, retriable    2 failed, not retriable
    3 timeout    130 interrupted (Ctrl+C)

Lets a handler be run by hand (``echo '{...}' | python -m
prismq_worker_sdk --oneshot mod:fn``) and keeps legacy callers working.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from typing import Any, Dict, List, Optional

from .context import Context
from .errors import TaskCancelled
from .loader import load_handler
from .protocol import error_payload
from .runner import _accepts_context, describe_exception

EXIT_SUCCESS = 0
EXIT_RETRIABLE = 1
EXIT_NOT_RETRIABLE = 2
EXIT_TIMEOUT = 3
EXIT_INTERRUPTED = 130


class _Timeout(BaseException):
    """Raised from SIGALRM; a BaseException so handlers' ``except Exception`` miss it."""


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: List[Dict[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append({"level": record.levelname, "message": record.getMessage()})


def run_oneshot(spec: str, *, timeout: Optional[float] = None) -> int:
    # Anything the handler prints must not land in the one JSON document we
    # owe on stdout: keep a private copy of it and point fd 1 at stderr.
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    logs = _Collect()
    logging.getLogger().addHandler(logs)
    logging.getLogger().setLevel(logging.INFO)
    try:
        raw = sys.stdin.read()
        task = json.loads(raw)
        if not isinstance(task, dict):
            raise ValueError("task must be a JSON object")
    except ValueError as exc:
        return _finish(out, logs, error=error_payload("JSONDecodeError", "invalid task: %s" % exc, retry_possible=False), code=EXIT_NOT_RETRIABLE)
    try:
        handler = load_handler(spec)
    except Exception as exc:
        return _finish(out, logs, error=describe_exception(exc), code=EXIT_NOT_RETRIABLE)
    if timeout:
        def _alarm(signum: int, frame: Any) -> None:
            raise _Timeout()

        signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        task.setdefault("params", {})
        task.setdefault("metadata", {})
        if _accepts_context(handler):
            ctx = Context(
                task_id=str(task.get("id")), task_type=str(task.get("type")),
                attempt=int(task.get("attempt") or 1), deadline=task.get("deadline"),
                metadata=task["metadata"], send=lambda frame: None,
                logger=logging.getLogger("prismq.task"),
            )
            result = handler(task, ctx)
        else:
            result = handler(task)
        if timeout:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except _Timeout:
        return _finish(out, logs, error=error_payload("TimeoutError", "task exceeded %ss" % timeout), code=EXIT_TIMEOUT)
    except KeyboardInterrupt:
        return _finish(out, logs, error=error_payload("KeyboardInterrupt", "interrupted"), code=EXIT_INTERRUPTED)
    except (Exception, SystemExit, TaskCancelled) as exc:
        err = describe_exception(exc)
        return _finish(out, logs, error=err, code=EXIT_RETRIABLE if err["retry_possible"] else EXIT_NOT_RETRIABLE)
    try:
        return _finish(out, logs, result=result, code=EXIT_SUCCESS)
    except (TypeError, ValueError) as exc:
        return _finish(out, logs, error=error_payload("ResultNotSerializable", str(exc), retry_possible=False), code=EXIT_NOT_RETRIABLE)


def _finish(out: Any, logs: _Collect, *, code: int, result: Any = None, error: Optional[Dict[str, Any]] = None) -> int:
    if error is None:
        doc = {"success": True, "result": result, "logs": logs.records}
    else:
        doc = {"success": False, "error": error, "logs": logs.records}
    text = json.dumps(doc, allow_nan=False)
    out.write(text + "\n")
    out.flush()
    return code
