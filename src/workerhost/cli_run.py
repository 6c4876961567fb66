"""``validate`` and ``run``: check a config, or run tasks in-process and print results."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from .config import load_config
from .logsetup import configure_logging
from .sources import read_settings
from .supervisor import Supervisor


def register(sub: Any) -> None:
    p = sub.add_parser("validate", help="validate a config file and exit (0 ok, 2 invalid)")
    p.add_argument("-c", "--config", required=True)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser(
        "run", help="start the pools, run one task (or JSON lines from stdin) in-process, print results, stop",
    )
    p.add_argument("-c", "--config", required=True)
    p.add_argument("type", nargs="?", help="task type (omit to read {type, params} JSON lines from stdin)")
    p.add_argument("--params", default="{}", help="task params as a JSON object")
    p.set_defaults(func=cmd_run)


def cmd_validate(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    # The task_manager section is read by the sources; `start` would refuse a bad one, so must validate.
    read_settings(config)
    names = ", ".join(ns.name for ns in config.namespaces)
    print(f"{args.config}: ok ({len(config.namespaces)} namespaces: {names})")
    return 0


def _usage(message: str) -> SystemExit:
    """A usage error: one line on stderr, exit code 2 (as ``submit`` does)."""
    print(f"workerhost-supervisor: {message}", file=sys.stderr)
    return SystemExit(2)


def _parse_params(text: str) -> dict[str, Any]:
    try:
        params = json.loads(text)
    except ValueError as exc:
        raise _usage(f"--params is not valid JSON: {exc}") from exc
    if not isinstance(params, dict):
        raise _usage("--params must be a JSON object")
    return params


def cmd_run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    configure_logging(config)
    if args.type:
        jobs = [(args.type, _parse_params(args.params))]
    else:
        jobs = []
        for n, line in enumerate(sys.stdin, 1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
                jobs.append((str(doc["type"]), doc.get("params") or {}))
            except (ValueError, KeyError, TypeError) as exc:
                raise _usage(f"stdin line {n}: expected {{\"type\", \"params\"}}: {exc}") from exc

    async def go() -> int:
        async with Supervisor(config) as sup:
            results = await asyncio.gather(*(sup.run(t, p) for t, p in jobs))
        for r in results:
            print(json.dumps(r.to_dict()))
        return 0 if all(r.ok for r in results) else 1

    return asyncio.run(go())
