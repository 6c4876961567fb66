"""``start``, ``submit``, ``tasks`` and ``dead``: run from a task source, and feed and inspect it.

``start`` runs until SIGINT/SIGTERM. The signal handlers only enqueue the
signal (nothing else is safe there); the main coroutine reads the queue:
the first signal stops claiming and lets running tasks finish within
``--graceful-timeout`` (``shutdown.graceful_timeout``), a second one gives
everything back at once. SIGHUP re-reads the config and applies the
difference (:mod:`workerhost.reload`); systemd is told READY / RELOADING /
STOPPING and fed its watchdog (:mod:`workerhost.sdnotify`).

Exit codes (as in :mod:`workerhost.cli`): 0 success, 1 a task failed or
timed out (``submit --wait``), 2 usage or config error, 3 the task source
could not be reached (or refused our credentials).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from loguru import logger

from ._tasks import TaskOwner
from .cli import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE
from .config import Config, load_config
from .dispatch import Dispatcher, DispatchState
from .errors import SourceError
from .logsetup import configure_logging
from .producer import FINAL
from .reload import PidFile, Reloader, ReloadOutcome, default_pid_file
from .sdnotify import Notifier
from .sources import make_producer, make_source, read_settings
from .sources.base import DeadLetters, Inspectable, Producer, TaskRecord
from .supervisor import Supervisor


def register(sub: Any) -> None:
    p = sub.add_parser("start", help="run the pools and take tasks from the configured source until SIGINT/SIGTERM")
    p.add_argument("-c", "--config", required=True)
    p.add_argument("--graceful-timeout", type=float, default=None, metavar="S",
                   help="on the first signal, seconds running tasks get to finish (default: the config's "
                        "shutdown.graceful_timeout, 30); a second signal stops at once")
    p.add_argument("--pid-file", default=None, metavar="PATH",
                   help="where to write our pid, for `reload` (default: .workerhost/supervisor.pid next to the config)")
    p.set_defaults(func=cmd_start)

    p = sub.add_parser("submit", help="enqueue a task (or {type, params} JSON lines from stdin); print ids or results")
    p.add_argument("-c", "--config", required=True)
    p.add_argument("type", nargs="?", help="task type (omit to read {\"type\", \"params\"} JSON lines from stdin)")
    p.add_argument("--params", default="{}", help="task params as a JSON object")
    p.add_argument("--wait", action="store_true", help="wait for each task to finish and print its record as JSON")
    p.add_argument("--timeout", type=float, default=None, metavar="S", help="give up waiting after S seconds")
    p.add_argument("--priority", type=int, default=0, help="higher runs first (embedded and amqp; redis ignores it)")
    p.add_argument("--dedupe-key", default=None, help="a second submit with the same key returns the first task")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("tasks", help="list tasks and counts by state (where the source can)")
    p.add_argument("-c", "--config", required=True)
    p.add_argument("--status", default=None, help="only tasks in this state (pending, claimed, completed, ...)")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=cmd_tasks)

    p = sub.add_parser("dead", help="list the dead-letter, or requeue from it")
    p.add_argument("-c", "--config", required=True)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--requeue", metavar="ID", help="move this dead (or failed) task back to pending")
    group.add_argument("--requeue-all", action="store_true", help="move every dead task back to pending")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_dead)


def _err(message: str) -> None:
    print(f"workerhost-supervisor: {message}", file=sys.stderr)


# -- start ---------------------------------------------------------------------
def cmd_start(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    configure_logging(config)
    settings = read_settings(config)
    graceful = args.graceful_timeout if args.graceful_timeout is not None else config.shutdown.graceful_timeout
    pid_file = PidFile(args.pid_file or default_pid_file(args.config))
    pid_file.acquire()
    try:
        return asyncio.run(_start(config, settings, graceful=graceful, pid_file=pid_file))
    finally:
        pid_file.release()


#: SIGINT/SIGTERM stop (a second one: now); SIGHUP reloads the config.
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


async def _start(config: Config, settings: Any, *, graceful: float, pid_file: PidFile | None = None) -> int:
    loop = asyncio.get_running_loop()
    signals: asyncio.Queue[int] = asyncio.Queue()
    for sig in HANDLED_SIGNALS:
        loop.add_signal_handler(sig, signals.put_nowait, sig)
    notifier = Notifier.from_environ()
    owner = TaskOwner("start")
    supervisor = Supervisor(config)
    dispatcher = Dispatcher(supervisor, make_source(config, settings), options=settings.dispatch_options())
    reloader = Reloader(supervisor, on_change=dispatcher.add_namespaces)
    control = None

    async def reload() -> None:
        notifier.reloading("reloading the config")
        try:
            outcome = await reloader.reload()
        except Exception as exc:  # nothing was committed (see reload.py): the running config stays
            logger.opt(exception=exc).error("reload failed: {!r}", exc)
            outcome = ReloadOutcome(ok=False, error=f"reload failed: {exc!r}", generation=reloader.generation)
        if pid_file is not None:
            pid_file.write_outcome(outcome)
        notifier.ready(f"reloaded: {outcome.summary}" if outcome.ok else f"reload refused: {outcome.error}")

    try:
        await supervisor.start()
        control = _control_server(config, supervisor, dispatcher)
        if control is not None:
            await control.start()
        await dispatcher.start()
        logger.info("started: taking tasks from the {} source", settings.type)
        notifier.ready(f"serving {len(supervisor.pools)} namespace(s) from the {settings.type} source")
        owner.spawn(notifier.run_watchdog(), name="watchdog")
        now = await _run_until_stopped(dispatcher, signals, graceful, on_reload=reload, on_stop=notifier.stopping)
        await reloader.aclose()
        await supervisor.close(timeout=0.0 if now else min(graceful, 5.0))
    finally:
        if dispatcher.state is DispatchState.NEW or dispatcher.state is DispatchState.RUNNING:
            await dispatcher.stop(0)
        await reloader.aclose()
        if not supervisor.closed:
            await supervisor.close(timeout=0.0)
        if control is not None:
            await control.stop()
        await owner.aclose()
        notifier.close()
        for sig in HANDLED_SIGNALS:
            loop.remove_signal_handler(sig)
    if dispatcher.state is DispatchState.FAILED:
        _err(f"task source stopped: {dispatcher.failure}")
        return EXIT_UNREACHABLE
    logger.info("stopped")
    return EXIT_OK


async def _run_until_stopped(
    dispatcher: Dispatcher, signals: asyncio.Queue[int], graceful: float, *,
    on_reload: Callable[[], Awaitable[None]] | None = None, on_stop: Callable[[], Any] | None = None,
) -> bool:
    """Handle signals until one says stop (or the source failed), then stop; True when a second signal asked for "now".

    Every signal is handled here, one at a time: a SIGHUP reloads the config
    (a stop signal that arrives meanwhile waits for the reload to finish).
    """
    failed = asyncio.ensure_future(dispatcher.wait())
    try:
        while True:
            got_signal = asyncio.ensure_future(signals.get())
            await asyncio.wait({got_signal, failed}, return_when=asyncio.FIRST_COMPLETED)
            if not got_signal.done():
                got_signal.cancel()
                break
            if got_signal.result() != signal.SIGHUP:
                logger.info("signal {}: stopping (up to {}s for running tasks; signal again to stop now)",
                            signal.Signals(got_signal.result()).name, graceful)
                break
            logger.info("signal SIGHUP: reloading the config")
            if on_reload is not None:
                await on_reload()
    finally:
        failed.cancel()
    if on_stop is not None:
        on_stop()
    stopping = asyncio.ensure_future(dispatcher.stop(graceful))
    now = False
    second: asyncio.Future[int] | None = None
    try:
        while not stopping.done():
            second = asyncio.ensure_future(signals.get())
            await asyncio.wait({stopping, second}, return_when=asyncio.FIRST_COMPLETED)
            if not second.done():
                continue
            if second.result() == signal.SIGHUP:
                logger.warning("SIGHUP ignored: the supervisor is stopping")
            elif not now:
                now = True
                logger.warning("second signal: giving unfinished tasks back now")
                await dispatcher.stop(0)
        await stopping
    finally:
        if second is not None:
            second.cancel()
    return now


def _control_server(config: Config, supervisor: Supervisor, dispatcher: Dispatcher) -> Any:
    if not config.monitoring.enabled:
        return None
    try:
        module = importlib.import_module("workerhost.control")
    except ModuleNotFoundError as exc:
        if exc.name != "workerhost.control":
            raise
        logger.warning("monitoring is enabled but this installation has no control server")
        return None
    return module.ControlServer(supervisor, config.monitoring, source=dispatcher)


# -- submit --------------------------------------------------------------------
def cmd_submit(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if args.type:
        try:
            params = json.loads(args.params)
        except ValueError as exc:
            _err(f"--params is not valid JSON: {exc}")
            return EXIT_CONFIG
        if not isinstance(params, dict):
            _err("--params must be a JSON object")
            return EXIT_CONFIG
        items = [{"type": args.type, "params": params}]
        if not _known_type(config, args.type, args.config):
            return EXIT_CONFIG
    else:
        items = []
        for n, line in enumerate(sys.stdin, 1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
                if not isinstance(doc, dict) or not isinstance(doc.get("params", {}), dict):
                    raise TypeError("params must be an object")
                items.append({"type": str(doc["type"]), "params": doc.get("params") or {},
                              **{k: doc[k] for k in ("priority", "dedupe_key") if k in doc}})
            except (ValueError, KeyError, TypeError) as exc:
                _err(f"stdin line {n}: expected {{\"type\": ..., \"params\": {{...}}}}: {exc}")
                return EXIT_CONFIG
            if not _known_type(config, items[-1]["type"], args.config, where=f"stdin line {n}: "):
                return EXIT_CONFIG
    for item in items:
        if args.priority:
            item.setdefault("priority", args.priority)
        if args.dedupe_key and len(items) == 1:
            item.setdefault("dedupe_key", args.dedupe_key)
    return _with_producer(config, lambda producer: _submit(producer, items, wait=args.wait, timeout=args.timeout))


def _known_type(config: Config, task_type: str, path: str, *, where: str = "") -> bool:
    """A type no namespace serves would wait in the queue forever: refuse it here, where it is typed."""
    if task_type in config.routes:
        return True
    _err(f"{where}unknown task type {task_type!r}: no namespace in {path} serves it "
         f"(known: {', '.join(sorted(config.routes))})")
    return False


async def _submit(producer: Producer, items: list[dict[str, Any]], *, wait: bool, timeout: float | None) -> int:
    ids = await _enqueue(producer, items)
    if not wait:
        for task_id in ids:
            print(task_id)
        return EXIT_OK
    records = await asyncio.gather(*(_wait(producer, task_id, timeout) for task_id in ids))
    code = EXIT_OK
    for task_id, record in zip(ids, records, strict=True):
        if record is None:
            print(json.dumps({"id": task_id, "status": "timeout"}))
            code = EXIT_FAILED
            continue
        print(json.dumps(record.to_dict()))
        if record.status != "completed":
            code = EXIT_FAILED
    return code


async def _enqueue(producer: Producer, items: list[dict[str, Any]]) -> list[str]:
    plain = all(set(item) == {"type", "params"} for item in items)
    submit_items = getattr(producer, "submit_items", None)
    if callable(submit_items) and len(items) > 1:
        ids: list[str] = await submit_items(items)
        return ids
    submit_many = getattr(producer, "submit_many", None)
    if plain and callable(submit_many) and len(items) > 1:
        ids = await submit_many([(item["type"], item["params"]) for item in items])
        return ids
    return [await producer.submit(item["type"], item["params"], priority=int(item.get("priority") or 0),
                                  dedupe_key=item.get("dedupe_key")) for item in items]


async def _wait(producer: Producer, task_id: str, timeout: float | None) -> TaskRecord | None:
    wait = getattr(producer, "wait", None)
    try:
        if callable(wait):
            record: TaskRecord = await wait(task_id, timeout=timeout)
            return record
        from .producer import poll_until_final

        return await poll_until_final(producer.get, task_id, timeout=timeout)
    except TimeoutError:
        return None


# -- tasks and dead ------------------------------------------------------------------
def cmd_tasks(args: argparse.Namespace) -> int:
    config = load_config(args.config)

    async def go(producer: Producer) -> int:
        if not isinstance(producer, Inspectable):
            _err(f"the {read_settings(config).type} source cannot list its tasks")
            return EXIT_CONFIG
        counts = await producer.counts()
        records = await producer.list_tasks(status=args.status, limit=args.limit)
        if args.json:
            print(json.dumps({"counts": counts, "tasks": [r.to_dict() for r in records]}))
        else:
            print("  ".join(f"{state} {n}" for state, n in counts.items()))
            _print_records(records)
        return EXIT_OK

    return _with_producer(config, go)


def cmd_dead(args: argparse.Namespace) -> int:
    config = load_config(args.config)

    async def go(producer: Producer) -> int:
        if not isinstance(producer, DeadLetters):
            _err(f"the {read_settings(config).type} source has no dead-letter to list or requeue")
            return EXIT_CONFIG
        if args.requeue:
            if not await producer.requeue(args.requeue):
                _err(f"no dead or failed task {args.requeue!r}")
                return EXIT_FAILED
            print(f"requeued {args.requeue}")
            return EXIT_OK
        if args.requeue_all:
            print(f"requeued {await producer.requeue_all()} task(s)")
            return EXIT_OK
        records = await producer.dead_letters(limit=args.limit)
        if args.json:
            print(json.dumps([r.to_dict() for r in records]))
        else:
            _print_records(records)
        return EXIT_OK

    return _with_producer(config, go)


def _print_records(records: list[TaskRecord]) -> None:
    for r in records:
        error = f"  {r.error.get('type', 'Error')}: {r.error.get('message', '')}" if r.error else ""
        progress = f" {r.progress}%" if r.progress is not None and r.status not in FINAL else ""
        print(f"{r.id}  {r.type}  {r.status}{progress}  attempts={r.attempts}{error}")


def _with_producer(config: Config, body: Any) -> int:
    """Run ``body(producer)``; a source that cannot be reached exits 3."""

    async def go() -> int:
        producer = make_producer(config)
        try:
            code: int = await body(producer)
            return code
        finally:
            await producer.close()

    try:
        return asyncio.run(go())
    except SourceError as exc:
        _err(str(exc))
        return EXIT_UNREACHABLE
