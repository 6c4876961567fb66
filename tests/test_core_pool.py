"""Warm pools end to end with real worker processes (issue: supervisor core)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import psutil
import pytest

from workerhost import FailureKind, Supervisor, Task, TaskStatus
from workerhost import events as ev
from workerhost.pool import PoolState

from .conftest import namespace, pid_alive

pytestmark = pytest.mark.timeout(60)


async def test_round_trip_sync_and_async(make_config):
    cfg = make_config([namespace("echo", "echo"), namespace("aecho", "async_echo")])
    async with Supervisor(cfg) as sup:
        r = await sup.run("echo", {"x": 1})
        assert r.status is TaskStatus.COMPLETED and r.result["params"] == {"x": 1} and r.attempts == 1
        r = await sup.run("aecho", {"y": 2})
        assert r.unwrap()["async"] is True


async def test_thousand_tasks_reuse_two_workers(make_config):
    cfg = make_config([namespace("echo", "echo", min_workers=2, max_workers=2)])
    async with Supervisor(cfg) as sup:
        results = await asyncio.gather(*(sup.run("echo", {"i": i}) for i in range(1000)))
        assert all(r.ok for r in results)
        assert sorted(r.result["params"]["i"] for r in results) == list(range(1000))
        pids = {r.result["pid"] for r in results}
        assert len(pids) == 2
        assert sup.pools["echo"].restarts == {}


async def test_sigkill_mid_task_is_retried_and_pool_respawns(make_config, tmp_path):
    cfg = make_config([namespace("k", "crash_first", min_workers=1, max_workers=1)])
    exited: list[ev.WorkerExited] = []
    async with Supervisor(cfg, observers=[lambda e: exited.append(e) if isinstance(e, ev.WorkerExited) else None]) as sup:
        first_pid = sup.pools["k"].live[0].pid
        r = await sup.run("k", {"marker": str(tmp_path / "marker")})
        assert r.ok, r.error
        assert r.attempts == 2
        assert r.result["pid"] != first_pid
        assert [e.reason for e in exited] == ["crash"]
        assert not pid_alive(first_pid)
        assert len(sup.pools["k"].live) == 1


async def test_hanging_handler_is_killed_at_timeout(make_config):
    cfg = make_config([namespace("hang", "hang", timeout=0.5, cancel_grace=0.2, kill_grace=0.3, max_retries=0,
                                 min_workers=2, max_workers=2)])
    async with Supervisor(cfg) as sup:
        pool = sup.pools["hang"]
        pids_before = {w.pid for w in pool.live}
        r = await sup.run("hang")
        assert r.status is TaskStatus.FAILED
        assert r.error.type == "TaskTimeout" and r.error.kind is FailureKind.TIMEOUT
        for pid in pids_before - {w.pid for w in pool.live}:
            assert not pid_alive(pid)
        for _ in range(100):
            if len(pool.live) == 2:
                break
            await asyncio.sleep(0.05)
        assert len(pool.live) == 2
        assert pool.restarts["timeout"] == 1


async def test_cooperative_cancel_before_kill(make_config):
    cfg = make_config([namespace("s", "sleep", timeout=0.3, cancel_grace=3, max_retries=0)])
    async with Supervisor(cfg) as sup:
        pid = sup.pools["s"].live[0].pid
        r = await sup.run("s", {"seconds": 5, "cooperative": True})
        assert r.error.kind is FailureKind.TIMEOUT
        # The handler honoured the cancel, so its worker was kept, not killed.
        assert [w.pid for w in sup.pools["s"].live] == [pid]


async def test_print_and_fd1_writes_become_logs(make_config):
    cfg = make_config([namespace("noisy", "noisy")])
    logs: list[ev.WorkerLog] = []
    async with Supervisor(cfg, observers=[lambda e: logs.append(e) if isinstance(e, ev.WorkerLog) else None]) as sup:
        r = await sup.run("noisy")
        assert r.unwrap() == {"ok": True}
        for _ in range(50):
            if len(logs) >= 4:
                break
            await asyncio.sleep(0.02)
    messages = {e.message for e in logs}
    assert {"print() from the handler", "raw write to fd 1", "from a child process", "to stderr"} <= messages
    assert all(e.task_id == r.task_id for e in logs if e.message == "print() from the handler")


@pytest.mark.parametrize("function", ["garbage", "invalid_utf8"])
async def test_garbage_on_channel_costs_the_worker(make_config, function):
    cfg = make_config([namespace("bad", function, module="stdout_abuse", max_worker_lost=1),
                       namespace("good", "echo")])
    async with Supervisor(cfg) as sup:
        r = await sup.run("bad")
        assert r.status is TaskStatus.FAILED
        assert r.error.type == "WorkerProtocolError" and r.error.kind is FailureKind.WORKER_LOST
        assert r.attempts == 2  # first try + max_worker_lost
        for _ in range(100):  # the second worker's exit is recorded just after the result
            if sup.pools["bad"].restarts["protocol_error"] == 2:
                break
            await asyncio.sleep(0.02)
        assert sup.pools["bad"].restarts["protocol_error"] == 2
        assert (await sup.run("good")).ok


async def test_100mb_line_is_refused_with_bounded_memory(make_config):
    cfg = make_config([namespace("huge", "huge_line", module="stdout_abuse", max_worker_lost=0,
                                 max_frame_bytes=1024 * 1024)])
    me = psutil.Process()
    async with Supervisor(cfg) as sup:
        before = me.memory_info().rss
        r = await sup.run("huge", {"mb": 100})
        grown = me.memory_info().rss - before
        assert r.error.type == "WorkerProtocolError"
        assert grown < 30 * 1024 * 1024, f"supervisor grew by {grown / 1e6:.0f} MB"
        for _ in range(100):
            if sup.pools["huge"].live:
                break
            await asyncio.sleep(0.05)
        assert sup.pools["huge"].live


async def test_import_error_degrades_one_namespace_only(make_config):
    cfg = make_config([
        namespace("broken", "handle", module="broken_import", max_worker_lost=1, respawn_backoff=0.05),
        namespace("good", "echo"),
    ])
    async with Supervisor(cfg) as sup:
        broken = sup.pools["broken"]
        assert broken.state is PoolState.DEGRADED
        assert "ModuleNotFoundError" in (broken.last_error or "")
        assert (await sup.run("good", {"a": 1})).ok
        r = await sup.run("broken")
        assert r.status is TaskStatus.FAILED and r.error.type == "NamespaceUnavailable"
        assert "this_module_does_not_exist" in r.error.message
        await asyncio.sleep(0.5)
        assert broken.restarts["start_failed"] >= 3  # keeps trying, under backoff
        assert sup.snapshot()["namespaces"][0]["state"] == "degraded"


async def test_fallback_route_serves_when_first_is_degraded(make_config):
    cfg = make_config(
        [namespace("primary", "handle", module="broken_import", task_types=["T"]),
         namespace("backup", "echo", task_types=["T"])],
        routes={"T": ["primary", "backup"]},
    )
    async with Supervisor(cfg) as sup:
        r = await sup.run("T", {"v": 1})
        assert r.ok and r.namespace == "backup"


async def test_recycle_after_max_tasks_keeps_capacity(make_config):
    cfg = make_config([namespace("r", "echo", min_workers=1, max_workers=1, max_tasks_per_worker=5,
                                 max_tasks_jitter=2)])
    recycled: list[ev.WorkerRecycled] = []
    async with Supervisor(cfg, observers=[lambda e: recycled.append(e) if isinstance(e, ev.WorkerRecycled) else None]) as sup:
        pids = []
        for i in range(30):
            r = await sup.run("r", {"i": i})
            pids.append(r.result["pid"])
        runs = [len(list(g)) for _, g in __import__("itertools").groupby(pids)]
        assert len(runs) >= 4
        assert all(5 <= n <= 7 for n in runs[:-1]), runs  # 5 + jitter(0..2), strictly
        assert recycled and all(e.reason == "max_tasks" for e in recycled)
        assert sup.pools["r"].restarts.get("crash", 0) == 0


async def test_retry_budgets(make_config, tmp_path):
    cfg = make_config([
        namespace("fu", "fail_until", max_retries=3),
        namespace("fail", "fail", max_retries=2),
        namespace("crash", "crash", max_worker_lost=2, max_retries=10),
    ])
    async with Supervisor(cfg) as sup:
        r = await sup.run("fu", {"succeed_on": 3})
        assert r.ok and r.result == {"attempt": 3} and r.attempts == 3
        r = await sup.run("fail", {"kind": "validation"})
        assert r.attempts == 1 and r.error.type == "ValidationError" and not r.error.retry_possible
        r = await sup.run("fail", {"kind": "plain"})
        assert r.attempts == 3 and r.error.type == "RuntimeError" and "Traceback" in r.error.traceback
        # A task that kills its worker every time is bounded by max_worker_lost, not max_retries.
        r = await sup.run("crash", {"code": 9})
        assert r.attempts == 3 and r.error.type == "WorkerLost" and "exit code 9" in r.error.message


async def test_rejected_tasks(make_config):
    cfg = make_config([namespace("echo", "echo"), namespace("ns", "not_serialisable")])
    async with Supervisor(cfg) as sup:
        r = await sup.run("Nope")
        assert r.error.type == "UnknownTaskType" and r.error.kind is FailureKind.REJECTED and r.attempts == 1
        r = await sup.run(Task(type="echo", params=[1, 2]))  # type: ignore[arg-type]
        assert r.error.type == "InvalidParams"
        r = await sup.run("ns")
        assert r.error.type == "ResultNotSerializable" and r.attempts == 1


async def test_progress_and_task_logs(make_config):
    cfg = make_config([namespace("p", "progress")])
    seen: list[ev.Event] = []
    async with Supervisor(cfg, observers=[seen.append]) as sup:
        r = await sup.run("p")
        assert r.ok
    progress = [e.progress for e in seen if isinstance(e, ev.TaskProgress)]
    assert progress == [25, 50, 100]
    logs = [e for e in seen if isinstance(e, ev.WorkerLog) and e.message == "logged with the task id"]
    assert logs and logs[0].task_id == r.task_id


async def test_worker_env_is_limited_to_config(make_config, monkeypatch):
    monkeypatch.setenv("SUPERVISOR_SECRET", "hunter2")
    monkeypatch.setenv("ALLOWED_ONE", "yes")
    cfg = make_config([namespace("env", "env", env={"FROM_CONFIG": "cfg"}, env_passthrough=["ALLOWED_ONE"])])
    async with Supervisor(cfg) as sup:
        r = await sup.run("env", {"names": ["SUPERVISOR_SECRET", "ALLOWED_ONE", "FROM_CONFIG", "PATH"]})
    assert r.result["SUPERVISOR_SECRET"] is None
    assert r.result["ALLOWED_ONE"] == "yes" and r.result["FROM_CONFIG"] == "cfg" and r.result["PATH"]


async def test_msgpack_codec(make_config):
    cfg = make_config([namespace("mp", "echo", codec="msgpack")])
    async with Supervisor(cfg) as sup:
        r = await sup.run("mp", {"blob": "x" * 70000, "n": [1, 2.5, None, True]})
        assert r.result["params"] == {"blob": "x" * 70000, "n": [1, 2.5, None, True]}


async def test_stderr_flood_does_not_deadlock(make_config, tmp_path):
    (tmp_path / "flood.py").write_text(
        "import sys\n"
        "def handle(task):\n"
        "    for _ in range(20000):\n"
        "        sys.stderr.write('e' * 99 + '\\n')\n"
        "    sys.stderr.flush()\n"
        "    return {'ok': True}\n"
    )
    cfg = make_config([namespace("flood", "handle", module="flood", project_path=str(tmp_path))])
    async with Supervisor(cfg, log_events=False) as sup:
        assert (await sup.run("flood")).ok


async def test_close_leaves_no_worker_or_grandchild(make_config, tmp_path):
    (tmp_path / "forker.py").write_text(
        "import subprocess, sys\n"
        "def handle(task):\n"
        "    p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "    return {'child': p.pid}\n"
    )
    cfg = make_config([namespace("f", "handle", module="forker", project_path=str(tmp_path))])
    async with Supervisor(cfg) as sup:
        worker_pid = sup.pools["f"].live[0].pid
        child = (await sup.run("f")).unwrap()["child"]
        assert pid_alive(child)
    assert not pid_alive(worker_pid)
    for _ in range(50):
        if not pid_alive(child):
            break
        await asyncio.sleep(0.05)
    assert not pid_alive(child)


async def test_worker_notices_supervisor_death(tmp_path):
    """A worker whose supervisor is SIGKILLed exits on its own (end of input / parent-death signal)."""
    script = tmp_path / "sup.py"
    script.write_text(
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from workerhost import Supervisor\n"
        "from workerhost.config import parse_config\n"
        f"cfg = parse_config({{'workers': [{{'name': 'e', 'project_path': {str(namespace('e', 'echo')['project_path'])!r},"
        f" 'venv_python': sys.executable, 'module': 'handlers', 'function': 'sleep', 'task_types': ['e'],"
        " 'min_workers': 2}]}, base_dir=Path('.'))\n"
        "async def main():\n"
        "    async with Supervisor(cfg, log_events=False) as sup:\n"
        "        print(' '.join(str(w.pid) for w in sup.pools['e'].live), flush=True)\n"
        "        await sup.run('e', {'seconds': 60})\n"
        "asyncio.run(main())\n"
    )
    proc = await asyncio.create_subprocess_exec(sys.executable, str(script), stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    pids = [int(p) for p in line.split()]
    assert len(pids) == 2 and all(pid_alive(p) for p in pids)
    await asyncio.sleep(0.3)  # let one worker take the long task
    os.kill(proc.pid, signal.SIGKILL)
    await proc.wait()
    for _ in range(100):
        if not any(pid_alive(p) for p in pids):
            break
        await asyncio.sleep(0.05)
    assert not any(pid_alive(p) for p in pids)


async def test_burst_scales_up_to_max_and_not_beyond(make_config):
    cfg = make_config([namespace("burst", "sleep", min_workers=1, max_workers=3)])
    async with Supervisor(cfg) as sup:
        pool = sup.pools["burst"]
        results = await asyncio.gather(*(sup.run("burst", {"seconds": 0.3}) for _ in range(12)))
        assert all(r.ok for r in results)
        pids = {r.result["pid"] for r in results}
        assert len(pids) == 3, pids
        assert len(pool.workers) <= 3


async def test_external_sigkill_mid_task(make_config):
    cfg = make_config([namespace("s", "sleep", min_workers=1, max_workers=1)])
    async with Supervisor(cfg) as sup:
        pool = sup.pools["s"]
        victim = pool.live[0].pid
        job = asyncio.ensure_future(sup.run("s", {"seconds": 0.5}))
        for _ in range(200):
            if pool.busy:
                break
            await asyncio.sleep(0.01)
        os.kill(victim, signal.SIGKILL)
        r = await asyncio.wait_for(job, 30)
        assert r.ok and r.attempts == 2 and r.result["pid"] != victim
        assert pool.restarts["crash"] == 1
        assert [w.pid for w in pool.live] == [r.result["pid"]]


async def test_worker_that_honours_cancel_serves_again(make_config):
    cfg = make_config([namespace("s2", "sleep", timeout=0.3, cancel_grace=3, max_retries=0, min_workers=1,
                                 max_workers=1)])
    async with Supervisor(cfg) as sup:
        r = await sup.run("s2", {"seconds": 5, "cooperative": True})
        assert r.error.kind is FailureKind.TIMEOUT
        assert sup.pools["s2"].busy == 0
        assert (await asyncio.wait_for(sup.run("s2", {"seconds": 0}), 5)).ok


async def test_handler_children_die_with_a_killed_supervisor(tmp_path):
    (tmp_path / "spawner.py").write_text(
        "import subprocess, sys, time\n"
        "def handle(task):\n"
        "    p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        "    print('CHILD', p.pid, flush=True)\n"
        "    time.sleep(120)\n"
    )
    script = tmp_path / "sup.py"
    script.write_text(
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from workerhost import Supervisor, events as ev\n"
        "from workerhost.config import parse_config\n"
        f"cfg = parse_config({{'workers': [{{'name': 'e', 'project_path': {str(tmp_path)!r},"
        " 'venv_python': sys.executable, 'module': 'spawner', 'function': 'handle', 'task_types': ['e']}]},"
        " base_dir=Path('.'))\n"
        "def show(e):\n"
        "    if isinstance(e, ev.WorkerLog) and e.message.startswith('CHILD'):\n"
        "        print(e.worker_pid, e.message.split()[1], flush=True)\n"
        "async def main():\n"
        "    async with Supervisor(cfg, log_events=False, observers=[show]) as sup:\n"
        "        await sup.run('e')\n"
        "asyncio.run(main())\n"
    )
    proc = await asyncio.create_subprocess_exec(sys.executable, str(script), stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    worker, child = (int(p) for p in line.split())
    assert pid_alive(worker) and pid_alive(child)
    os.kill(proc.pid, signal.SIGKILL)
    await proc.wait()
    for _ in range(100):
        if not pid_alive(worker) and not pid_alive(child):
            break
        await asyncio.sleep(0.05)
    assert not pid_alive(worker) and not pid_alive(child)


async def test_timeout_after_a_run_of_fast_tasks(make_config):
    """The per-worker deadline timer is re-armed for each task: a slow task after fast ones still times out."""
    cfg = make_config([namespace("t", "sleep", timeout=0.5, cancel_grace=0.1, kill_grace=0.2, max_retries=0,
                                 min_workers=1, max_workers=1)])
    async with Supervisor(cfg) as sup:
        for _ in range(20):
            assert (await sup.run("t", {"seconds": 0})).ok
        assert (await sup.run("t", {"seconds": 0.3})).ok  # just under the timeout
        loop = asyncio.get_running_loop()
        started = loop.time()
        r = await sup.run("t", {"seconds": 10})
        took = loop.time() - started
        assert r.error.kind is FailureKind.TIMEOUT
        assert 0.5 <= took < 5, took
