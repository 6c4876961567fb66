"""The benchmark suite runs end to end (tiny profile) and writes results that parse.

Figures are not checked: this machine is shared and the numbers are noisy.
What is checked is that every measurement ran (a failed child process is
an error in the results and a non-zero exit), that every contender and
target is present, and that the JSON, markdown and chart are well formed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(150)
def test_tiny_run_writes_results_that_parse(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "run", "--profile", "tiny", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=140, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert data["errors"] == []
    assert data["meta"]["profile"] == "tiny" and data["meta"]["machine"]["cores"] >= 1

    latency = {(r["contender"], r["codec"], r["payload"]): r for r in data["latency"]}
    for contender, codec in [("bare pipe", "json"), ("bare pipe", "msgpack"), ("supervisor", "json"),
                             ("supervisor", "msgpack"), ("ProcessPoolExecutor", "pickle"),
                             ("multiprocessing.Pool", "pickle")]:
        for payload in ("noop", "100B", "64KiB", "1MiB"):
            row = latency[(contender, codec, payload)]
            assert row["n"] > 0 and 0 < row["p50_us"] <= row["p99_us"], row
    assert latency[("spawn per task (subprocess.run)", "json", "noop")]["p50_us"] > 0
    assert latency[("spawn per task (mode: oneshot)", "json", "noop")]["p50_us"] > 0

    throughput = {(r["contender"], r["codec"], r["workers"]) for r in data["throughput"]}
    assert {("supervisor", "json", 2), ("bare pipe", "json", 2), ("ProcessPoolExecutor", "pickle", 2)} <= throughput
    assert all(r["tasks_per_s"] > 0 for r in data["throughput"])
    assert data["scale"] and data["scale"][0]["idle_cpu_pct"] >= 0 and data["scale"][0]["rss_mb"] > 0
    assert [r["setting"] for r in data["limits"]] == ["no limits", "memory limits, sample_interval 0.5 s"]
    assert data["cold_start"][0]["start_s"] > 0
    assert data["sources"] == [dict(data["sources"][0], source="embedded")]
    assert data["sources"][0].get("tasks_per_s", 0) > 0, data["sources"]

    verdicts = {t["target"]: t["met"] for t in data["targets"]}
    assert verdicts["warm no-op round trip p50 vs bare pipe [json]"] in (True, False)
    assert verdicts["throughput, 2 workers, vs ProcessPoolExecutor(2) [json]"] in (True, False)
    # The tiny profile starts no 50 workers: those targets say so instead of guessing.
    assert verdicts["idle supervisor CPU, 50 namespaces x 1 worker warm"] is None

    markdown = (tmp_path / "results.md").read_text(encoding="utf-8")
    assert "### Targets" in markdown and "| supervisor | json |" in markdown
    assert markdown in proc.stdout
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "No chart" in markdown
    else:
        assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.timeout(90)
def test_contend_runs_busy_neighbours_and_takes_them_away(tmp_path: Path) -> None:
    import psutil

    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks", "run", "--profile", "tiny", "--only", "latency", "--contend", "2",
         "--out", str(tmp_path)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    spinners: set[int] = set()
    while proc.poll() is None:
        try:
            kids = psutil.Process(proc.pid).children()
            spinners |= {k.pid for k in kids if "while True: pass" in " ".join(k.cmdline())}
        except psutil.Error:
            pass
        time.sleep(0.05)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    assert len(spinners) == 2, "two busy loops ran beside the suite"
    assert not [p for p in spinners if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    data = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert data["meta"]["conditions"]["contend"] == 2
    assert "2 busy-loop process(es) spun beside the suite" in (tmp_path / "results.md").read_text(encoding="utf-8")
