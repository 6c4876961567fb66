"""Generate docs/api.md from the code: ``python docs/gen_api.py``.

The reference covers exactly ``workerhost.__all__`` and
``prismq_worker_sdk.__all__`` (plus the event types observers receive).
Signatures, attrs fields with their defaults and ``#:`` comments, enum
members and docstrings come from the code; the one-line summaries of names
whose docstring is missing are written here, and the script refuses to run
when an exported name has neither. tests/test_exported_members.py checks
that the committed docs/api.md equals this script's output.
"""

from __future__ import annotations

import enum
import importlib
import inspect
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

import attrs

OUT = Path(__file__).resolve().parent / "api.md"

#: One line for each exported name (used before the docstring, or instead of a missing one).
SUMMARIES: dict[str, str] = {
    # workerhost
    "workerhost.Config": "The whole validated config file (what `load_config` returns); frozen.",
    "workerhost.ConfigError": "A config file is invalid; `.file`, `.field` (a path such as `workers[1].timeout`) "
                              "and `.reason` say where and why.",
    "workerhost.Event": "Base of the typed lifecycle events the supervisor emits to observers "
                        "(see *Event types* below).",
    "workerhost.EventBus": "The observer list: every event goes to every observer, synchronously, in order.",
    "workerhost.FailureKind": "What kind of failure ended a try; decides which retry budget it counts against.",
    "workerhost.NamespaceConfig": "One namespace (one entry of `workers:`): its venv, entry point, task types, "
                                  "pool size, timeouts, retries and limits. Each field is the config key of the same name "
                                  "([configuration.md](configuration.md)).",
    "workerhost.NamespaceUnavailable": "No worker can be had: the namespace is degraded or draining.",
    "workerhost.Outcome": "What one try of a task on one worker produced (result or error).",
    "workerhost.SourceError": "A task source failed (connection, protocol); the dispatcher backs off and retries.",
    "workerhost.Supervisor": "Owns one warm pool per namespace, routes tasks to them and applies retries; "
                             "an async context manager.",
    "workerhost.SupervisorClosed": "The supervisor is not started, or is shutting down.",
    "workerhost.Task": "One unit of work as the supervisor sees it.",
    "workerhost.TaskError": "The design's error object (`type`, `message`, `traceback`, `retry_possible`) "
                            "plus its `FailureKind`.",
    "workerhost.TaskFailed": "Raised by `TaskResult.unwrap()` for a task that ended failed; `.error` is the "
                             "`TaskError`.",
    "workerhost.TaskResult": "The final word on a task after its retries: status, result or error, attempts.",
    "workerhost.TaskStatus": "How a task ended.",
    "workerhost.WorkerError": "Something went wrong with a worker process.",
    "workerhost.WorkerHostError": "Base of every error the package raises on purpose.",
    "workerhost.WorkerLost": "A worker died or was killed while it held a task (a *worker-lost* attempt).",
    "workerhost.WorkerProtocolError": "A worker broke protocol v1 (garbage on its channel, an oversized frame); "
                                      "it is killed and replaced.",
    "workerhost.WorkerStartError": "A worker could not start: spawn failed, handler import failed, no `hello` "
                                   "within `start_timeout`, protocol version mismatch.",
    "workerhost.__version__": "The package version.",
    "workerhost.load_config": "Read, substitute (`${VAR}`) and validate a YAML or JSON config file.",
    # prismq_worker_sdk
    "prismq_worker_sdk.Context": "The second argument of a handler: progress, logging, deadline, cancellation.",
    "prismq_worker_sdk.NonRetriableError": "The task failed and retrying cannot help: it fails at once.",
    "prismq_worker_sdk.PROTOCOL_VERSION": "The protocol version this SDK speaks (sent in `hello`).",
    "prismq_worker_sdk.ProtocolError": "A frame could not be encoded or decoded, or broke the size limit.",
    "prismq_worker_sdk.RetriableError": "Transient trouble: the supervisor retries the task with backoff, up to "
                                        "`max_retries`.",
    "prismq_worker_sdk.TaskCancelled": "Raised by `Context.check_cancelled()` once the supervisor cancelled the "
                                       "task (timeout or shutdown).",
    "prismq_worker_sdk.TaskError": "Base of the handler errors; `retry_possible` (default true) tells the "
                                   "supervisor whether to retry.",
    "prismq_worker_sdk.ValidationError": "The task's params are invalid (not retried), as in the design.",
    "prismq_worker_sdk.__version__": "The SDK version.",
}

#: Notes for public methods without a docstring.
METHOD_NOTES: dict[str, str] = {
    "Supervisor.start": "Start every namespace's pool (`async with Supervisor(...)` calls it).",
    "Supervisor.closed": "True once `close()` was called.",
    "Supervisor.route": "The ordered namespaces serving a task type (its fallback chain); empty if none.",
    "Supervisor.namespace_for": "The namespace a task's current try goes to, or None for an unknown type.",
    "Supervisor.report_completed": "Emit `TaskCompleted` for a task a source drove with `attempt()`.",
    "Supervisor.report_failed": "Emit `TaskFailed` (the task failed for good).",
    "Supervisor.report_retry": "Emit `TaskRetried` and count the retry for status.",
    "Supervisor.free_slots": "How many more tasks the namespace could start now (source backpressure).",
    "Supervisor.task_types": "The task types a namespace serves.",
    "EventBus.subscribe": "Add an observer (any callable taking an `Event`); returns a function that removes it.",
    "EventBus.emit": "Call every observer with the event; an observer that raises is logged and skipped.",
    "NamespaceConfig.handler": "`module:function`, as passed to `python -m prismq_worker_sdk`.",
    "NamespaceConfig.worker_env": "The environment a worker gets: `BASE_ENV` + `env_passthrough` from the "
                                  "supervisor's environment, then `env`.",
    "Config.namespace": "The namespace called `name` (KeyError if none).",
    "Outcome.ok": "True when the try succeeded.",
    "TaskResult.ok": "True when the task completed.",
    "Task.to_wire": "The task as a JSON-ready dict (the fields a source stores).",
    "Task.from_wire": "Rebuild a task from `to_wire()` output.",
    "TaskError.to_dict": "The design's error object, plus `kind`.",
    "TaskError.from_dict": "Rebuild from `to_dict()` output (missing fields get defaults).",
    "TaskResult.to_dict": "JSON-ready dict (what `workerhost-supervisor run` prints).",
    "Context.progress": "Report 0..100 (and a message) to the supervisor at once; it reaches the task source.",
    "Context.cancelled": "True once the supervisor sent `cancel` (timeout or shutdown).",
    "Context.check_cancelled": "Raise `TaskCancelled` if the task was cancelled; call it between steps.",
    "Context.time_left": "Seconds until `deadline` (never below 0), or None without a deadline.",
}

#: Meanings of record fields that carry no ``#:`` comment in the code.
FIELD_NOTES: dict[str, dict[str, str]] = {
    "Config": {
        "version": "The config's `version` (1.x).",
        "namespaces": "One `NamespaceConfig` per entry of `workers:`, in file order.",
        "task_manager": "The raw `task_manager` section (None: the embedded queue).",
        "path": "The file it was loaded from.",
    },
    "Task": {
        "type": "The task type; routes it to a namespace.",
        "params": "The handler's input (a JSON object).",
        "id": "Unique id (a fresh uuid4 hex unless the source gives one).",
        "metadata": "Free-form data passed to the handler (priority, created_at, ...).",
        "attempt": "1 on the first try; counts every try.",
    },
    "TaskError": {
        "type": "The exception's class name (or `TaskTimeout`, `WorkerLost`, `MemoryLimitExceeded`, ...).",
        "message": "Human-readable reason.",
        "retry_possible": "False ends the task at once.",
        "traceback": "The worker-side traceback, when there is one.",
        "kind": "Which budget the failure counts against.",
    },
    "TaskResult": {
        "task_id": "The task's id.",
        "type": "Its task type.",
        "status": "`COMPLETED` or `FAILED`.",
        "result": "The handler's return value (completed tasks).",
        "error": "Why it failed (failed tasks).",
        "attempts": "Tries it took, retries included.",
        "namespace": "The namespace that ran its last try.",
    },
    "Outcome": {
        "result": "The handler's return value, when the try succeeded.",
        "error": "Why the try failed, when it did.",
        "namespace": "The namespace that ran it.",
        "worker_pid": "The worker that ran it.",
        "duration": "Seconds the try took.",
    },
    "Event": {"namespace": "The namespace the event is about (None for supervisor-wide events)."},
}

#: Instance attributes worth knowing (set in ``__init__``, so not found by introspection).
ATTRIBUTE_NOTES: dict[str, list[str]] = {
    "Supervisor": [
        "- `config` — the `Config` it runs; `bus` — its `EventBus` (subscribe observers here);"
        " `metrics` — its Prometheus metrics (own registry); `pools` — namespace name -> pool.",
    ],
    "Context": [
        "Built by the SDK for each task; a handler only reads it.",
        "",
        "- `task_id`, `task_type`, `attempt` (1 on the first try), `metadata` — about the task.",
        "- `deadline` — Unix time after which the supervisor stops the task (`timeout:`), or None.",
    ],
}

PACKAGES = {
    "workerhost": (
        "workerhost — the supervisor",
        "`pip install prismq-workerhost` (Python >= 3.10). Everything not listed here lives in modules that may "
        "change without notice.\n\n"
        "```python\n"
        "import asyncio\n"
        "from workerhost import Supervisor, load_config\n\n"
        "async def main():\n"
        "    async with Supervisor(load_config(\"config/example.yaml\")) as sup:\n"
        "        result = await sup.run(\"Modern.WhichSix\", {})\n"
        "        print(result.unwrap())      # raises TaskFailed if the task failed\n\n"
        "asyncio.run(main())\n"
        "```",
    ),
    "prismq_worker_sdk": (
        "prismq_worker_sdk — the worker SDK",
        "`pip install prismq-worker-sdk` into each worker's own venv (Python >= 3.8, no dependencies; "
        "`[msgpack]` for the msgpack codec). A handler is a plain function; see docs/workers.md.\n\n"
        "```python\n"
        "from prismq_worker_sdk import ValidationError\n\n"
        "def handle(task, ctx):\n"
        "    if \"n\" not in task[\"params\"]:\n"
        "        raise ValidationError(\"params.n is required\")\n"
        "    ctx.progress(50, \"half way\")\n"
        "    return {\"square\": task[\"params\"][\"n\"] ** 2}\n"
        "```",
    ),
}


def md(text: str) -> str:
    """reST inline literals and roles (``x``, :class:`x`) to Markdown."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"`\1`", text)
    return re.sub(r"``(.+?)``", r"`\1`", text)


def docstring(obj: Any) -> str:
    doc = obj.__doc__ if isinstance(obj, (type, type(md))) or inspect.isroutine(obj) else None
    if not doc or (isinstance(obj, type) and doc == _inherited_doc(obj)):
        return ""
    return md(inspect.cleandoc(doc))


def _inherited_doc(cls: type) -> str | None:
    for base in cls.__mro__[1:]:
        if base.__doc__:
            return base.__doc__
    return None


def first_paragraph(text: str) -> str:
    return text.split("\n\n")[0].replace("\n", " ").strip()


def fmt_annotation(ann: Any) -> str:
    if ann is inspect.Parameter.empty:
        return ""
    text = ann if isinstance(ann, str) else inspect.formatannotation(ann)
    return text.replace("typing.", "")


def fmt_default(value: Any) -> str:
    if isinstance(value, attrs.Factory):  # type: ignore[arg-type]
        if value.factory not in (dict, list, tuple, set):
            return f"{value.factory.__name__}()"
        value = value.factory()
    if attrs.has(type(value)) and value == type(value)():
        return f"{type(value).__name__}()"
    if isinstance(value, enum.Enum):
        return f"{type(value).__name__}.{value.name}"
    if isinstance(value, Path):
        return repr(str(value))
    return repr(value)


def fmt_signature(func: Any, *, drop_self: bool = False) -> str:
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return "(...)"
    parts: list[str] = []
    params = list(sig.parameters.values())
    if drop_self and params and params[0].name in ("self", "cls"):
        params = params[1:]
    star_done = False
    for i, p in enumerate(params):
        if p.kind is p.KEYWORD_ONLY and not star_done:
            parts.append("*")
            star_done = True
        if p.kind is p.VAR_POSITIONAL:
            star_done = True
        stars = "*" if p.kind is p.VAR_POSITIONAL else "**" if p.kind is p.VAR_KEYWORD else ""
        text = stars + p.name
        ann = fmt_annotation(p.annotation)
        if ann:
            text += f": {ann}"
        if p.default is not p.empty:
            text += (" = " if ann else "=") + fmt_default(p.default)
        parts.append(text)
        if p.kind is p.POSITIONAL_ONLY and (i + 1 == len(params) or params[i + 1].kind is not p.POSITIONAL_ONLY):
            parts.append("/")
    ret = fmt_annotation(sig.return_annotation)
    return f"({', '.join(parts)})" + (f" -> {ret}" if ret else "")


def field_comments(cls: type) -> dict[str, str]:
    """``#:`` comments written above the fields of a class body."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    notes: dict[str, str] = {}
    pending: list[str] = []
    for line in source.splitlines()[1:]:
        stripped = line.strip()
        if stripped.startswith("#:"):
            pending.append(stripped[2:].strip())
            continue
        match = re.match(r"(\w+)\s*:", stripped)
        if match and pending:
            notes[match.group(1)] = md(" ".join(pending))
        pending = []
    return notes


def render_fields(cls: type) -> list[str]:
    notes = {**FIELD_NOTES.get(cls.__name__, {}), **field_comments(cls)}
    lines = ["| field | type | default | meaning |", "|---|---|---|---|"]
    for f in attrs.fields(cls):
        default = "required" if f.default is attrs.NOTHING else f"`{fmt_default(f.default)}`"
        kind = fmt_annotation(f.type).replace("|", "\\|")
        lines.append(f"| `{f.name}` | `{kind}` | {default} | {notes.get(f.name, '')} |")
    return lines


def render_members(cls: type) -> list[str]:
    lines: list[str] = []
    for name, member in vars(cls).items():
        if name.startswith("_") or (attrs.has(cls) and name in {f.name for f in attrs.fields(cls)}):
            continue
        key = f"{cls.__name__}.{name}"
        if isinstance(member, property):
            head, func = f"`{name}` (property)", member.fget
        elif isinstance(member, (staticmethod, classmethod)):
            func = member.__func__
            head = f"`{cls.__name__}.{name}{fmt_signature(func, drop_self=isinstance(member, classmethod))}`"
        elif inspect.isfunction(member):
            func = member
            prefix = "async " if inspect.iscoroutinefunction(member) else ""
            head = f"`{prefix}{name}{fmt_signature(member, drop_self=True)}`"
        else:
            continue
        note = first_paragraph(docstring(func)) or METHOD_NOTES.get(key, "")
        lines.append(f"- {head}" + (f" — {note}" if note else ""))
    return lines


def render_name(package: str, name: str, obj: Any) -> list[str]:
    key = f"{package}.{name}"
    doc = docstring(obj)
    summary = SUMMARIES.get(key) or first_paragraph(doc)
    if not summary:
        raise SystemExit(f"gen_api: {key} has neither a docstring nor an entry in SUMMARIES")
    # The docstring when there is one (it is the code's own word), else the summary written here.
    body = doc or summary
    out = [f"### `{name}`", ""]
    if isinstance(obj, type) and issubclass(obj, BaseException):
        bases = ", ".join(b.__name__ for b in obj.__bases__)
        sig = fmt_signature(obj.__init__, drop_self=True) if "__init__" in vars(obj) else ""
        out += [f"`exception {name}({bases})`" + (f" — constructor `{name}{sig}`" if sig else ""), "", body]
    elif isinstance(obj, type) and issubclass(obj, enum.Enum):
        members = ", ".join(f"`{m.name}` = `{m.value!r}`" for m in obj)
        out += [f"`enum {name}`", "", body, "", f"Members: {members}."]
    elif isinstance(obj, type) and attrs.has(obj):
        frozen = "frozen " if _is_frozen(obj) else ""
        out += [f"`{frozen}attrs class {name}(*, ...)`", "", body, "", "Fields (keyword-only):", "", *render_fields(obj)]
    elif isinstance(obj, type):
        out += [f"`class {name}{fmt_signature(obj, drop_self=False)}`", "", body]
    elif callable(obj):
        is_async = "async " if inspect.iscoroutinefunction(obj) else ""
        out += [f"`{is_async}def {name}{fmt_signature(obj)}`", "", body]
    else:
        out += [f"`{name} = {obj!r}`", "", body]
    if isinstance(obj, type) and not issubclass(obj, (BaseException, enum.Enum)):
        attributes = ATTRIBUTE_NOTES.get(name, [])
        methods = render_members(obj)
        if attributes or methods:
            out += ["", *attributes, *methods]
    return out + [""]


def _is_frozen(cls: type) -> bool:
    return getattr(cls.__setattr__, "__name__", "") == "_frozen_setattrs"


def render_package(package: str, anchors: dict[str, int]) -> list[str]:
    module = importlib.import_module(package)
    title, intro = PACKAGES[package]
    out = [f"## {title}", "", intro, "", "| name | what |", "|---|---|"]
    for name in module.__all__:
        summary = SUMMARIES.get(f"{package}.{name}") or first_paragraph(docstring(getattr(module, name)))
        out.append(f"| [`{name}`](#{_anchor(name, anchors)}) | {summary} |")
    out.append("")
    errors = importlib.import_module(f"{package}.errors").__doc__ or ""
    tree = [line for line in inspect.cleandoc(errors).splitlines() if line.startswith("    ")]
    if tree:
        out += ["The exception tree:", "", "```", *textwrap.dedent("\n".join(tree)).splitlines(), "```", ""]
    for name in module.__all__:
        out += render_name(package, name, getattr(module, name))
    return out


def _anchor(name: str, seen: dict[str, int]) -> str:
    """GitHub's anchor for a heading; a repeated heading gets -1, -2, ..."""
    base = re.sub(r"[^a-z0-9_ -]", "", name.lower()).replace(" ", "-")
    n = seen.get(base, 0)
    seen[base] = n + 1
    return base if n == 0 else f"{base}-{n}"


def render_events() -> list[str]:
    events = importlib.import_module("workerhost.events")
    out = [
        "## Event types (`workerhost.events`)", "",
        "Every observer (`Supervisor(observers=[...])`, or `observers:` in the config naming "
        "`package.module:factory`) is called with each of these, synchronously; keep observers quick. All are "
        "frozen attrs classes deriving from `Event` (which carries `namespace`).", "",
        "| event | fields | when |", "|---|---|---|",
    ]
    for name, cls in vars(events).items():
        if isinstance(cls, type) and issubclass(cls, events.Event) and cls is not events.Event:
            fields = ", ".join(f"`{f.name}`" for f in attrs.fields(cls) if f.name != "namespace")
            when = first_paragraph(docstring(cls)) or _EVENT_NOTES.get(name, "")
            out.append(f"| `{name}` | {fields} | {when} |")
    return out + [""]


_EVENT_NOTES = {
    "TaskReceived": "`Supervisor.run()` got a task",
    "TaskStarted": "a worker took a try of the task",
    "TaskProgress": "the handler reported progress",
    "TaskCompleted": "the task succeeded",
    "TaskRetried": "a try failed and another one is scheduled after `delay` seconds",
    "WorkerSpawned": "a worker process was started",
    "WorkerReady": "it sent `hello` (its cold-start time is `startup_seconds`)",
    "WorkerStartFailed": "it could not start; the next try is in `retry_in` seconds",
    "WorkerRecycled": "the pool decided to replace it (max tasks, age, memory, idle, reload)",
    "WorkerExited": "the process ended (`reason`: shutdown, crash, timeout, memory_hard, ...)",
    "WorkerLog": "a line of the worker's log, stderr or captured stdout",
}


def render() -> str:
    out = [
        "# API reference", "",
        "<!-- Generated by `python docs/gen_api.py`; do not edit by hand "
        "(tests/test_exported_members.py checks it is current). -->", "",
        "The public Python API of both packages: exactly what `workerhost.__all__` and "
        "`prismq_worker_sdk.__all__` export. The command line is described in the README, the config keys in "
        "[configuration.md](configuration.md), the wire protocol in [protocol.md](protocol.md).", "",
    ]
    anchors: dict[str, int] = {}
    for package in PACKAGES:
        out += render_package(package, anchors)
    out += render_events()
    return "\n".join(out).rstrip() + "\n"


def main() -> int:
    OUT.write_text(render(), encoding="utf-8")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
