"""Handlers the test suite runs inside real worker processes.

Each one misbehaves (or behaves) in one precise way; the tests assert on
what the supervisor makes of it.
"""

import asyncio
import os
import sys
import time

from prismq_worker_sdk import NonRetriableError, RetriableError, ValidationError


def echo(task):
    return {"params": task["params"], "pid": os.getpid(), "attempt": task["attempt"]}


async def async_echo(task, ctx):
    await asyncio.sleep(0)
    return {"params": task["params"], "pid": os.getpid(), "async": True}


def whoami(task):
    import platform

    try:
        import conflictlib

        version = conflictlib.VERSION
    except ImportError:
        version = None
    return {"pid": os.getpid(), "python": platform.python_version(), "conflictlib": version,
            "executable": sys.executable}


def sleep(task, ctx):
    seconds = float(task["params"].get("seconds", 1))
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if task["params"].get("cooperative") and ctx.cancelled:
            ctx.check_cancelled()
        time.sleep(0.01)
    return {"slept": seconds, "pid": os.getpid()}


def hang(task):
    """Ignores SIGTERM and never returns: only SIGKILL stops it."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        time.sleep(0.1)


def crash(task):
    os._exit(int(task["params"].get("code", 13)))


def crash_first(task):
    """SIGKILLs its own worker on the first attempt only (marker file in params)."""
    marker = task["params"]["marker"]
    if not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), 9)
    return {"survived": True, "attempt": task["attempt"], "pid": os.getpid()}


def noisy(task):
    print("print() from the handler")
    os.write(1, b"raw write to fd 1\n")
    os.system("echo from a child process")
    sys.stderr.write("to stderr\n")
    return {"ok": True}




def fail(task):
    kind = task["params"].get("kind", "retriable")
    if kind == "retriable":
        raise RetriableError("try again")
    if kind == "validation":
        raise ValidationError("bad params")
    if kind == "nonretriable":
        raise NonRetriableError("never")
    raise RuntimeError("plain exception")


def fail_until(task):
    """Fails with a retriable error until the given attempt."""
    if task["attempt"] < int(task["params"]["succeed_on"]):
        raise RetriableError(f"attempt {task['attempt']} fails")
    return {"attempt": task["attempt"]}


def progress(task, ctx):
    for pct in (25, 50, 100):
        ctx.progress(pct, f"step {pct}")
    ctx.log.info("logged with the task id")
    return {"done": True}


def not_serialisable(task):
    return {"when": object()}


def env(task):
    return {k: os.environ.get(k) for k in task["params"]["names"]}
