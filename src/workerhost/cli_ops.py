"""Operations commands: ``check`` (preflight), ``provision`` (build venvs), ``reload`` (signal a running supervisor)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from .cli import EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE
from .config import load_config
from .preflight import NamespaceCheck, check_config
from .provision import Provisioner, ProvisionError
from .reload import ReloadRequestError, request_reload


def register(sub: Any) -> None:
    p = sub.add_parser("check", help="preflight: validate the config and start one worker per namespace")
    p.add_argument("-c", "--config", required=True)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("provision", help="create or update the venvs that namespaces declare (venv: ...)")
    p.add_argument("-c", "--config", required=True)
    p.add_argument("--installer", choices=("auto", "uv", "pip"), default="auto",
                   help="uv when on PATH (auto), or python -m venv + pip")
    p.add_argument("--force", action="store_true", help="install again even when nothing changed")
    p.set_defaults(func=cmd_provision)

    p = sub.add_parser("reload", help="make the running supervisor re-read its config (like SIGHUP)")
    p.add_argument("-c", "--config", required=True)
    p.add_argument("--pid-file", help="the running supervisor's pid file (default: .workerhost/supervisor.pid "
                                      "next to the config)")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds to wait for the supervisor to report the outcome (0: do not wait)")
    p.set_defaults(func=cmd_reload)


# -- check ---------------------------------------------------------------
def cmd_check(args: argparse.Namespace) -> int:
    config = load_config(args.config, require_venvs=False)
    print(f"{args.config}: config ok ({len(config.namespaces)} namespaces)", flush=True)

    def progress(name: str, step: str) -> None:
        print(f"  checking {name}: {step}", file=sys.stderr, flush=True)

    reports = asyncio.run(check_config(config, on_step=progress))
    print("\n".join(render_checks(reports)))
    failed = [r for r in reports if not r.ok]
    for r in failed:
        print(f"check failed: namespace {r.name!r} ({r.failed_step}): {r.reason}", file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK


def render_checks(reports: list[NamespaceCheck]) -> list[str]:
    rows = [["NAMESPACE", "RESULT", "PYTHON", "SDK", "PROTOCOL", "COLD START", "DETAIL"]]
    for r in reports:
        detail = f"{r.failed_step}: {r.reason}" if not r.ok else "; ".join(r.notes) or "-"
        rows.append([
            r.name, "ok" if r.ok else "FAIL", r.python_version or "-", r.sdk_version or "-",
            f"v{r.protocol}" if r.protocol is not None else "-",
            f"{r.cold_start:.2f}s" if r.cold_start is not None else "-", detail,
        ])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]]).rstrip()
            for row in rows]


# -- provision -----------------------------------------------------------
def cmd_provision(args: argparse.Namespace) -> int:
    config = load_config(args.config, require_venvs=False)
    try:
        provisioner = Provisioner(installer=args.installer, force=args.force,
                                  log=lambda line: print(line, flush=True))
    except ProvisionError as exc:
        print(f"workerhost-supervisor: {exc}", file=sys.stderr)
        return EXIT_FAILED
    results = provisioner.run(config)
    print()
    for r in results:
        where = f" {r.path}" if r.path else ""
        took = f" in {r.seconds:.1f}s" if r.action not in ("skipped", "unchanged") else ""
        print(f"{', '.join(r.namespaces)}: {r.action}{where}{took} ({r.detail})")
    failed = [r for r in results if not r.ok]
    for r in failed:
        print(f"provision failed: namespace {', '.join(r.namespaces)}: {r.detail}", file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK


# -- reload --------------------------------------------------------------
def cmd_reload(args: argparse.Namespace) -> int:
    # Refuse a broken config here already: the running supervisor would refuse it too.
    load_config(args.config)
    try:
        outcome = request_reload(args.config, pid_file=args.pid_file, timeout=args.timeout)
    except ReloadRequestError as exc:
        print(f"workerhost-supervisor: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if outcome is None:
        print("reload requested (not waiting for the outcome)")
        return EXIT_OK
    if not outcome.ok:
        print(f"workerhost-supervisor: reload refused, the running config stays: {outcome.error}", file=sys.stderr)
        return EXIT_FAILED
    print(f"reloaded (pid {outcome.pid}): {outcome.summary or 'no changes'}")
    return EXIT_OK
