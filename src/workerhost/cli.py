"""``workerhost-supervisor``: argument parsing and printing only.

Each command group lives in its own ``cli_*`` module with a ``register``
function; this module wires them together and maps errors to exit codes:

    0  success
    1  a task failed / a check failed / a namespace is degraded
    2  usage or config error (the message names the file, field and reason)
    3  the supervisor (or the task source) could not be reached
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__
from .errors import ConfigError, WorkerHostError

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_UNREACHABLE = 0, 1, 2, 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="workerhost-supervisor",
        description="Supervise warm, isolated Python worker pools (one virtualenv per namespace).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    from . import cli_run

    cli_run.register(sub)
    for name in ("cli_sources", "cli_status", "cli_ops"):
        try:
            module = __import__(f"workerhost.{name}", fromlist=["register"])
        except ModuleNotFoundError as exc:
            if exc.name != f"workerhost.{name}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"workerhost-supervisor: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except WorkerHostError as exc:
        print(f"workerhost-supervisor: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
