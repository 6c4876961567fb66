"""Handlers for the task-source tests (start / submit / dead-letter)."""

import os
import time

from prismq_worker_sdk import RetriableError


def fail_unless_file(task):
    """Fails (retriably) until the file named in params exists: lets a test fix a dead task, then requeue it."""
    if not os.path.exists(task["params"]["marker"]):
        raise RetriableError("marker file missing")
    return {"ok": True, "attempt": task["attempt"]}


def nap(task):
    time.sleep(float(task["params"].get("seconds", 0.01)))
    return {"n": task["params"].get("n"), "attempt": task["attempt"], "pid": os.getpid()}
