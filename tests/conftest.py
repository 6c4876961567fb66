"""Shared fixtures: real worker projects, real venvs, configs written to disk."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from workerhost.config import Config, load_config

ROOT = Path(__file__).resolve().parent.parent
WORKERS = Path(__file__).resolve().parent / "workers"
SDK_DIR = ROOT / "worker_sdk"

pytest_plugins = ["tests.helpers.venvs", "tests.helpers.services"]


def namespace(name: str, function: str, *, task_types: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    """A namespace dict running ``handlers.<function>`` from tests/workers in this Python."""
    ns = {
        "name": name,
        "project_path": str(WORKERS),
        "venv_python": sys.executable,
        "module": "handlers",
        "function": function,
        "task_types": task_types or [name],
        "min_workers": 1,
        "max_workers": 2,
        "start_timeout": 20,
        "retry": {"backoff": 0.01, "backoff_max": 0.05},
    }
    ns.update(extra)
    return ns


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    def write(workers: list[dict[str, Any]], *, name: str = "workerhost.yaml", **top: Any) -> Path:
        path = tmp_path / name
        doc = {"version": "1.0", "workers": workers, **top}
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    return write


@pytest.fixture
def make_config(write_config: Callable[..., Path]) -> Callable[..., Config]:
    def make(workers: list[dict[str, Any]], **top: Any) -> Config:
        return load_config(write_config(workers, **top))

    return make


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); treat it as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture(scope="session")
def sdk_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The worker SDK built once as a wheel, to install into test venvs offline."""
    out = tmp_path_factory.mktemp("sdk-wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(SDK_DIR)],
        check=True,
    )
    return next(out.glob("prismq_worker_sdk-*.whl"))


def which_python(version: str) -> str | None:
    """Path of a CPython ``version`` (e.g. "3.8") from pyenv or PATH, or None."""
    pyenv = shutil.which("pyenv")
    if pyenv:
        res = subprocess.run([pyenv, "versions", "--bare"], capture_output=True, text=True)
        for line in sorted(res.stdout.split(), reverse=True):
            if line == version or line.startswith(version + "."):
                prefix = subprocess.run([pyenv, "prefix", line], capture_output=True, text=True).stdout.strip()
                exe = Path(prefix) / "bin" / "python"
                if exe.exists():
                    return str(exe)
    return shutil.which(f"python{version}")
