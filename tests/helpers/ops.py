"""Helpers for the operations tests: real ``start`` processes, and finding every process they left."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

CLI = [sys.executable, "-m", "workerhost.cli"]
#: Environment variable set in every worker of a test (namespace ``env``): finds them all, grandchildren too.
MARK = "WORKERHOST_TEST_MARK"


def cli(*args: str, timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, **kw)


def marked(mark: str) -> list[int]:
    """Live (non-zombie) processes whose environment carries ``mark``."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(MARK) == mark and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
        except psutil.Error:
            continue
    return found


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Started:
    """``workerhost-supervisor start`` subprocesses; whatever is left is killed at the end of the test."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[str]] = []
        self.mark = uuid.uuid4().hex

    def start(self, config: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        log = open(self.tmp / f"start-{len(self.procs)}.log", "w")  # noqa: SIM115 - the child owns it
        proc = subprocess.Popen([*CLI, "start", "-c", str(config), *extra], stdout=log, stderr=subprocess.STDOUT,
                                text=True, env=env)
        log.close()
        self.procs.append(proc)
        return proc

    def log(self, n: int = -1) -> str:
        return (self.tmp / f"start-{n % len(self.procs)}.log").read_text()

    def stop(self, proc: subprocess.Popen[str], sig: int = signal.SIGTERM, timeout: float = 90) -> int:
        proc.send_signal(sig)
        return proc.wait(timeout)

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        for pid in marked(self.mark):
            try:
                psutil.Process(pid).kill()
            except psutil.Error:
                pass
