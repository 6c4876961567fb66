"""The embedded SQLite queue: states, leases, retries, dead-letter, several processes on one file."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from workerhost.records import FailureKind, Task, TaskError
from workerhost.sources.base import DeadLetters, Inspectable, Producer, RenewsLeases, TaskSource
from workerhost.sources.embedded import EmbeddedProducer, EmbeddedSource

ERR = TaskError(type="Boom", message="it broke")


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "q" / "queue.db"


async def test_contracts(db: Path) -> None:
    src, prod = EmbeddedSource(db), EmbeddedProducer(db)
    assert isinstance(src, TaskSource) and isinstance(src, RenewsLeases)
    assert isinstance(prod, Producer) and isinstance(prod, Inspectable) and isinstance(prod, DeadLetters)
    await src.close()
    await prod.close()


async def test_submit_claim_complete_and_read_back(db: Path) -> None:
    prod, src = EmbeddedProducer(db), EmbeddedSource(db)
    await src.connect()
    tid = await prod.submit("t", {"x": 1}, metadata={"m": 2})
    assert (await prod.get(tid)).status == "pending"
    (claimed,) = await src.claim(["t"], 10)
    assert claimed.task.id == tid and claimed.task.params == {"x": 1} and claimed.task.metadata == {"m": 2}
    assert claimed.task.attempt == 1
    assert (await prod.get(tid)).status == "claimed"
    assert await src.claim(["t"], 10) == []
    await src.progress(claimed, 40, "almost")
    assert (await prod.get(tid)).progress == 40
    await src.complete(claimed, {"answer": 42})
    rec = await prod.get(tid)
    assert rec.status == "completed" and rec.result == {"answer": 42} and rec.attempts == 1
    assert await prod.counts() == {"pending": 0, "claimed": 0, "completed": 1, "failed": 0, "dead": 0}
    assert await prod.get("nope") is None
    await src.close()
    await prod.close()


async def test_priority_type_filter_and_dedupe(db: Path) -> None:
    prod, src = EmbeddedProducer(db), EmbeddedSource(db)
    low = await prod.submit("t", {"n": 1})
    high = await prod.submit("t", {"n": 2}, priority=5)
    other = await prod.submit("u", {"n": 3})
    again = await prod.submit("t", {"n": 4}, dedupe_key="k")
    assert await prod.submit("t", {"n": 5}, dedupe_key="k") == again
    claimed = await src.claim(["t"], 2)
    assert [c.task.id for c in claimed] == [low, high] or [c.task.id for c in claimed] == [high, low]
    assert {c.task.id for c in claimed} == {low, high}
    assert [c.task.id for c in await src.claim(["t"], 5)] == [again]
    assert [c.task.id for c in await src.claim(["u", "t"], 5)] == [other]
    await src.close()
    await prod.close()


async def test_delayed_retry_keeps_budgets_and_waits(db: Path) -> None:
    prod, src = EmbeddedProducer(db), EmbeddedSource(db)
    tid = await prod.submit("t", {})
    (c,) = await src.claim(["t"], 1)
    nxt = Task(type="t", id=tid, attempt=2, failures=1, worker_losses=0, route_index=1)
    await src.retry(c, nxt, 0.4, ERR)
    rec = await prod.get(tid)
    assert rec.status == "pending" and rec.error["type"] == "Boom"
    assert await src.claim(["t"], 1) == []
    await asyncio.sleep(0.5)
    (c2,) = await src.claim(["t"], 1)
    assert (c2.task.attempt, c2.task.failures, c2.task.route_index) == (2, 1, 1)
    await src.close()
    await prod.close()


async def test_expired_lease_is_handed_out_again_and_stale_reports_are_ignored(db: Path) -> None:
    prod = EmbeddedProducer(db)
    a, b = EmbeddedSource(db, lease_seconds=0.3, owner="a"), EmbeddedSource(db, lease_seconds=30, owner="b")
    tid = await prod.submit("t", {})
    (ca,) = await a.claim(["t"], 1)
    assert await b.claim(["t"], 1) == []
    await asyncio.sleep(0.4)
    (cb,) = await b.claim(["t"], 1)
    assert cb.task.id == tid and cb.task.attempt == 2
    await a.complete(ca, {"from": "a"})  # too late: not a's any more
    assert (await prod.get(tid)).status == "claimed"
    await b.complete(cb, {"from": "b"})
    assert (await prod.get(tid)).result == {"from": "b"}
    for s in (a, b, prod):
        await s.close()


async def test_renewal_keeps_a_long_task_from_being_handed_out_twice(db: Path) -> None:
    prod = EmbeddedProducer(db)
    a, b = EmbeddedSource(db, lease_seconds=0.3, owner="a"), EmbeddedSource(db, owner="b")
    await prod.submit("t", {})
    held = await a.claim(["t"], 1)
    for _ in range(8):
        await asyncio.sleep(0.1)
        await a.renew(held)
        assert await b.claim(["t"], 1) == []
    for s in (a, b, prod):
        await s.close()


async def test_release_gives_the_claim_back_without_spending_an_attempt(db: Path) -> None:
    prod, src = EmbeddedProducer(db), EmbeddedSource(db)
    tid = await prod.submit("t", {})
    (c,) = await src.claim(["t"], 1)
    await src.release(c)
    rec = await prod.get(tid)
    assert rec.status == "pending" and rec.attempts == 0
    (c2,) = await src.claim(["t"], 1)
    assert c2.task.attempt == 1
    await src.close()
    await prod.close()


async def test_dead_letter_list_and_requeue(db: Path) -> None:
    prod, src = EmbeddedProducer(db), EmbeddedSource(db)
    spent = await prod.submit("t", {"n": 1})
    invalid = await prod.submit("t", {"n": 2})
    c1, c2 = await src.claim(["t"], 2)
    by_id = {c1.task.id: c1, c2.task.id: c2}
    await src.fail(by_id[spent], ERR)
    await src.fail(by_id[invalid], TaskError(type="ValidationError", message="bad", retry_possible=False))
    assert (await prod.get(spent)).status == "dead"
    assert (await prod.get(invalid)).status == "failed"
    assert [r.id for r in await prod.dead_letters()] == [spent]
    assert await prod.requeue_all() == 1
    assert await prod.requeue(invalid) is True
    assert await prod.requeue("unknown") is False
    recs = [await prod.get(spent), await prod.get(invalid)]
    assert all(r.status == "pending" and r.attempts == 0 and r.error is None for r in recs)
    rejected = TaskError(type="UnknownTaskType", message="x", retry_possible=False, kind=FailureKind.REJECTED)
    (c,) = await src.claim(["t"], 1)
    await src.fail(c, rejected)
    assert (await prod.get(c.task.id)).status == "failed"
    await src.close()
    await prod.close()


async def test_a_task_whose_supervisors_keep_dying_is_dead_lettered(db: Path) -> None:
    prod = EmbeddedProducer(db)
    tid = await prod.submit("t", {})
    for n in range(3):
        src = EmbeddedSource(db, lease_seconds=0.1, max_lease_expiries=2, owner=f"s{n}")
        assert len(await src.claim(["t"], 1)) == 1  # and then its supervisor "dies"
        await src.close()
        await asyncio.sleep(0.15)
    src = EmbeddedSource(db, lease_seconds=0.1, max_lease_expiries=2)
    assert await src.claim(["t"], 1) == []
    rec = await prod.get(tid)
    assert rec.status == "dead" and rec.error["type"] == "LeaseExpired"
    await src.close()
    await prod.close()


async def test_claim_waits_for_a_locked_file_without_blocking_the_loop(db: Path) -> None:
    prod, src = EmbeddedProducer(db), EmbeddedSource(db)
    await prod.submit("t", {})
    lock = sqlite3.connect(str(db), isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    t = asyncio.get_running_loop().create_task(ticker())
    claim = asyncio.get_running_loop().create_task(src.claim(["t"], 1))
    await asyncio.sleep(0.5)
    assert not claim.done() and ticks >= 10  # the loop kept running while SQLite waited
    lock.execute("ROLLBACK")
    lock.close()
    assert len(await asyncio.wait_for(claim, 10)) == 1
    t.cancel()
    await src.close()
    await prod.close()


async def test_a_cancelled_claim_gives_its_tasks_back(db: Path) -> None:
    prod, src = EmbeddedProducer(db), EmbeddedSource(db)
    tid = await prod.submit("t", {})
    lock = sqlite3.connect(str(db), isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    claim = asyncio.get_running_loop().create_task(src.claim(["t"], 1))
    await asyncio.sleep(0.1)
    claim.cancel()
    lock.execute("ROLLBACK")
    lock.close()
    with pytest.raises(asyncio.CancelledError):
        await claim
    await src.close()  # waits for the claim and the release on the queue's thread
    rec = await prod.get(tid)
    assert rec.status == "pending" and rec.attempts == 0
    await prod.close()


CLAIMER = textwrap.dedent("""
    import asyncio, json, sys
    from pathlib import Path
    from workerhost.sources.embedded import EmbeddedSource

    async def main():
        src = EmbeddedSource(Path(sys.argv[1]), owner=sys.argv[2])
        got = []
        while True:
            batch = await src.claim(["t"], 7)
            if not batch:
                break
            for c in batch:
                await src.complete(c, {"by": sys.argv[2]})
                got.append(c.task.id)
        await src.close()
        print(json.dumps(got))

    asyncio.run(main())
""")


@pytest.mark.timeout(120)
async def test_several_processes_share_one_file_without_double_claims(db: Path) -> None:
    prod = EmbeddedProducer(db)
    ids = await prod.submit_many([("t", {"n": i}) for i in range(600)])
    procs = [subprocess.Popen([sys.executable, "-c", CLAIMER, str(db), f"p{i}"], stdout=subprocess.PIPE, text=True)
             for i in range(4)]
    outs = []
    deadline = time.monotonic() + 100
    for p in procs:
        out, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        assert p.returncode == 0
        outs.append(json.loads(out))
    claimed = [i for out in outs for i in out]
    assert sorted(claimed) == sorted(ids)  # every task once, none twice
    assert (await prod.counts())["completed"] == 600
    await prod.close()


@pytest.mark.timeout(60)
def test_many_processes_opening_a_fresh_queue_file_at_once(tmp_path: Path) -> None:
    """Racing to switch a new file to WAL must wait, not fail with "database is locked"."""
    import subprocess
    import sys

    path = tmp_path / "fresh" / "queue.db"
    code = (
        "import sys, time; from pathlib import Path\n"
        "from workerhost.sources._sqlite_queue import connect\n"
        "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))\n"
        "connect(Path(sys.argv[1]), busy_timeout=10).close()\n"
    )
    start_at = str(time.time() + 1.0)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path), start_at], stderr=subprocess.PIPE, text=True)
             for _ in range(8)]
    errors = [p.communicate(timeout=30)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, errors
