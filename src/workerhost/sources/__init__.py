"""Task sources: build the configured one from the ``task_manager`` section.

``make_source(config)`` gives the supervisor side (claim, complete, ...),
``make_producer(config)`` the producer side (submit, read results). With no
``task_manager`` section the embedded queue is used, in
``.workerhost/queue.db`` next to the config file. Keys common to every
type (validated here, with the same field-path errors as the rest of the
config)::

    task_manager:
      type: embedded            # embedded | http | redis | amqp
      prefetch: 1               # tasks claimed per namespace beyond its free workers
      poll_interval: 0.05       # first wait after an empty claim, when polling (doubles ...)
      poll_max_interval: 1.0    # ... up to this cap; a source that can wait for new
                                # tasks (WaitsForTasks) is still looked at this often

Each type reads its own keys (``read_config`` in its module). The redis and
amqp modules are imported only when configured.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import attrs

from .._schema import Reader
from ..config import Config
from ..errors import ConfigError
from .base import (
    Claimed,
    DeadLetters,
    Inspectable,
    Producer,
    RenewsLeases,
    TaskRecord,
    TaskSource,
    WaitsForTasks,
)

if TYPE_CHECKING:
    from ..dispatch import DispatchOptions

__all__ = [
    "Claimed",
    "DeadLetters",
    "Inspectable",
    "Producer",
    "RenewsLeases",
    "SourceSettings",
    "TaskRecord",
    "TaskSource",
    "WaitsForTasks",
    "make_producer",
    "make_source",
    "read_settings",
]

TYPES = ("embedded", "http", "redis", "amqp")
#: Where the embedded queue lives when no ``path`` is given (relative to the config file).
DEFAULT_QUEUE_PATH = Path(".workerhost") / "queue.db"
#: (poll_interval, poll_max_interval) defaults: a remote HTTP server is polled more gently.
_POLL_DEFAULTS = {"http": (0.5, 10.0)}


@attrs.frozen(kw_only=True)
class EmbeddedConfig:
    path: Path
    #: A claim not renewed for this long is handed out again (renewed every third of it).
    lease_seconds: float = 30.0
    #: Expired leases tolerated per task before it is dead-lettered.
    max_lease_expiries: int = 5
    #: How long a write waits for another process's lock before failing.
    busy_timeout: float = 30.0


@attrs.frozen(kw_only=True)
class SourceSettings:
    type: str
    prefetch: int = 1
    poll_interval: float = 0.05
    poll_max_interval: float = 1.0
    #: The type's own parsed settings (EmbeddedConfig, HttpConfig, RedisConfig, AmqpConfig).
    options: Any = None

    def dispatch_options(self) -> DispatchOptions:
        from ..dispatch import DispatchOptions

        return DispatchOptions(prefetch=self.prefetch, poll_interval=self.poll_interval,
                               poll_max_interval=max(self.poll_interval, self.poll_max_interval))


def read_settings(config: Config) -> SourceSettings:
    """Validate ``task_manager``; errors name the file and the field (``task_manager.lease_seconds``)."""
    base_dir = config.path.resolve().parent if config.path is not None else Path.cwd()
    try:
        return _read(config, Reader(config.task_manager or {"type": "embedded"}, "task_manager", base_dir=base_dir))
    except ConfigError as exc:
        if exc.file is not None or config.path is None:
            raise
        raise ConfigError(exc.reason, field=exc.field, file=str(config.path)) from None


def _read(config: Config, r: Reader) -> SourceSettings:
    kind = r.str("type", choices=TYPES)
    poll, poll_max = _POLL_DEFAULTS.get(kind, (0.05, 1.0))
    prefetch = r.int("prefetch", 1)
    poll_interval = float(r.number("poll_interval", poll, positive=True))
    poll_max_interval = float(r.number("poll_max_interval", max(poll_max, poll_interval), positive=True))
    if poll_max_interval < poll_interval:
        raise r.error("poll_max_interval", f"must be at least poll_interval ({poll_interval}), got {poll_max_interval}")
    options: Any
    if kind == "embedded":
        options = _read_embedded(r)
    elif kind == "http":
        from . import http

        options = http.read_config(r)
    else:
        options = _module(kind).read_config(r)
    r.finish()
    return SourceSettings(type=kind, prefetch=prefetch, poll_interval=poll_interval,
                          poll_max_interval=poll_max_interval, options=options)


def _read_embedded(r: Reader) -> EmbeddedConfig:
    return EmbeddedConfig(
        path=r.path_("path", r.base_dir / DEFAULT_QUEUE_PATH),
        lease_seconds=float(r.number("lease_seconds", 30.0, positive=True)),
        max_lease_expiries=int(r.int("max_lease_expiries", 5)),
        busy_timeout=float(r.number("busy_timeout", 30.0, positive=True)),
    )


def _module(kind: str, suffix: str = "") -> ModuleType:
    name = f"{__name__}.{kind}{suffix}"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            raise ConfigError(f"the {kind} source is not available in this installation (no module {name})",
                              field="task_manager.type") from None
        raise ConfigError(f"the {kind} source needs the Python package {exc.name!r}; install it "
                          f"(pip install 'prismq-workerhost')", field="task_manager.type") from exc


def make_source(config: Config, settings: SourceSettings | None = None) -> TaskSource:
    """The supervisor side of the configured source (not connected yet)."""
    settings = settings or read_settings(config)
    opts = settings.options
    if settings.type == "embedded":
        from .embedded import EmbeddedSource

        return EmbeddedSource(opts.path, lease_seconds=opts.lease_seconds,
                              max_lease_expiries=opts.max_lease_expiries, busy_timeout=opts.busy_timeout)
    if settings.type == "http":
        from .http import HttpSource

        return HttpSource(opts, namespaces=config.namespaces)
    module = _module(settings.type)
    cls = getattr(module, f"{settings.type.capitalize()}Source")
    source: TaskSource = cls(opts)
    return source


def make_producer(config: Config, settings: SourceSettings | None = None) -> Producer:
    """The producer side of the configured source: submit tasks, read them back."""
    settings = settings or read_settings(config)
    opts = settings.options
    if settings.type == "embedded":
        from .embedded import EmbeddedProducer

        return EmbeddedProducer(opts.path, busy_timeout=opts.busy_timeout)
    if settings.type == "http":
        from .http_producer import HttpProducer

        return HttpProducer(opts)
    module = _module(settings.type, "_producer")
    cls = getattr(module, f"{settings.type.capitalize()}Producer")
    if settings.type == "amqp":
        # RabbitMQ cannot list queues by itself: tell it which task types exist.
        return cls(opts, task_types=tuple(config.routes))  # type: ignore[no-any-return]
    producer: Producer = cls(opts)
    return producer
