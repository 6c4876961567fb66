"""``python -m prismq_worker_sdk module:function [--codec json|msgpack] [--oneshot]``."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from .protocol import CODECS, DEFAULT_MAX_FRAME_BYTES


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m prismq_worker_sdk",
        description="Serve a handler function as a prismq-workerhost worker.",
    )
    parser.add_argument("handler", help="the handler, as module:function")
    parser.add_argument("--codec", choices=CODECS, default="json")
    parser.add_argument("--max-frame-bytes", type=int, default=DEFAULT_MAX_FRAME_BYTES)
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument(
        "--oneshot", action="store_true",
        help="run one task read from stdin and exit (the design's original protocol)",
    )
    parser.add_argument("--timeout", type=float, default=None, help="one-shot mode: seconds before exit code 3")
    args = parser.parse_args(argv)
    if args.oneshot:
        from .oneshot import run_oneshot

        return run_oneshot(args.handler, timeout=args.timeout)
    from .runner import serve

    return serve(args.handler, codec=args.codec, max_frame_bytes=args.max_frame_bytes, log_level=args.log_level)


if __name__ == "__main__":
    sys.exit(main())
