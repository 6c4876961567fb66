"""The control server: health, readiness, status and Prometheus metrics over real HTTP."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import namespace
from workerhost.config import Config, MonitoringConfig
from workerhost.control import ControlServer
from workerhost.errors import ConfigError
from workerhost.supervisor import Supervisor

SECRET_TOKEN = "tok-9f3a-SECRET-control"
SECRET_KEY = "key-77b1-SECRET-manager"
SECRET_PASSWORD = "pw-c0ffee-SECRET"


def lns(name: str, function: str, **extra: Any) -> dict[str, Any]:
    return namespace(name, function, module="limits_handlers", **extra)


@asynccontextmanager
async def serving(
    cfg: Config, *, host: str = "127.0.0.1", token: str | None = None, source: Any = None,
) -> AsyncIterator[tuple[Supervisor, ControlServer, httpx.AsyncClient]]:
    async with Supervisor(cfg) as sup:
        control = ControlServer(sup, MonitoringConfig(enabled=True, host=host, port=0, token=token), source=source)
        await control.start()
        try:
            base = f"http://127.0.0.1:{control.port}"
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            async with httpx.AsyncClient(base_url=base, headers=headers, timeout=10) as client:
                yield sup, control, client
        finally:
            await control.stop()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a /metrics body, keyed by (name, labels)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(metrics: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return metrics.get((name, frozenset(labels.items())), 0.0)


@pytest.mark.timeout(90)
async def test_metrics_parse_and_counters_move(make_config: Callable[..., Config]) -> None:
    cfg = make_config([
        lns("work", "rest", min_workers=1, max_workers=2, task_types=["work.rest"], max_worker_lost=0),
        lns("crashy", "crash", min_workers=1, max_workers=1, max_worker_lost=0),
    ])
    async with serving(cfg) as (sup, _control, client):
        response = await client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        before = samples(response.text)
        assert value(before, "workerhost_workers", namespace="work", state="idle") == 1
        assert value(before, "workerhost_namespace_state", namespace="work", state="ok") == 1
        results = await asyncio.gather(*(sup.run("work.rest", {"seconds": 0.05}) for _ in range(5)))
        assert all(r.ok for r in results)
        crashed = await sup.run("crashy", {})
        assert not crashed.ok
        await sup.run("no.such.type", {})
        # The crashed worker's exit is reported by its watcher, a moment after the task returns.
        deadline = time.monotonic() + 10
        while sup.pools["crashy"].restarts["crash"] < 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        # Per-worker series appear once a worker has been sampled (within idle_sample_interval).
        deadline = time.monotonic() + 10
        while True:
            after = samples((await client.get("/metrics")).text)
            pids = {dict(labels)["pid"] for (name, labels) in after if name == "workerhost_worker_memory_bytes"}
            if pids or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        # ... and name live workers.
        assert pids and all(psutil.pid_exists(int(p)) for p in pids)
    tasks = "workerhost_tasks_total"
    assert value(after, tasks, namespace="work", type="work.rest", outcome="completed") == \
        value(before, tasks, namespace="work", type="work.rest", outcome="completed") + 5
    assert value(after, tasks, namespace="crashy", type="crashy", outcome="failed") == 1
    # Unknown types do not become label values.
    assert value(after, tasks, namespace="none", type="unknown", outcome="failed") == 1
    assert value(after, "workerhost_task_attempts_total", namespace="work", type="work.rest") == 5
    assert value(after, "workerhost_task_duration_seconds_count", namespace="work", type="work.rest",
                 outcome="completed") == 5
    assert value(after, "workerhost_task_duration_seconds_sum", namespace="work", type="work.rest",
                 outcome="completed") >= 5 * 0.05
    assert value(after, "workerhost_worker_restarts_total", namespace="crashy", reason="crash") == 1
    assert value(after, "workerhost_worker_startup_seconds_count", namespace="work") >= 1
    assert value(after, "workerhost_pool_max_workers", namespace="work") == 2
    assert value(after, "workerhost_queue_depth", namespace="work") == 0
    assert value(after, "workerhost_uptime_seconds") > 0


@pytest.mark.timeout(90)
async def test_readyz_flips_when_a_namespace_degrades(make_config: Callable[..., Config], tmp_path: Path) -> None:
    marker = tmp_path / "broken"
    cfg = make_config([
        lns("fragile", "crash", min_workers=1, max_workers=1, max_worker_lost=0, respawn_backoff=0.2,
            respawn_backoff_max=0.5, env={"LIMITS_BROKEN_MARKER": str(marker)}),
        lns("steady", "rest", min_workers=1, max_workers=1),
    ])
    async with serving(cfg) as (sup, _control, client):
        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json() == {"ready": True, "reasons": []}
        assert (await client.get("/healthz")).status_code == 200
        # From now on the namespace's workers cannot start: crash the one it has.
        marker.touch()
        await sup.run("fragile", {})
        deadline = time.monotonic() + 15
        while (ready := await client.get("/readyz")).status_code == 200 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert ready.status_code == 503
        reasons = ready.json()["reasons"]
        assert len(reasons) == 1 and reasons[0].startswith("namespace fragile is degraded")
        assert "broken on purpose" in reasons[0]
        # Liveness is a different question: the loop still turns.
        assert (await client.get("/healthz")).status_code == 200
        marker.unlink()
        deadline = time.monotonic() + 15
        while (ready := await client.get("/readyz")).status_code != 200 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert ready.status_code == 200, ready.text


@pytest.mark.timeout(60)
async def test_readyz_reports_the_source_and_healthz_the_supervisor(make_config: Callable[..., Config]) -> None:
    class FakeDispatcher:
        """Only the attributes the control server reads from a dispatcher."""

        state = "running"
        last_source_error: str | None = None

        def snapshot(self) -> dict[str, Any]:
            return {"source": "fake", "state": self.state, "held": 0}

        async def counts(self) -> dict[str, int]:
            return {"pending": 7, "dead": 1}

    source = FakeDispatcher()
    cfg = make_config([lns("steady", "rest", min_workers=1, max_workers=1)])
    async with serving(cfg, source=source) as (sup, _control, client):
        assert (await client.get("/readyz")).status_code == 200
        source.last_source_error = "connection refused"
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["reasons"] == ["task source unreachable: connection refused"]
        status = (await client.get("/status")).json()
        assert status["source"] == {"source": "fake", "state": "running", "held": 0}
        metrics = samples((await client.get("/metrics")).text)
        assert value(metrics, "workerhost_source_tasks", state="pending") == 7
        await sup.close()
        health = await client.get("/healthz")
        assert health.status_code == 503 and "supervisor closed" in health.json()["problems"]


@pytest.mark.timeout(60)
async def test_status_endpoint_matches_reality(make_config: Callable[..., Config]) -> None:
    cfg = make_config([lns("busy", "rest", min_workers=2, max_workers=2, limits={"idle_sample_interval": 0.2})])
    async with serving(cfg) as (sup, _control, client):
        running = asyncio.ensure_future(sup.run("busy", {"seconds": 3}))
        await asyncio.sleep(0.6)
        deadline = time.monotonic() + 2
        while True:  # every worker sampled at least once
            doc = (await client.get("/status")).json()
            if all(w["rss"] for w in doc["namespaces"][0]["workers"]) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        ns = doc["namespaces"][0]
        assert doc["pid"] == os.getpid()
        assert ns["warm"] == 2 and ns["busy"] == 1 and ns["state"] == "ok"
        busy = [w for w in ns["workers"] if w["state"] == "busy"]
        assert len(busy) == 1 and busy[0]["current_task"] and busy[0]["task_running_for"] >= 0.3
        for w in ns["workers"]:
            real = psutil.Process(w["pid"]).memory_info().rss
            assert abs(w["rss"] - real) <= 0.1 * real, (w["rss"], real)
        assert (await running).ok


@pytest.mark.timeout(60)
async def test_token_is_required_and_checked(make_config: Callable[..., Config]) -> None:
    cfg = make_config([lns("steady", "rest", min_workers=1, max_workers=1)])
    # Binding beyond loopback without a token is refused before anything listens.
    async with Supervisor(cfg) as sup:
        with pytest.raises(ConfigError) as info:
            ControlServer(sup, MonitoringConfig(enabled=True, host="0.0.0.0", port=0))
        assert info.value.field == "monitoring.token"
    async with serving(cfg, host="0.0.0.0", token=SECRET_TOKEN) as (_sup, control, client):
        base = f"http://127.0.0.1:{control.port}"
        async with httpx.AsyncClient(base_url=base, timeout=10) as anonymous:
            for path in ("/healthz", "/readyz", "/status", "/metrics"):
                refused = await anonymous.get(path)
                assert refused.status_code == 401, path
                assert refused.headers["WWW-Authenticate"].startswith("Bearer")
                wrong = await anonymous.get(path, headers={"Authorization": "Bearer nope"})
                assert wrong.status_code == 401
                assert (await client.get(path)).status_code == 200, path


@pytest.mark.timeout(60)
async def test_secrets_never_appear_in_status_or_metrics(make_config: Callable[..., Config], tmp_path: Path) -> None:
    # A namespace whose start error quotes a secret: the error reaches
    # status and readiness through last_error, so it must be redacted there.
    marker = tmp_path / SECRET_KEY
    marker.touch()
    cfg = make_config(
        [lns("talk", "say", min_workers=1, max_workers=1),
         lns("quoting", "rest", min_workers=1, max_workers=1, env={"LIMITS_BROKEN_MARKER": str(marker)})],
        task_manager={"type": "http", "url": f"https://user:{SECRET_PASSWORD}@tasks.example/api",
                      "api_key": SECRET_KEY},
        monitoring={"enabled": True, "token": SECRET_TOKEN},
    )
    async with serving(cfg, token=SECRET_TOKEN) as (sup, _control, client):
        assert SECRET_KEY in (sup.snapshot()["namespaces"][1]["last_error"] or "")
        result = await sup.run("talk", {"text": SECRET_PASSWORD})
        assert result.ok
        bodies = {p: (await client.get(p)).text for p in ("/status", "/metrics", "/readyz", "/healthz")}
    assert "***" in bodies["/status"] and "***" in bodies["/readyz"]
    for path, body in bodies.items():
        for secret in (SECRET_TOKEN, SECRET_KEY, SECRET_PASSWORD):
            assert secret not in body, path


@pytest.mark.timeout(30)
async def test_port_in_use_is_a_clear_error(make_config: Callable[..., Config]) -> None:
    cfg = make_config([lns("steady", "rest", min_workers=0, max_workers=1)])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with Supervisor(cfg) as sup:
            control = ControlServer(sup, MonitoringConfig(enabled=True, port=port))
            with pytest.raises(ConfigError) as info:
                await control.start()
            assert info.value.field == "monitoring.port"
            assert str(port) in info.value.reason


@pytest.mark.timeout(60)
async def test_observers_from_the_config_receive_events(make_config: Callable[..., Config]) -> None:
    from tests.workers import limits_handlers

    limits_handlers.RECORDED.clear()
    cfg = make_config([lns("steady", "rest", min_workers=1, max_workers=1)],
                      observers=["tests.workers.limits_handlers:recorder"])
    async with Supervisor(cfg) as sup:
        assert (await sup.run("steady", {})).ok
    kinds = [type(e).__name__ for e in limits_handlers.RECORDED]
    assert "WorkerReady" in kinds and "TaskCompleted" in kinds and "WorkerExited" in kinds
    with pytest.raises(ConfigError) as info:
        make_config([lns("steady", "rest")], observers=["not a spec"])
    assert info.value.field == "observers[0]"
    bad = make_config([lns("steady", "rest")], observers=["tests.workers.limits_handlers:nothing_here"])
    with pytest.raises(ConfigError) as info:
        Supervisor(bad)
    assert info.value.field == "observers[0]" and "no attribute" in info.value.reason
