"""``status``: what a running supervisor is doing, read from its control server.

Exit codes (scripts rely on them):

    0  the supervisor answered and every namespace is ok (or starting, draining)
    1  the supervisor answered and at least one namespace is degraded
    2  usage or config error
    3  no supervisor could be reached (nothing running, monitoring disabled,
       wrong address, or the token was refused)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import httpx

from .config import load_config

EXIT_OK, EXIT_DEGRADED, EXIT_UNREACHABLE = 0, 1, 3
#: Where a wildcard bind is reached from this machine.
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}
TOKEN_ENV = "WORKERHOST_TOKEN"


class Unreachable(Exception):
    """No status could be had; the message says why, for a person."""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "status", help="show a running supervisor's namespaces and workers (exit 0 ok, 1 degraded, 3 unreachable)",
        description="Ask a running supervisor (found from the config's monitoring section, or --url) for its "
                    "namespaces and workers. Exit codes: 0 ok, 1 a namespace is degraded, 2 usage/config error, "
                    "3 no supervisor reachable.",
    )
    p.add_argument("-c", "--config", help="the supervisor's config file (its monitoring section gives the address)")
    p.add_argument("--url", help="the control server's address, e.g. http://127.0.0.1:9090")
    p.add_argument("--token", help=f"bearer token (default: ${TOKEN_ENV}, then monitoring.token from the config)")
    p.add_argument("--json", action="store_true", help="print the status document as JSON")
    p.add_argument("--watch", nargs="?", type=float, const=2.0, default=None, metavar="SECONDS",
                   help="refresh every SECONDS (default 2) until interrupted")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for an answer (default 5)")
    p.set_defaults(func=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    if not args.config and not args.url:
        print("workerhost-supervisor status: give -c CONFIG or --url URL", file=sys.stderr)
        return 2
    token = args.token or os.environ.get(TOKEN_ENV)
    url = args.url
    if args.config:
        monitoring = load_config(args.config).monitoring
        token = token or monitoring.token
        if url is None:
            if not monitoring.enabled:
                print(f"workerhost-supervisor status: monitoring is disabled in {args.config} "
                      f"(set monitoring.enabled: true and restart the supervisor, or pass --url)", file=sys.stderr)
                return EXIT_UNREACHABLE
            host = _WILDCARDS.get(monitoring.host, monitoring.host)
            url = f"http://{f'[{host}]' if ':' in host else host}:{monitoring.port}"
    assert url is not None
    url = url.rstrip("/")
    if args.watch is not None:
        return _watch(url, token, args)
    try:
        doc = fetch_status(url, token=token, timeout=args.timeout)
    except Unreachable as exc:
        print(f"workerhost-supervisor status: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    print(json.dumps(doc, indent=2) if args.json else render(doc, url=url))
    return exit_code(doc)


def _watch(url: str, token: str | None, args: argparse.Namespace) -> int:
    code = EXIT_UNREACHABLE
    in_place = sys.stdout.isatty() and not args.json
    try:
        while True:
            try:
                doc = fetch_status(url, token=token, timeout=args.timeout)
                code = exit_code(doc)
                text = json.dumps(doc) if args.json else render(doc, url=url)
            except Unreachable as exc:
                code = EXIT_UNREACHABLE
                text = json.dumps({"error": str(exc)}) if args.json else f"{exc} (retrying)"
            if in_place:
                sys.stdout.write("\x1b[H\x1b[2J" + text + f"\n\nrefreshing every {args.watch:g}s; Ctrl-C to stop\n")
            else:
                sys.stdout.write(text + ("\n" if args.json else "\n\n"))
            sys.stdout.flush()
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return code


def fetch_status(url: str, *, token: str | None, timeout: float) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.get(f"{url}/status", headers=headers, timeout=timeout)
    except httpx.ConnectError as exc:
        raise Unreachable(f"no supervisor is running at {url} (cannot connect: {_reason(exc)})") from exc
    except httpx.TimeoutException as exc:
        raise Unreachable(f"the supervisor at {url} did not answer within {timeout:g}s") from exc
    except httpx.HTTPError as exc:
        raise Unreachable(f"cannot ask {url}: {exc}") from exc
    if response.status_code == 401:
        raise Unreachable(f"the supervisor at {url} refused the request: a valid bearer token is required "
                          f"(--token, ${TOKEN_ENV} or monitoring.token)")
    if response.status_code != 200:
        raise Unreachable(f"{url}/status answered HTTP {response.status_code}: is this a workerhost supervisor?")
    try:
        doc = response.json()
    except ValueError as exc:
        raise Unreachable(f"{url}/status did not answer JSON: is this a workerhost supervisor?") from exc
    if not isinstance(doc, dict) or "namespaces" not in doc:
        raise Unreachable(f"{url}/status answered an unexpected document: is this a workerhost supervisor?")
    return doc


def _reason(exc: Exception) -> str:
    text = str(exc)
    return "connection refused" if "refused" in text.lower() or not text else text


def exit_code(doc: dict[str, Any]) -> int:
    degraded = any(ns.get("state") == "degraded" for ns in doc.get("namespaces", []))
    return EXIT_DEGRADED if degraded else EXIT_OK


# -- rendering ---------------------------------------------------------------
def render(doc: dict[str, Any], *, url: str) -> str:
    lines = [
        f"supervisor pid {doc.get('pid', '?')} at {url}, up {duration(doc.get('uptime'))}"
        + (f", version {doc['version']}" if doc.get("version") else "")
        + (" (closing)" if doc.get("closed") else "")
    ]
    source = doc.get("source")
    if isinstance(source, dict):
        extra = f", last error: {source['last_source_error']}" if source.get("last_source_error") else ""
        lines.append(f"source: {source.get('source')} {source.get('state')}, holding {source.get('held', 0)} "
                     f"tasks{extra}")
    namespaces = doc.get("namespaces", [])
    if not namespaces:
        lines.append("no namespaces")
        return "\n".join(lines)
    lines.append("")
    rows = [["NAMESPACE", "STATE", "WARM", "MIN/MAX", "BUSY", "QUEUED", "DONE", "FAILED", "RETRIED", "MEMORY",
             "RESTARTS"]]
    for ns in namespaces:
        restarts = " ".join(f"{k}={v}" for k, v in sorted((ns.get("restarts") or {}).items())) or "-"
        rows.append([
            ns["name"], ns["state"], str(ns.get("warm", 0)), f"{ns.get('min_workers')}/{ns.get('max_workers')}",
            str(ns.get("busy", 0)), str(ns.get("queued", 0)), str(ns.get("tasks_done", 0)),
            str(ns.get("tasks_failed", 0)), str(ns.get("tasks_retried", 0)), size(ns.get("memory_bytes")), restarts,
        ])
    lines += table(rows)
    for ns in namespaces:
        lines.append("")
        limits = " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in (ns.get("limits") or {}).items())
        lines.append(f"{ns['name']} workers" + (f" (limits: {limits})" if limits else "") + ":")
        if ns.get("last_error"):
            lines.append(f"  last error: {ns['last_error']}")
        workers = ns.get("workers") or []
        if not workers:
            lines.append("  (none)")
            continue
        rows = [["PID", "STATE", "AGE", "TASKS", "CURRENT TASK", "RUNNING", "RSS", "USS", "CPU%", "LAST RECYCLE"]]
        for w in workers:
            cpu = w.get("cpu_percent")
            rows.append([
                str(w.get("pid")), w.get("state", "?"), duration(w.get("age")), str(w.get("tasks_run", 0)),
                w.get("current_task") or "-", duration(w.get("task_running_for")) if w.get("current_task") else "-",
                size(w.get("rss")), size(w.get("uss")), f"{cpu:.1f}" if cpu is not None else "-",
                w.get("recycle_reason") or "-",
            ])
        lines += ["  " + line for line in table(rows)]
    return "\n".join(lines)


def table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]


def size(n: Any) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit in ("B", "KiB") else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"  # pragma: no cover - loop always returns


def duration(seconds: Any) -> str:
    if seconds is None:
        return "-"
    s = float(seconds)
    if s < 60:
        return f"{s:.1f}s"
    m, s = divmod(int(s), 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h}h{m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d{h:02d}h"
