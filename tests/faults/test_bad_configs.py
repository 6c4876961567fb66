"""A corpus of broken configs, each through the real CLI: ``validate -c`` and ``start -c``.

Every one must exit 2 with ONE line on stderr that names the file, the field
and the reason, and no traceback; ``start`` must refuse before it starts
anything. The corpus is ``bad_configs/`` (expectations in ``cases.yaml``)
plus the cases that cannot live in a checkout (unreadable paths, bytes
that are not UTF-8, a venv Python without the execute bit).
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from tests.conftest import WORKERS

pytestmark = pytest.mark.timeout(120)

HERE = Path(__file__).resolve().parent / "bad_configs"
CASES: dict[str, dict[str, str]] = yaml.safe_load((HERE / "cases.yaml").read_text())
CLI = [sys.executable, "-m", "workerhost.cli"]
ENV = {**os.environ, "FAULTS_WORKERS": str(WORKERS), "FAULTS_PYTHON": sys.executable}
ENV.pop("FAULTS_SURELY_UNSET_VARIABLE", None)


def run_both(config: Path, tmp_path: Path) -> list[tuple[str, subprocess.CompletedProcess[str]]]:
    commands = {
        "validate": [*CLI, "validate", "-c", str(config)],
        # A pid file of its own: should the config wrongly pass, nothing is written next to the corpus.
        "start": [*CLI, "start", "-c", str(config), "--pid-file", str(tmp_path / "sup.pid")],
    }
    with ThreadPoolExecutor(2) as pool:
        futures = {name: pool.submit(subprocess.run, argv, capture_output=True, text=True, timeout=30, env=ENV,
                                     stdin=subprocess.DEVNULL)
                   for name, argv in commands.items()}
        return [(name, fut.result()) for name, fut in futures.items()]


def check_refused(config: Path, field: str, reason: str, tmp_path: Path) -> None:
    for command, res in run_both(config, tmp_path):
        err = res.stderr.strip()
        assert res.returncode == 2, f"{command} exited {res.returncode}: {res.stdout}{res.stderr}"
        assert "Traceback" not in res.stderr, f"{command}: {res.stderr}"
        assert len(err.splitlines()) == 1, f"{command} printed more than one line:\n{res.stderr}"
        assert err.startswith(f"workerhost-supervisor: config error: {config}"), f"{command}: {err}"
        assert field in err and reason in err, f"{command}: {err!r} lacks {field!r} / {reason!r}"
        assert not (tmp_path / "sup.pid").exists()


def test_the_corpus_is_big_enough() -> None:
    files = sorted(p.name for p in HERE.iterdir() if p.name != "cases.yaml")
    assert files == sorted(CASES), "every file in bad_configs/ needs its expectation in cases.yaml"
    assert len(files) >= 25


@pytest.mark.parametrize("name", sorted(CASES))
def test_broken_config_from_the_corpus(name: str, tmp_path: Path) -> None:
    check_refused(HERE / name, CASES[name]["field"], CASES[name]["reason"], tmp_path)


def test_the_corpus_base_is_valid(tmp_path: Path) -> None:
    """The corpus files differ from a valid config only in their one fault (else they prove nothing)."""
    text = (HERE / "timeout_negative.yaml").read_text().replace("    timeout: -5\n", "")
    good = tmp_path / "good.yaml"
    good.write_text(text)
    res = subprocess.run([*CLI, "validate", "-c", str(good)], capture_output=True, text=True, timeout=30, env=ENV)
    assert res.returncode == 0, res.stderr


def _valid_text() -> str:
    return (HERE / "timeout_negative.yaml").read_text().replace("    timeout: -5\n", "")


def test_config_path_is_a_directory(tmp_path: Path) -> None:
    folder = tmp_path / "conf.yaml"
    folder.mkdir()
    check_refused(folder, "", "cannot read", tmp_path)


def test_config_path_below_a_file(tmp_path: Path) -> None:
    """Unreadable even for root: a path component is a regular file."""
    (tmp_path / "plain").write_text("x")
    check_refused(tmp_path / "plain" / "conf.yaml", "", "cannot read", tmp_path)


def test_config_is_a_symlink_loop(tmp_path: Path) -> None:
    loop = tmp_path / "loop.yaml"
    loop.symlink_to(tmp_path / "loop.yaml")
    check_refused(loop, "", "cannot read", tmp_path)


def test_config_file_missing(tmp_path: Path) -> None:
    check_refused(tmp_path / "missing.yaml", "", "file not found", tmp_path)


def test_config_not_utf8(tmp_path: Path) -> None:
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(_valid_text().replace("name: a", "name: caf\xe9").encode("latin-1"))
    check_refused(bad, "", "cannot read", tmp_path)


def test_config_binary_garbage(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.yaml"
    bad.write_bytes(bytes(range(256)) * 4)
    res = run_both(bad, tmp_path)
    for command, r in res:
        assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, \
            (command, r.stderr)


def test_venv_python_not_executable(tmp_path: Path) -> None:
    fake = tmp_path / "venv" / "bin" / "python"
    fake.parent.mkdir(parents=True)
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o644)
    conf = tmp_path / "noexec.yaml"
    conf.write_text(_valid_text().replace("${FAULTS_PYTHON}", str(fake)))
    check_refused(conf, "workers[0].venv_python", "is not executable", tmp_path)
