"""Load the user's event observers named in the config (``observers:``).

Each entry is ``"package.module:factory"``. The factory is called with no
argument and returns the observer: any callable taking one
:class:`~workerhost.events.Event`. Observers run synchronously on the
supervisor's event loop, so they must be quick (hand slow work to a queue
or a thread); one that raises is logged and skipped, never fatal.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from . import events as ev
from .errors import ConfigError


def load_observer(spec: str, *, field: str) -> ev.Observer:
    """Import ``package.module:factory``, call it, check it returned a callable."""
    module_name, _, attr_path = spec.partition(":")
    try:
        obj: object = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name!r}: {exc}", field=field) from exc
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"{module_name!r} has no attribute {attr_path!r}", field=field) from None
    if not callable(obj):
        raise ConfigError(f"{spec} is not callable (expected a factory returning an observer)", field=field)
    try:
        observer = obj()
    except Exception as exc:
        raise ConfigError(f"{spec}() raised {type(exc).__name__}: {exc}", field=field) from exc
    if not callable(observer):
        raise ConfigError(f"{spec}() returned {type(observer).__name__}, not a callable observer", field=field)
    return observer  # type: ignore[no-any-return]


def load_observers(specs: Sequence[str]) -> list[ev.Observer]:
    return [load_observer(spec, field=f"observers[{i}]") for i, spec in enumerate(specs)]
