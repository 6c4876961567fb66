"""Configure loguru sinks from the ``logging`` section (called by the CLI only).

- stderr: human-readable lines on a terminal; JSON lines when
  ``format: json``, or with ``format: auto`` when stderr is not a terminal;
- ``file``: an extra sink with ``rotation`` and ``retention``; JSON lines
  unless ``format: text``;
- ``level`` applies to both.

A JSON line is one flat object: ``time``, ``level``, ``message``, then the
bound fields -- ``namespace``, ``pid`` (the worker's) and ``task_id`` are
always present (null when the line is not about one) -- then any other
bound fields and ``exception`` (the formatted traceback) when there is one.

Secrets taken from the config (``monitoring.token``, passwords, API keys
and URL credentials under ``task_manager``) are replaced by ``***`` in
every line, whoever wrote it: the supervisor, a library, or a worker whose
output comes through as a log line. ``diagnose`` stays off, so tracebacks
never print local variables (which may hold those secrets).
"""

from __future__ import annotations

import json
import re
import sys
import traceback
from collections.abc import Iterable
from typing import Any, TextIO
from urllib.parse import urlsplit

from loguru import logger

from .config import Config, LoggingConfig
from .errors import ConfigError

#: Fields every line carries (null when it is not about a task or worker).
CORE_FIELDS = ("namespace", "pid", "task_id")
#: Config keys whose string values are secrets (matched anywhere in the key).
SECRET_KEY = re.compile(r"pass|secret|token|api_?key|credential|auth", re.IGNORECASE)
#: Shorter secrets are not redacted: replacing every "ab" in every line would
#: mangle the log without protecting anything.
MIN_SECRET_LENGTH = 4
MASK = "***"

_TEXT = (
    "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
    "<cyan>{extra[_ns]}</cyan> pid={extra[_pid]} task={extra[_task]} {extra[_msg]}\n"
)


class Redactor:
    """Replaces known secret strings by ``***``."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        found = sorted({s for s in secrets if isinstance(s, str) and len(s) >= MIN_SECRET_LENGTH}, key=len,
                       reverse=True)
        self._pattern = re.compile("|".join(re.escape(s) for s in found)) if found else None

    def __call__(self, text: str) -> str:
        return self._pattern.sub(MASK, text) if self._pattern is not None else text

    def __bool__(self) -> bool:
        return self._pattern is not None


def config_secrets(config: Config) -> list[str]:
    """Every secret string the config holds (token, passwords, keys, URL credentials)."""
    found: list[str] = []
    if config.monitoring.token:
        found.append(config.monitoring.token)
    _collect(config.task_manager, found, secret=False)
    # A worker's env (API_KEY: ${API_KEY}) reaches its handler, which may log it.
    for ns in config.namespaces:
        _collect(ns.env, found, secret=False)
    return found


def _collect(value: Any, found: list[str], *, secret: bool) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _collect(v, found, secret=secret or bool(SECRET_KEY.search(str(k))))
    elif isinstance(value, list):
        for v in value:
            _collect(v, found, secret=secret)
    elif isinstance(value, str):
        if secret:
            found.append(value)
        elif "://" in value:
            try:
                password = urlsplit(value).password
            except ValueError:
                password = None
            if password:
                found.append(password)


def _format_exception(record: Any) -> str | None:
    exc = record["exception"]
    if exc is None or exc.type is None:
        return None
    return "".join(traceback.format_exception(exc.type, exc.value, exc.traceback)).rstrip()


def _json_value(value: Any, redact: Redactor) -> Any:
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return redact(value if isinstance(value, str) else str(value))


def json_formatter(redact: Redactor) -> Any:
    def fmt(record: Any) -> str:
        doc: dict[str, Any] = {
            "time": record["time"].isoformat(),
            "level": record["level"].name,
            "message": redact(record["message"]),
        }
        extra = record["extra"]
        for key in CORE_FIELDS:
            doc[key] = _json_value(extra.get(key), redact)
        for key, value in extra.items():
            if key not in doc and not key.startswith("_"):
                doc[key] = _json_value(value, redact)
        doc["logger"] = record["name"]
        exc = _format_exception(record)
        if exc is not None:
            doc["exception"] = redact(exc)
        # Stashed on the record and referenced from the template, so braces
        # in the JSON are never read as format fields.
        extra["_json"] = json.dumps(doc, ensure_ascii=False, default=str)
        return "{extra[_json]}\n"

    return fmt


def text_formatter(redact: Redactor) -> Any:
    def fmt(record: Any) -> str:
        extra = record["extra"]
        extra["_ns"] = extra.get("namespace") or "-"
        extra["_pid"] = extra.get("pid") or "-"
        extra["_task"] = extra.get("task_id") or "-"
        message = record["message"]
        exc = _format_exception(record)
        if exc is not None:
            message = f"{message}\n{exc}"
        extra["_msg"] = redact(message)
        return _TEXT

    return fmt


def configure_logging(
    cfg: LoggingConfig | Config, *, secrets: Iterable[str] = (), stream: TextIO | None = None,
) -> None:
    """Replace loguru's sinks with the configured ones.

    Pass the whole :class:`Config` to have its secrets redacted too.
    """
    secret_list = list(secrets)
    if isinstance(cfg, Config):
        secret_list += config_secrets(cfg)
        cfg = cfg.logging
    redact = Redactor(secret_list)
    stream = sys.stderr if stream is None else stream
    logger.remove()
    logger.configure(extra=dict.fromkeys(CORE_FIELDS))
    as_json = cfg.format == "json" or (cfg.format == "auto" and not _isatty(stream))
    fmt = json_formatter(redact) if as_json else text_formatter(redact)
    logger.add(stream, level=cfg.level, format=fmt, backtrace=False, diagnose=False, colorize=None if not as_json
               else False)
    if cfg.file is None:
        return
    try:
        cfg.file.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the log folder {cfg.file.parent}: {exc}", field="logging.file") from exc
    file_fmt = text_formatter(redact) if cfg.format == "text" else json_formatter(redact)
    try:
        logger.add(cfg.file, level=cfg.level, format=file_fmt, rotation=cfg.rotation, retention=cfg.retention,
                   encoding="utf-8", colorize=False, enqueue=False, backtrace=False, diagnose=False)
    except ValueError as exc:
        raise ConfigError(f"invalid rotation {cfg.rotation!r}: {exc}", field="logging.rotation") from exc
    except OSError as exc:
        raise ConfigError(f"cannot open {cfg.file}: {exc}", field="logging.file") from exc


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
