"""Run one measurement in this (fresh) process and write its result as JSON.

    python -m benchmarks.child scenarios.pipe:latency '{"codec": "json", ...}' OUT.json

The parent (:mod:`benchmarks.suite`) starts one of these per measurement.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import sys


def main(argv: list[str]) -> int:
    target, raw_kwargs, out_path = argv
    module_name, func_name = target.split(":")
    func = getattr(importlib.import_module(f"benchmarks.{module_name}"), func_name)
    kwargs = json.loads(raw_kwargs)
    result = asyncio.run(func(**kwargs)) if inspect.iscoroutinefunction(func) else func(**kwargs)
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
