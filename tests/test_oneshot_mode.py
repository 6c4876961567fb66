"""``mode: oneshot``: the design's spawn-per-task protocol, for workers without the SDK."""

from __future__ import annotations

import sys

import pytest

from workerhost import FailureKind, Supervisor

from .conftest import WORKERS, namespace

pytestmark = pytest.mark.timeout(60)

LEGACY = '''
import json, sys

def main():
    task = json.loads(sys.stdin.read())
    print("noise the host must ignore")
    kind = task["params"].get("kind")
    if kind == "invalid":
        print(json.dumps({"success": False, "error": {"type": "ValidationError", "message": "bad",
                          "retry_possible": False}}))
        sys.exit(2)
    if kind == "flaky":
        sys.exit(1)
    print(json.dumps({"success": True, "result": {"echo": task["params"], "argv": sys.argv[1:]}}))

if __name__ == "__main__":
    main()
'''


async def test_oneshot_legacy_script(make_config, tmp_path):
    (tmp_path / "legacy.py").write_text(LEGACY)
    cfg = make_config([namespace("legacy", "main", mode="oneshot", module="legacy", project_path=str(tmp_path),
                                 max_retries=1)])
    async with Supervisor(cfg) as sup:
        r = await sup.run("legacy", {"a": 1})
        assert r.unwrap() == {"echo": {"a": 1}, "argv": ["main"]}
        r = await sup.run("legacy", {"kind": "invalid"})
        assert r.error.type == "ValidationError" and not r.error.retry_possible and r.attempts == 1
        r = await sup.run("legacy", {"kind": "flaky"})
        assert r.attempts == 2 and r.error.kind is FailureKind.RAISED


async def test_oneshot_command_with_sdk_and_timeout(make_config):
    cfg = make_config([
        namespace("sdk1", "echo", mode="oneshot",
                  command=[sys.executable, "-m", "prismq_worker_sdk", "--oneshot", "handlers:echo"]),
        namespace("slow", "sleep", mode="oneshot", timeout=0.5, max_retries=0,
                  command=[sys.executable, "-m", "prismq_worker_sdk", "--oneshot", "handlers:sleep"]),
    ])
    async with Supervisor(cfg) as sup:
        a = (await sup.run("sdk1", {"x": 1})).unwrap()
        b = (await sup.run("sdk1", {"x": 2})).unwrap()
        assert a["pid"] != b["pid"]  # one process per task
        r = await sup.run("slow", {"seconds": 30})
        assert r.error.kind is FailureKind.TIMEOUT
    assert WORKERS.exists()


async def test_persistent_worker_without_sdk(make_config):
    cfg = make_config([
        namespace("raw", "x", command=[sys.executable, str(WORKERS / "raw_protocol_worker.py")]),
        namespace("v2", "x", command=[sys.executable, str(WORKERS / "raw_protocol_worker.py")],
                  env={"RAW_PROTOCOL": "2"}, respawn_backoff=5),
    ])
    async with Supervisor(cfg) as sup:
        a = (await sup.run("raw", {"text": "hi"})).unwrap()
        b = (await sup.run("raw", {"text": "yo"})).unwrap()
        assert a["upper"] == "HI" and a["pid"] == b["pid"]
        v2 = sup.pools["v2"]
        assert v2.state.value == "degraded"
        assert "protocol version mismatch: supervisor speaks v1" in v2.last_error and "speaks v2" in v2.last_error
