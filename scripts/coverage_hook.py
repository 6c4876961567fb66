#!/usr/bin/env python3
"""Measure coverage in every Python process of this venv, worker subprocesses included.

    python scripts/coverage_hook.py on     # before `python -m pytest`
    python scripts/coverage_hook.py off    # after it, before `coverage combine`

The supervisor starts workers with a reduced environment (only the
variables a namespace allows), so the usual ``COVERAGE_PROCESS_START``
variable never reaches them. ``on`` writes a ``.pth`` file into this
interpreter's site-packages that starts coverage at interpreter start-up
with the checkout's ``pyproject.toml`` and an absolute data file, and then
removes the two variables again, so the code under test sees the
environment it would see without coverage. Each process writes its own
``.coverage.*`` file (``parallel = true``); ``[tool.coverage.run] patch =
["_exit"]`` saves the data of workers that leave with ``os._exit``.

Use it in a venv made for the tests only: while the hook is on, every
Python process of that venv is measured.
"""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PTH = Path(sysconfig.get_paths()["purelib"]) / "zz_workerhost_coverage.pth"


def hook_line(root: Path) -> str:
    config, data = str(root / "pyproject.toml"), str(root / ".coverage")
    return (
        "import os, coverage; "
        f"os.environ['COVERAGE_PROCESS_START'] = {config!r}; os.environ['COVERAGE_FILE'] = {data!r}; "
        "coverage.process_startup(); "
        "del os.environ['COVERAGE_PROCESS_START'], os.environ['COVERAGE_FILE']\n"
    )


def main(argv: list[str]) -> int:
    if argv not in (["on"], ["off"]):
        print("usage: coverage_hook.py on|off", file=sys.stderr)
        return 2
    if argv == ["on"]:
        PTH.write_text(hook_line(ROOT), encoding="utf-8")
        print(f"coverage hook on: {PTH} (data: {ROOT / '.coverage'}.*)")
    else:
        PTH.unlink(missing_ok=True)
        print(f"coverage hook off: removed {PTH}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
