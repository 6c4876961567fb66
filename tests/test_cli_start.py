"""``start``, ``submit``, ``tasks`` and ``dead`` as real subprocesses on the embedded queue.

The supervisor under test is the real CLI (``python -m workerhost.cli start``);
the tests read the queue file directly with :class:`EmbeddedProducer`.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import namespace
from tests.fake_taskmanager import FakeTaskManager
from tests.helpers.ops import Started
from workerhost.sources.embedded import EmbeddedProducer

CLI = [sys.executable, "-m", "workerhost.cli"]


def cli(*args: str, stdin: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], input=stdin, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def sups(tmp_path: Path) -> Iterator[Started]:
    s = Started(tmp_path)
    yield s
    s.cleanup()


def ns(name: str, function: str, **extra: Any) -> dict[str, Any]:
    return namespace(name, function, module="source_handlers", **extra) if function in (
        "nap", "fail_unless_file") else namespace(name, function, **extra)


FAST_TM = {"type": "embedded", "poll_interval": 0.02, "poll_max_interval": 0.2, "lease_seconds": 1.5}


async def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


@pytest.mark.timeout(120)
async def test_start_processes_tasks_submitted_with_wait(tmp_path: Path, write_config: Any, sups: Started) -> None:
    config = write_config([ns("echo", "echo", task_types=["Echo"])])  # no task_manager: embedded default
    proc = sups.start(config)
    res = cli("submit", "-c", str(config), "Echo", "--params", '{"text": "hi"}', "--wait", "--timeout", "60")
    assert res.returncode == 0, res.stderr
    record = json.loads(res.stdout)
    assert record["status"] == "completed" and record["result"]["params"] == {"text": "hi"}
    assert record["result"]["attempt"] == 1
    lines = "\n".join(json.dumps({"type": "Echo", "params": {"n": i}}) for i in range(5))
    res = cli("submit", "-c", str(config), "--wait", "--timeout", "60", stdin=lines)
    assert res.returncode == 0, res.stderr
    assert sorted(json.loads(x)["result"]["params"]["n"] for x in res.stdout.splitlines()) == list(range(5))
    res = cli("tasks", "-c", str(config), "--json")
    assert json.loads(res.stdout)["counts"]["completed"] == 6
    assert (tmp_path / ".workerhost" / "queue.db").is_file()
    assert sups.stop(proc) == 0
    # Without --wait only ids are printed; an unknown status filter prints nothing.
    res = cli("submit", "-c", str(config), "Echo", "--params", "{}")
    assert res.returncode == 0 and len(res.stdout.strip()) == 32


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_sigkill_mid_run_then_restart_loses_nothing(tmp_path: Path, write_config: Any,
                                                          sups: Started) -> None:
    config = write_config([ns("nap", "nap", task_types=["Nap"], max_workers=2, min_workers=2)], task_manager=FAST_TM)
    lines = "\n".join(json.dumps({"type": "Nap", "params": {"n": i, "seconds": 0.01}}) for i in range(1000))
    res = cli("submit", "-c", str(config), stdin=lines)
    assert res.returncode == 0, res.stderr
    ids = res.stdout.split()
    assert len(ids) == 1000
    prod = EmbeddedProducer(tmp_path / ".workerhost" / "queue.db")
    first = sups.start(config)

    async def some_done() -> bool:
        return (await prod.counts())["completed"] >= 150

    await wait_until(some_done, 240, "150 completed tasks")
    first.kill()  # SIGKILL: no release, no goodbye
    first.wait(10)
    counts = await prod.counts()
    assert counts["completed"] < 1000 and counts["claimed"] >= 1, counts
    sups.start(config)

    async def all_done() -> dict[str, int] | None:
        c = await prod.counts()
        return c if c["completed"] == 1000 else None

    counts = await wait_until(all_done, 400, "all 1,000 tasks completed")
    assert counts == {"pending": 0, "claimed": 0, "completed": 1000, "failed": 0, "dead": 0}
    records = await prod.list_tasks(limit=2000)
    assert sorted(r.id for r in records) == sorted(ids)
    assert sorted(r.result["n"] for r in records) == list(range(1000))
    # The tasks the killed supervisor held came back once their leases ran out.
    assert any(r.attempts >= 2 for r in records)
    await prod.close()


@pytest.mark.timeout(180)
async def test_a_busy_namespace_does_not_starve_another(tmp_path: Path, write_config: Any,
                                                        sups: Started) -> None:
    tm = {**FAST_TM, "prefetch": 1}
    config = write_config([ns("slow", "nap", task_types=["Slow"], max_workers=1, min_workers=1),
                           ns("fast", "echo", task_types=["Fast"], max_workers=1, min_workers=1)], task_manager=tm)
    prod = EmbeddedProducer(tmp_path / ".workerhost" / "queue.db")
    slow = await prod.submit_many([("Slow", {"seconds": 1.0, "n": i}) for i in range(8)])
    fast = await prod.submit_many([("Fast", {"n": i}) for i in range(30)])
    sups.start(config)
    held_slow: list[int] = []

    async def fast_done() -> bool:
        recs = [await prod.get(i) for i in slow]
        held_slow.append(sum(1 for r in recs if r.status == "claimed"))
        fast_recs = [await prod.get(i) for i in fast]
        return all(r.status == "completed" for r in fast_recs)

    await wait_until(fast_done, 120, "the fast namespace's tasks")
    slow_left = [r for r in [await prod.get(i) for i in slow] if r.status != "completed"]
    assert slow_left, "the slow namespace finished first: the test proves nothing"
    # Never more slow tasks claimed than its one worker plus the prefetch of one.
    assert max(held_slow) <= 2
    await prod.close()


@pytest.mark.timeout(180)
async def test_delayed_retry_survives_a_restart(tmp_path: Path, write_config: Any, sups: Started) -> None:
    config = write_config([ns("flaky", "fail_until", task_types=["Flaky"], max_retries=2,
                              retry={"backoff": 4.0, "jitter": False})], task_manager=FAST_TM)
    prod = EmbeddedProducer(tmp_path / ".workerhost" / "queue.db")
    tid = await prod.submit("Flaky", {"succeed_on": 2})
    proc = sups.start(config)

    async def waiting_for_retry() -> bool:
        rec = await prod.get(tid)
        return rec.status == "pending" and rec.attempts == 1 and rec.error is not None

    await wait_until(waiting_for_retry, 60, "the first failure")
    assert sups.stop(proc) == 0  # the retry is in the file, not in this process
    rec = await prod.get(tid)
    assert rec.status == "pending" and rec.error["message"] == "attempt 1 fails"
    sups.start(config)
    res = cli("submit", "-c", str(config), "Flaky", "--params", '{"succeed_on": 2}', "--wait", "--timeout", "60")
    # The same params make a new task (no dedupe key); both end completed on attempt 2.
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["result"] == {"attempt": 2}
    done = await prod.wait(tid, timeout=60)
    assert done.status == "completed" and done.result == {"attempt": 2} and done.attempts == 2
    await prod.close()


@pytest.mark.timeout(180)
async def test_dead_letter_after_max_attempts_then_requeue(tmp_path: Path, write_config: Any,
                                                          sups: Started) -> None:
    config = write_config([ns("picky", "fail_unless_file", task_types=["Picky"], max_retries=1)],
                          task_manager=FAST_TM)
    marker = tmp_path / "fixed"
    sups.start(config)
    res = cli("submit", "-c", str(config), "Picky", "--params", json.dumps({"marker": str(marker)}), "--wait",
              "--timeout", "60")
    assert res.returncode == 1  # it ended dead
    record = json.loads(res.stdout)
    assert record["status"] == "dead" and record["attempts"] == 2
    listing = json.loads(cli("dead", "-c", str(config), "--json").stdout)
    assert [r["id"] for r in listing] == [record["id"]]
    marker.touch()  # "fix the bug", then requeue
    res = cli("dead", "-c", str(config), "--requeue", record["id"])
    assert res.returncode == 0, res.stderr
    assert cli("dead", "-c", str(config), "--requeue", "nope").returncode == 1
    prod = EmbeddedProducer(tmp_path / ".workerhost" / "queue.db")
    done = await prod.wait(record["id"], timeout=60)
    assert done.status == "completed" and done.result == {"ok": True, "attempt": 1}
    assert cli("dead", "-c", str(config), "--requeue-all").stdout.strip() == "requeued 0 task(s)"
    await prod.close()


def test_bad_task_manager_section_is_a_config_error(write_config: Any) -> None:
    config = write_config([ns("echo", "echo")], task_manager={"type": "embedded", "lease_seconds": -1})
    res = cli("submit", "-c", str(config), "echo", "--params", "{}")
    assert res.returncode == 2
    assert "task_manager.lease_seconds" in res.stderr and str(config) in res.stderr
    config = write_config([ns("echo", "echo")], task_manager={"type": "kafka"}, name="other.yaml")
    res = cli("tasks", "-c", str(config))
    assert res.returncode == 2 and "task_manager.type" in res.stderr


@pytest.mark.timeout(60)
def test_start_exits_3_when_the_taskmanager_refuses_the_key(write_config: Any, sups: Started) -> None:
    with FakeTaskManager(api_key="right") as fake:
        fake.add_type("Echo")
        config = write_config([ns("echo", "echo", task_types=["Echo"])], task_manager={
            "type": "http", "url": fake.url, "api_key": "${TEST_TM_KEY}"})
        env = {**os.environ, "TEST_TM_KEY": "wrong"}
        res = subprocess.run([*CLI, "start", "-c", str(config)], capture_output=True, text=True, timeout=50, env=env)
    assert res.returncode == 3
    assert "authentication failed" in res.stderr


@pytest.mark.timeout(120)
def test_second_signal_gives_running_tasks_back_at_once(tmp_path: Path, write_config: Any,
                                                        sups: Started) -> None:
    config = write_config([ns("nap", "nap", task_types=["Nap"], max_workers=1)], task_manager=FAST_TM)
    res = cli("submit", "-c", str(config), "Nap", "--params", '{"seconds": 60}')
    tid = res.stdout.strip()
    proc = sups.start(config, "--graceful-timeout", "120")
    deadline = time.monotonic() + 60
    while json.loads(cli("tasks", "-c", str(config), "--json").stdout)["counts"]["claimed"] != 1:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    time.sleep(1.0)
    assert proc.poll() is None  # still waiting for the running task
    started = time.monotonic()
    assert sups.stop(proc, signal.SIGINT) == 0
    assert time.monotonic() - started < 30
    rec = json.loads(cli("tasks", "-c", str(config), "--json").stdout)["tasks"][0]
    assert rec["id"] == tid and rec["status"] == "pending" and rec["attempts"] == 0
