"""``python -m benchmarks run [--quick]``: run the suite, write JSON, markdown and a PNG chart.

    python -m benchmarks run                 # full run, ~8-10 min on 2 cores
    python -m benchmarks run --quick         # ~2 min
    python -m benchmarks run --only latency,throughput
    python -m benchmarks run --update-docs   # also paste the tables into docs/benchmarks.md
    python -m benchmarks run --only latency,throughput --contend 1   # beside a busy neighbour

Results go to benchmarks/results/ (results.json, results.md, results.png)
unless ``--out`` says otherwise; the markdown is printed at the end.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
from pathlib import Path

from . import chart, machine, report, targets
from .profiles import PROFILES
from .suite import GROUPS, Suite

DEFAULT_OUT = machine.ROOT / "benchmarks" / "results"
DOCS = machine.ROOT / "docs" / "benchmarks.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the benchmark suite")
    size = run.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", dest="profile", const="quick", help="the ~2 minute run")
    size.add_argument("--profile", choices=sorted(PROFILES), help="tiny (smoke test), quick or full (default)")
    run.add_argument("--only", default=",".join(GROUPS), help=f"comma-separated groups (default: all of {GROUPS})")
    run.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: benchmarks/results)")
    run.add_argument("--contend", type=int, default=0, metavar="N",
                     help="run N busy-loop processes beside the suite, a reproducible busy neighbour (default 0)")
    run.add_argument("--update-docs", action="store_true",
                     help=f"paste the tables into {DOCS.name} (the contended section with --contend)")
    args = parser.parse_args(argv)
    groups = tuple(g.strip() for g in args.only.split(",") if g.strip())
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        parser.error(f"unknown group(s) {', '.join(unknown)}; choose from {', '.join(GROUPS)}")
    if args.contend < 0:
        parser.error("--contend must be 0 or more")
    profile = PROFILES[args.profile or "full"]
    return run_suite(profile_name=profile.name, groups=groups, out=args.out, update_docs=args.update_docs,
                     contend=args.contend)


def run_suite(
    *, profile_name: str, groups: tuple[str, ...], out: Path, update_docs: bool = False, contend: int = 0,
) -> int:
    profile = PROFILES[profile_name]
    out.mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    meter = machine.LoadMeter()
    with machine.BusyLoops(contend):
        results = Suite(profile).run(groups)
    conditions = {**meter.finish(), "contend": contend}
    results["meta"] = {"profile": profile.name, "started": started, "groups": list(groups),
                       "machine": machine.describe(), "conditions": conditions}
    results["targets"] = targets.evaluate(results)
    (out / "results.json").write_text(json.dumps(results, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    markdown = report.render(results)
    problem = chart.draw(results, out / "results.png")
    if problem:
        markdown += f"\n(No chart: {problem}.)\n"
    (out / "results.md").write_text(markdown, encoding="utf-8")
    print(markdown)
    print(f"written: {out / 'results.json'}, {out / 'results.md'}"
          f"{'' if problem else ', ' + str(out / 'results.png')}", file=sys.stderr)
    if update_docs:
        _update_docs(markdown, section="results-contended" if contend else "results")
    return 1 if results["errors"] else 0


def _update_docs(markdown: str, *, section: str) -> None:
    begin, end = f"<!-- {section}:begin -->", f"<!-- {section}:end -->"
    text = DOCS.read_text(encoding="utf-8")
    if begin not in text or end not in text:
        raise SystemExit(f"{DOCS} has no {begin} ... {end} section to replace")
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.DOTALL)
    DOCS.write_text(pattern.sub(lambda _: f"{begin}\n{markdown}{end}", text), encoding="utf-8")
    print(f"updated: {DOCS}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
