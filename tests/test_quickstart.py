"""The quick start (scripts/quickstart.py) end to end, offline.

The script runs for real against a copy of the example config and
projects: ``provision`` builds real venvs (with pip), a real supervisor
starts on the embedded queue, tasks go through ``submit --wait``, the
status table comes from the real control server, and SIGTERM must stop it
with exit code 0. Only the package index is replaced: ``six`` 1.15.0 and
1.16.0 come from local stand-in wheels (``PIP_NO_INDEX`` +
``PIP_FIND_LINKS``), and the worker SDK from the checkout, so nothing is
downloaded. The install step (``.venv`` + ``pip install -e``) needs the
index and is what CI's smoke run of the real command covers.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT, pid_alive
from .helpers.venvs import build_wheel

SCRIPT = ROOT / "scripts" / "quickstart.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _copy_example(tmp_path: Path, port: int) -> Path:
    shutil.copytree(ROOT / "examples", tmp_path / "examples",
                    ignore=shutil.ignore_patterns(".venv", "__pycache__", ".workerhost"))
    (tmp_path / "config").mkdir()
    text = (ROOT / "config" / "example.yaml").read_text()
    text, n = re.subn(r"(?m)^(\s+port:\s*)\d+", rf"\g<1>{port}", text)
    assert n == 1, "config/example.yaml should set monitoring.port once"
    config = tmp_path / "config" / "example.yaml"
    config.write_text(text)
    return config


def _offline_env(tmp_path: Path) -> dict[str, str]:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for version in ("1.15.0", "1.16.0"):
        build_wheel(wheels, "six", version, f"__version__ = {version!r}\n")
    env = dict(os.environ)
    env.update(PIP_NO_INDEX="1", PIP_FIND_LINKS=str(wheels), PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def _run(config: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--no-install", "--config", str(config), "--installer", "pip"],
        capture_output=True, text=True, env=env, timeout=timeout,
    )


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_quickstart_runs_the_whole_example_and_stops_cleanly(tmp_path: Path) -> None:
    config = _copy_example(tmp_path, _free_port())
    res = _run(config, _offline_env(tmp_path), timeout=400)
    out = res.stdout
    assert res.returncode == 0, f"quickstart failed:\n{out[-4000:]}\n{res.stderr[-4000:]}"

    # Results from both conflicting namespaces, each with its own six.
    assert re.search(r'"type": "Legacy.WhichSix", "status": "completed".*"six": "1.15.0"', out)
    assert re.search(r'"type": "Modern.WhichSix", "status": "completed".*"six": "1.16.0"', out)
    assert "legacy-app sees six 1.15.0, modern-app sees six 1.16.0" in out
    assert re.search(r'"type": "Features.Flaky", "status": "completed", "attempts": 3', out)
    assert re.search(r'"type": "Shell.Greet", "status": "completed".*"language": "sh"', out)
    # The status table, with every namespace ok.
    table = re.search(r"^NAMESPACE\s+STATE.*?(?=\n\n)", out, re.M | re.S)
    assert table is not None, out
    rows = {line.split()[0]: line.split()[1] for line in table.group(0).splitlines()[1:]}
    assert rows == dict.fromkeys(("legacy-app", "modern-app", "progress", "flaky", "slow", "shell"), "ok")
    # A clean stop: exit 0 and no worker left (the script checks the pids from the status).
    assert "the supervisor stopped cleanly (exit code 0)" in out
    pids = [int(p) for p in re.findall(r"^\s+(\d+)\s+(?:idle|busy)\s", out, re.M)]
    assert len(pids) >= 8 and not [p for p in pids if pid_alive(p)]
    # Nothing lost: every task completed, or (a slow task that had not reached a worker yet on a
    # very loaded machine) was handed back to the queue; nothing is left claimed or failed.
    counts = re.search(r"pending (\d+)\s+claimed (\d+)\s+completed (\d+)\s+failed (\d+)\s+dead (\d+)", out)
    assert counts is not None, out
    pending, claimed, completed, failed, dead = map(int, counts.groups())
    assert (pending + completed, claimed, failed, dead) == (8, 0, 0, 0), counts.group(0)
    assert completed >= 5, counts.group(0)

    # The venvs really hold what the config pins (and the stamps make a second provision a no-op).
    examples = tmp_path / "examples"
    for project, version in (("legacy_app", "1.15.0"), ("modern_app", "1.16.0")):
        py = examples / project / ".venv" / "bin" / "python"
        seen = subprocess.run([str(py), "-c", "import six; print(six.__version__)"], capture_output=True, text=True)
        assert seen.stdout.strip() == version


@pytest.mark.timeout(60)
def test_quickstart_refuses_a_port_in_use_before_doing_anything(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        config = _copy_example(tmp_path, busy.getsockname()[1])
        res = _run(config, dict(os.environ), timeout=50)
    assert res.returncode == 1
    assert "already listens on" in res.stderr and "monitoring.port" in res.stderr
    assert not (tmp_path / "examples" / "legacy_app" / ".venv").exists(), "it provisioned before refusing"


def test_readme_quick_start_is_two_commands_matching_the_install_and_test_sections() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")

    def first_block(heading: str) -> list[str]:
        section = readme[readme.index(heading):]
        block = section[section.index("```bash\n") + len("```bash\n"):]
        return [line for line in block[:block.index("```")].splitlines() if line.strip()]

    quick = first_block("## Quick start")
    assert len(quick) == 2, quick
    assert quick[0] == "python3 scripts/quickstart.py"
    assert (ROOT / quick[0].split()[1]).is_file()
    install = first_block("## Install for development")
    tests = first_block("## Run the tests")
    # The second command is the README's own install line and test command, in the venv the first made.
    assert quick[1] == f". .venv/bin/activate && {install[-1]} && {tests[-1]}"
    assert install[0].startswith("python3 -m venv .venv")


def test_coverage_hook_measures_a_process_and_hides_its_variables(tmp_path: Path) -> None:
    """scripts/coverage_hook.py (CI's coverage of worker subprocesses) really measures, invisibly."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import coverage_hook
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    (tmp_path / "pyproject.toml").write_text('[tool.coverage.run]\nparallel = true\nsource = ["measured"]\n')
    (tmp_path / "measured.py").write_text("def f(x):\n    if x:\n        return 1\n    return 2\n")
    code = coverage_hook.hook_line(tmp_path) + (
        "import json, os, measured; measured.f(1); "
        "print(json.dumps(sorted(k for k in os.environ if k.startswith('COVERAGE'))))\n"
    )
    import coverage

    # -S: no site, so no .pth hook of the venv running this test starts coverage first.
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": os.pathsep.join([str(Path(coverage.__file__).parent.parent),
                                                                      str(tmp_path)])}
    res = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]", "the hook left COVERAGE_* variables in the measured process"
    data_files = list(tmp_path.glob(".coverage.*"))
    assert len(data_files) == 1, data_files
    data = coverage.CoverageData(basename=str(data_files[0]))
    data.read()
    assert sorted(data.lines(str(tmp_path / "measured.py")) or []) == [1, 2, 3]
