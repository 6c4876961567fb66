"""Handlers for the limits and observability tests: they leak, balloon and spin on purpose.

Memory is always *touched* (``b"x" * n`` fills it), because an untouched
allocation is not resident and would not show in RSS.
"""

import os
import subprocess
import sys
import time

MIB = 1024 * 1024

# A namespace can be made to fail its (re)starts: while the file named by
# LIMITS_BROKEN_MARKER exists, importing this module fails.
_MARKER = os.environ.get("LIMITS_BROKEN_MARKER")
if _MARKER and os.path.exists(_MARKER):
    raise ImportError(f"broken on purpose while {_MARKER} exists")

#: What ``leak`` keeps between tasks: the worker grows with every task.
_LEAKED: list = []


def _rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def leak(task):
    _LEAKED.append(b"x" * (int(task["params"].get("mb", 20)) * MIB))
    return {"pid": os.getpid(), "rss": _rss(), "held_mb": len(_LEAKED) * int(task["params"].get("mb", 20))}


def balloon(task):
    """Allocate ``mb`` at once, then hold it for ``hold`` seconds."""
    block = b"x" * (int(task["params"]["mb"]) * MIB)
    time.sleep(float(task["params"].get("hold", 10)))
    return {"pid": os.getpid(), "size": len(block)}


_CHILD_BALLOON = "import sys, time; b = b'x' * (int(sys.argv[1]) * 1048576); print('ready', flush=True); time.sleep(60)"


def balloon_child(task):
    """The memory is held by a child process: only a whole-tree measure sees it."""
    child = subprocess.Popen([sys.executable, "-c", _CHILD_BALLOON, str(task["params"]["mb"])],
                             stdout=subprocess.PIPE)
    with open(task["params"]["pidfile"], "w") as f:
        f.write(str(child.pid))
    child.wait()
    return {"pid": os.getpid()}


def spin(task):
    """Burn CPU for ``seconds`` (wall clock)."""
    end = time.monotonic() + float(task["params"].get("seconds", 30))
    n = 0
    while time.monotonic() < end:
        n += 1
    return {"pid": os.getpid(), "loops": n}


def spin_child(task):
    """The CPU is burnt by a child process."""
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    with open(task["params"]["pidfile"], "w") as f:
        f.write(str(child.pid))
    child.wait()
    return {"pid": os.getpid()}


def rest(task):
    """Sleep without using CPU; report the pid."""
    time.sleep(float(task["params"].get("seconds", 0)))
    return {"pid": os.getpid()}


def chatty(task, ctx):
    """Logs through every path a worker has: SDK logger, print(), stderr."""
    ctx.log.info("sdk log line %s", task["params"].get("say", ""))
    print("stdout line", task["params"].get("say", ""))
    sys.stdout.flush()
    sys.stderr.write(f"stderr line {task['params'].get('say', '')}\n")
    sys.stderr.flush()
    time.sleep(0.2)  # let the stdout/stderr readers deliver before the result
    return {"pid": os.getpid()}


def crash(task):
    os._exit(3)


def say(task, ctx):
    """Logs whatever it is given (the secrets test makes it log a secret)."""
    ctx.log.warning("the handler says %s", task["params"]["text"])
    sys.stderr.write(f"stderr says {task['params']['text']}\n")
    sys.stderr.flush()
    time.sleep(0.2)
    return {"echo": task["params"]["text"]}


#: Events seen by observers made by ``recorder`` (the config-observer test reads them).
RECORDED: list = []


def recorder():
    """An observer factory named in a config's ``observers:`` list."""
    return RECORDED.append
