"""Handlers for the fault-injection suite (tests/faults): each one breaks one rule on purpose.

Pids of processes a handler leaves behind are written to the file named in
``params["pidfile"]`` so a test can check they are gone.
"""

import os
import signal
import struct
import subprocess
import sys
import time

#: The SDK's private protocol output (it dup()s fd 1 away first thing: in=3, out=4).
CHANNEL_FD = 4
#: A child that just waits to be killed.
SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


def _note(task, pid):
    path = task["params"].get("pidfile")
    if path:
        with open(path, "a") as f:
            f.write(f"{pid}\n")


def ok(task):
    if task["params"].get("sleep"):
        time.sleep(float(task["params"]["sleep"]))
    return {"pid": os.getpid(), "n": task["params"].get("n"), "attempt": task["attempt"]}


def exit_mid_task(task):
    """Leave mid-task the hard way: ``os._exit(code)`` or a signal to itself."""
    time.sleep(0.05)
    sig = task["params"].get("signal")
    if sig:
        os.kill(os.getpid(), int(sig))
        time.sleep(10)
    os._exit(int(task["params"]["code"]))


def sys_exit(task):
    """``sys.exit(code)`` inside a handler: the SDK turns it into a result (2 = not retriable)."""
    sys.exit(int(task["params"]["code"]))


def half_frame(task):
    """Write the start of a result frame on the protocol channel, then die."""
    os.write(CHANNEL_FD, b'{"op": "result", "id": "%s", "success": tr' % task["id"].encode())
    os._exit(int(task["params"].get("code", 0)))


def oversized_frame(task):
    """One frame far over any sane limit, written past the SDK's own size check."""
    size = int(task["params"]["bytes"])
    if task["params"].get("codec") == "msgpack":
        # A length prefix that announces the whole frame, then the bytes.
        body = struct.pack(">I", size) + b"\x81" + b"x" * (size - 1)
    else:
        body = b'{"op": "log", "level": "INFO", "message": "' + b"x" * size + b'"}\n'
    view = memoryview(body)
    while view:
        view = view[os.write(CHANNEL_FD, view):]
    return {"ok": True}


def close_protocol_input(task):
    """Close the worker's end of its input channel, then answer: the worker cannot get another task."""
    os.close(3)
    return {"pid": os.getpid()}


def spin(task):
    """Burn CPU in a tight loop, deaf to SIGTERM: only SIGKILL stops it."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    n = 0
    while True:
        n += 1


def spawn_children(task):
    """Start children in the worker's process group, then ``then``: crash, hang, or return."""
    for _ in range(int(task["params"].get("children", 2))):
        child = subprocess.Popen(SLEEPER)
        _note(task, child.pid)
    then = task["params"].get("then", "return")
    if then == "crash":
        os._exit(1)
    if then == "hang":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(120)
    return {"pid": os.getpid()}


def spawn_session_child(task):
    """A child in its own session (``start_new_session=True``): outside the worker's process group."""
    child = subprocess.Popen(SLEEPER, start_new_session=True)
    _note(task, child.pid)
    if task["params"].get("then") == "hang":
        time.sleep(120)
    return {"pid": os.getpid()}


def double_fork_daemon(task):
    """The classic daemon: fork, setsid, fork again, parent exits; the grandchild is re-parented away."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        os.setsid()
        grandchild = os.fork()
        if grandchild == 0:
            os.close(w)
            time.sleep(120)
            os._exit(0)
        os.write(w, b"%d" % grandchild)
        os._exit(0)
    os.close(w)
    grandchild = int(os.read(r, 32))
    os.close(r)
    os.waitpid(pid, 0)
    _note(task, grandchild)
    return {"pid": os.getpid(), "daemon": grandchild}


def flood_stderr(task):
    """Write ``mb`` MiB to stderr, in lines or as one unbroken line, then answer."""
    chunk = b"e" * 1023 + b"\n" if task["params"].get("lines", True) else b"e" * 1024
    out = sys.stderr.buffer
    for _ in range(int(task["params"].get("mb", 2)) * 1024):
        out.write(chunk)
    out.flush()
    return {"pid": os.getpid()}


def result_of(task):
    """Return a result chosen by the test: a big string, bytes (msgpack only), NaN, an object."""
    kind = task["params"]["kind"]
    if kind == "big":
        return "x" * int(task["params"]["bytes"])
    if kind == "bytes":
        return {"blob": b"\x00\x01\xff"}
    if kind == "nan":
        return {"value": float("nan")}
    return {"thing": object()}


def env_report(task, ctx):
    """What the worker was given: its environment's names, its cwd and interpreter.

    It also says the secret its namespace was handed, through every channel a
    worker has, so a test can check the supervisor never repeats it.
    """
    secret = os.environ.get("SERVICE_API_KEY", "")
    ctx.log.warning("the key is %s", secret)
    print("stdout says", secret)
    sys.stderr.write(f"stderr says {secret}\n")
    sys.stderr.flush()
    time.sleep(0.2)
    return {"names": sorted(os.environ), "cwd": os.getcwd(), "executable": sys.executable, "pid": os.getpid(),
            "allowed": os.environ.get("FAULTS_ALLOWED")}
