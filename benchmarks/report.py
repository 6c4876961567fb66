"""The results as markdown tables (printed, written next to the JSON, pasted into docs/benchmarks.md)."""

from __future__ import annotations

from typing import Any

from .stats import ratio

PAYLOADS = ("noop", "100B", "64KiB", "1MiB")
PAYLOAD_LABEL = {"noop": "no-op", "100B": "100 B", "64KiB": "64 KiB", "1MiB": "1 MiB"}
ORDER = ("bare pipe", "supervisor", "ProcessPoolExecutor", "multiprocessing.Pool",
         "spawn per task (subprocess.run)", "spawn per task (mode: oneshot)")


def _key(row: dict[str, Any]) -> tuple[int, str]:
    name = row.get("contender", "")
    return (ORDER.index(name) if name in ORDER else len(ORDER), row.get("codec", ""))


def _us(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 10_000:
        return f"{value / 1000:,.1f} ms"
    return f"{value:,.0f}"


def _num(value: float | None, fmt: str = "{:,.0f}") -> str:
    return "-" if value is None else fmt.format(value)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def _verdict(met: bool | None) -> str:
    return {True: "met", False: "**missed**", None: "not measured"}[met]


def render(results: dict[str, Any]) -> str:
    meta = results["meta"]
    m = meta["machine"]
    cond = meta["conditions"]
    lines = [
        f"Profile `{meta['profile']}`, {meta['started']}, commit `{m.get('git_commit')}`"
        f"{' (with uncommitted changes)' if m.get('git_dirty') else ''}.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores ({m['cores_usable']} usable), {m['memory_gb']} GB, {m['os']}, "
        f"{m['python']}.",
        f"Conditions: the whole machine was {cond.get('machine_busy_pct')}% busy during the run (this suite "
        f"included); load average {cond['loadavg_start'][0]} at the start, {cond['loadavg_end'][0]} at the end; "
        f"the run took {cond['duration_s']:.0f} s.",
        "",
    ]
    if cond.get("contend"):
        lines[-1:-1] = [f"Contention: {cond['contend']} busy-loop process(es) spun beside the suite for the "
                        f"whole run (`--contend {cond['contend']}`): a busy neighbour on purpose."]
    lines += _targets(results)
    lines += _latency(results.get("latency") or [])
    lines += _throughput(results.get("throughput") or [])
    lines += _scale(results.get("scale") or [], results.get("limits") or [])
    lines += _cold(results.get("cold_start") or [])
    lines += _sources(results.get("sources") or [])
    if results.get("errors"):
        lines += ["### Measurements that failed", ""]
        lines += [f"- {e['measurement']}: {e['error']}" for e in results["errors"]] + [""]
    return "\n".join(lines).rstrip() + "\n"


def _targets(results: dict[str, Any]) -> list[str]:
    rows = [[t["target"], t["threshold"], t["measured"], _verdict(t["met"])] for t in results.get("targets") or []]
    if not rows:
        return []
    return ["### Targets", ""] + _table(["Target", "Threshold", "Measured (same run)", "Verdict"], rows) + [""]


def _latency(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    by: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for r in sorted(rows, key=_key):
        by.setdefault((r["contender"], r["codec"]), {})[r["payload"]] = r
    pipe = {codec: by.get(("bare pipe", codec), {}).get("noop") for codec in ("json", "msgpack")}
    table = []
    for (name, codec), payloads in by.items():
        noop = payloads.get("noop")
        base = pipe.get(codec) or pipe["json"]
        rel = ratio(noop["p50_us"], base["p50_us"]) if noop and base else None
        cells = [name, codec, _us(noop["p50_us"]) if noop else "-", _us(noop["p99_us"]) if noop else "-"]
        cells += [_us(payloads[p]["p50_us"]) if p in payloads else "-" for p in PAYLOADS[1:]]
        cells += [f"{rel:.2f}x" if rel is not None else "-"]
        table.append(cells)
    header = ["Contender", "Codec", "no-op p50", "no-op p99"] + [f"{PAYLOAD_LABEL[p]} p50" for p in PAYLOADS[1:]]
    header += ["no-op p50 / bare pipe"]
    return (["### Round trip, one task at a time (µs unless marked)", "",
             "The payload goes to the worker in the task's params and comes back as its result. Ratios are "
             "against the bare pipe with the same codec (json for pickle and spawn rows)."
             " Samples of all rounds pooled.", ""]
            + _table(header, table) + [""])


def _throughput(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    sizes = sorted({r["workers"] for r in rows})
    by: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    for r in sorted(rows, key=_key):
        by.setdefault((r["contender"], r["codec"]), {})[r["workers"]] = r
    pipe2 = by.get(("bare pipe", "json"), {}).get(2)
    table = []
    for (name, codec), per in by.items():
        cells = [name, codec] + [_num(per[k]["tasks_per_s"]) if k in per else "-" for k in sizes]
        two = per.get(2)
        rel = ratio(two["tasks_per_s"], pipe2["tasks_per_s"]) if two and pipe2 else None
        cells += [f"{rel:.2f}x" if rel is not None else "-",
                  _num(two["parent_cpu_us_per_task"]) if two else "-",
                  _num(two["parent_rss_mb"], "{:.1f}") if two else "-"]
        table.append(cells)
    header = ["Contender", "Codec"] + [f"{k} worker{'s' if k > 1 else ''}" for k in sizes]
    header += ["2 workers / bare pipe", "dispatcher CPU µs/task (2 workers)", "dispatcher RSS MB (2 workers)"]
    return (["### Throughput, no-op tasks/s by pool size", "",
             "Dispatcher = the parent process: our supervisor, the pipe parent, or the pool's parent (its "
             "management threads included). Median of rounds.", ""]
            + _table(header, table) + [""])


def _scale(rows: list[dict[str, Any]], limits: list[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    if rows:
        table = []
        for r in rows:
            rel = ratio(r["p50_us"], r.get("pipe_p50_us"))
            table.append([str(r["namespaces"]), str(r["workers"]), _num(r["start_s"], "{:.2f}"),
                          _num(r["idle_cpu_pct"], "{:.2f}"), _num(r["rss_mb"], "{:.1f}"), _num(r["uss_mb"], "{:.1f}"),
                          _us(r["p50_us"]), _us(r["p99_us"]), _us(r.get("pipe_p50_us")),
                          f"{rel:.2f}x" if rel is not None else "-", _num(r["cpu_us_per_task"]),
                          _num(r.get("pipe_cpu_us_per_task"))])
        out += ["### Scale: namespaces of 1 worker each", "",
                "Idle CPU: the supervisor's own CPU time over a window with every worker warm and no task. "
                "Round trips: one no-op task at a time, each to the next namespace; the bare pipe does the same "
                "over as many children, so the growth both share (each task wakes a process that slept longer) "
                "is told apart from the supervisor's own.", ""]
        out += _table(["Namespaces", "Workers", "start() to warm (s)", "Idle CPU (% of a core)", "RSS (MB)",
                       "USS (MB)", "no-op p50 (µs)", "p99 (µs)", "bare pipe p50, same fan-out (µs)",
                       "vs bare pipe", "Supervisor CPU µs/task", "pipe parent CPU µs/task"], table) + [""]
    if limits:
        table = [[r["setting"], str(r["workers"]), _num(r["idle_cpu_pct"], "{:.2f}"), _num(r["busy_cpu_pct"], "{:.2f}"),
                  _num(r["cpu_us_per_task"]), _num(r["rss_mb"], "{:.1f}")] for r in limits]
        out += ["### Scale: the cost of psutil limit sampling (1 namespace)", "",
                "Busy: every worker sleeping in a task, so the supervisor's CPU is its own (heartbeats, "
                "maintenance, and with a hard limit a psutil sample of each busy worker per sample_interval). "
                "The soft limit adds a sample after every task (CPU µs/task, one task at a time).", ""]
        out += _table(["Setting", "Workers", "Idle CPU %", "CPU % with all busy", "Supervisor CPU µs/task",
                       "RSS (MB)"], table) + [""]
    return out


def _cold(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    table = [[f"{r['namespaces']} x {r['workers_per_ns']}", str(r["runs"]), _num(r["start_s"], "{:.2f}"),
              _num(r["ready_p50_s"], "{:.2f}"), _num(r["ready_max_s"], "{:.2f}")] for r in rows]
    return (["### Cold start", "",
             "`start()` returns once every pool's minimum is warm (handshake done). Spawn-to-ready: one "
             "worker from fork to its hello frame.", ""]
            + _table(["Namespaces x workers", "Runs", "start() to all warm (s, median)",
                      "Worker spawn-to-ready p50 (s)", "max (s)"], table) + [""])


def _sources(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    table = []
    for r in rows:
        if "skipped" in r:
            table.append([r["source"], "skipped: " + r["skipped"], "-", "-", "-"])
        else:
            table.append([r["source"], _num(r["tasks_per_s"]), _num(r["submit_per_s"]),
                          _num(r["p50_us"] / 1000, "{:.1f}"), _num(r["p99_us"] / 1000, "{:.1f}")])
    return (["### End to end through the task sources (pool of 2, no-op)", "",
             "Producer, dispatcher and supervisor in one process, default settings: an idle dispatcher waits for "
             "the source's word that a task arrived (the embedded queue's and RabbitMQ's doorbell, Redis's "
             "blocking XREAD), so one task at a time costs the source's round trips, not a poll interval.", ""]
            + _table(["Source", "Tasks/s (submit to all done)", "Submits/s", "submit to result p50 (ms)",
                      "p99 (ms)"], table) + [""])
