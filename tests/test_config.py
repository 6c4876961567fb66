"""Config loading: the design's schema, extensions, and errors that name file, field and reason."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from workerhost import ConfigError, load_config
from workerhost.config import resolve_python

from .conftest import WORKERS, namespace

pytestmark = pytest.mark.timeout(30)


def test_design_example_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("TASKMANAGER_API_KEY", "k-123")
    venv = tmp_path / "Source" / "venv" / "bin"
    venv.mkdir(parents=True)
    os.symlink(sys.executable, venv / "python")
    (tmp_path / "config.yaml").write_text("""
version: "1.0"
task_manager:
  type: "http"
  url: "https://api.example/api"
  api_key: "${TASKMANAGER_API_KEY}"
  poll_interval: 5
  timeout: 30
workers:
  - name: "PrismQ.YouTube"
    project_path: "./Source"
    venv_python: "./Source/venv/bin/python"
    module: "src.workers.video_scraper"
    function: "main"
    task_types: ["PrismQ.YouTube.VideoScrape", "PrismQ.YouTube.VideoAnalysis"]
    timeout: 300
    max_retries: 3
    metadata: {description: "Scrapes", version: "1.0.0"}
logging:
  level: "INFO"
  format: "%(asctime)s - %(name)s - %(levelname)s - %(message)s"
  file: "logs/workerhost.log"
  max_bytes: 10485760
  backup_count: 5
monitoring:
  enabled: true
  metrics_port: 9090
  health_check_port: 8080
""")
    cfg = load_config(tmp_path / "config.yaml")
    ns = cfg.namespaces[0]
    assert ns.project_path == tmp_path / "Source"
    assert ns.python == tmp_path / "Source/venv/bin/python"
    assert cfg.task_manager["api_key"] == "k-123"
    assert cfg.routes["PrismQ.YouTube.VideoScrape"] == ("PrismQ.YouTube",)
    assert cfg.logging.file == tmp_path / "logs/workerhost.log"
    assert "k-123" not in repr(cfg)


def test_json_twin(tmp_path):
    doc = {"version": "1.0", "workers": [namespace("a", "echo")]}
    (tmp_path / "c.json").write_text(json.dumps(doc))
    assert load_config(tmp_path / "c.json").namespaces[0].name == "a"


def test_env_substitution(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKERS_DIR", str(WORKERS))
    doc = {"workers": [namespace("a", "echo", project_path="${WORKERS_DIR}", env={"MODE": "${MODE:-fast}",
                                                                                   "PRICE": "$$5"})]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(doc))
    ns = load_config(tmp_path / "c.yaml").namespaces[0]
    assert ns.project_path == WORKERS and ns.env == {"MODE": "fast", "PRICE": "$5"}


def test_windows_venv_layout_resolves(tmp_path):
    scripts = tmp_path / "venv" / "Scripts"
    scripts.mkdir(parents=True)
    exe = scripts / "python.exe"
    exe.write_text("")
    assert resolve_python(tmp_path / "venv" / "bin" / "python") == exe
    assert resolve_python(tmp_path / "venv") == exe


BAD = [
    ("workers: [\n  - name: a\n   bad", "invalid YAML at line"),
    ({"workers": []}, "workers: must be a non-empty list"),
    ({"workers": [namespace("a", "echo", timeout=-1)]}, "workers[0].timeout: must be greater than 0, got -1"),
    ({"workers": [namespace("a", "echo", timeout="soon")]}, "workers[0].timeout: must be a number"),
    ({"workers": [namespace("a", "echo", colour="blue")]}, "workers[0].colour: unknown key"),
    ({"workers": [namespace("a", "echo", venv_python="/nope/bin/python")]}, "workers[0].venv_python: /nope/bin/python does not exist"),
    ({"workers": [namespace("a", "echo", min_workers=3, max_workers=2)]}, "workers[0].max_workers: must be at least min_workers"),
    ({"workers": [namespace("a", "echo", codec="xml")]}, "workers[0].codec: must be one of json, msgpack"),
    ({"workers": [namespace("a", "echo", task_types=["T"]), namespace("b", "echo", task_types=["T"])]},
     "workers[1].task_types: task type 'T' is served by a, b; declare the fallback order in routes.T"),
    ({"workers": [namespace("a", "echo"), namespace("a", "echo", task_types=["x"])]}, "workers[1].name: duplicate namespace name"),
    ({"workers": [namespace("a", "echo", env={"K": "${UNSET_VAR_FOR_TEST}"})]}, "workers[0].env.K: environment variable UNSET_VAR_FOR_TEST is not set"),
    ({"workers": [namespace("a", "echo", project_path="/does/not/exist")]}, "workers[0].project_path: /does/not/exist is not a directory"),
    ({"version": "2.0", "workers": [namespace("a", "echo")]}, "version: unsupported config version"),
    ({"workers": [namespace("a", "echo")], "routes": {"a": ["zzz"]}}, "routes.a: namespace 'zzz' does not list"),
    ({"workers": [namespace("a", "echo")], "monitoring": {"enabled": True, "host": "0.0.0.0"}},
     "monitoring.token: is required when the endpoints bind beyond loopback"),
]


@pytest.mark.parametrize("doc,message", BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_bad_configs_name_field_and_reason(tmp_path, doc, message):
    path = tmp_path / "bad.yaml"
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)


def test_cli_validate_exit_codes(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"workers": [namespace("a", "echo")]}))
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"workers": [namespace("a", "echo", max_retries=-2)]}))
    cli = [sys.executable, "-m", "workerhost.cli", "validate", "-c"]
    ok = subprocess.run([*cli, str(good)], capture_output=True, text=True)
    assert ok.returncode == 0 and "ok (1 namespaces: a)" in ok.stdout
    res = subprocess.run([*cli, str(bad)], capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.strip() == f"workerhost-supervisor: config error: {bad}: workers[0].max_retries: must be at least 0, got -2"
    assert "Traceback" not in res.stderr
    missing = subprocess.run([*cli, str(tmp_path / "missing.yaml")], capture_output=True, text=True)
    assert missing.returncode == 2 and "file not found" in missing.stderr


def test_relative_paths_resolve_against_config_folder(tmp_path):
    sub = tmp_path / "deploy"
    sub.mkdir()
    rel = os.path.relpath(WORKERS, sub)
    (sub / "c.yaml").write_text(yaml.safe_dump({"workers": [namespace("a", "echo", project_path=rel)]}))
    cwd = Path.cwd()
    try:
        os.chdir("/")
        assert load_config(sub / "c.yaml").namespaces[0].project_path.resolve() == WORKERS
    finally:
        os.chdir(cwd)


def test_cli_run_refuses_bad_params_as_usage_error(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"workers": [namespace("a", "echo")]}))
    cli = [sys.executable, "-m", "workerhost.cli", "run", "-c", str(good), "a"]
    for params, reason in (("not json", "--params is not valid JSON"), ("[1]", "--params must be a JSON object")):
        res = subprocess.run([*cli, "--params", params], capture_output=True, text=True, timeout=60)
        assert res.returncode == 2 and reason in res.stderr and "Traceback" not in res.stderr
    ok = subprocess.run([*cli, "--params", '{"x": 1}'], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and '"status": "completed"' in ok.stdout
