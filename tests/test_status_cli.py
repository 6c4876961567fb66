"""``workerhost-supervisor status`` against a real supervisor running in another process.

Until the ``start`` command exists here, the supervisor under test is a small
script (Supervisor + ControlServer from the same config file); the CLI finds
it through the config's ``monitoring`` section, exactly as it would find one
started by ``start``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import ROOT, namespace, pid_alive

#: Runs a supervisor and its control server until SIGTERM; starts the given
#: background tasks so that status has busy workers to show.
SUPERVISOR_SCRIPT = r'''
import asyncio, json, signal, sys
from workerhost.config import load_config
from workerhost.control import ControlServer
from workerhost.supervisor import Supervisor

async def main(path, jobs):
    cfg = load_config(path)
    sup = Supervisor(cfg)
    await sup.start()
    control = ControlServer(sup, cfg.monitoring)
    await control.start()
    running = [asyncio.ensure_future(sup.run(t, p)) for t, p in jobs]
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("READY", control.url, flush=True)
    await stop.wait()
    for r in running:
        r.cancel()
    await control.stop()
    await sup.close(timeout=2)

asyncio.run(main(sys.argv[1], json.loads(sys.argv[2])))
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def lns(name: str, function: str, **extra: Any) -> dict[str, Any]:
    return namespace(name, function, module="limits_handlers", **extra)


@contextmanager
def supervisor_process(config: Path, jobs: list[tuple[str, dict[str, Any]]] = ()) -> Iterator[str]:  # type: ignore[assignment]
    script = config.parent / "run_supervisor.py"
    script.write_text(SUPERVISOR_SCRIPT)
    log = (config.parent / "supervisor.log").open("w")
    proc = subprocess.Popen([sys.executable, str(script), str(config), json.dumps(list(jobs))],
                            stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("READY"):
            proc.kill()
            raise AssertionError(f"supervisor did not start: {line!r}\n{(config.parent / 'supervisor.log').read_text()}")
        yield line.split()[1]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def status(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "WORKERHOST_TOKEN"}
    return subprocess.run([sys.executable, "-m", "workerhost.cli", "status", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def tree_rss(pid: int) -> int:
    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])


@pytest.mark.timeout(120)
def test_status_table_and_json_match_reality(write_config: Callable[..., Path]) -> None:
    port = free_port()
    config = write_config(
        [lns("alpha", "rest", min_workers=2, max_workers=3, limits={"idle_sample_interval": 0.3,
                                                                   "memory_soft_mb": 500}),
         lns("beta", "rest", min_workers=1, max_workers=1, limits={"idle_sample_interval": 0.3})],
        monitoring={"enabled": True, "port": port},
    )
    with supervisor_process(config, jobs=[("beta", {"seconds": 60})]):
        time.sleep(1.0)  # let the busy task start and every worker be sampled
        table = status("-c", str(config))
        assert table.returncode == 0, table.stderr
        out = table.stdout
        for word in ("NAMESPACE", "alpha", "beta", "WARM", "MIN/MAX", "RESTARTS", "PID", "CURRENT TASK", "RSS",
                     "CPU%", "LAST RECYCLE", "2/3", "memory_soft_mb=500"):
            assert word in out, f"{word!r} missing from:\n{out}"

        as_json = status("-c", str(config), "--json")
        assert as_json.returncode == 0, as_json.stderr
        doc = json.loads(as_json.stdout)
        by_name = {ns["name"]: ns for ns in doc["namespaces"]}
        assert by_name["alpha"]["warm"] == 2 and by_name["alpha"]["state"] == "ok"
        assert by_name["beta"]["busy"] == 1
        (busy,) = by_name["beta"]["workers"]
        assert busy["state"] == "busy" and busy["current_task"] and busy["task_running_for"] > 0.5
        assert busy["current_task"] in out
        for ns in doc["namespaces"]:
            for w in ns["workers"]:
                assert pid_alive(w["pid"]), w
                assert str(w["pid"]) in out
                real = tree_rss(w["pid"])
                assert abs(w["rss"] - real) <= 0.1 * real, (w["pid"], w["rss"], real)
                assert w["cpu_percent"] is not None
        assert pid_alive(doc["pid"])

        by_url = status("--url", f"http://127.0.0.1:{port}", "--json")
        assert by_url.returncode == 0 and json.loads(by_url.stdout)["pid"] == doc["pid"]


@pytest.mark.timeout(120)
def test_status_exit_codes_degraded_and_nothing_running(write_config: Callable[..., Path]) -> None:
    port = free_port()
    config = write_config(
        [lns("fine", "rest", min_workers=1, max_workers=1),
         namespace("broken", "handle", module="broken_import", min_workers=1, max_workers=1)],
        monitoring={"enabled": True, "port": port},
    )
    with supervisor_process(config):
        result = status("-c", str(config))
        assert result.returncode == 1, result.stdout + result.stderr
        assert "degraded" in result.stdout and "this_module_does_not_exist" in result.stdout
    # The supervisor is gone now: nothing listens on the port.
    gone = status("-c", str(config))
    assert gone.returncode == 3
    assert f"no supervisor is running at http://127.0.0.1:{port}" in gone.stderr
    assert status("--url", f"http://127.0.0.1:{free_port()}").returncode == 3

    disabled = write_config([lns("fine", "rest")], name="off.yaml")
    off = status("-c", str(disabled))
    assert off.returncode == 3 and "monitoring is disabled" in off.stderr

    usage = status()
    assert usage.returncode == 2 and "-c CONFIG or --url" in usage.stderr


@pytest.mark.timeout(120)
def test_status_uses_the_token_from_the_config(write_config: Callable[..., Path]) -> None:
    port = free_port()
    token = "tok-status-cli-SECRET"
    config = write_config([lns("fine", "rest", min_workers=1, max_workers=1)],
                          monitoring={"enabled": True, "port": port, "token": token})
    with supervisor_process(config):
        ok = status("-c", str(config))
        assert ok.returncode == 0, ok.stderr
        assert token not in ok.stdout
        refused = status("--url", f"http://127.0.0.1:{port}")
        assert refused.returncode == 3 and "bearer token" in refused.stderr
        explicit = status("--url", f"http://127.0.0.1:{port}", "--token", token)
        assert explicit.returncode == 0


@pytest.mark.timeout(120)
def test_status_watch_refreshes_until_interrupted(write_config: Callable[..., Path]) -> None:
    port = free_port()
    config = write_config([lns("fine", "rest", min_workers=1, max_workers=1)],
                          monitoring={"enabled": True, "port": port})
    with supervisor_process(config):
        proc = subprocess.Popen([sys.executable, "-m", "workerhost.cli", "status", "-c", str(config), "--json",
                                 "--watch", "0.2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(3)]  # three refreshes (the test's timeout bounds this)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    docs = [json.loads(line) for line in lines + out.splitlines() if line.strip()]
    assert len(docs) >= 3, (out, err)
    assert all(d["namespaces"][0]["name"] == "fine" for d in docs)
    assert docs[-1]["uptime"] > docs[0]["uptime"]
    assert proc.returncode == 0


@pytest.mark.timeout(120)
def test_status_finds_a_supervisor_run_by_the_start_command(write_config: Callable[..., Path], tmp_path: Path) -> None:
    port = free_port()
    config = write_config([lns("fine", "rest", min_workers=1, max_workers=2)],
                          monitoring={"enabled": True, "port": port})
    with (tmp_path / "start.log").open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "workerhost.cli", "start", "-c", str(config)],
                                stdout=log, stderr=log, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while (result := status("-c", str(config), "--json")).returncode == 3 and time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "start.log").read_text()
            time.sleep(0.3)
        assert result.returncode == 0, result.stderr
        doc = json.loads(result.stdout)
        assert doc["pid"] == proc.pid
        assert doc["source"]["state"] == "running"
        assert [ns["name"] for ns in doc["namespaces"]] == ["fine"]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    gone = status("-c", str(config))
    assert gone.returncode == 3 and "no supervisor is running" in gone.stderr
