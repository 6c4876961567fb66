"""A retriable failure: the task fails on its first tries and then succeeds.

``RetriableError`` (or any exception that is not a ``NonRetriableError``)
asks the supervisor to try again, with exponential backoff and jitter, up
to the namespace's ``max_retries``. ``task["attempt"]`` (also
``ctx.attempt``) says which try this is: 1 on the first. Delivery is
at-least-once, so a real handler must be idempotent.
"""

from prismq_worker_sdk import RetriableError


def handle(task, ctx):
    succeed_on = int(task["params"].get("succeed_on", 2))
    if ctx.attempt < succeed_on:
        raise RetriableError(f"upstream busy on attempt {ctx.attempt} (will succeed on attempt {succeed_on})")
    return {"succeeded_on_attempt": ctx.attempt}
