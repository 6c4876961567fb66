"""Progress reporting: a task that tells the supervisor how far it got.

``ctx.progress(percent, message)`` sends a progress frame at once; the
supervisor forwards it to the task source (the embedded queue stores it,
so ``workerhost-supervisor tasks`` shows it; the PrismQ TaskManager gets
``POST /tasks/{id}/progress``).
"""

import time

from prismq_worker_sdk import ValidationError


def count(task, ctx):
    params = task["params"]
    steps = params.get("steps", 5)
    if not isinstance(steps, int) or not 1 <= steps <= 1000:
        raise ValidationError("params.steps must be an integer in 1..1000")  # not retried
    delay = float(params.get("delay", 0.1))
    total = 0
    for step in range(1, steps + 1):
        ctx.check_cancelled()  # stop between steps when the supervisor cancels
        time.sleep(delay)
        total += step
        ctx.progress(step * 100 // steps, f"step {step} of {steps}")
    return {"steps": steps, "sum": total}
