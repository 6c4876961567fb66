"""Runs every measurement in a child process of its own, side by side, and gathers the figures.

Warm contenders are run in interleaved rounds (every contender once per
round, the order rotated each round), so load from elsewhere on a shared
machine falls on all of them alike; ratios are taken between figures of
the same run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import attrs

from .machine import ROOT
from .profiles import Profile
from .stats import median, summarize

GROUPS = ("latency", "throughput", "scale", "limits", "cold_start", "sources")
MB = 1024 * 1024

#: The limits a namespace gets in the "with limits" sampling run: a hard
#: limit makes busy workers sampled every sample_interval, the soft one a
#: sample after every task. Set high so that nothing is ever killed.
LIMITS = {"memory_hard_mb": 4096, "memory_soft_mb": 2048, "sample_interval": 0.5}


@attrs.frozen
class Contender:
    name: str
    codec: str
    target: str
    kwargs: dict[str, Any] = attrs.field(factory=dict)
    spawn: bool = False


LATENCY = (
    Contender("bare pipe", "json", "scenarios.pipe:latency", {"codec": "json"}),
    Contender("bare pipe", "msgpack", "scenarios.pipe:latency", {"codec": "msgpack"}),
    Contender("supervisor", "json", "scenarios.supervisor:latency", {"codec": "json"}),
    Contender("supervisor", "msgpack", "scenarios.supervisor:latency", {"codec": "msgpack"}),
    Contender("ProcessPoolExecutor", "pickle", "scenarios.pools:latency", {"kind": "ppe"}),
    Contender("multiprocessing.Pool", "pickle", "scenarios.pools:latency", {"kind": "mp"}),
    Contender("spawn per task (subprocess.run)", "json", "scenarios.spawn:raw", spawn=True),
    Contender("spawn per task (mode: oneshot)", "json", "scenarios.spawn:oneshot", spawn=True),
)

THROUGHPUT = (
    Contender("bare pipe", "json", "scenarios.pipe:throughput", {"codec": "json"}),
    Contender("bare pipe", "msgpack", "scenarios.pipe:throughput", {"codec": "msgpack"}),
    Contender("supervisor", "json", "scenarios.supervisor:throughput", {"codec": "json"}),
    Contender("supervisor", "msgpack", "scenarios.supervisor:throughput", {"codec": "msgpack"}),
    Contender("ProcessPoolExecutor", "pickle", "scenarios.pools:throughput", {"kind": "ppe"}),
    Contender("multiprocessing.Pool", "pickle", "scenarios.pools:throughput", {"kind": "mp"}),
    Contender("spawn per task (mode: oneshot)", "json", "scenarios.spawn:oneshot_throughput", spawn=True),
)


def _log_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _rotated(items: tuple[Any, ...] | list[Any], r: int) -> list[Any]:
    k = r % len(items) if items else 0
    return list(items[k:]) + list(items[:k])


class Suite:
    def __init__(self, profile: Profile, *, log: Callable[[str], None] = _log_stderr) -> None:
        self.profile = profile
        self.log = log
        self.errors: list[dict[str, str]] = []

    # -- child processes -----------------------------------------------
    def child(self, target: str, kwargs: dict[str, Any], *, label: str, timeout: float = 900) -> dict[str, Any] | None:
        """Run ``benchmarks.<target>(**kwargs)`` in a fresh Python; None (and an error noted) if it failed."""
        fd, out_path = tempfile.mkstemp(prefix="wh-bench-", suffix=".json")
        os.close(fd)
        t0 = time.monotonic()
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "benchmarks.child", target, json.dumps(kwargs), out_path],
                cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False,
            )
            if proc.returncode != 0:
                tail = proc.stderr.strip().splitlines()[-3:]
                raise RuntimeError(f"exit code {proc.returncode}: {' | '.join(tail)}")
            with open(out_path, encoding="utf-8") as f:
                result: dict[str, Any] = json.load(f)
        except (RuntimeError, OSError, ValueError, subprocess.TimeoutExpired) as exc:
            self.errors.append({"measurement": label, "error": str(exc)[:500]})
            self.log(f"  {label}: FAILED ({str(exc)[:200]})")
            return None
        finally:
            os.unlink(out_path)
        self.log(f"  {label}: {time.monotonic() - t0:.1f}s")
        return result

    # -- groups ----------------------------------------------------------
    def latency(self) -> list[dict[str, Any]]:
        p = self.profile
        samples: dict[tuple[str, str], dict[str, list[float]]] = {}
        round_p50: dict[tuple[str, str, str], list[float]] = {}
        rss: dict[tuple[str, str], list[int]] = {}
        for r in range(p.rounds):
            self.log(f"latency, round {r + 1}/{p.rounds}")
            for c in _rotated(LATENCY, r):
                counts = p.spawn_samples if c.spawn else p.latency_samples
                kwargs = {**c.kwargs, "samples": counts, "warmup": 1 if c.spawn else p.warmup}
                res = self.child(c.target, kwargs, label=f"{c.name} [{c.codec}]")
                if res is None:
                    continue
                for payload, values in res["samples_us"].items():
                    samples.setdefault((c.name, c.codec), {}).setdefault(payload, []).extend(values)
                    round_p50.setdefault((c.name, c.codec, payload), []).append(summarize(values)["p50"])
                if "supervisor_rss_bytes" in res:
                    rss.setdefault((c.name, c.codec), []).append(res["supervisor_rss_bytes"])
        rows = []
        for (name, codec), by_payload in samples.items():
            for payload, values in by_payload.items():
                s = summarize(values)
                rows.append({
                    "contender": name, "codec": codec, "payload": payload, "n": s["n"],
                    "p50_us": s["p50"], "p90_us": s["p90"], "p99_us": s["p99"], "mean_us": s["mean"],
                    "round_p50_us": round_p50[(name, codec, payload)],
                    "rss_mb": median(rss[(name, codec)]) / MB if (name, codec) in rss else None,
                })
        return rows

    def throughput(self) -> list[dict[str, Any]]:
        p = self.profile
        runs: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
        jobs = [(c, k) for k in p.pool_sizes for c in THROUGHPUT
                if c.codec != "msgpack" or k in p.msgpack_pool_sizes]
        for r in range(p.throughput_rounds):
            self.log(f"throughput, round {r + 1}/{p.throughput_rounds}")
            for c, k in _rotated(jobs, r):
                tasks = p.oneshot_tasks if c.spawn else p.throughput_tasks
                res = self.child(c.target, {**c.kwargs, "workers": k, "tasks": tasks},
                                 label=f"{c.name} [{c.codec}] x{k}")
                if res is not None:
                    runs.setdefault((c.name, c.codec, k), []).append(res)
        rows = []
        for (name, codec, k), results in runs.items():
            rows.append({
                "contender": name, "codec": codec, "workers": k,
                "tasks_per_s": median([x["tasks_per_s"] for x in results]),
                "round_tasks_per_s": [x["tasks_per_s"] for x in results],
                "parent_cpu_us_per_task": median([x["parent_cpu_us_per_task"] for x in results]),
                "parent_rss_mb": median([x["parent_rss_bytes"] for x in results]) / MB,
            })
        return rows

    def scale(self) -> list[dict[str, Any]]:
        p = self.profile
        self.log("scale: namespaces")
        rows = []
        for n in p.scale_namespaces:
            res = self.child("scenarios.scale:namespaces",
                             {"count": n, "idle_window": p.scale_window, "latency_samples": p.scale_samples},
                             label=f"{n} namespaces x 1 worker")
            pipe = self.child("scenarios.pipe:fanout", {"children": n, "samples": p.scale_samples},
                              label=f"bare pipe, {n} children")
            if res is None:
                continue
            s = summarize(res["samples_us"]["noop"])
            pipe_p50 = summarize(pipe["samples_us"]["noop"])["p50"] if pipe else None
            rows.append({
                "namespaces": n, "workers": res["workers"], "start_s": res["start_s"],
                "ready_p50_s": median(res["ready_s"]), "idle_cpu_pct": res["idle_cpu_pct"],
                "rss_mb": res["rss_bytes"] / MB, "uss_mb": (res["uss_bytes"] or 0) / MB or None,
                "p50_us": s["p50"], "p99_us": s["p99"], "cpu_us_per_task": res["cpu_us_per_task"],
                "pipe_p50_us": pipe_p50, "pipe_cpu_us_per_task": pipe["parent_cpu_us_per_task"] if pipe else None,
            })
        return rows

    def limits(self) -> list[dict[str, Any]]:
        p = self.profile
        self.log(f"scale: psutil limit sampling, {p.limits_workers} workers")
        rows = []
        for label, limits in (("no limits", None), ("memory limits, sample_interval 0.5 s", LIMITS)):
            res = self.child("scenarios.scale:limits_cost",
                             {"workers": p.limits_workers, "window": p.limits_window, "tasks": p.limits_tasks,
                              "limits": limits},
                             label=f"1 namespace x {p.limits_workers} workers, {label}")
            if res is None:
                continue
            rows.append({
                "setting": label, "limits": limits, "workers": res["workers"], "start_s": res["start_s"],
                "idle_cpu_pct": res["idle_cpu_pct"], "busy_cpu_pct": res["busy_cpu_pct"],
                "cpu_us_per_task": res["cpu_us_per_task"], "rss_mb": res["rss_bytes"] / MB,
            })
        return rows

    def cold_start(self) -> list[dict[str, Any]]:
        p = self.profile
        self.log("cold start")
        res = self.child("scenarios.scale:cold_start", {"layouts": [list(x) for x in p.cold_layouts]},
                         label="cold starts")
        if res is None:
            return []
        by_layout: dict[tuple[int, int], list[dict[str, Any]]] = {}
        for run in res["runs"]:
            by_layout.setdefault((run["namespaces"], run["workers_per_ns"]), []).append(run)
        rows = []
        for (n, k), runs in by_layout.items():
            ready = [x for run in runs for x in run["ready_s"]]
            rows.append({
                "namespaces": n, "workers_per_ns": k, "runs": len(runs),
                "start_s": median([run["start_s"] for run in runs]),
                "ready_p50_s": median(ready), "ready_max_s": max(ready) if ready else None,
            })
        return rows

    def sources(self) -> list[dict[str, Any]]:
        p = self.profile
        self.log("end to end through the task sources")
        rows: list[dict[str, Any]] = []
        for kind in p.sources:
            res = self.child("scenarios.sources:e2e",
                             {"kind": kind, "tasks": p.source_tasks, "latency_samples": p.source_samples},
                             label=f"source {kind}")
            if res is None:
                rows.append({"source": kind, "skipped": "the measurement failed (see errors)"})
            elif "skipped" in res:
                self.log(f"  source {kind}: skipped ({res['skipped']})")
                rows.append({"source": kind, "skipped": res["skipped"]})
            else:
                s = summarize(res["samples_us"]["noop"])
                rows.append({"source": kind, "tasks": res["tasks"], "tasks_per_s": res["tasks_per_s"],
                             "submit_per_s": res["submit_per_s"], "p50_us": s["p50"], "p99_us": s["p99"],
                             "n": s["n"]})
        return rows

    def run(self, groups: tuple[str, ...] = GROUPS) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for group in GROUPS:
            if group in groups:
                out[group] = getattr(self, group)()
        out["errors"] = self.errors
        return out
