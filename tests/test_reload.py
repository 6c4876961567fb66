"""Reload: the config diff, applying it under load with real workers, and SIGHUP / ``reload`` on a real ``start``."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from workerhost import Supervisor
from workerhost.config import load_config
from workerhost.reload import PidFile, Reloader, default_pid_file, diff_configs
from workerhost.sources.embedded import EmbeddedProducer

from .conftest import namespace, pid_alive
from .helpers.ops import MARK, Started, cli, free_port, marked

pytestmark = pytest.mark.timeout(180)

FAST_TM = {"type": "embedded", "poll_interval": 0.02, "poll_max_interval": 0.2, "lease_seconds": 2.0}


def env_ns(name: str, flavour: str, **extra: Any) -> dict[str, Any]:
    return namespace(name, "env_echo", module="shutdown_handlers", env={"FLAVOUR": flavour, **extra.pop("env", {})},
                     **extra)


async def until(check: Callable[[], Awaitable[Any]], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := await check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.1)
    return value


# -- the diff ----------------------------------------------------------------------
def test_diff_sorts_namespaces_by_what_a_change_needs(make_config: Any) -> None:
    old = make_config([env_ns("same", "a"), env_ns("envchg", "a"), env_ns("bigger", "a", max_workers=2),
                       env_ns("smaller", "a", max_workers=3), env_ns("gone", "a"), env_ns("limits", "a")],
                      monitoring={"enabled": False})
    new = make_config([env_ns("same", "a"), env_ns("envchg", "b"), env_ns("bigger", "a", max_workers=4, timeout=5),
                       env_ns("smaller", "a", max_workers=2), env_ns("limits", "a", limits={"memory_soft_mb": 100}),
                       env_ns("fresh", "a")], monitoring={"enabled": True})
    diff = diff_configs(old, new)
    assert diff.added == ("fresh",) and diff.removed == ("gone",)
    assert diff.adjusted == ("bigger",)
    assert set(diff.replaced) == {"envchg", "smaller", "limits"}
    assert "env" in diff.replaced["envchg"] and "max_workers lowered" == diff.replaced["smaller"]
    assert diff.needs_restart == ("monitoring",)
    assert diff_configs(old, old).empty
    assert "venv re-provisioned" in diff_configs(old, old, reprovisioned=frozenset({"same"})).replaced["same"]


# -- applying it in-process ------------------------------------------------------------
async def test_apply_under_load_drops_nothing(write_config: Any) -> None:
    path = write_config([env_ns("alpha", "old", max_workers=1, min_workers=1), env_ns("gone", "old")])
    async with Supervisor(load_config(path), log_events=False) as sup:
        reloader = Reloader(sup)
        old_pid = (await sup.run("alpha")).unwrap()["pid"]
        # In flight on the pools being replaced or removed while the reload happens.
        running = [asyncio.ensure_future(sup.run("alpha", {"n": n, "seconds": 0.5})) for n in range(3)]
        on_gone = asyncio.ensure_future(sup.run("gone", {"seconds": 0.5}))
        await asyncio.sleep(0.2)
        write_config([env_ns("alpha", "new", max_workers=2, min_workers=1), env_ns("beta", "new")])
        outcome = await reloader.reload()
        assert outcome.ok, outcome.error
        assert "added beta" in outcome.summary and "removed gone" in outcome.summary
        assert "replaced alpha" in outcome.summary
        # The commit is done: new tasks meet new workers while the old ones finish theirs.
        after = (await sup.run("alpha", {"n": 99})).unwrap()
        assert after["flavour"] == "new" and after["pid"] != old_pid
        assert (await sup.run("beta")).unwrap()["flavour"] == "new"
        results = [(await t).unwrap() for t in running]
        assert sorted(r["n"] for r in results) == [0, 1, 2]
        assert all(r["flavour"] == "old" for r in results)
        assert (await on_gone).ok
        assert "gone" not in sup.pools and sup.config.namespace("alpha").max_workers == 2
        assert (await sup.run("gone")).error.type == "UnknownTaskType"
        await until(lambda: _true(reloader.draining == 0), 30, "the old pools to drain")
        assert not pid_alive(old_pid)
        await reloader.aclose()


async def _true(value: bool) -> bool:
    return value


async def test_adjusting_pool_size_keeps_the_workers(write_config: Any) -> None:
    path = write_config([env_ns("alpha", "x", max_workers=1, min_workers=1)])
    async with Supervisor(load_config(path), log_events=False) as sup:
        reloader = Reloader(sup)
        pid = (await sup.run("alpha")).unwrap()["pid"]
        write_config([env_ns("alpha", "x", max_workers=3, min_workers=2)])
        outcome = await reloader.reload()
        assert outcome.ok and outcome.summary == "adjusted alpha"
        assert sup.pools["alpha"].ns.max_workers == 3
        await until(lambda: _true(len(sup.pools["alpha"].live) == 2), 30, "a second warm worker")
        assert pid in [w.pid for w in sup.pools["alpha"].live]
        results = await asyncio.gather(*(sup.run("alpha", {"n": n, "seconds": 0.3}) for n in range(3)))
        assert len({r.unwrap()["pid"] for r in results}) >= 2
        await reloader.aclose()


async def test_invalid_or_unstartable_config_is_refused_and_the_running_one_stays(write_config: Any,
                                                                                  tmp_path: Path) -> None:
    path = write_config([env_ns("alpha", "x")])
    async with Supervisor(load_config(path), log_events=False) as sup:
        reloader = Reloader(sup)
        running = sup.config
        path.write_text("version: '1.0'\nworkers: [\n  {name: broken\n")
        outcome = await reloader.reload()
        assert not outcome.ok and "invalid YAML" in (outcome.error or "")
        path.write_text(yaml.safe_dump({"version": "1.0", "workers": [env_ns("alpha", "x", max_workers="two")]}))
        outcome = await reloader.reload()
        assert not outcome.ok and "workers[0].max_workers" in (outcome.error or "")
        # Valid, but the new namespace's handler does not import: nothing of it is applied.
        write_config([env_ns("alpha", "y"), namespace("broken", "handle", module="broken_import")])
        outcome = await reloader.reload()
        assert not outcome.ok and "'broken' cannot start a worker" in (outcome.error or "")
        assert "this_module_does_not_exist" in (outcome.error or "")
        assert sup.config is running and list(sup.pools) == ["alpha"]
        assert (await sup.run("alpha")).unwrap()["flavour"] == "x"
        assert outcome.generation == 3
        await reloader.aclose()


# -- SIGHUP and the reload command on a real supervisor ------------------------------------------
@pytest.fixture
def started(tmp_path: Path) -> Iterator[Started]:
    s = Started(tmp_path)
    yield s
    s.cleanup()


async def test_sighup_on_a_running_supervisor(tmp_path: Path, write_config: Any, started: Started) -> None:
    port = free_port()
    top = {"task_manager": FAST_TM, "monitoring": {"enabled": True, "port": port}}
    mark = {MARK: started.mark}
    path = write_config([env_ns("alpha", "v1", max_workers=2, env=mark),
                         env_ns("gamma", "v1", max_workers=1, env=mark)], **top)
    prod = EmbeddedProducer(tmp_path / ".workerhost" / "queue.db")
    ids = await prod.submit_many([("alpha", {"n": n, "seconds": 0.1}) for n in range(60)])
    proc = started.start(path)
    status_url = f"http://127.0.0.1:{port}/status"

    async def status() -> dict[str, Any] | None:
        try:
            async with httpx.AsyncClient() as client:
                r = await client.get(status_url, timeout=2)
            return r.json() if r.status_code == 200 else None
        except httpx.HTTPError:
            return None

    await until(status, 60, "the control server")
    pid_file = PidFile(default_pid_file(path))
    assert pid_file.read() == proc.pid

    await until(lambda: _completed(prod, 5), 60, "the first tasks")
    # 1. while alpha's tasks flow: replace alpha's workers, grow gamma, add beta, with the `reload` command.
    write_config([env_ns("alpha", "v2", max_workers=2, env=mark), env_ns("gamma", "v1", max_workers=2, env=mark),
                  env_ns("beta", "v1", env=mark)], **top)
    res = await asyncio.to_thread(cli, "reload", "-c", str(path))
    assert res.returncode == 0, res.stdout + res.stderr + started.log()
    assert "added beta" in res.stdout and "adjusted gamma" in res.stdout and "replaced alpha" in res.stdout
    doc = await status()
    assert doc is not None
    pools = {ns["name"]: ns for ns in doc["namespaces"]}
    assert set(pools) == {"alpha", "beta", "gamma"} and pools["gamma"]["max_workers"] == 2
    ids += await prod.submit_many([("beta", {"n": n}) for n in range(10)])

    # 2. a broken file: the command refuses it itself; a bare SIGHUP is refused by the supervisor.
    path.write_text("version: '1.0'\nworkers:\n  - name: alpha\n    module: [unclosed\n")
    res = await asyncio.to_thread(cli, "reload", "-c", str(path))
    assert res.returncode == 2 and "invalid YAML" in res.stderr
    proc.send_signal(signal.SIGHUP)
    outcome = await until(lambda: _refused(pid_file), 30, "the refusal")
    assert "invalid YAML" in (outcome.error or "")
    assert proc.poll() is None
    ids += await prod.submit_many([("alpha", {"n": 100 + n}) for n in range(10)] + [("beta", {"n": 200})])

    # Every task ends completed: nothing was lost across the reloads.
    async def all_done() -> bool:
        return (await prod.counts())["completed"] == len(ids)

    await until(all_done, 90, "every task completed")
    doc = await status()
    assert doc is not None and {ns["name"] for ns in doc["namespaces"]} == {"alpha", "beta", "gamma"}
    records = await prod.list_tasks(limit=500)
    assert {r.id for r in records} == set(ids) and all(r.status == "completed" for r in records)
    flavours = {r.result["flavour"] for r in records if r.type == "alpha"}
    assert flavours == {"v1", "v2"}  # the stream crossed the replacement without a gap
    assert await asyncio.to_thread(started.stop, proc) == 0
    assert marked(started.mark) == []
    assert pid_file.read() is None  # removed on a clean exit
    await prod.close()


async def _completed(prod: EmbeddedProducer, n: int) -> bool:
    return (await prod.counts())["completed"] >= n


async def _refused(pid_file: PidFile) -> Any:
    outcome = pid_file.read_outcome()
    return outcome if outcome is not None and not outcome.ok else None


def test_reload_command_without_a_supervisor(write_config: Any) -> None:
    path = write_config([env_ns("alpha", "x")])
    res = cli("reload", "-c", str(path))
    assert res.returncode == 3 and "no running supervisor" in res.stderr
    pid_file = default_pid_file(path)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.write_text("999999\n")
    res = cli("reload", "-c", str(path))
    assert res.returncode == 3 and "not a running supervisor" in res.stderr


def test_diff_reports_a_new_fallback_order(make_config: Any) -> None:
    both = ["Shared"]
    a = env_ns("a", "x", task_types=both)
    b = env_ns("b", "x", task_types=both)
    old = make_config([a, b], routes={"Shared": ["a", "b"]})
    new = make_config([a, b], routes={"Shared": ["b", "a"]})
    diff = diff_configs(old, new)
    assert diff.routes_changed and not diff.empty and diff.summary() == "routes changed"


@pytest.mark.timeout(60)
def test_a_second_start_on_the_same_pid_file_is_refused(write_config: Any, started: Started) -> None:
    path = write_config([env_ns("alpha", "x", env={MARK: started.mark})], task_manager=FAST_TM)
    first = started.start(path)
    pid_file = PidFile(default_pid_file(path))
    deadline = time.monotonic() + 30
    while pid_file.read() != first.pid:
        assert time.monotonic() < deadline and first.poll() is None
        time.sleep(0.1)
    res = cli("start", "-c", str(path), timeout=30)
    assert res.returncode == 2 and f"another supervisor (pid {first.pid})" in res.stderr
    assert started.stop(first) == 0 and pid_file.read() is None
