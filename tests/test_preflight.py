"""``check``: real interpreters, real handshakes; a broken namespace is named with its reason."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from workerhost.config import load_config
from workerhost.preflight import check_config

from .conftest import namespace

pytestmark = pytest.mark.timeout(120)

CLI = [sys.executable, "-m", "workerhost.cli"]


def fake_sdk(root: Path, *, protocol: int) -> Path:
    """A prismq_worker_sdk package that claims another protocol version (put first on PYTHONPATH)."""
    pkg = root / "fake_sdk" / "prismq_worker_sdk"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("__version__ = '9.0.0'\n")
    (pkg / "protocol.py").write_text(f"PROTOCOL_VERSION = {protocol}\n")
    return pkg.parent


async def test_good_and_broken_namespaces(write_config: Any, tmp_path: Path) -> None:
    bare = tmp_path / "bare-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    path = write_config([
        namespace("good", "echo"),
        namespace("broken", "handle", module="broken_import"),
        namespace("novenv", "echo", venv_python=str(tmp_path / "missing" / "bin" / "python")),
        namespace("nosdk", "echo", venv_python=str(bare / "bin" / "python")),
        namespace("mismatch", "echo", env={"PYTHONPATH": str(fake_sdk(tmp_path, protocol=2))}),
        namespace("badfn", "no_such_function"),
    ])
    steps: list[tuple[str, str]] = []
    reports = {r.name: r for r in await check_config(load_config(path, require_venvs=False),
                                                      on_step=lambda n, s: steps.append((n, s)))}
    good = reports["good"]
    assert good.ok and good.cold_start is not None and good.cold_start > 0
    assert good.python_version == ".".join(map(str, sys.version_info[:3]))
    assert good.sdk_version and good.protocol == 1
    assert ("good", "handler") in steps

    broken = reports["broken"]
    assert broken.failed_step == "handler" and "this_module_does_not_exist" in (broken.reason or "")
    assert reports["novenv"].failed_step == "venv" and "venv missing" in (reports["novenv"].reason or "")
    assert reports["nosdk"].failed_step == "sdk" and "not importable" in (reports["nosdk"].reason or "")
    mismatch = reports["mismatch"]
    assert mismatch.failed_step == "sdk" and "protocol v2" in (mismatch.reason or "")
    assert reports["badfn"].failed_step == "handler" and "no_such_function" in (reports["badfn"].reason or "")


def test_check_command_names_the_broken_namespace(write_config: Any) -> None:
    path = write_config([namespace("good", "echo"), namespace("broken", "handle", module="broken_import")])
    res = subprocess.run([*CLI, "check", "-c", str(path)], capture_output=True, text=True, timeout=90)
    assert res.returncode == 1, res.stdout + res.stderr
    rows = {line.split()[0]: line for line in res.stdout.splitlines()[1:] if line.strip()}
    assert rows["good"].split()[1] == "ok" and rows["broken"].split()[1] == "FAIL"
    assert "namespace 'broken'" in res.stderr and "this_module_does_not_exist" in res.stderr
    assert "'good'" not in res.stderr


def test_check_command_passes_on_a_good_config(write_config: Any) -> None:
    path = write_config([namespace("one", "echo"), namespace("two", "async_echo", codec="msgpack")])
    res = subprocess.run([*CLI, "check", "-c", str(path)], capture_output=True, text=True, timeout=90)
    assert res.returncode == 0, res.stdout + res.stderr
    table = res.stdout.splitlines()[1:]
    assert "COLD START" in table[0]
    assert [line.split()[:2] for line in table[1:]] == [["one", "ok"], ["two", "ok"]]


def test_check_refuses_an_invalid_config(write_config: Any) -> None:
    path = write_config([namespace("one", "echo", max_workers="many")])
    res = subprocess.run([*CLI, "check", "-c", str(path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "workers[0].max_workers" in res.stderr
