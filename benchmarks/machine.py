"""What the figures were measured on, and how busy the machine was meanwhile."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
    except ImportError:
        return None
    return getattr(mod, "__version__", None) or getattr(mod, "version", None) and str(mod.version)


def describe() -> dict[str, Any]:
    commit = _git("rev-parse", "--short", "HEAD")
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "executable": sys.executable,
        "git_commit": commit,
        "git_dirty": bool(dirty) if dirty is not None else None,
        "versions": {"workerhost": _version("workerhost"), "prismq_worker_sdk": _version("prismq_worker_sdk"),
                     "msgpack": _version("msgpack"), "psutil": psutil.__version__},
    }


class LoadMeter:
    """How much of the machine other work used while the suite ran (noise, for the record)."""

    def __init__(self) -> None:
        self._t0 = time.monotonic()
        self._cpu0 = psutil.cpu_times()
        self._load0 = os.getloadavg()

    def finish(self) -> dict[str, Any]:
        cpu1 = psutil.cpu_times()
        busy = sum(getattr(cpu1, f) - getattr(self._cpu0, f) for f in ("user", "system", "nice", "irq", "softirq"))
        total = busy + (cpu1.idle - self._cpu0.idle) + (getattr(cpu1, "iowait", 0) - getattr(self._cpu0, "iowait", 0))
        return {
            "duration_s": round(time.monotonic() - self._t0, 1),
            "machine_busy_pct": round(100.0 * busy / total, 1) if total > 0 else None,
            "loadavg_start": [round(x, 2) for x in self._load0],
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        }


class BusyLoops:
    """``n`` processes spinning on a core each for the whole run (``--contend N``).

    A shared machine's load comes and goes; this makes it a setting, so
    the "with a busy neighbour" figures can be reproduced. A busy neighbour
    changes the picture in a way a quiet machine hides: the bare pipe gets
    *faster* (parent and child hand the core to each other instead of waking
    an idle one), so every contender's own CPU per task weighs more.
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self._procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> BusyLoops:
        self._procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(self.n)]
        return self

    def __exit__(self, *exc_info: object) -> None:
        for proc in self._procs:
            proc.kill()
        for proc in self._procs:
            proc.wait()
        self._procs = []
