"""A small typed reader over parsed config data that knows its field path.

Every accessor names the field it reads, so any error says exactly where
(``workers[1].timeout``) and why; ``finish()`` refuses unknown keys.
"""

from __future__ import annotations

import builtins
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from .errors import ConfigError

T = TypeVar("T")
_MISSING: Any = object()
_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\{[^}]*\}?")


def substitute(value: str, *, field: str, environ: dict[str, str] | None = None) -> str:
    """Expand ``${VAR}`` and ``${VAR:-default}``; ``$$`` is a literal ``$``."""
    env = os.environ if environ is None else environ

    def repl(match: re.Match[str]) -> str:
        text = match.group(0)
        if text == "$$":
            return "$"
        name = match.group(1)
        if name is None:
            raise ConfigError(f"bad variable reference {text!r} (use ${{NAME}} or ${{NAME:-default}})", field=field)
        if name in env:
            return env[name]
        if match.group(2) is not None:
            return match.group(2)
        raise ConfigError(f"environment variable {name} is not set (and no ${{{name}:-default}} given)", field=field)

    return _VAR.sub(repl, value)


def expand_env(data: Any, *, path: str = "", environ: dict[str, str] | None = None) -> Any:
    """Apply :func:`substitute` to every string in a parsed document."""
    if isinstance(data, str):
        return substitute(data, field=path or "<root>", environ=environ)
    if isinstance(data, dict):
        return {k: expand_env(v, path=_join(path, str(k)), environ=environ) for k, v in data.items()}
    if isinstance(data, list):
        return [expand_env(v, path=f"{path}[{i}]", environ=environ) for i, v in enumerate(data)]
    return data


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _defaulting(method: Callable[..., Any]) -> Callable[..., Any]:
    """Return the default untouched when the key is absent (or null)."""

    def wrapper(self: Reader, key: str, default: Any = _MISSING, *args: Any, **kwargs: Any) -> Any:
        if default is not _MISSING and not self.has(key):
            self._seen.add(key)
            return default
        return method(self, key, default, *args, **kwargs)

    wrapper.__name__ = method.__name__
    wrapper.__doc__ = method.__doc__
    return wrapper


class Reader:
    def __init__(self, data: Any, path: builtins.str, *, base_dir: Path) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"must be a mapping, got {_kind(data)}", field=path or "<root>")
        self.data = data
        self.path = path
        self.base_dir = base_dir
        self._seen: set[builtins.str] = set()

    def field(self, key: builtins.str) -> builtins.str:
        return _join(self.path, key)

    def error(self, key: builtins.str, reason: builtins.str) -> ConfigError:
        return ConfigError(reason, field=self.field(key))

    def raw(self, key: builtins.str, default: Any = _MISSING) -> Any:
        self._seen.add(key)
        if key not in self.data or self.data[key] is None:
            if default is _MISSING:
                raise self.error(key, "is required")
            return default
        return self.data[key]

    def has(self, key: builtins.str) -> builtins.bool:
        return self.data.get(key) is not None

    @_defaulting
    def str(self, key: builtins.str, default: Any = _MISSING, *, choices: tuple[builtins.str, ...] | None = None) -> Any:
        value = self.raw(key, default)
        if value is default and default is not _MISSING:
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not value.strip():
            raise self.error(key, f"must be a non-empty string, got {_kind(value)}")
        if choices and value not in choices:
            raise self.error(key, f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    @_defaulting
    def bool(self, key: builtins.str, default: Any = _MISSING) -> Any:
        value = self.raw(key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, got {_kind(value)}")
        return value

    def number(
        self, key: builtins.str, default: Any = _MISSING, *, minimum: float | None = 0, positive: builtins.bool = False,
        integer: builtins.bool = False,
    ) -> Any:
        value = self.raw(key, default)
        if value is default and default is None:
            return None
        kind = "an integer" if integer else "a number"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
            raise self.error(key, f"must be {kind}, got {_kind(value)}")
        if positive and value <= 0:
            raise self.error(key, f"must be greater than 0, got {value}")
        if minimum is not None and value < minimum:
            raise self.error(key, f"must be at least {minimum}, got {value}")
        return value

    def int(self, key: builtins.str, default: Any = _MISSING, **kw: Any) -> Any:
        return self.number(key, default, integer=True, **kw)

    @_defaulting
    def str_list(self, key: builtins.str, default: Any = _MISSING, *, non_empty: builtins.bool = False) -> Any:
        value = self.raw(key, default)
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.error(key, f"must be a list of strings, got {_kind(value)}")
        if non_empty and not value:
            raise self.error(key, "must list at least one entry")
        return list(value)

    @_defaulting
    def mapping(self, key: builtins.str, default: Any = _MISSING) -> Any:
        value = self.raw(key, default)
        if not isinstance(value, dict):
            raise self.error(key, f"must be a mapping, got {_kind(value)}")
        return value

    def str_map(self, key: builtins.str) -> dict[builtins.str, builtins.str]:
        value = self.mapping(key, {})
        out = {}
        for k, v in value.items():
            if isinstance(v, bool) or not isinstance(v, (str, int, float)):
                raise ConfigError(f"must be a string, got {_kind(v)}", field=f"{self.field(key)}.{k}")
            out[str(k)] = str(v)
        return out

    @_defaulting
    def path_(self, key: builtins.str, default: Any = _MISSING) -> Any:
        value = self.str(key, default)
        if value is None:
            return None
        p = Path(os.path.expanduser(value))
        return p if p.is_absolute() else (self.base_dir / p)

    def child(self, key: builtins.str, default: Any = _MISSING) -> Reader | None:
        value = self.raw(key, default)
        if value is None:
            return None
        return Reader(value, self.field(key), base_dir=self.base_dir)

    def convert(self, key: builtins.str, fn: Callable[[Any], T], default: Any = _MISSING) -> T:
        value = self.raw(key, default)
        try:
            return fn(value)
        except (TypeError, ValueError) as exc:
            raise self.error(key, str(exc)) from exc

    def finish(self) -> None:
        unknown = sorted(str(k) for k in self.data if k not in self._seen)
        if unknown:
            raise self.error(unknown[0], f"unknown key (known keys: {', '.join(sorted(self._seen))})")


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"boolean {value}"
    if isinstance(value, (int, float)):
        return f"number {value}"
    if isinstance(value, str):
        return f"string {value!r}"
    return type(value).__name__
