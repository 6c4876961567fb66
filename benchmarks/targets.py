"""The issue's targets, checked against figures of the same run (met, missed, or not measured)."""

from __future__ import annotations

from typing import Any

from .stats import ratio

SPAWN = ("spawn per task (subprocess.run)", "spawn per task (mode: oneshot)")


def _find(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    for row in rows:
        if all(row.get(k) == v for k, v in match.items()):
            return row
    return None


def _round_ratios(a: dict[str, Any], b: dict[str, Any], key: str) -> list[float]:
    """Ratio of a to b within each round (same index = same round)."""
    out = []
    for x, y in zip(a.get(key) or [], b.get(key) or [], strict=False):
        r = ratio(x, y)
        if r is not None:
            out.append(r)
    return out


def _spread(values: list[float]) -> str:
    if len(values) < 2:
        return ""
    return f" (per round {min(values):.2f}-{max(values):.2f}x)"


def _row(target: str, threshold: str, measured: str | None, met: bool | None, note: str = "") -> dict[str, Any]:
    return {"target": target, "threshold": threshold, "measured": measured or "not measured", "met": met,
            "note": note}


def evaluate(results: dict[str, Any]) -> list[dict[str, Any]]:
    lat = results.get("latency") or []
    tp = results.get("throughput") or []
    rows = []
    for codec in ("json", "msgpack"):
        sup = _find(lat, contender="supervisor", codec=codec, payload="noop")
        pipe = _find(lat, contender="bare pipe", codec=codec, payload="noop")
        r = ratio(sup["p50_us"], pipe["p50_us"]) if sup and pipe else None
        measured = None
        if r is not None and sup and pipe:
            measured = (f"{r:.2f}x ({sup['p50_us']:.0f} vs {pipe['p50_us']:.0f} µs)"
                        + _spread(_round_ratios(sup, pipe, "round_p50_us")))
        rows.append(_row(f"warm no-op round trip p50 vs bare pipe [{codec}]", "<= 2x", measured,
                         None if r is None else r <= 2.0))
    sup = _find(lat, contender="supervisor", codec="json", payload="noop")
    for name in SPAWN:
        spawn = _find(lat, contender=name, codec="json", payload="noop")
        r = ratio(spawn["p50_us"], sup["p50_us"]) if spawn and sup else None
        measured = f"{r:.0f}x faster ({spawn['p50_us'] / 1000:.1f} ms vs {sup['p50_us']:.0f} µs)" if r and spawn \
            and sup else None
        rows.append(_row(f"warm no-op round trip p50 vs {name}", ">= 100x faster", measured,
                         None if r is None else r >= 100.0))
    sup2 = _find(tp, contender="supervisor", codec="json", workers=2)
    pipe2 = _find(tp, contender="bare pipe", codec="json", workers=2)
    ppe2 = _find(tp, contender="ProcessPoolExecutor", codec="pickle", workers=2)
    r = ratio(sup2["tasks_per_s"], pipe2["tasks_per_s"]) if sup2 and pipe2 else None
    measured = None
    if r is not None and sup2 and pipe2:
        measured = (f"{r:.2f}x ({sup2['tasks_per_s']:.0f} vs {pipe2['tasks_per_s']:.0f} tasks/s)"
                    + _spread(_round_ratios(sup2, pipe2, "round_tasks_per_s")))
    rows.append(_row("throughput, 2 workers, vs bare pipe with 2 children [json]", ">= 0.5x", measured,
                     None if r is None else r >= 0.5))
    r = ratio(sup2["tasks_per_s"], ppe2["tasks_per_s"]) if sup2 and ppe2 else None
    measured = f"{r:.2f}x ({sup2['tasks_per_s']:.0f} vs {ppe2['tasks_per_s']:.0f} tasks/s)" if r and sup2 and ppe2 \
        else None
    rows.append(_row("throughput, 2 workers, vs ProcessPoolExecutor(2) [json]", "> 1x", measured,
                     None if r is None else r > 1.0))
    rows += _fifty_workers(results)
    return rows


def _fifty_workers(results: dict[str, Any]) -> list[dict[str, Any]]:
    layouts: list[tuple[str, dict[str, Any] | None]] = [
        ("50 namespaces x 1 worker", _find(results.get("scale") or [], namespaces=50)),
        ("1 namespace x 50 workers", _find(results.get("limits") or [], setting="no limits", workers=50)),
    ]
    rows = []
    for layout, row in layouts:
        cpu = row["idle_cpu_pct"] if row else None
        rows.append(_row(f"idle supervisor CPU, {layout} warm", "< 1% of one core",
                         f"{cpu:.2f}%" if cpu is not None else None, None if cpu is None else cpu < 1.0))
    for layout, row in layouts:
        rss = row["rss_mb"] if row else None
        rows.append(_row(f"supervisor RSS, {layout}", "< 60 MB", f"{rss:.1f} MB" if rss is not None else None,
                         None if rss is None else rss < 60.0))
    return rows
