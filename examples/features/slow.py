"""A slow task: long enough to watch it in ``workerhost-supervisor status``.

It sleeps in short steps and checks for cancellation between them, as a
long handler should: at its deadline (``timeout`` in the config) or at
shutdown the supervisor sends ``cancel``, and ``check_cancelled()`` raises
``TaskCancelled``. A handler that ignores it is stopped anyway (SIGTERM,
then SIGKILL of its process group) ``cancel_grace`` seconds later.
"""

import os
import time


def handle(task, ctx):
    seconds = float(task["params"].get("seconds", 3))
    ends = time.monotonic() + seconds
    while time.monotonic() < ends:
        ctx.check_cancelled()
        time.sleep(min(0.1, max(0.0, ends - time.monotonic())))
    return {"slept": seconds, "pid": os.getpid()}
