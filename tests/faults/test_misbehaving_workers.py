"""Workers that break the rules in ways tests/test_core_pool.py does not already cover.

Every case asserts the same three things: the task gets a precise error,
the supervisor keeps serving (another namespace answers, the pool is back to
size), and no process of the broken worker is left behind.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.helpers.ops import marked
from workerhost import FailureKind, Supervisor, TaskStatus
from workerhost.pool import PoolState

from .conftest import alive, eventually, fns, pids_in

pytestmark = pytest.mark.timeout(90)


async def still_serving(sup: Supervisor, name: str = "good") -> None:
    """The supervisor is alive and another namespace still answers."""
    r = await asyncio.wait_for(sup.run(name, {"n": 1}), 30)
    assert r.ok, r.error


async def back_to_size(sup: Supervisor, name: str, size: int = 1) -> None:
    await eventually(lambda: len(sup.pools[name].live) >= size, 30, f"{name} back to {size} warm worker(s)")


# -- exits mid-task ------------------------------------------------------------------------------
@pytest.mark.parametrize(("params", "expected"), [
    ({"code": 0}, "exit code 0"),
    ({"code": 1}, "exit code 1"),
    ({"code": 2}, "exit code 2"),
    ({"code": 3}, "exit code 3"),
    ({"code": 130}, "exit code 130"),
    ({"signal": int(signal.SIGSEGV)}, "signal SIGSEGV"),
    ({"signal": int(signal.SIGABRT)}, "signal SIGABRT"),
])
async def test_persistent_worker_exiting_mid_task(make_config: Any, mark: str, params: dict[str, Any],
                                                  expected: str) -> None:
    cfg = make_config([fns("bad", "exit_mid_task", mark=mark, max_worker_lost=1, min_workers=1, max_workers=1),
                       fns("good", "ok")])
    async with Supervisor(cfg) as sup:
        first = sup.pools["bad"].live[0].pid
        r = await sup.run("bad", params)
        assert r.status is TaskStatus.FAILED
        # A persistent worker has no exit-code protocol mid-task: any exit is a lost worker,
        # counted against max_worker_lost (1 retry here), never against max_retries.
        assert r.error.type == "WorkerLost" and r.error.kind is FailureKind.WORKER_LOST
        assert expected in r.error.message and r.attempts == 2
        assert not alive(first)
        await back_to_size(sup, "bad")
        assert sup.pools["bad"].restarts["crash"] >= 2
        await still_serving(sup)


@pytest.mark.parametrize(("code", "retriable"), [(1, True), (2, False), (3, True), (130, True)])
async def test_sys_exit_inside_a_handler_is_a_task_failure_not_a_dead_worker(make_config: Any, code: int,
                                                                            retriable: bool) -> None:
    cfg = make_config([fns("bad", "sys_exit", max_retries=0, min_workers=1, max_workers=1)])
    async with Supervisor(cfg) as sup:
        pid = sup.pools["bad"].live[0].pid
        r = await sup.run("bad", {"code": code})
        assert r.error.type == "SystemExit" and r.error.kind is FailureKind.RAISED
        assert r.error.retry_possible is retriable  # the design: exit 2 means "do not retry"
        assert [w.pid for w in sup.pools["bad"].live] == [pid]  # the worker stays


ONESHOT = """
import json, os, signal, sys, time
task = json.loads(sys.stdin.read())
p = task["params"]
if p.get("signal"):
    os.kill(os.getpid(), p["signal"])
    time.sleep(10)
if p.get("say"):
    print(json.dumps({"success": False, "error": {"type": "Said", "message": p["say"]}}))
sys.exit(p["code"])
"""


@pytest.mark.parametrize(("params", "type_", "kind", "retry", "words"), [
    ({"code": 0}, "WorkerProtocolError", FailureKind.WORKER_LOST, True, "without a JSON result"),
    ({"code": 1}, "TaskError", FailureKind.RAISED, True, "exit code 1"),
    ({"code": 1, "say": "nope"}, "Said", FailureKind.RAISED, True, "nope"),
    ({"code": 2}, "TaskError", FailureKind.RAISED, False, "exit code 2"),
    ({"code": 3}, "TaskTimeout", FailureKind.TIMEOUT, True, "timeout"),
    ({"code": 130}, "TaskError", FailureKind.RAISED, True, "exit code 130"),
    ({"code": 7}, "WorkerLost", FailureKind.WORKER_LOST, True, "exit code 7"),
    ({"code": 0, "signal": int(signal.SIGSEGV)}, "WorkerLost", FailureKind.WORKER_LOST, True, "signal SIGSEGV"),
])
async def test_oneshot_exit_codes_follow_the_design(make_config: Any, tmp_path: Path, params: dict[str, Any],
                                                    type_: str, kind: FailureKind, retry: bool, words: str) -> None:
    (tmp_path / "legacy_exit.py").write_text(ONESHOT)
    cfg = make_config([fns("legacy", "main", mode="oneshot", command=[sys.executable, "legacy_exit.py"],
                           project_path=str(tmp_path), max_retries=0, max_worker_lost=0)])
    async with Supervisor(cfg) as sup:
        r = await sup.run("legacy", params)
    assert (r.error.type, r.error.kind, r.error.retry_possible) == (type_, kind, retry), r.error
    assert words in r.error.message


# -- broken at start -----------------------------------------------------------------------------
@pytest.mark.parametrize(("body", "expected"), [
    ("import sys\nsys.exit(3)\n", "exit code 3"),
    ("import sys\nsys.exit(0)\n", "exit code 0"),
    ("import sys\nsys.exit('config missing, giving up')\n", "config missing, giving up"),
    ("import os\nos._exit(5)\n", "exit code 5"),
    ("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n", "signal SIGKILL"),
])
async def test_worker_exiting_at_import(make_config: Any, tmp_path: Path, mark: str, body: str,
                                        expected: str) -> None:
    (tmp_path / "exits_at_import.py").write_text(body + "def handle(task):\n    return 1\n")
    cfg = make_config([fns("bad", "handle", module="exits_at_import", project_path=str(tmp_path), mark=mark,
                           respawn_backoff=0.05, respawn_backoff_max=0.2),
                       fns("good", "ok")])
    async with Supervisor(cfg) as sup:
        pool = sup.pools["bad"]
        assert pool.state is PoolState.DEGRADED
        assert expected in (pool.last_error or ""), pool.last_error
        r = await sup.run("bad", {})
        assert r.error.type == "NamespaceUnavailable" and expected in r.error.message
        await eventually(lambda: pool.restarts["start_failed"] >= 3, 20, "respawns under backoff")
        await still_serving(sup)
    assert marked(mark) == []


async def test_worker_that_never_says_hello_is_killed_at_its_start_timeout(make_config: Any, mark: str) -> None:
    silent = [sys.executable, "-c", "import time; time.sleep(120)"]
    cfg = make_config([fns("mute", "ok", command=silent, start_timeout=1, mark=mark, respawn_backoff=0.1,
                           respawn_backoff_max=0.2),
                       fns("good", "ok")])
    async with Supervisor(cfg) as sup:
        pool = sup.pools["mute"]
        assert pool.state is PoolState.DEGRADED
        assert "did not say hello within 1" in (pool.last_error or "")
        r = await sup.run("mute", {})
        assert r.error.type == "NamespaceUnavailable"
        await still_serving(sup)
        # Each silent worker was killed at its timeout: never more than the one starting now.
        await asyncio.sleep(2.5)
        assert pool.restarts["start_failed"] >= 2
        assert len(marked(mark)) <= 1
    await eventually(lambda: marked(mark) == [], 10, "the silent workers to be gone")


# -- broken on the wire ----------------------------------------------------------------------------
async def test_half_a_frame_then_exit(make_config: Any, mark: str) -> None:
    cfg = make_config([fns("half", "half_frame", mark=mark, max_worker_lost=0, min_workers=1, max_workers=1),
                       fns("good", "ok")])
    async with Supervisor(cfg) as sup:
        r = await sup.run("half", {"code": 0})
        assert r.error.type == "WorkerLost" and r.error.kind is FailureKind.WORKER_LOST
        # Precise: it exited 0 in the middle of writing a frame.
        assert "exit code 0" in r.error.message and "unfinished frame" in r.error.message, r.error.message
        await back_to_size(sup, "half")
        await still_serving(sup)
        r = await sup.run("half", {"code": 0})  # the fresh worker's decoder starts clean
        assert r.error.type == "WorkerLost"


@pytest.mark.parametrize("codec", ["json", "msgpack"])
async def test_frame_larger_than_the_limit_costs_only_that_worker(make_config: Any, codec: str) -> None:
    cfg = make_config([fns("big", "oversized_frame", codec=codec, max_frame_bytes=64 * 1024, max_worker_lost=0,
                           min_workers=1, max_workers=1),
                       fns("good", "ok")])
    me = psutil.Process()
    async with Supervisor(cfg) as sup:
        before = me.memory_info().rss
        r = await sup.run("big", {"bytes": 8 * 1024 * 1024, "codec": codec})
        assert r.error.type == "WorkerProtocolError"
        assert "limit of 65536 bytes" in r.error.message, r.error.message
        assert me.memory_info().rss - before < 40 * 1024 * 1024
        await back_to_size(sup, "big")
        await still_serving(sup)


RAW_CLOSES_STDIN = """
import json, os, sys, time
sys.stdout.write(json.dumps({"op": "hello", "protocol": 1, "sdk": "none", "pid": os.getpid(),
                             "python": "n/a", "codec": "json"}) + "\\n")
sys.stdout.flush()
os.close(0)
time.sleep(120)
"""


async def test_worker_that_closes_its_stdin(make_config: Any, mark: str) -> None:
    cfg = make_config([fns("deaf", "ok", command=[sys.executable, "-c", RAW_CLOSES_STDIN], mark=mark,
                           max_worker_lost=0, timeout=60, min_workers=1, max_workers=1),
                       fns("good", "ok")])
    async with Supervisor(cfg) as sup:
        victim = sup.pools["deaf"].live[0].pid
        r = await asyncio.wait_for(sup.run("deaf", {}), 20)  # at once, not at the 60 s task timeout
        assert r.error.kind is FailureKind.WORKER_LOST
        assert r.error.type == "WorkerProtocolError" and "Broken pipe" in r.error.message
        await eventually(lambda: not alive(victim), 10, "the deaf worker to be killed")
        await still_serving(sup)


async def test_sdk_worker_whose_handler_closes_the_protocol_input(make_config: Any, mark: str) -> None:
    cfg = make_config([fns("closer", "close_protocol_input", mark=mark, min_workers=1, max_workers=1)])
    async with Supervisor(cfg) as sup:
        pool = sup.pools["closer"]
        first = pool.live[0].pid
        r = await sup.run("closer", {})
        assert r.ok and r.result["pid"] == first  # the answer went out before the input was missed
        await eventually(lambda: not alive(first), 10, "the worker without input to exit")
        await back_to_size(sup, "closer")
        r = await sup.run("closer", {})
        assert r.ok and r.result["pid"] != first


# -- resource abuse ----------------------------------------------------------------------------------
async def test_cpu_spin_deaf_to_sigterm_is_killed_at_timeout_while_others_serve(make_config: Any, mark: str) -> None:
    cfg = make_config([fns("spin", "spin", mark=mark, timeout=1.0, cancel_grace=0.2, kill_grace=0.3, max_retries=0,
                           min_workers=1, max_workers=1),
                       fns("good", "ok")])
    async with Supervisor(cfg) as sup:
        victim = sup.pools["spin"].live[0].pid
        spinning = asyncio.ensure_future(sup.run("spin", {}))
        for n in range(5):  # the event loop is not starved while the worker burns a core
            assert (await asyncio.wait_for(sup.run("good", {"n": n}), 10)).ok
        r = await asyncio.wait_for(spinning, 30)
        assert r.error.type == "TaskTimeout" and r.error.kind is FailureKind.TIMEOUT
        await eventually(lambda: not alive(victim), 10, "the spinning worker to be killed")
        await back_to_size(sup, "spin")
        assert sup.pools["spin"].restarts["timeout"] == 1


@pytest.mark.parametrize("lines", [True, False], ids=["lines", "one-unbroken-line"])
async def test_stderr_flood_while_another_namespace_serves(make_config: Any, lines: bool) -> None:
    cfg = make_config([fns("flood", "flood_stderr", min_workers=1, max_workers=1), fns("good", "ok")])
    me = psutil.Process()
    async with Supervisor(cfg, log_events=False) as sup:
        before = me.memory_info().rss
        flood = asyncio.ensure_future(sup.run("flood", {"mb": 16, "lines": lines}))
        served = 0
        while not flood.done():
            assert (await asyncio.wait_for(sup.run("good", {"n": served}), 10)).ok
            served += 1
        assert (await flood).ok
        assert served >= 1
        # Stderr is read line by line and cut, never buffered whole.
        assert me.memory_info().rss - before < 40 * 1024 * 1024
        tail = sup.pools["flood"].live[0].stderr_tail
        assert tail and all(len(line) <= 4096 for line in tail)


# -- children that outlive their task --------------------------------------------------------------
@pytest.mark.parametrize("then", ["crash", "hang", "recycle"])
async def test_children_in_the_workers_group_die_with_it(make_config: Any, mark: str, tmp_path: Path,
                                                          then: str) -> None:
    pidfile = tmp_path / "children"
    cfg = make_config([fns("forker", "spawn_children", mark=mark, timeout=1.5, cancel_grace=0.2, kill_grace=0.3,
                           max_retries=0, max_worker_lost=0, min_workers=1, max_workers=1,
                           max_tasks_per_worker=1 if then == "recycle" else None)])
    async with Supervisor(cfg) as sup:
        worker = sup.pools["forker"].live[0].pid
        r = await sup.run("forker", {"pidfile": str(pidfile), "then": "return" if then == "recycle" else then,
                                     "children": 3})
        assert r.ok is (then == "recycle")
        children = pids_in(pidfile)
        assert len(children) == 3
        await eventually(lambda: not alive(worker), 15, "the worker to go")
        await eventually(lambda: not any(alive(c) for c in children), 10, "its children to go with it")
        await back_to_size(sup, "forker")


async def test_child_in_its_own_session_is_killed_with_a_timed_out_worker(make_config: Any, mark: str,
                                                                         tmp_path: Path) -> None:
    """``start_new_session=True`` leaves the process group; while the worker lives it is still its child."""
    pidfile = tmp_path / "children"
    cfg = make_config([fns("sess", "spawn_session_child", mark=mark, timeout=1.0, cancel_grace=0.2, kill_grace=0.3,
                           max_retries=0, min_workers=1, max_workers=1)])
    async with Supervisor(cfg) as sup:
        r = await sup.run("sess", {"pidfile": str(pidfile), "then": "hang"})
        assert r.error.type == "TaskTimeout"
        [child] = pids_in(pidfile)
        await eventually(lambda: not alive(child), 10, "the session child of a killed worker to go")


@pytest.mark.xfail(strict=True, reason="documented limit (docs/workers.md): a double-forked daemon that called "
                   "setsid has left the worker's process group and tree before the worker ends; only a cgroup "
                   "(the systemd unit, KillMode=mixed) contains it")
async def test_double_forked_setsid_daemon_is_not_contained(make_config: Any, mark: str, tmp_path: Path) -> None:
    pidfile = tmp_path / "daemon"
    cfg = make_config([fns("daemon", "double_fork_daemon", mark=mark, min_workers=1, max_workers=1)])
    try:
        async with Supervisor(cfg) as sup:
            r = await sup.run("daemon", {"pidfile": str(pidfile)})
            assert r.ok
        [daemon] = pids_in(pidfile)
        assert os.getsid(daemon) != r.result["pid"]  # it really left the worker's session
        await eventually(lambda: not alive(daemon), 3, "the daemon to go")
    finally:
        for pid in pids_in(pidfile):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


ONESHOT_FLOOD = """
import json, os, sys
chunk = b"o" * (1 << 20)
for _ in range(64):
    os.write(1, chunk)
line = b"e" * 1023 + b"\\n"
for _ in range(16):
    os.write(2, line * 1024)
os.write(1, b"\\n" + json.dumps({"success": True, "result": {"ok": True}}).encode() + b"\\n")
"""


async def test_oneshot_worker_flooding_stdout_and_stderr_keeps_the_supervisor_bounded(make_config: Any) -> None:
    cfg = make_config([fns("flood", "ok", mode="oneshot", command=[sys.executable, "-c", ONESHOT_FLOOD],
                           max_frame_bytes=1024 * 1024, max_retries=0)])
    me = psutil.Process()
    async with Supervisor(cfg, log_events=False) as sup:
        before = me.memory_info().rss
        peak = before
        run = asyncio.ensure_future(sup.run("flood", {}))
        while not run.done():  # the peak, not the end: big buffers go back to the OS once freed
            peak = max(peak, me.memory_info().rss)
            await asyncio.sleep(0.005)
        r = await asyncio.wait_for(run, 60)
        grown = peak - before
    assert r.ok and r.result == {"ok": True}, r.error
    # The result is the last line of stdout: only a tail of max_frame_bytes is ever kept.
    assert grown < 40 * 1024 * 1024, f"the supervisor grew by {grown / 2**20:.0f} MiB"
