"""The config file: attrs models, loading (YAML or JSON) and validation.

Compatible with the design's schema (``version``, ``task_manager``,
``workers[]``, ``logging``, ``monitoring``) and extended per namespace with
pool sizing, recycling, codec, timeouts and the worker environment. Every
error names the file, the field path and the reason. See
docs/configuration.md for every key.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import attrs
import yaml

from ._schema import Reader, expand_env
from .errors import ConfigError
from .limits_config import LimitsConfig, read_limits
from .venv_config import VenvSpec, read_venv

#: "package.module:attribute", as in an entry point.
_ENTRY_POINT = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*")

#: Environment variables a worker inherits from the supervisor without being
#: listed: enough for a Python to start and find its locale and temp dir.
#: Everything else must be named in ``env_passthrough`` or set in ``env``,
#: so secrets in the supervisor's environment do not leak into workers.
BASE_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "SYSTEMROOT", "PYENV_ROOT")


@attrs.frozen(kw_only=True)
class RetryConfig:
    #: Delay before the first retry, doubled for each later one.
    backoff: float = 1.0
    #: Upper bound of a single retry delay.
    backoff_max: float = 60.0
    #: Full jitter: the delay is drawn from [backoff/2, backoff].
    jitter: bool = True


@attrs.frozen(kw_only=True)
class NamespaceConfig:
    name: str
    project_path: Path
    python: Path
    module: str | None
    function: str | None
    task_types: tuple[str, ...]
    mode: str = "persistent"
    command: tuple[str, ...] | None = None
    timeout: float = 300.0
    max_retries: int = 3
    max_worker_lost: int = 2
    retry: RetryConfig = RetryConfig()
    metadata: dict[str, Any] = attrs.field(factory=dict)
    min_workers: int = 1
    max_workers: int = 2
    max_tasks_per_worker: int | None = None
    max_tasks_jitter: int = 0
    codec: str = "json"
    max_frame_bytes: int = 16 * 1024 * 1024
    start_timeout: float = 30.0
    heartbeat_interval: float = 10.0
    heartbeat_timeout: float = 10.0
    cancel_grace: float = 2.0
    kill_grace: float = 3.0
    respawn_backoff: float = 0.5
    respawn_backoff_max: float = 30.0
    env: dict[str, str] = attrs.field(factory=dict)
    env_passthrough: tuple[str, ...] = ()
    limits: LimitsConfig = LimitsConfig()
    #: What ``provision`` builds the venv from; None: the venv is managed elsewhere.
    venv: VenvSpec | None = None

    @property
    def handler(self) -> str:
        return f"{self.module}:{self.function}"

    def worker_env(self, environ: dict[str, str] | None = None) -> dict[str, str]:
        source = os.environ if environ is None else environ
        names = set(BASE_ENV) | set(self.env_passthrough)
        env = {k: v for k, v in source.items() if k in names or k.startswith("LC_")}
        env.update(self.env)
        return env


@attrs.frozen(kw_only=True)
class LoggingConfig:
    level: str = "INFO"
    #: "text", "json", or "auto" (JSON lines when stderr is not a terminal).
    format: str = "auto"
    file: Path | None = None
    rotation: str = "10 MB"
    retention: int = 5


@attrs.frozen(kw_only=True)
class MonitoringConfig:
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 9090
    token: str | None = attrs.field(default=None, repr=False)


@attrs.frozen(kw_only=True)
class ShutdownConfig:
    #: Seconds in-flight tasks get to finish after SIGTERM/SIGINT before they
    #: are stopped and handed back to their source.
    graceful_timeout: float = 30.0


@attrs.frozen(kw_only=True)
class Config:
    version: str
    namespaces: tuple[NamespaceConfig, ...]
    #: task type -> ordered namespaces (the explicit fallback chain).
    routes: dict[str, tuple[str, ...]]
    task_manager: dict[str, Any] | None = attrs.field(default=None, repr=False)
    logging: LoggingConfig = LoggingConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    #: Extra event observers, "package.module:factory" (see docs/observability.md).
    observers: tuple[str, ...] = ()
    shutdown: ShutdownConfig = ShutdownConfig()
    path: Path | None = None

    def namespace(self, name: str) -> NamespaceConfig:
        for ns in self.namespaces:
            if ns.name == name:
                return ns
        raise KeyError(name)


def load_config(
    path: str | os.PathLike[str], *, environ: dict[str, str] | None = None, require_venvs: bool = True
) -> Config:
    """Read, substitute and validate a config file; raise ConfigError naming file and field.

    ``require_venvs=False`` accepts a namespace whose venv does not exist yet
    (``provision`` creates it; ``check`` reports it per namespace).
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", file=str(p)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read: {exc}", file=str(p)) from exc
    try:
        data = parse_text(text, suffix=p.suffix.lower())
        return parse_config(data, base_dir=p.resolve().parent, path=p, environ=environ, require_venvs=require_venvs)
    except ConfigError as exc:
        raise ConfigError(exc.reason, field=exc.field, file=str(p)) from None


def parse_text(text: str, *, suffix: str) -> Any:
    if suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"invalid YAML{where}: {problem}") from exc


def parse_config(
    data: Any, *, base_dir: Path, path: Path | None = None, environ: dict[str, str] | None = None,
    require_venvs: bool = True,
) -> Config:
    if data is None:
        raise ConfigError("the file is empty")
    data = expand_env(data, environ=environ)
    root = Reader(data, "", base_dir=base_dir)
    version = root.str("version", "1.0")
    if str(version).split(".")[0] != "1":
        raise root.error("version", f"unsupported config version {version!r} (this supervisor reads 1.x)")
    task_manager = root.mapping("task_manager", None)
    if task_manager is not None and not isinstance(task_manager.get("type"), str):
        raise ConfigError("is required (embedded, http, redis or amqp)", field="task_manager.type")
    raw_workers = root.raw("workers")
    if not isinstance(raw_workers, list) or not raw_workers:
        raise root.error("workers", "must be a non-empty list of namespaces")
    namespaces = tuple(
        _read_namespace(Reader(item, f"workers[{i}]", base_dir=base_dir), require_venvs=require_venvs)
        for i, item in enumerate(raw_workers)
    )
    names = [ns.name for ns in namespaces]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"duplicate namespace name {name!r}", field=f"workers[{i}].name")
    routes = _read_routes(root, namespaces)
    logging_cfg = _read_logging(root.child("logging", {}))
    monitoring = _read_monitoring(root.child("monitoring", {}))
    shutdown = _read_shutdown(root.child("shutdown", {}))
    observers = tuple(root.str_list("observers", []))
    for i, spec in enumerate(observers):
        if not _ENTRY_POINT.fullmatch(spec):
            raise ConfigError(f"must look like package.module:factory, got {spec!r}", field=f"observers[{i}]")
    root.finish()
    return Config(
        version=str(version), namespaces=namespaces, routes=routes, task_manager=task_manager,
        logging=logging_cfg, monitoring=monitoring, observers=observers, shutdown=shutdown, path=path,
    )


def resolve_python(p: Path) -> Path:
    """Accept a venv folder or an interpreter path; find the Windows layout too."""
    candidates = [p]
    if p.is_dir():
        candidates = [p / "bin" / "python", p / "Scripts" / "python.exe"]
    elif p.parent.name == "bin":
        candidates.append(p.parent.parent / "Scripts" / "python.exe")
    elif p.parent.name == "Scripts":
        candidates.append(p.parent.parent / "bin" / "python")
    for c in candidates:
        if c.is_file():
            return c
    return candidates[0]


def _read_namespace(r: Reader, *, require_venvs: bool = True) -> NamespaceConfig:
    name = r.str("name")
    mode = r.str("mode", "persistent", choices=("persistent", "oneshot"))
    project_path = r.path_("project_path")
    if not project_path.is_dir():
        raise r.error("project_path", f"{project_path} is not a directory")
    command = tuple(r.str_list("command", None, non_empty=True) or ()) or None
    venv = read_venv(r.child("venv", None))
    if venv is not None and not r.has("venv_python"):
        python = resolve_python(venv.path) if venv.path.is_dir() else venv.path / "bin" / "python"
        if require_venvs and not python.is_file():
            raise r.error("venv.path", f"{python} does not exist (run `workerhost-supervisor provision`)")
    elif r.has("venv_python"):
        python = resolve_python(r.path_("venv_python"))
        # Without require_venvs (provision, check) a missing venv is reported per namespace.
        if require_venvs and not python.is_file():
            raise r.error("venv_python", f"{python} does not exist (create the venv, or run `workerhost-supervisor provision`)")
        if python.is_file() and not os.access(python, os.X_OK):
            raise r.error("venv_python", f"{python} is not executable")
    elif command is None:
        raise r.error("venv_python", "is required")
    else:
        python = Path(sys.executable)
    # A `command` replaces the default argv (the SDK runner, or the design's
    # `python -m module function` in oneshot mode): workers in any language.
    needs_entry = command is None
    module = r.str("module") if needs_entry else r.str("module", None)
    function = r.str("function") if needs_entry else r.str("function", None)
    min_workers = r.int("min_workers", 1)
    max_workers = r.int("max_workers", max(2, min_workers), positive=True)
    if max_workers < min_workers:
        raise r.error("max_workers", f"must be at least min_workers ({min_workers}), got {max_workers}")
    task_types = r.str_list("task_types", non_empty=True)
    ns = NamespaceConfig(
        name=name, project_path=project_path, python=python, module=module, function=function,
        task_types=tuple(task_types), mode=mode, command=command,
        timeout=r.number("timeout", 300.0, positive=True),
        max_retries=r.int("max_retries", 3),
        max_worker_lost=r.int("max_worker_lost", 2),
        retry=_read_retry(r.child("retry", {})),
        metadata=r.mapping("metadata", {}),
        min_workers=min_workers, max_workers=max_workers,
        max_tasks_per_worker=r.int("max_tasks_per_worker", None, positive=True),
        max_tasks_jitter=r.int("max_tasks_jitter", 0),
        codec=r.str("codec", "json", choices=("json", "msgpack")),
        max_frame_bytes=r.int("max_frame_bytes", 16 * 1024 * 1024, minimum=1024),
        start_timeout=r.number("start_timeout", 30.0, positive=True),
        heartbeat_interval=r.number("heartbeat_interval", 10.0, positive=True),
        heartbeat_timeout=r.number("heartbeat_timeout", 10.0, positive=True),
        cancel_grace=r.number("cancel_grace", 2.0),
        kill_grace=r.number("kill_grace", 3.0),
        respawn_backoff=r.number("respawn_backoff", 0.5, positive=True),
        respawn_backoff_max=r.number("respawn_backoff_max", 30.0, positive=True),
        env=r.str_map("env"),
        env_passthrough=tuple(r.str_list("env_passthrough", [])),
        limits=read_limits(r.child("limits", {})),
        venv=venv,
    )
    r.finish()
    return ns


def _read_shutdown(r: Reader | None) -> ShutdownConfig:
    assert r is not None
    cfg = ShutdownConfig(graceful_timeout=float(r.number("graceful_timeout", 30.0)))
    r.finish()
    return cfg


def _read_retry(r: Reader | None) -> RetryConfig:
    assert r is not None
    cfg = RetryConfig(
        backoff=r.number("backoff", 1.0), backoff_max=r.number("backoff_max", 60.0), jitter=r.bool("jitter", True)
    )
    r.finish()
    return cfg


def _read_routes(root: Reader, namespaces: tuple[NamespaceConfig, ...]) -> dict[str, tuple[str, ...]]:
    claimed: dict[str, list[str]] = {}
    for ns in namespaces:
        for t in ns.task_types:
            claimed.setdefault(t, []).append(ns.name)
    declared = root.mapping("routes", {})
    routes: dict[str, tuple[str, ...]] = {}
    for task_type, order in declared.items():
        field = f"routes.{task_type}"
        if not isinstance(order, list) or not order or not all(isinstance(n, str) for n in order):
            raise ConfigError("must be a list of namespace names", field=field)
        for n in order:
            if n not in claimed.get(task_type, []):
                raise ConfigError(f"namespace {n!r} does not list {task_type!r} in its task_types", field=field)
        if sorted(order) != sorted(claimed.get(task_type, [])):
            raise ConfigError(f"must list every namespace serving {task_type!r}: {claimed.get(task_type)}", field=field)
        routes[task_type] = tuple(order)
    for task_type, owners in claimed.items():
        if len(owners) > 1 and task_type not in routes:
            idx = [ns.name for ns in namespaces].index(owners[1])
            raise ConfigError(
                f"task type {task_type!r} is served by {', '.join(owners)}; declare the fallback order "
                f"in routes.{task_type} if that is intended",
                field=f"workers[{idx}].task_types",
            )
        routes.setdefault(task_type, tuple(owners))
    return routes


def _read_logging(r: Reader | None) -> LoggingConfig:
    assert r is not None
    cfg = LoggingConfig(
        level=r.str("level", "INFO", choices=("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")),
        format=r.str("format", "auto") if r.data.get("format") in (None, "text", "json", "auto") else _legacy_format(r),
        file=r.path_("file", None),
        rotation=r.str("rotation", "10 MB") if not r.has("max_bytes") else f"{r.int('max_bytes', positive=True)} B",
        retention=r.int("backup_count", 5) if r.has("backup_count") else r.int("retention", 5),
    )
    r.finish()
    return cfg


def _legacy_format(r: Reader) -> str:
    # The design's example gives a logging.Formatter string; we keep our own
    # line layout but accept the key so design-era configs load.
    r.str("format")
    return "auto"


def _read_monitoring(r: Reader | None) -> MonitoringConfig:
    assert r is not None
    port = r.int("port", None, positive=True)
    if port is None:
        port = r.int("metrics_port", 9090, positive=True)
    else:
        r.raw("metrics_port", None)
    r.raw("health_check_port", None)  # design-era key: one port serves everything now
    cfg = MonitoringConfig(
        enabled=r.bool("enabled", False), host=r.str("host", "127.0.0.1"), port=port, token=r.str("token", None)
    )
    if cfg.enabled and cfg.host not in ("127.0.0.1", "localhost", "::1") and not cfg.token:
        raise r.error("token", f"is required when the endpoints bind beyond loopback ({cfg.host})")
    r.finish()
    return cfg
