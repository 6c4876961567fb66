"""The results as one PNG (needs matplotlib: ``pip install -e '.[bench]'``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .report import ORDER, PAYLOADS
from .scenarios._common import PAYLOAD_BYTES

COLORS = {"bare pipe": "#4d4d4d", "supervisor": "#1f77b4", "ProcessPoolExecutor": "#ff7f0e",
          "multiprocessing.Pool": "#2ca02c", "spawn per task (subprocess.run)": "#d62728",
          "spawn per task (mode: oneshot)": "#9467bd"}


def _label(name: str, codec: str) -> str:
    return f"{name} [{codec}]"


def draw(results: dict[str, Any], path: Path) -> str | None:
    """Write the chart to ``path``; return why not when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]'); no chart"
    fig, axes = plt.subplots(2, 2, figsize=(14, 10))
    _noop_latency(axes[0][0], results.get("latency") or [])
    _payload_latency(axes[0][1], results.get("latency") or [])
    _throughput(axes[1][0], results.get("throughput") or [])
    _scale(axes[1][1], results.get("scale") or [])
    meta = results["meta"]
    fig.suptitle(f"prismq-workerhost benchmarks ({meta['profile']} profile, {meta['started'][:10]}, "
                 f"{meta['machine']['cores']} cores, {meta['machine']['python']})")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return None


def _sorted(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: (ORDER.index(r["contender"]) if r["contender"] in ORDER else 99, r["codec"]))


def _noop_latency(ax: Any, rows: list[dict[str, Any]]) -> None:
    noop = _sorted([r for r in rows if r["payload"] == "noop"])
    labels = [_label(r["contender"], r["codec"]) for r in noop]
    ax.barh(range(len(noop)), [r["p50_us"] for r in noop], color=[COLORS.get(r["contender"], "grey") for r in noop])
    ax.set_yticks(range(len(noop)), labels)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("µs, log scale")
    ax.set_title("No-op round trip p50, one task at a time")
    for i, r in enumerate(noop):
        ax.text(r["p50_us"], i, f" {r['p50_us']:,.0f}", va="center", fontsize=8)


def _payload_latency(ax: Any, rows: list[dict[str, Any]]) -> None:
    series: dict[tuple[str, str], dict[str, float]] = {}
    for r in _sorted(rows):
        if r["contender"].startswith("spawn"):
            continue
        series.setdefault((r["contender"], r["codec"]), {})[r["payload"]] = r["p50_us"]
    xs = [p for p in PAYLOADS if p != "noop"]
    for (name, codec), by in series.items():
        pts = [(PAYLOAD_BYTES[p], by[p]) for p in xs if p in by]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", color=COLORS.get(name, "grey"),
                    linestyle="--" if codec == "msgpack" else "-", label=_label(name, codec))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks([PAYLOAD_BYTES[p] for p in xs], xs)
    ax.set_xlabel("payload (each way)")
    ax.set_ylabel("p50 µs, log scale")
    ax.set_title("Round trip p50 by payload size")
    ax.legend(fontsize=8)


def _throughput(ax: Any, rows: list[dict[str, Any]]) -> None:
    series: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for r in _sorted(rows):
        series.setdefault((r["contender"], r["codec"]), []).append((r["workers"], r["tasks_per_s"]))
    for (name, codec), pts in series.items():
        pts.sort()
        ax.plot(*zip(*pts, strict=True), marker="o", color=COLORS.get(name, "grey"),
                linestyle="--" if codec == "msgpack" else "-", label=_label(name, codec))
    ax.set_xscale("log", base=2)
    sizes = sorted({r["workers"] for r in rows}) or [1]
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.set_yscale("log")
    ax.set_xlabel("workers (children)")
    ax.set_ylabel("no-op tasks/s, log scale")
    ax.set_title("Throughput by pool size")
    ax.legend(fontsize=8)


def _scale(ax: Any, rows: list[dict[str, Any]]) -> None:
    if not rows:
        ax.set_axis_off()
        return
    ns = [str(r["namespaces"]) for r in rows]
    ax.bar(ns, [r["idle_cpu_pct"] for r in rows], color="#1f77b4", alpha=0.7, label="idle CPU (% of a core)")
    ax.axhline(1.0, color="#1f77b4", linestyle=":", linewidth=1)
    ax.set_xlabel("namespaces (1 worker each)")
    ax.set_ylabel("idle supervisor CPU, % of one core")
    twin = ax.twinx()
    twin.plot(ns, [r["rss_mb"] for r in rows], color="#d62728", marker="o", label="RSS (MB)")
    twin.axhline(60.0, color="#d62728", linestyle=":", linewidth=1)
    twin.set_ylabel("supervisor RSS, MB")
    twin.set_ylim(0, max(70.0, max(r["rss_mb"] for r in rows) * 1.2))
    ax.set_title("Supervisor at scale (dotted: targets)")
    lines = ax.get_legend_handles_labels()
    lines2 = twin.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=8, loc="upper left")
