"""Handlers every benchmark runs, in every contender, so the work is the same.

Kept free of imports beyond the standard library: a spawn-per-task baseline
pays for each import on every task, and the comparison should charge it
for the process start, not for this module.
"""

import time


def echo(task):
    # The payload travels both ways, as a real task's input and result would.
    # With empty params this is the no-op task.
    return task["params"]


def work(task):
    """echo, after sleeping ``params["sleep"]`` seconds if given (a busy worker that uses no CPU)."""
    seconds = task["params"].get("sleep")
    if seconds:
        time.sleep(float(seconds))
    return task["params"]
