"""Structured logs: JSON lines with task_id / namespace / pid, file rotation, levels, redaction."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from loguru import logger

from tests.conftest import namespace
from workerhost.config import Config, LoggingConfig
from workerhost.errors import ConfigError
from workerhost.logsetup import config_secrets, configure_logging
from workerhost.supervisor import Supervisor

SECRET_TOKEN = "tok-41d2-SECRET-logs"
SECRET_KEY = "key-5e6f-SECRET-logs"
SECRET_PASSWORD = "pw-beef-SECRET-logs"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def restore_loguru() -> Iterator[None]:
    yield
    logger.remove()
    logger.configure(extra={})
    logger.add(sys.stderr)


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.mark.timeout(60)
async def test_every_line_about_a_task_carries_task_id_namespace_and_pid(make_config: Callable[..., Config]) -> None:
    cfg = make_config([namespace("chat", "chatty", module="limits_handlers", min_workers=1, max_workers=1)])
    out = io.StringIO()
    configure_logging(LoggingConfig(level="DEBUG", format="json"), stream=out)
    async with Supervisor(cfg) as sup:
        result = await sup.run("chat", {"say": "hello"})
        assert result.ok
    pid = result.result["pid"]
    lines = json_lines(out.getvalue())
    assert all({"time", "level", "message", "namespace", "pid", "task_id"} <= set(line) for line in lines)
    mine = [line for line in lines if line["task_id"] == result.task_id]
    messages = " | ".join(line["message"] for line in mine)
    # The supervisor's own lines and the three ways a worker writes: SDK log, stdout, stderr.
    for expected in ("task started", "task completed", "sdk log line hello", "stdout line hello", "stderr line hello"):
        assert expected in messages, f"{expected!r} not among the task's lines: {messages}"
    for line in mine:
        if line["message"].startswith("task received"):
            continue  # logged before the task is routed to a namespace
        assert line["namespace"] == "chat", line
        assert line["pid"] == pid, line
    ready = [line for line in lines if line["message"].startswith("worker ready")]
    assert ready and ready[0]["pid"] == pid and ready[0]["task_id"] is None


def test_text_on_a_terminal_json_otherwise() -> None:
    tty = Terminal()
    configure_logging(LoggingConfig(format="auto"), stream=tty)
    logger.bind(namespace="ns1", pid=42, task_id="t-1").info("to a person")
    text = tty.getvalue()
    assert "to a person" in text and "ns1" in text and "pid=42" in text and "task=t-1" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.splitlines()[0])

    pipe = io.StringIO()
    configure_logging(LoggingConfig(format="auto"), stream=pipe)
    logger.bind(namespace="ns1", pid=42, task_id="t-1").info("to a machine")
    (doc,) = json_lines(pipe.getvalue())
    assert doc["message"] == "to a machine" and doc["namespace"] == "ns1" and doc["pid"] == 42
    assert doc["task_id"] == "t-1" and doc["level"] == "INFO"

    forced = Terminal()
    configure_logging(LoggingConfig(format="json"), stream=forced)
    logger.info("json even on a terminal")
    assert json_lines(forced.getvalue())[0]["message"] == "json even on a terminal"

    plain = io.StringIO()
    configure_logging(LoggingConfig(format="text"), stream=plain)
    logger.info("text even into a pipe {}", "{braces}")
    assert "text even into a pipe {braces}" in plain.getvalue()
    assert "\x1b[" not in plain.getvalue(), "no colour codes into a pipe"


def test_level_filters() -> None:
    out = io.StringIO()
    configure_logging(LoggingConfig(format="json", level="WARNING"), stream=out)
    logger.info("quiet")
    logger.warning("loud")
    assert [d["message"] for d in json_lines(out.getvalue())] == ["loud"]


def test_file_sink_rotates_and_keeps_retention(tmp_path: Path) -> None:
    log_file = tmp_path / "logs" / "workerhost.log"
    cfg = LoggingConfig(format="json", file=log_file, rotation="2 KB", retention=2)
    configure_logging(cfg, stream=io.StringIO())
    for i in range(300):
        logger.bind(namespace="ns", pid=7, task_id=f"t-{i}").info("line {} {}", i, "x" * 40)
    logger.remove()  # close the file
    files = sorted(log_file.parent.iterdir())
    assert log_file in files
    assert 2 <= len(files) <= 3, [f.name for f in files]  # the current file and at most 2 rotated ones
    last = json_lines(log_file.read_text())
    assert last[-1]["task_id"] == "t-299" and last[-1]["pid"] == 7
    assert log_file.stat().st_size <= 4096


def test_file_sink_from_the_design_keys(make_config: Callable[..., Config], tmp_path: Path) -> None:
    cfg = make_config([namespace("x", "echo")], logging={
        "level": "INFO", "format": "%(asctime)s - %(name)s - %(message)s", "file": "logs/wh.log",
        "max_bytes": 10485760, "backup_count": 5,
    })
    assert cfg.logging.rotation == "10485760 B" and cfg.logging.retention == 5
    configure_logging(cfg, stream=io.StringIO())
    logger.info("into the file")
    logger.remove()
    assert json_lines((tmp_path / "logs" / "wh.log").read_text())[0]["message"] == "into the file"


def test_bad_rotation_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        configure_logging(LoggingConfig(file=tmp_path / "x.log", rotation="whenever"), stream=io.StringIO())
    assert info.value.field == "logging.rotation"


@pytest.mark.timeout(60)
async def test_config_secrets_never_reach_the_log(make_config: Callable[..., Config]) -> None:
    cfg = make_config(
        [namespace("talk", "say", module="limits_handlers", min_workers=1, max_workers=1)],
        task_manager={"type": "redis", "url": f"redis://:{SECRET_PASSWORD}@127.0.0.1:6379/0",
                      "options": {"api_key": SECRET_KEY}},
        monitoring={"enabled": True, "host": "0.0.0.0", "token": SECRET_TOKEN},
    )
    assert set(config_secrets(cfg)) == {SECRET_TOKEN, SECRET_KEY, SECRET_PASSWORD}
    out = io.StringIO()
    configure_logging(cfg, stream=out)
    async with Supervisor(cfg) as sup:
        # A worker that logs a secret (SDK log and stderr) ...
        assert (await sup.run("talk", {"text": f"k={SECRET_KEY}"})).ok
    # ... the supervisor's own code ...
    logger.bind(task_id=SECRET_TOKEN).info("connecting with {}", SECRET_PASSWORD)
    try:
        raise RuntimeError(f"auth failed for {SECRET_KEY}")
    except RuntimeError:
        logger.exception("a library complained")
    text = out.getvalue()
    for secret in (SECRET_TOKEN, SECRET_KEY, SECRET_PASSWORD):
        assert secret not in text
    lines = json_lines(text)
    said = [line for line in lines if "says" in line["message"]]
    assert len(said) == 2 and all("k=***" in line["message"] for line in said)
    assert any(line.get("exception", "").endswith("auth failed for ***") for line in lines)


def test_task_lines_follow_the_sinks_level_as_it_changes() -> None:
    """The observer skips a task's DEBUG/INFO lines only while no sink would take them."""
    from workerhost import events as ev
    from workerhost.logobserver import LoggingObserver

    observe = LoggingObserver()

    def one_task(task_id: str) -> None:
        observe(ev.TaskReceived(task_id=task_id, task_type="t"))
        observe(ev.TaskStarted(namespace="ns", task_id=task_id, task_type="t", attempt=1, worker_pid=7))
        observe(ev.TaskCompleted(namespace="ns", task_id=task_id, task_type="t", attempt=1, duration=0.01,
                                 worker_pid=7))

    warning = io.StringIO()
    configure_logging(LoggingConfig(format="json", level="WARNING"), stream=warning)
    one_task("w")
    assert warning.getvalue() == ""

    info = io.StringIO()
    logger.add(info, level="INFO", format="{message}")  # a second sink, added while running
    one_task("i")
    assert [line for line in info.getvalue().splitlines()] == ["task completed in 0.010s (attempt 1)"]
    assert warning.getvalue() == ""

    debug = io.StringIO()
    logger.add(debug, level="DEBUG", format="{message} {extra[task_id]} {extra[pid]}")
    one_task("d")
    assert debug.getvalue().splitlines() == [
        "task received (t) d None", "task started (attempt 1) d 7", "task completed in 0.010s (attempt 1) d 7",
    ]
