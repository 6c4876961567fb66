"""The ``limits`` section of a namespace: resource bounds and recycling."""

from __future__ import annotations

import attrs

from ._schema import Reader


@attrs.frozen(kw_only=True)
class LimitsConfig:
    #: Which memory figure of the worker's process tree is compared: "rss" or "uss".
    memory_metric: str = "rss"
    #: Recycle the worker after its current task once it uses this much (MiB).
    memory_soft_mb: float | None = None
    #: Kill the worker at once when it passes this much (MiB) while a task runs.
    memory_hard_mb: float | None = None
    #: Seconds between psutil samples of a busy worker (when a hard memory or CPU limit is set).
    sample_interval: float = 0.5
    #: Seconds between samples of idle workers, and of busy ones when nothing can kill them mid-task.
    idle_sample_interval: float = 5.0
    #: CPU seconds (user + system, whole tree) one task may use.
    cpu_time_limit: float | None = None
    #: Sustained CPU percent (of one core) above which a task is stopped...
    cpu_percent_limit: float | None = None
    #: ...when it stays above it for this many seconds.
    cpu_percent_window: float = 10.0
    #: Recycle a worker once it is this old (seconds), plus up to max_age_jitter.
    max_age: float | None = None
    max_age_jitter: float = 0.0
    #: Retire workers above min_workers that stayed idle this long (seconds).
    idle_timeout: float | None = None
    #: Total memory (MiB) the namespace's workers may use; caps scaling up.
    memory_budget_mb: float | None = None


def read_limits(r: Reader | None) -> LimitsConfig:
    assert r is not None
    cfg = LimitsConfig(
        memory_metric=r.str("memory_metric", "rss", choices=("rss", "uss")),
        memory_soft_mb=r.number("memory_soft_mb", None, positive=True),
        memory_hard_mb=r.number("memory_hard_mb", None, positive=True),
        sample_interval=r.number("sample_interval", 0.5, positive=True),
        idle_sample_interval=r.number("idle_sample_interval", 5.0, positive=True),
        cpu_time_limit=r.number("cpu_time_limit", None, positive=True),
        cpu_percent_limit=r.number("cpu_percent_limit", None, positive=True),
        cpu_percent_window=r.number("cpu_percent_window", 10.0, positive=True),
        max_age=r.number("max_age", None, positive=True),
        max_age_jitter=r.number("max_age_jitter", 0.0),
        idle_timeout=r.number("idle_timeout", None, positive=True),
        memory_budget_mb=r.number("memory_budget_mb", None, positive=True),
    )
    if cfg.memory_soft_mb and cfg.memory_hard_mb and cfg.memory_soft_mb >= cfg.memory_hard_mb:
        raise r.error("memory_soft_mb", f"must be below memory_hard_mb ({cfg.memory_hard_mb}), got {cfg.memory_soft_mb}")
    r.finish()
    return cfg
