"""Security through the real CLI: tokens, secrets from ``${VAR}``, the worker's environment, and no shell.

tests/test_control.py checks the endpoints in-process and tests/test_logging.py
the log redactor; here the whole path runs as an operator would run it:
secrets come from the supervisor's environment through ``${VAR}`` in the
config file, and the supervisor is ``workerhost-supervisor start``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.ops import CLI, MARK, Started, free_port, marked, wait_for
from workerhost import Supervisor
from workerhost.config import BASE_ENV

from .conftest import fns

pytestmark = pytest.mark.timeout(120)

TOKEN = "tok-SECRET-4f1d9a7e"
API_KEY = "key-SECRET-c0ffee42"
NOT_ALLOWED = "leak-SECRET-0451"


@pytest.fixture
def started(tmp_path: Path) -> Iterator[Started]:
    s = Started(tmp_path)
    yield s
    s.cleanup()


def test_endpoints_tokens_secrets_and_worker_env_through_the_cli(tmp_path: Path, write_config: Any,
                                                                 started: Started) -> None:
    port = free_port()
    log_file = tmp_path / "logs" / "supervisor.log"
    config = write_config(
        [fns("talk", "env_report", task_types=["Talk"], mark=started.mark,
             env={"SERVICE_API_KEY": "${FAULTS_API_KEY}", MARK: started.mark}, env_passthrough=["FAULTS_ALLOWED"])],
        monitoring={"enabled": True, "host": "0.0.0.0", "port": port, "token": "${FAULTS_TOKEN}"},
        logging={"level": "DEBUG", "format": "json", "file": str(log_file)},
        task_manager={"type": "embedded", "poll_interval": 0.02, "poll_max_interval": 0.2},
    )
    env = {**os.environ, "FAULTS_TOKEN": TOKEN, "FAULTS_API_KEY": API_KEY, "FAULTS_NOT_ALLOWED": NOT_ALLOWED,
           "FAULTS_ALLOWED": "yes"}
    proc = started.start(config, env=env)
    base = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {TOKEN}"}

    def up() -> bool:
        try:
            return httpx.get(f"{base}/healthz", headers=auth, timeout=2).status_code == 200
        except httpx.HTTPError:
            assert proc.poll() is None, started.log()
            return False

    wait_for(up, 60, "the control server")
    for path in ("/healthz", "/readyz", "/status", "/metrics"):
        anonymous = httpx.get(base + path, timeout=5)
        assert anonymous.status_code == 401, path
        assert httpx.get(base + path, headers={"Authorization": "Bearer wrong"}, timeout=5).status_code == 401
        assert httpx.get(base + path, headers={"Authorization": TOKEN}, timeout=5).status_code == 401  # no scheme
        assert TOKEN not in anonymous.text

    res = subprocess.run([*CLI, "submit", "-c", str(config), "Talk", "--params", "{}", "--wait", "--timeout", "60"],
                         capture_output=True, text=True, timeout=90, env=env)
    assert res.returncode == 0, res.stderr
    result = json.loads(res.stdout)["result"]
    # The worker's environment: the base set, what the config passes through or sets, and nothing else.
    allowed = set(BASE_ENV) | {"FAULTS_ALLOWED", "SERVICE_API_KEY", MARK}
    extra = {n for n in result["names"] if n not in allowed and not n.startswith("LC_")}
    assert extra <= {"PWD", "SHLVL", "_"} and not {n for n in extra if n.startswith("FAULTS")}, extra
    assert "FAULTS_NOT_ALLOWED" not in result["names"] and "FAULTS_TOKEN" not in result["names"]
    assert result["allowed"] == "yes"

    bodies = {path: httpx.get(base + path, headers=auth, timeout=5).text for path in ("/status", "/metrics", "/readyz")}
    assert started.stop(proc) == 0
    texts = {"log file": log_file.read_text(), "console": started.log(), **bodies}
    assert "stderr says ***" in texts["log file"]  # the worker did say it: the supervisor masked it
    for where, text in texts.items():
        for secret in (TOKEN, API_KEY, NOT_ALLOWED):
            assert secret not in text, f"{secret} appears in the {where}"
    assert marked(started.mark) == []


WEIRD = "a b;$(touch pwned)&`touch pwned2`'q\"|x"
HANDLER = """
import os, sys
def handle(task):
    return {"cwd": os.getcwd(), "executable": sys.executable, "argv": sys.argv}
if __name__ == "__main__" or sys.argv[1:2] == ["handle"]:
    import json
    task = json.loads(sys.stdin.read())
    print(json.dumps({"success": True, "result": handle(task)}))
"""


def _no_pwned(*folders: Path) -> None:
    for folder in folders:
        assert not list(folder.rglob("pwned*")), f"a shell ran: {list(folder.rglob('pwned*'))}"


async def test_paths_with_spaces_and_shell_metacharacters(tmp_path: Path, make_venv: Any,
                                                         make_config: Any) -> None:
    project = tmp_path / WEIRD / "project dir"
    project.mkdir(parents=True)
    (project / "weird_handler.py").write_text(HANDLER)
    python = make_venv(sys.executable, name=f"venv {WEIRD}")
    assert WEIRD in str(python)
    cfg = make_config([
        fns("persist", "handle", module="weird_handler", project_path=str(project), venv_python=str(python)),
        fns("once", "handle", module="weird_handler", project_path=str(project), venv_python=str(python),
            mode="oneshot"),
    ])
    async with Supervisor(cfg) as sup:
        for name in ("persist", "once"):
            r = await sup.run(name, {})
            assert r.ok, r.error
            assert r.result["cwd"] == str(project)
            assert Path(r.result["executable"]).parent == python.parent
    _no_pwned(tmp_path, Path.cwd(), project, python.parent.parent)


def test_cli_runs_a_config_in_a_folder_with_metacharacters(tmp_path: Path) -> None:
    """validate + run through the CLI, with the config itself under a hostile path."""
    folder = tmp_path / WEIRD
    folder.mkdir()
    (folder / "weird_handler.py").write_text(HANDLER)
    config = folder / "conf $(touch pwned).yaml"
    config.write_text(json.dumps({"version": "1.0", "workers": [
        {"name": "w", "project_path": ".", "venv_python": sys.executable, "module": "weird_handler",
         "function": "handle", "task_types": ["W"]}]}))
    ok = subprocess.run([*CLI, "validate", "-c", str(config)], capture_output=True, text=True, timeout=60, cwd=folder)
    assert ok.returncode == 0, ok.stderr
    ran = subprocess.run([*CLI, "run", "-c", str(config), "W"], capture_output=True, text=True, timeout=60, cwd=folder)
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["result"]["cwd"] == str(folder)
    _no_pwned(tmp_path)
