"""Bad task input: each is a clear per-task error, the worker and the supervisor carry on.

In-process through ``Supervisor.run``, and end to end through the real CLI
(``start`` on the embedded queue, ``submit --wait``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers.ops import Started
from workerhost import FailureKind, Supervisor, Task, TaskStatus

from .conftest import fns

pytestmark = pytest.mark.timeout(90)

LIMIT = 64 * 1024
CLI = [sys.executable, "-m", "workerhost.cli"]


# -- in-process ---------------------------------------------------------------------------------
@pytest.mark.parametrize("params", [
    {"blob": "x" * (LIMIT * 3)},  # bigger than max_frame_bytes
    {"when": object()},  # not JSON at all
    {"ratio": float("nan")},  # JSON without NaN
    {"raw": b"\x00\x01"},  # bytes over the JSON codec
], ids=["oversized", "object", "nan", "bytes"])
async def test_params_a_worker_cannot_be_sent_are_rejected_and_the_worker_stays(make_config: Any,
                                                                                params: dict[str, Any]) -> None:
    cfg = make_config([fns("echo", "ok", max_frame_bytes=LIMIT, min_workers=1, max_workers=1, max_retries=3)])
    async with Supervisor(cfg) as sup:
        pool = sup.pools["echo"]
        pid = pool.live[0].pid
        r = await sup.run(Task(type="echo", params=params))
        assert r.status is TaskStatus.FAILED
        assert r.error.type == "InvalidParams" and r.error.kind is FailureKind.REJECTED
        assert not r.error.retry_possible and r.attempts == 1
        if "blob" in params:
            assert f"limit of {LIMIT} bytes" in r.error.message and "max_frame_bytes" in r.error.message
        # The worker never saw a byte of it: it is idle, not wedged as busy, and serves the next task.
        assert pool.busy == 0 and [w.pid for w in pool.live] == [pid]
        ok = await sup.run("echo", {"n": 2})
        assert ok.ok and ok.result["pid"] == pid


@pytest.mark.parametrize(("kind", "words"), [("big", f"exceeds the limit of {LIMIT} bytes"),
                                            ("nan", "Out of range float values"),
                                            ("object", "not JSON serializable")])
async def test_results_that_cannot_travel_are_a_task_error(make_config: Any, kind: str, words: str) -> None:
    cfg = make_config([fns("res", "result_of", max_frame_bytes=LIMIT, min_workers=1, max_workers=1)])
    async with Supervisor(cfg) as sup:
        pid = sup.pools["res"].live[0].pid
        r = await sup.run("res", {"kind": kind, "bytes": LIMIT * 2})
        assert r.error.type == "ResultNotSerializable" and not r.error.retry_possible and r.attempts == 1
        assert words in r.error.message, r.error.message
        assert [w.pid for w in sup.pools["res"].live] == [pid]


# -- through the CLI on the embedded queue --------------------------------------------------------
@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One real ``start`` on the embedded queue for the whole module; yields its config."""
    tmp = tmp_path_factory.mktemp("badinput")
    config = tmp / "workerhost.yaml"
    config.write_text(yaml.safe_dump({
        "version": "1.0",
        "workers": [
            fns("echo", "ok", task_types=["Echo"], max_frame_bytes=LIMIT),
            fns("res", "result_of", task_types=["Result"], max_frame_bytes=LIMIT),
            fns("mp", "result_of", task_types=["Packed"], codec="msgpack"),
        ],
        "task_manager": {"type": "embedded", "poll_interval": 0.02, "poll_max_interval": 0.2, "lease_seconds": 2},
    }, sort_keys=False))
    started = Started(tmp)
    proc = started.start(config)
    try:
        yield config
        assert proc.poll() is None, started.log()  # alive through every bad input
    finally:
        started.cleanup()


def submit(config: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "submit", "-c", str(config), *args], input=stdin, capture_output=True, text=True,
                          timeout=60)


def records(res: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in res.stdout.splitlines()]


def test_unknown_task_type_is_refused_at_submit(running: Path) -> None:
    res = submit(running, "NoSuchType", "--params", "{}", "--wait", "--timeout", "20")
    assert res.returncode == 2, (res.stdout, res.stderr)
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1 and "unknown task type 'NoSuchType'" in err and "Echo" in err
    res = submit(running, "--wait", "--timeout", "20",
                 stdin='{"type": "Echo", "params": {}}\n{"type": "Nope", "params": {}}\n')
    assert res.returncode == 2 and "stdin line 2" in res.stderr and "'Nope'" in res.stderr


@pytest.mark.parametrize("params", ["[1, 2]", '"text"', "7", "null", "{not json"])
def test_params_that_are_not_an_object_are_refused_at_submit(running: Path, params: str) -> None:
    res = submit(running, "Echo", "--params", params, "--wait", "--timeout", "20")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "--params" in res.stderr and len(res.stderr.strip().splitlines()) == 1


async def test_params_not_an_object_from_the_python_producer_fail_the_task(running: Path) -> None:
    from workerhost.sources.embedded import EmbeddedProducer

    producer = EmbeddedProducer(running.parent / ".workerhost" / "queue.db")
    try:
        task_id = await producer.submit("Echo", [1, 2, 3])  # type: ignore[arg-type]
        record = await producer.wait(task_id, timeout=30)
    finally:
        await producer.close()
    assert record.status == "failed" and record.error["type"] == "InvalidParams"


def test_oversized_params_fail_that_task_only(running: Path) -> None:
    lines = "\n".join(json.dumps(item) for item in (
        {"type": "Echo", "params": {"n": 1}},
        {"type": "Echo", "params": {"blob": "x" * (LIMIT * 2)}},
        {"type": "Echo", "params": {"n": 3}},
    ))
    res = submit(running, "--wait", "--timeout", "40", stdin=lines)
    assert res.returncode == 1, res.stderr  # one of them failed
    first, big, third = records(res)
    assert first["status"] == "completed" and third["status"] == "completed"
    assert big["status"] == "failed" and big["attempts"] == 1
    assert big["error"]["type"] == "InvalidParams" and "max_frame_bytes" in big["error"]["message"]


@pytest.mark.parametrize(("task_type", "kind"), [("Result", "object"), ("Result", "nan"), ("Result", "big"),
                                                 ("Packed", "bytes")])
def test_results_that_cannot_be_stored_fail_that_task(running: Path, task_type: str, kind: str) -> None:
    res = submit(running, task_type, "--params", json.dumps({"kind": kind, "bytes": LIMIT * 2}), "--wait",
                 "--timeout", "30")
    assert res.returncode == 1, (res.stdout, res.stderr)
    [record] = records(res)
    assert record["status"] == "failed" and record["attempts"] == 1, record
    assert record["error"]["type"] == "ResultNotSerializable"
    ok = submit(running, "Echo", "--params", '{"n": 1}', "--wait", "--timeout", "30")
    assert ok.returncode == 0 and records(ok)[0]["status"] == "completed"
