"""Configure loguru sinks from the ``logging`` section (called by the CLI only)."""

from __future__ import annotations

import sys

from loguru import logger

from .config import LoggingConfig

_TEXT = (
    "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
    "<cyan>{extra[namespace]}</cyan> pid={extra[pid]} task={extra[task_id]} {message}"
)


def configure_logging(cfg: LoggingConfig) -> None:
    """Human-readable lines on a terminal, JSON lines otherwise (or when asked)."""
    logger.remove()
    logger.configure(extra={"namespace": "-", "pid": "-", "task_id": "-"})
    as_json = cfg.format == "json" or (cfg.format == "auto" and not sys.stderr.isatty())
    if as_json:
        logger.add(sys.stderr, level=cfg.level, serialize=True, backtrace=False, diagnose=False)
    else:
        logger.add(sys.stderr, level=cfg.level, format=_TEXT, backtrace=False, diagnose=False)
    if cfg.file is not None:
        cfg.file.parent.mkdir(parents=True, exist_ok=True)
        logger.add(cfg.file, level=cfg.level, serialize=True, rotation=cfg.rotation, retention=cfg.retention,
                   enqueue=False, backtrace=False, diagnose=False)
