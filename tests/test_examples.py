"""The example workers and configs (examples/, config/example.*) really work.

The example namespaces run for real, in real venvs; the ``six`` they pin is
replaced by local stand-in wheels of the same versions (no download), so the
test checks exactly what the quick start shows: two namespaces, one
supervisor, two versions of one dependency.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest
import yaml

from workerhost import Supervisor, load_config
from workerhost.events import Event, TaskProgress

from .conftest import ROOT
from .helpers.venvs import build_wheel

pytestmark = pytest.mark.timeout(240)

EXAMPLE_YAML = ROOT / "config" / "example.yaml"
EXAMPLE_JSON = ROOT / "config" / "example.json"
EXAMPLES = ROOT / "examples"


def _six_pins(ns: dict[str, Any], base: Path) -> list[str]:
    reqs = ns["venv"].get("requirements", [])
    if isinstance(reqs, str):
        reqs = [line.split("#")[0].strip() for line in (base / reqs).read_text().splitlines()]
    return [r.split("==", 1)[1] for r in reqs if r.startswith("six==")]


def test_yaml_and_json_twins_load_to_the_same_config() -> None:
    from_yaml = load_config(EXAMPLE_YAML, require_venvs=False)
    from_json = load_config(EXAMPLE_JSON, require_venvs=False)
    assert attrs.evolve(from_yaml, path=None) == attrs.evolve(from_json, path=None)
    # Not vacuous: the twins are the whole example, every namespace included.
    assert [ns.name for ns in from_yaml.namespaces] == [
        "legacy-app", "modern-app", "progress", "flaky", "slow", "shell"]


def test_the_conflicting_namespaces_pin_different_versions_of_one_package() -> None:
    doc = yaml.safe_load(EXAMPLE_YAML.read_text())
    pins = {ns["name"]: _six_pins(ns, EXAMPLE_YAML.parent) for ns in doc["workers"] if ns.get("venv")}
    assert pins["legacy-app"] == ["1.15.0"]
    assert pins["modern-app"] == ["1.16.0"]


def test_every_example_project_is_referenced_from_the_example_config() -> None:
    cfg = load_config(EXAMPLE_YAML, require_venvs=False)
    used = {ns.project_path.resolve() for ns in cfg.namespaces}
    projects = {p.resolve() for p in EXAMPLES.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))}
    # The Node.js worker has its own config (node may be missing where the quick start runs).
    assert projects - used == {(EXAMPLES / "node_worker").resolve()}
    for ns in cfg.namespaces:
        if ns.command is None:
            assert (ns.project_path / f"{ns.module}.py").is_file(), ns.name
        else:
            assert (ns.project_path / ns.command[-1]).is_file(), ns.name


def _local_config(tmp_path: Path, pythons: dict[str, Path]) -> Path:
    """config/example.yaml with absolute project paths and ready venvs instead of ``venv:`` sections."""
    doc = yaml.safe_load(EXAMPLE_YAML.read_text())
    for ns in doc["workers"]:
        ns["project_path"] = str((EXAMPLE_YAML.parent / ns["project_path"]).resolve())
        if ns.pop("venv", None) is not None:
            ns["venv_python"] = str(pythons.get(ns["name"], Path(sys.executable)))
        ns["start_timeout"] = 60
    doc["monitoring"]["enabled"] = False
    path = tmp_path / "example.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def six_venvs(make_venv, tmp_path_factory) -> dict[str, Path]:
    wheels = tmp_path_factory.mktemp("six-wheels")
    pythons = {}
    for name, version in (("legacy-app", "1.15.0"), ("modern-app", "1.16.0")):
        (wheels / version).mkdir()
        wheel = build_wheel(wheels / version, "six", version, f"__version__ = {version!r}\n")
        pythons[name] = make_venv(sys.executable, wheels=(wheel,), name=f"six-{version}")
    return pythons


async def test_example_namespaces_run_and_report_their_own_dependency_versions(six_venvs, tmp_path) -> None:
    config = load_config(_local_config(tmp_path, six_venvs))
    progress: list[Event] = []
    async with Supervisor(config, log_events=False, observers=[progress.append]) as sup:
        legacy = (await sup.run("Legacy.WhichSix", {})).unwrap()
        modern = (await sup.run("Modern.WhichSix", {})).unwrap()
        counted = await sup.run("Features.Progress", {"steps": 4, "delay": 0.01})
        flaky = await sup.run("Features.Flaky", {"succeed_on": 3})
        slow = (await sup.run("Features.Slow", {"seconds": 0.2})).unwrap()
        greeting = (await sup.run("Shell.Greet", {"name": "Ada"})).unwrap()
        bad_greeting = await sup.run("Shell.Greet", {"name": ""})
        bad_steps = await sup.run("Features.Progress", {"steps": 0})

    assert (legacy["six"], legacy["six_dist"], legacy["project"]) == ("1.15.0", "1.15.0", "legacy_app")
    assert (modern["six"], modern["six_dist"], modern["project"]) == ("1.16.0", "1.16.0", "modern_app")
    assert counted.unwrap() == {"steps": 4, "sum": 10}
    assert [e.progress for e in progress if isinstance(e, TaskProgress) and e.task_id == counted.task_id] == [
        25, 50, 75, 100]
    assert flaky.unwrap() == {"succeeded_on_attempt": 3} and flaky.attempts == 3
    assert slow["slept"] == 0.2
    assert greeting["greeting"] == "hello, Ada" and greeting["language"] == "sh"
    assert not bad_greeting.ok and bad_greeting.error is not None
    assert (bad_greeting.error.type, bad_greeting.error.retry_possible) == ("ValidationError", False)
    assert bad_greeting.attempts == 1
    assert not bad_steps.ok and bad_steps.attempts == 1 and bad_steps.error is not None
    assert bad_steps.error.type == "ValidationError"


async def test_slow_example_is_cancelled_at_its_timeout(tmp_path) -> None:
    path = _local_config(tmp_path, {})
    doc = yaml.safe_load(path.read_text())
    doc["workers"] = [ns for ns in doc["workers"] if ns["name"] == "slow"]
    doc["workers"][0].update(timeout=0.5, max_retries=0, min_workers=1)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    async with Supervisor(load_config(path), log_events=False) as sup:
        result = await sup.run("Features.Slow", {"seconds": 30})
        # The worker stopped cooperatively, so it is still warm and serves the next task.
        again = (await sup.run("Features.Slow", {"seconds": 0.1})).unwrap()
    assert not result.ok and result.error is not None
    assert result.error.type == "TaskTimeout", result.error
    assert again["slept"] == 0.1


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed (the Node.js example needs it)")
async def test_node_example_speaks_protocol_v1() -> None:
    config = load_config(EXAMPLES / "node_worker" / "workerhost.yaml")
    progress: list[Event] = []
    async with Supervisor(config, log_events=False, observers=[progress.append]) as sup:
        ok = (await sup.run("Node.WordCount", {"text": "to be or not to be"})).unwrap()
        bad = await sup.run("Node.WordCount", {"text": 42})
    assert (ok["words"], ok["distinct"], ok["counts"]["be"]) == (6, 4, 2)
    assert re.fullmatch(r"node v\d+\..*", ok["runtime"])
    assert any(isinstance(e, TaskProgress) and e.progress == 50 for e in progress)
    assert not bad.ok and bad.error is not None and bad.error.retry_possible is False
    assert bad.attempts == 1

