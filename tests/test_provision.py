"""``provision``: real venvs built offline (local wheels, the checkout's SDK), with uv and with venv + pip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from workerhost import Supervisor
from workerhost.config import load_config
from workerhost.errors import ConfigError
from workerhost.provision import STAMP, Provisioner, find_uv, read_stamp

from .conftest import namespace
from .helpers.venvs import build_wheel

pytestmark = pytest.mark.timeout(300)

CLI = [sys.executable, "-m", "workerhost.cli"]
INSTALLERS = ["pip", pytest.param("uv", marks=pytest.mark.skipif(find_uv() is None, reason="uv is not installed"))]


@pytest.fixture
def wheels(tmp_path: Path) -> Path:
    """conflictlib 1.0 and 2.0 as local wheels: requirements resolve without any index."""
    out = tmp_path / "wheels"
    out.mkdir()
    build_wheel(out, "conflictlib", "1.0", "VERSION = '1.0'\n")
    # A different size too: a stale __pycache__ entry (same size, same zip timestamp) would shadow it.
    build_wheel(out, "conflictlib", "2.0", "VERSION = '2.0'  # the second one\n")
    return out


def provisioned_ns(name: str, requirements: Any, **extra: Any) -> dict[str, Any]:
    ns = namespace(name, "whoami", **extra)
    del ns["venv_python"]
    ns["venv"] = {"path": f"venvs/{name}", "requirements": requirements}
    return ns


def offline(*lines: str) -> list[str]:
    return ["--no-index", "--find-links ./wheels", *lines]


def tree_state(root: Path) -> dict[str, float]:
    """Every file under ``root`` and its mtime: unchanged means nothing was (re)installed."""
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file() or p.is_symlink()}


@pytest.mark.parametrize("installer", INSTALLERS)
async def test_provision_creates_skips_and_updates(installer: str, write_config: Any, wheels: Path,
                                                    tmp_path: Path) -> None:
    path = write_config([
        provisioned_ns("fresh", offline("conflictlib==1.0")),
        namespace("manual", "echo"),  # venv_python only: left alone
    ])
    with pytest.raises(ConfigError, match=r"workers\[0\]\.venv\.path: .*provision"):
        load_config(path)  # start/check still need the venv to exist
    lines: list[str] = []
    prov = Provisioner(installer=installer, log=lines.append)
    results = {r.namespaces[0]: r for r in prov.run(load_config(path, require_venvs=False))}
    assert results["fresh"].action == "created", results["fresh"].detail
    assert results["manual"].action == "skipped"
    assert any(line.startswith("[fresh] creating") for line in lines)
    venv = tmp_path / "venvs" / "fresh"
    assert read_stamp(venv) is not None and (venv / STAMP).is_file()

    # The venv serves: its own conflictlib, the checkout's SDK.
    config = load_config(path)
    async with Supervisor(config, log_events=False) as sup:
        who = (await sup.run("fresh")).unwrap()
    assert who["conflictlib"] == "1.0" and Path(who["executable"]).parent == venv / "bin"

    # Nothing changed: no work, not one file touched.
    before = tree_state(venv)
    lines.clear()
    again = {r.namespaces[0]: r for r in Provisioner(installer=installer, log=lines.append).run(config)}
    assert again["fresh"].action == "unchanged" and lines == []
    assert tree_state(venv) == before

    # A changed requirement is installed over the venv.
    path = write_config([provisioned_ns("fresh", offline("conflictlib==2.0")), namespace("manual", "echo")])
    third = {r.namespaces[0]: r for r in Provisioner(installer=installer, log=lines.append).run(load_config(path))}
    assert third["fresh"].action == "updated", third["fresh"].detail
    async with Supervisor(load_config(path), log_events=False) as sup:
        assert (await sup.run("fresh")).unwrap()["conflictlib"] == "2.0"


def test_provision_command_twice_second_does_no_work(write_config: Any, wheels: Path, tmp_path: Path) -> None:
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("\n".join(offline("conflictlib==1.0")) + "\n")
    path = write_config([provisioned_ns("filed", "requirements.txt", codec="json")])
    first = subprocess.run([*CLI, "provision", "-c", str(path), "--installer", "pip"], capture_output=True,
                           text=True, timeout=240)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "[filed] creating" in first.stdout and "[filed] installing the worker SDK" in first.stdout
    assert "filed: created" in first.stdout
    venv = tmp_path / "venvs" / "filed"
    before = tree_state(venv)
    second = subprocess.run([*CLI, "provision", "-c", str(path), "--installer", "pip"], capture_output=True,
                            text=True, timeout=120)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "filed: unchanged" in second.stdout and "installing" not in second.stdout
    assert tree_state(venv) == before
    # The requirements file is an input too: editing it means work again.
    reqs.write_text("\n".join(offline("conflictlib==2.0")) + "\n")
    third = subprocess.run([*CLI, "provision", "-c", str(path), "--installer", "pip"], capture_output=True,
                           text=True, timeout=240)
    assert third.returncode == 0 and "filed: updated" in third.stdout, third.stdout + third.stderr
    check = subprocess.run([*CLI, "check", "-c", str(path)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_failed_install_is_reported_and_redone(write_config: Any, wheels: Path, tmp_path: Path) -> None:
    path = write_config([provisioned_ns("bad", offline("conflictlib==9.9"))])
    res = subprocess.run([*CLI, "provision", "-c", str(path), "--installer", "pip"], capture_output=True,
                         text=True, timeout=240)
    assert res.returncode == 1
    assert "provision failed: namespace bad" in res.stderr and "conflictlib" in res.stderr
    assert read_stamp(tmp_path / "venvs" / "bad") is None  # unfinished: the next run tries again
    again = subprocess.run([*CLI, "provision", "-c", str(path), "--installer", "pip"], capture_output=True,
                           text=True, timeout=240)
    assert again.returncode == 1 and "bad: failed" in again.stdout


def test_path_that_is_not_a_venv_is_never_deleted(write_config: Any, tmp_path: Path) -> None:
    project = tmp_path / "venvs" / "precious"
    project.mkdir(parents=True)
    (project / "keep.txt").write_text("mine")
    path = write_config([provisioned_ns("precious", [], venv_python=None)])
    results = Provisioner(installer="pip", log=lambda _: None).run(load_config(path, require_venvs=False))
    assert results[0].action == "failed" and "not a venv" in results[0].detail
    assert (project / "keep.txt").read_text() == "mine"


def test_namespaces_sharing_a_venv_are_provisioned_once(write_config: Any, wheels: Path, tmp_path: Path) -> None:
    a = provisioned_ns("a", offline("conflictlib==1.0"))
    b = provisioned_ns("b", offline("conflictlib==1.0"))
    b["venv"]["path"] = a["venv"]["path"]
    c = provisioned_ns("c", offline("conflictlib==2.0"))
    c["venv"]["path"] = a["venv"]["path"]
    config = load_config(write_config([a, b]), require_venvs=False)
    results = Provisioner(installer="pip", log=lambda _: None).run(config)
    assert [(r.namespaces, r.action) for r in results] == [(("a", "b"), "created")]
    conflicting = load_config(write_config([a, c], name="two.yaml"), require_venvs=False)
    (result,) = Provisioner(installer="pip", log=lambda _: None).run(conflicting)
    assert result.action == "failed" and "different venvs" in result.detail


def test_venv_schema_errors_name_the_field(write_config: Any) -> None:
    bad = provisioned_ns("x", {"not": "a list"})
    with pytest.raises(ConfigError, match=r"workers\[0\]\.venv\.requirements"):
        load_config(write_config([bad]), require_venvs=False)
    unknown = provisioned_ns("y", [])
    unknown["venv"]["pythn"] = "python3"
    with pytest.raises(ConfigError, match=r"workers\[0\]\.venv\.pythn: unknown key"):
        load_config(write_config([unknown]), require_venvs=False)


def test_missing_python_is_reported(write_config: Any, tmp_path: Path) -> None:
    ns = provisioned_ns("nopy", [])
    ns["venv"]["python"] = "python9.99"
    config = load_config(write_config([ns]), require_venvs=False)
    (result,) = Provisioner(installer="pip", log=lambda _: None).run(config)
    assert result.action == "failed" and "python9.99" in result.detail
    assert not (tmp_path / "venvs" / "nopy").exists()
    assert os.path.isdir(tmp_path)
