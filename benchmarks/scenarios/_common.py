"""What every measurement shares: payloads, CPU and memory readings, quiet logs."""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path
from typing import Any

import psutil

WORKERS = Path(__file__).resolve().parent.parent / "workers"

#: Task params by payload name. The no-op task carries nothing; the others
#: one string whose JSON-encoded params are about the named size.
PAYLOAD_BYTES = {"noop": 0, "100B": 100, "64KiB": 64 * 1024, "1MiB": 1024 * 1024}


def payload(name: str) -> dict[str, Any]:
    size = PAYLOAD_BYTES[name]
    if size == 0:
        return {}
    # {"data":"..."} adds 11 bytes of JSON around the string.
    return {"data": "x" * max(1, size - 11)}


def cpu_seconds() -> float:
    """User + system CPU time of this process (all its threads, not its children)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def rss_bytes() -> int:
    return int(psutil.Process().memory_info().rss)


def uss_bytes() -> int | None:
    try:
        return int(psutil.Process().memory_full_info().uss)
    except (psutil.Error, AttributeError):
        return None


def quiet_logging(level: str = "WARNING") -> None:
    """Log as a deployment would, at ``level``: per-task INFO lines are filtered out."""
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level=level)


def now() -> float:
    return time.perf_counter()


def us(seconds: float) -> float:
    return seconds * 1e6
