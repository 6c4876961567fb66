"""Namespaces in their own real venvs: conflicting versions, different Pythons, the SDK on 3.8+."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from workerhost import Supervisor

from .conftest import SDK_DIR, namespace, which_python
from .helpers.venvs import build_wheel

pytestmark = pytest.mark.timeout(300)

OLDEST, NEWEST = "3.8", "3.13"


def _python_or_skip(version: str) -> str:
    exe = which_python(version)
    if exe is None:
        pytest.skip(f"CPython {version} is not installed on this machine (pyenv or python{version} on PATH)")
    return exe


async def test_conflicting_versions_each_see_their_own(make_venv, make_config, tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    v1 = build_wheel(wheels, "conflictlib", "1.0", "VERSION = '1.0'\n")
    (wheels / "v2").mkdir()
    v2 = build_wheel(wheels / "v2", "conflictlib", "2.0", "VERSION = '2.0'\n")
    py1 = make_venv(sys.executable, wheels=(v1,), name="conflict-v1")
    py2 = make_venv(sys.executable, wheels=(v2,), name="conflict-v2")
    cfg = make_config([
        namespace("old", "whoami", venv_python=str(py1)),
        namespace("new", "whoami", venv_python=str(py2)),
    ])
    async with Supervisor(cfg) as sup:
        old = (await sup.run("old")).unwrap()
        new = (await sup.run("new")).unwrap()
    assert old["conflictlib"] == "1.0" and new["conflictlib"] == "2.0"
    assert Path(old["executable"]).parent == py1.parent
    assert Path(new["executable"]).parent == py2.parent


async def test_oldest_and_newest_python_in_one_supervisor(make_venv, make_config):
    oldest = make_venv(_python_or_skip(OLDEST), name="py-oldest")
    newest = make_venv(_python_or_skip(NEWEST), name="py-newest")
    cfg = make_config([
        namespace("oldest", "whoami", venv_python=str(oldest)),
        namespace("newest", "whoami", venv_python=str(newest), codec="json"),
    ])
    async with Supervisor(cfg) as sup:
        snapshot = sup.snapshot()
        a = (await sup.run("oldest")).unwrap()
        b = (await sup.run("newest")).unwrap()
    assert a["python"].startswith(OLDEST + ".") and b["python"].startswith(NEWEST + ".")
    pythons = {ns["name"]: ns["workers"][0]["python"] for ns in snapshot["namespaces"]}
    assert pythons == {"oldest": a["python"], "newest": b["python"]}


@pytest.mark.parametrize("version", [OLDEST, NEWEST])
def test_sdk_suite_runs_on(version, make_venv):
    py = make_venv(_python_or_skip(version), name=f"py-{version}")
    res = subprocess.run(
        [str(py), "-m", "unittest", "discover", "-s", str(SDK_DIR / "tests"), "-v"],
        capture_output=True, text=True, timeout=120,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Ran " in res.stderr and "OK" in res.stderr
