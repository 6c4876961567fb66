"""Handlers for the shutdown and reload tests: tasks that outlast a graceful timeout."""

import os
import signal
import time


def linger(task):
    """Runs until the marker file in params exists (or ``seconds`` pass): a task a test can finish at will."""
    if task["params"].get("stubborn"):
        # Only SIGKILL stops this one: the supervisor must escalate.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    end = time.monotonic() + float(task["params"].get("seconds", 120))
    marker = task["params"].get("marker")
    while time.monotonic() < end and not (marker and os.path.exists(marker)):
        time.sleep(0.05)
    return {"n": task["params"].get("n"), "pid": os.getpid(), "attempt": task["attempt"]}


def env_echo(task):
    """Which settings this worker was started with (a reload that replaces workers changes them)."""
    time.sleep(float(task["params"].get("seconds", 0)))
    return {"n": task["params"].get("n"), "pid": os.getpid(), "flavour": os.environ.get("FLAVOUR")}
