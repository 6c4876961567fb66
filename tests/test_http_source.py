"""The PrismQ TaskManager adapter against the strict fake server (real HTTP on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import namespace
from tests.fake_taskmanager import FakeTaskManager
from workerhost.dispatch import Dispatcher, DispatchOptions, DispatchState
from workerhost.errors import SourceError, SourceFatal
from workerhost.records import TaskError
from workerhost.sources import make_producer, make_source
from workerhost.sources.http import HttpSource
from workerhost.supervisor import Supervisor

FAST = DispatchOptions(poll_interval=0.01, poll_max_interval=0.05, error_backoff=0.01, error_backoff_max=0.05)


@pytest.fixture
def fake() -> Iterator[FakeTaskManager]:
    with FakeTaskManager(api_key="k1") as server:
        yield server


def tm(fake: FakeTaskManager, **extra: Any) -> dict[str, Any]:
    return {"type": "http", "url": fake.url, "api_key": "k1", "poll_interval": 0.01, "poll_max_interval": 0.05,
            **extra}


async def wait_for(predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def run_dispatcher(config: Any, until: Any, timeout: float = 30.0) -> Dispatcher:
    async with Supervisor(config) as sup:
        d = Dispatcher(sup, make_source(config), options=FAST)
        await d.start()
        try:
            await wait_for(until, timeout)
        finally:
            await d.stop(5)
    return d


async def test_fake_is_strict(fake: FakeTaskManager) -> None:
    fake.add_type("T")
    async with httpx.AsyncClient() as c:
        r = await c.post(fake.url + "/tasks", json={"type": "T", "params": {}}, headers={"X-API-Key": "k1"})
        assert r.status_code == 400 and r.json()["details"] == ["Field 'params' must be of type object"]
        r = await c.post(fake.url + "/tasks", json={"type": "T", "params": {"a": 1}}, headers={"X-API-Key": "bad"})
        assert r.status_code == 401 and r.headers["content-type"].startswith("text/html")
        assert r.json()["error"] == "Unauthorized" and "success" not in r.json()
        r = await c.post(fake.url + "/tasks/claim", json={"worker_id": "w"}, headers={"X-API-Key": "k1"})
        assert r.status_code == 400
        r = await c.post(fake.url + "/tasks/claim", json={"worker_id": "w", "task_type_id": 1},
                         headers={"X-API-Key": "k1"})
        assert r.status_code == 500 and r.json()["error"] == "There is no active transaction"
        tid = fake.add_task("T", {"a": 1})
        r = await c.post(fake.url + "/tasks/claim", json={"worker_id": "w", "task_type_id": 1},
                         headers={"X-API-Key": "k1"})
        assert r.json()["data"]["id"] == tid
        r = await c.post(fake.url + f"/tasks/{tid}/progress", json={"worker_id": "w", "progress": "50"},
                         headers={"X-API-Key": "k1"})
        assert r.status_code == 400
        r = await c.get(fake.url + "/task-types", headers={"X-API-Key": "k1"})
        assert r.status_code == 500


@pytest.mark.timeout(60)
async def test_claim_progress_complete(fake: FakeTaskManager, make_config: Any) -> None:
    fake.add_type("Echo")
    fake.add_type("Prog")
    ids = [fake.add_task("Echo", {"n": i}) for i in range(5)]
    pid = fake.add_task("Prog", {"x": 1})
    config = make_config([namespace("echo", "echo", task_types=["Echo"]),
                          namespace("prog", "progress", task_types=["Prog"])], task_manager=tm(fake))
    await run_dispatcher(config, lambda: all(t["status"] == "completed" for t in fake.tasks.values()))
    for i, tid in enumerate(ids):
        task = fake.tasks[tid]
        assert task["attempts"] == 1
        assert json.loads(task["result_json"])["params"] == {"n": i}
    assert fake.tasks[pid]["progress"] == 100
    progress = [b for b in fake.calls("POST", f"/api/tasks/{pid}/progress")]
    assert progress and all(isinstance(b["progress"], int) for b in progress)
    assert fake.calls("GET", "/api/task-types") == [None, None]  # one lookup per type, never the list


@pytest.mark.timeout(60)
async def test_failure_is_retried_by_the_server(fake: FakeTaskManager, make_config: Any) -> None:
    fake.add_type("Flaky")
    fake.add_type("Bad")
    flaky = fake.add_task("Flaky", {"succeed_on": 2})
    bad = fake.add_task("Bad", {"kind": "validation"})
    config = make_config([namespace("flaky", "fail_until", task_types=["Flaky"]),
                          namespace("bad", "fail", task_types=["Bad"])], task_manager=tm(fake))
    await run_dispatcher(config, lambda: fake.tasks[flaky]["status"] == "completed"
                         and fake.tasks[bad]["status"] == "failed")
    assert fake.tasks[flaky]["attempts"] == 2
    # Not retriable for us, but the server re-queues failures until its MAX_TASK_ATTEMPTS.
    assert fake.tasks[bad]["attempts"] == 3
    assert "ValidationError" in fake.tasks[bad]["error_message"]


async def test_expired_claim_is_not_ours_any_more(fake: FakeTaskManager, make_config: Any) -> None:
    fake.add_type("T")
    fake.add_task("T", {"a": 1})
    config = make_config([namespace("t", "echo", task_types=["T"])], task_manager=tm(fake, worker_id="us"))
    other_config = make_config([namespace("t", "echo", task_types=["T"])], task_manager=tm(fake, worker_id="them"))
    ours, theirs = make_source(config), make_source(other_config)
    await ours.connect()
    await theirs.connect()
    (mine,) = await ours.claim(["T"], 5)
    assert mine.task.id == "1" and mine.task.attempt == 1
    fake.advance(301)  # past TASK_CLAIM_TIMEOUT: progress would not have helped
    (stolen,) = await theirs.claim(["T"], 5)
    assert stolen.task.attempt == 2
    await ours.progress(mine, 50, None)  # 403: logged, not raised
    await ours.complete(mine, {"late": True})  # 403 "claimed by another worker": logged, not raised
    assert fake.tasks[1]["status"] == "claimed"
    await theirs.complete(stolen, {"ok": True})
    await ours.fail(mine, TaskError(type="X", message="y"))  # 400 "not in claimed state"
    assert fake.tasks[1]["status"] == "completed"
    assert len(fake.calls("POST", "/api/tasks/1/complete")) == 3  # nothing retried
    await ours.close()
    await theirs.close()


@pytest.mark.parametrize("style", ["500", "404"])
async def test_empty_queue_is_nothing_to_do(style: str, make_config: Any) -> None:
    with FakeTaskManager(api_key="k1", empty_style=style) as fake:
        fake.add_type("T")
        config = make_config([namespace("t", "echo", task_types=["T"])], task_manager=tm(fake))
        src = make_source(config)
        await src.connect()
        assert await src.claim(["T"], 3) == []
        fake.add_task("T", {"a": 1})
        assert len(await src.claim(["T"], 3)) == 1
        await src.close()


async def test_other_server_errors_raise_source_error(fake: FakeTaskManager, make_config: Any) -> None:
    config = make_config([namespace("t", "echo", task_types=["T"])],
                         task_manager=tm(fake, url=fake.url.replace("/api", "/wrong")))
    src = make_source(config)
    with pytest.raises(SourceError, match="Endpoint not found"):
        await src.connect()
    await src.close()


@pytest.mark.timeout(60)
async def test_bad_key_stops_the_source(fake: FakeTaskManager, make_config: Any) -> None:
    fake.add_type("T")
    fake.add_task("T", {"a": 1})
    config = make_config([namespace("t", "echo", task_types=["T"])], task_manager=tm(fake, api_key="wrong"))
    with pytest.raises(SourceFatal, match="authentication failed"):
        await make_source(config).connect()
    async with Supervisor(config) as sup:
        d = Dispatcher(sup, make_source(config), options=FAST)
        await d.start()
        await asyncio.wait_for(d.wait(), 10)
        assert d.state is DispatchState.FAILED and "authentication failed" in (d.failure or "")
        seen = len(fake.requests)
        await asyncio.sleep(0.3)
        assert len(fake.requests) == seen  # it does not spin
        await d.stop(1)
    assert fake.tasks[1]["status"] == "pending"


async def test_rate_limit_honours_retry_after(fake: FakeTaskManager, make_config: Any) -> None:
    fake.add_type("T")
    fake.add_task("T", {"a": 1})
    config = make_config([namespace("t", "echo", task_types=["T"])], task_manager=tm(fake))
    src = make_source(config)
    await src.connect()
    fake.rate_limit(2, retry_after="1")
    started = time.monotonic()
    (claimed,) = await src.claim(["T"], 1)
    assert time.monotonic() - started >= 1.9  # two waits of Retry-After: 1
    assert claimed.task.id == "1"
    await src.close()


async def test_unknown_type_is_not_claimed_and_register_types_upserts(fake: FakeTaskManager,
                                                                      make_config: Any) -> None:
    config = make_config([namespace("t", "echo", task_types=["T"])], task_manager=tm(fake))
    src = make_source(config)
    await src.connect()
    assert await src.claim(["T"], 2) == []
    assert fake.calls("POST", "/api/tasks/claim") == []
    await src.close()
    config = make_config([namespace("t", "echo", task_types=["T"])], task_manager=tm(fake, register_types=True))
    src = make_source(config)
    assert isinstance(src, HttpSource)
    await src.connect()
    assert [b["name"] for b in fake.calls("POST", "/api/task-types/register")] == ["T"]
    fake.add_task("T", {"a": 1})
    assert len(await src.claim(["T"], 2)) == 1
    await src.close()


async def test_release_reports_a_failure_the_server_requeues(fake: FakeTaskManager, make_config: Any) -> None:
    fake.add_type("T")
    fake.add_task("T", {"a": 1})
    config = make_config([namespace("t", "echo", task_types=["T"])], task_manager=tm(fake))
    src = make_source(config)
    await src.connect()
    (claimed,) = await src.claim(["T"], 1)
    await src.release(claimed)
    assert fake.tasks[1]["status"] == "pending"
    await src.close()


async def test_producer_submit_dedupe_and_read_back(fake: FakeTaskManager, make_config: Any) -> None:
    fake.add_type("T")
    config = make_config([namespace("t", "echo", task_types=["T"])], task_manager=tm(fake))
    prod = make_producer(config)
    with pytest.raises(SourceError, match="non-empty"):
        await prod.submit("T", {})
    tid = await prod.submit("T", {"a": 1})
    assert tid == "1" and await prod.submit("T", {"a": 1}) == tid
    rec = await prod.get(tid)
    assert rec is not None and rec.status == "pending" and rec.params == {"a": 1}
    assert await prod.get("999") is None
    src = make_source(config)
    await src.connect()
    (c,) = await src.claim(["T"], 1)
    await src.complete(c, {"x": 1})
    rec = await prod.get(tid)
    assert rec.status == "completed" and rec.result == {"x": 1} and rec.attempts == 1
    # An empty result is stored as null by the server.
    tid2 = await prod.submit("T", {"a": 2})
    (c,) = await src.claim(["T"], 1)
    await src.complete(c, {})
    assert (await prod.get(tid2)).result is None
    assert (await prod.counts())["completed"] == 2
    await src.close()
    await prod.close()
