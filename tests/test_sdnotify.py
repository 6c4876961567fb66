"""The systemd notify protocol against a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from workerhost.config import ShutdownConfig
from workerhost.sdnotify import Notifier

from .conftest import ROOT, namespace

CLI = [sys.executable, "-m", "workerhost.cli"]
UNIT = ROOT / "config" / "workerhost.service"


class FakeSystemd:
    """Binds the socket systemd would; collects every datagram as a dict of fields."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        bind_to: str | bytes = b"\0" + address[1:].encode() if address.startswith("@") else address
        self.sock.bind(bind_to)
        self.sock.settimeout(5)

    def receive(self) -> dict[str, str]:
        data = self.sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.splitlines())

    def pending(self) -> int:
        self.sock.setblocking(False)
        n = 0
        try:
            while True:
                self.sock.recv(4096)
                n += 1
        except BlockingIOError:
            return n
        finally:
            self.sock.settimeout(5)


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[FakeSystemd]:
    fake = FakeSystemd(str(tmp_path / "notify.sock"))
    yield fake
    fake.sock.close()


def test_messages_reach_the_socket(systemd: FakeSystemd) -> None:
    n = Notifier.from_environ({"NOTIFY_SOCKET": systemd.address})
    assert n.enabled
    assert n.ready("serving 2 namespaces")
    msg = systemd.receive()
    assert msg["READY"] == "1" and msg["STATUS"] == "serving 2 namespaces" and msg["MAINPID"] == str(os.getpid())
    assert n.reloading("reloading\nconfig")
    msg = systemd.receive()
    assert msg["RELOADING"] == "1" and int(msg["MONOTONIC_USEC"]) > 0
    assert msg["STATUS"] == "reloading config"  # a newline would have started a bogus field
    n.stopping()
    assert systemd.receive() == {"STOPPING": "1"}
    n.watchdog()
    assert systemd.receive() == {"WATCHDOG": "1"}
    n.close()


def test_abstract_namespace_address() -> None:
    fake = FakeSystemd(f"@workerhost-test-{uuid.uuid4().hex}")
    try:
        n = Notifier.from_environ({"NOTIFY_SOCKET": fake.address})
        assert n.ready()
        assert fake.receive()["READY"] == "1"
    finally:
        fake.sock.close()


def test_without_notify_socket_nothing_is_sent() -> None:
    n = Notifier.from_environ({})
    assert not n.enabled and n.watchdog_interval is None
    assert n.ready() is False and n.stopping() is False


def test_a_vanished_socket_is_not_fatal(tmp_path: Path) -> None:
    n = Notifier.from_environ({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert n.ready() is False


def test_watchdog_interval_and_pid_filter(systemd: FakeSystemd) -> None:
    env = {"NOTIFY_SOCKET": systemd.address, "WATCHDOG_USEC": "4000000"}
    assert Notifier.from_environ(env).watchdog_interval == 2.0
    assert Notifier.from_environ({**env, "WATCHDOG_PID": str(os.getpid())}).watchdog_interval == 2.0
    # The watchdog was meant for another process (we were forked from the service's main process).
    assert Notifier.from_environ({**env, "WATCHDOG_PID": "1"}).watchdog_interval is None
    assert Notifier.from_environ({**env, "WATCHDOG_USEC": "nonsense"}).watchdog_interval is None


async def test_watchdog_loop_pings_until_cancelled(systemd: FakeSystemd) -> None:
    n = Notifier(systemd.address, watchdog_usec=100_000)  # ping every 0.05 s
    task = asyncio.ensure_future(n.run_watchdog())
    try:
        await asyncio.sleep(0.5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert systemd.pending() >= 3


# -- the real supervisor under a fake systemd -----------------------------------------
@pytest.mark.timeout(120)
def test_start_notifies_ready_reloading_watchdog_and_stopping(tmp_path: Path, write_config: Any) -> None:
    fake = FakeSystemd(str(tmp_path / "notify.sock"))
    fake.sock.settimeout(30)
    config = write_config([namespace("echo", "echo")], task_manager={"type": "embedded", "poll_interval": 0.05})
    env = {**os.environ, "NOTIFY_SOCKET": fake.address, "WATCHDOG_USEC": "1000000"}
    log = open(tmp_path / "start.log", "w")  # noqa: SIM115
    proc = subprocess.Popen([*CLI, "start", "-c", str(config)], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        seen: list[dict[str, str]] = []

        def until(key: str) -> dict[str, str]:
            while True:
                msg = fake.receive()
                seen.append(msg)
                if key in msg:
                    return msg

        ready = until("READY")
        assert ready["MAINPID"] == str(proc.pid) and "1 namespace" in ready["STATUS"]
        until("WATCHDOG")
        until("WATCHDOG")  # pinged again: at half the 1 s period
        proc.send_signal(signal.SIGHUP)
        reloading = until("RELOADING")
        assert int(reloading["MONOTONIC_USEC"]) > 0
        assert until("READY")["STATUS"].startswith("reloaded: ")
        proc.send_signal(signal.SIGTERM)
        until("STOPPING")
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()
        fake.sock.close()


def test_systemd_unit(tmp_path: Path) -> None:
    text = UNIT.read_text()
    service = _section(text, "Service")
    assert service["Type"] == "notify" and service["KillMode"] == "mixed"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert " start -c " in service["ExecStart"] and "--pid-file" in service["ExecStart"]
    # Room for the default graceful timeout plus the workers' own shutdown.
    assert int(service["TimeoutStopSec"]) >= ShutdownConfig().graceful_timeout + 10
    assert "WatchdogSec" in service
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed: the unit's syntax is not verified")
    local = tmp_path / "workerhost.service"
    local.write_text(text.replace("/opt/workerhost/venv/bin/workerhost-supervisor", str(Path(sys.executable).parent /
                                                                                         "workerhost-supervisor"))
                     .replace("User=workerhost", "User=root").replace("Group=workerhost", "Group=root"))
    res = subprocess.run([analyze, "verify", str(local)], capture_output=True, text=True, timeout=60)
    # verify exits 0 even for unknown keys and bad values; it only says so on stderr.
    assert res.returncode == 0 and res.stderr.strip() == "", res.stderr


def _section(text: str, name: str) -> dict[str, str]:
    out: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
        elif current == name and line and not line.startswith(("#", ";")) and "=" in line:
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip()
    return out
