#!/usr/bin/env python3
"""The quick start: install, provision the example venvs, run tasks, show status, stop.

    python3 scripts/quickstart.py

1. creates ``.venv`` in the checkout (unless it exists) and installs the
   supervisor and the worker SDK into it (``pip install -e ./worker_sdk -e .``),
   then runs the rest of this script with that venv's Python;
2. ``workerhost-supervisor provision`` builds the example namespaces' own
   venvs (two of them pin conflicting versions of ``six``; needs PyPI);
3. ``workerhost-supervisor start`` runs in the background on the embedded
   queue (a SQLite file: no server), and the script waits until it is ready;
4. ``submit`` enqueues a few slow tasks, then ``submit --wait`` runs one task
   per example namespace and prints the results;
5. ``status`` shows the namespaces and workers while the slow tasks run;
6. SIGTERM stops the supervisor: running tasks finish, it exits 0 and no
   worker process is left.

Every step is a plain ``workerhost-supervisor`` command, echoed before it
runs, so you can repeat any of them by hand. The script exits non-zero,
saying why, if any step does not do what it should.

Options (for tests and CI): ``--no-install`` uses the current Python as is
(``workerhost`` must be importable); ``--config`` another copy of the
example config; ``--installer`` is passed to ``provision``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "config" / "example.yaml"
VENV = ROOT / ".venv"
MIN_PYTHON = (3, 10)
#: Seconds the supervisor may take to get every namespace warm.
READY_TIMEOUT = 90.0
#: Seconds it may take to stop after SIGTERM (running slow tasks finish first).
STOP_TIMEOUT = 60.0
SLOW_SECONDS = 6
DEMO_TASKS = [
    {"type": "Legacy.WhichSix", "params": {}},
    {"type": "Modern.WhichSix", "params": {}},
    {"type": "Features.Progress", "params": {"steps": 5, "delay": 0.1}},
    {"type": "Features.Flaky", "params": {"succeed_on": 3}},
    {"type": "Shell.Greet", "params": {"name": "quick start"}},
]


class QuickstartError(Exception):
    """A step did not do what it should; the message says which and why."""


def say(text: str = "") -> None:
    print(text, flush=True)


def step(title: str) -> None:
    say()
    say(f"== {title}")


# -- 1. install (runs under any python3) -----------------------------------------
def bootstrap(argv: list[str]) -> int:
    """Create .venv, install both packages into it, re-run this script with its Python."""
    python = VENV / "bin" / "python"
    step(f"install: prismq-workerhost and prismq-worker-sdk into {_rel(VENV)}")
    if not python.is_file():
        _run([sys.executable, "-m", "venv", str(VENV)], show=f"python3 -m venv {_rel(VENV)}",
             hint="on Debian/Ubuntu, `apt install python3-venv` provides the venv module")
    _run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--upgrade", "pip"],
         show="pip install --upgrade pip")
    _run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-e", "./worker_sdk", "-e", "."],
         show="pip install -e ./worker_sdk -e .", cwd=ROOT)
    sys.stdout.flush()
    os.execv(str(python), [str(python), str(Path(__file__).resolve()), "--no-install", *argv])
    return 0  # pragma: no cover - execv does not return


def _run(argv: list[str], *, show: str, cwd: Path | None = None, hint: str = "") -> None:
    say(f"$ {show}")
    if subprocess.run(argv, cwd=cwd).returncode != 0:
        raise QuickstartError(f"`{show}` failed" + (f" ({hint})" if hint else ""))


def _rel(path: Path) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:  # pragma: no cover - another drive (Windows)
        return str(path)


# -- 2..6. the demo (runs with workerhost importable) -----------------------------
class Demo:
    def __init__(self, config: Path, *, installer: str) -> None:
        from workerhost.config import load_config

        self.config = config
        self.installer = installer
        cfg = load_config(config, require_venvs=False)
        if not cfg.monitoring.enabled:
            raise QuickstartError(f"{config}: monitoring.enabled must be true (status reads the control server)")
        # A wildcard bind is reached through loopback from here.
        self.host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(cfg.monitoring.host, cfg.monitoring.host)
        self.port = cfg.monitoring.port
        self.url = f"http://{f'[{self.host}]' if ':' in self.host else self.host}:{self.port}"
        self.state_dir = config.resolve().parent / ".workerhost"
        self.log_path = self.state_dir / "quickstart-supervisor.log"
        bin_script = Path(sys.executable).parent / "workerhost-supervisor"
        self.cli = [str(bin_script)] if bin_script.is_file() else [sys.executable, "-m", "workerhost.cli"]
        self.supervisor: subprocess.Popen[bytes] | None = None
        #: Worker pids seen in the status, checked to be gone after the stop.
        self.worker_pids: list[int] = []

    def command(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run one CLI command, echoing it; return its output (printed by the caller)."""
        shown = " ".join(shlex.quote(a) for a in ("workerhost-supervisor", *args)).replace(
            shlex.quote(str(self.config)), _rel(self.config))
        say(f"$ {shown}" + (" <<EOF" if stdin else ""))
        if stdin:
            say(stdin.rstrip("\n"))
            say("EOF")
        res = subprocess.run([*self.cli, *args], input=stdin, capture_output=True, text=True, timeout=600)
        if check and res.returncode != 0:
            raise QuickstartError(f"`{shown}` exited {res.returncode}: {res.stderr.strip()[-2000:]}")
        return res

    def run(self) -> None:
        cfg = str(self.config)
        if _port_open(self.host, self.port):
            raise QuickstartError(f"something already listens on {self.url} (another supervisor?); stop it, or "
                                  f"change monitoring.port in {_rel(self.config)}")
        step("provision: one virtualenv per example project")
        res = self.command("provision", "-c", cfg, "--installer", self.installer, check=False)
        say(res.stdout.rstrip())
        if res.returncode != 0:
            raise QuickstartError(f"provision failed (exit {res.returncode}): {res.stderr.strip()[-2000:]}")

        step("start: the supervisor, on the embedded queue (no server needed)")
        self.start_supervisor()
        try:
            self.demo(cfg)
        finally:
            self.stop_supervisor()

    def demo(self, cfg: str) -> None:
        step("submit: 3 slow tasks, without waiting (they keep the 'slow' workers busy)")
        slow = "".join(json.dumps({"type": "Features.Slow", "params": {"seconds": SLOW_SECONDS}}) + "\n"
                       for _ in range(3))
        say(self.command("submit", "-c", cfg, stdin=slow).stdout.rstrip())

        step("submit --wait: one task per example namespace, results as they come back")
        batch = "".join(json.dumps(t) + "\n" for t in DEMO_TASKS)
        res = self.command("submit", "-c", cfg, "--wait", "--timeout", "120", stdin=batch, check=False)
        records = [json.loads(line) for line in res.stdout.splitlines() if line.strip()]
        for record in records:
            say(json.dumps({k: record.get(k) for k in ("type", "status", "attempts", "result", "error")}))
        if res.returncode != 0 or len(records) != len(DEMO_TASKS):
            raise QuickstartError(f"not every task completed (submit exited {res.returncode}): "
                                  f"{res.stderr.strip()[-2000:]}")
        self.headline(records)

        step("status: namespaces and workers (the slow tasks are still running)")
        res = self.command("status", "-c", cfg, check=False)
        say(res.stdout.rstrip())
        if res.returncode != 0:
            raise QuickstartError(f"status exited {res.returncode}: {res.stderr.strip()}")
        self.worker_pids = self.pids_from_status(cfg)

    def headline(self, records: list[dict[str, object]]) -> None:
        by_type = {r["type"]: r for r in records}
        old = by_type["Legacy.WhichSix"]["result"]
        new = by_type["Modern.WhichSix"]["result"]
        assert isinstance(old, dict) and isinstance(new, dict)
        if old["six"] == new["six"]:
            raise QuickstartError(f"both namespaces see six {old['six']}: their venvs should differ")
        say()
        say(f"-> one supervisor, two venvs: legacy-app sees six {old['six']}, modern-app sees six {new['six']} "
            f"(worker pids {old['pid']} and {new['pid']}, kept warm for the next task)")
        flaky = by_type["Features.Flaky"]
        say(f"-> Features.Flaky failed twice with a retriable error and completed on attempt {flaky['attempts']}")

    def pids_from_status(self, cfg: str) -> list[int]:
        res = subprocess.run([*self.cli, "status", "-c", cfg, "--json"], capture_output=True, text=True, timeout=60)
        try:
            doc = json.loads(res.stdout)
        except ValueError:
            return []
        return [w["pid"] for ns in doc.get("namespaces", []) for w in ns.get("workers", []) if w.get("pid")]

    # -- the background supervisor ---------------------------------------------
    def start_supervisor(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")  # noqa: SIM115 - handed to the child, closed in stop_supervisor
        shown = f"workerhost-supervisor start -c {_rel(self.config)} 2> {_rel(self.log_path)} &"
        say(f"$ {shown}")
        # Its own session: a Ctrl-C in this terminal reaches this script, which stops it properly.
        self.supervisor = subprocess.Popen([*self.cli, "start", "-c", str(self.config)], stdout=log, stderr=log,
                                           start_new_session=True)
        self._log_file = log
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.supervisor.poll() is not None:
                raise QuickstartError(f"the supervisor exited with code {self.supervisor.returncode} while "
                                      f"starting:\n{self.log_tail()}")
            if _http_ok(f"{self.url}/readyz"):
                say(f"ready: every namespace has its warm workers (pid {self.supervisor.pid}, control server "
                    f"{self.url})")
                return
            time.sleep(0.2)
        raise QuickstartError(f"the supervisor was not ready within {READY_TIMEOUT:g}s:\n{self.log_tail()}")

    def stop_supervisor(self) -> None:
        proc = self.supervisor
        if proc is None:
            return
        self.supervisor = None
        try:
            if proc.poll() is None:
                step("stop: SIGTERM; running tasks finish, then every worker exits")
                say(f"$ kill -TERM {proc.pid}")
                proc.send_signal(signal.SIGTERM)
                try:
                    code = proc.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    raise QuickstartError(f"the supervisor did not stop within {STOP_TIMEOUT:g}s after SIGTERM "
                                          f"(killed):\n{self.log_tail()}") from None
                if code != 0:
                    raise QuickstartError(f"the supervisor exited with code {code}:\n{self.log_tail()}")
                left = [pid for pid in self.worker_pids if _alive(pid)]
                if left:
                    raise QuickstartError(f"worker processes outlived the supervisor: {left}")
                say(f"the supervisor stopped cleanly (exit code 0); all {len(self.worker_pids)} "
                    f"worker processes are gone. Its log: {_rel(self.log_path)}")
                res = self.command("tasks", "-c", str(self.config), check=False)
                say(res.stdout.rstrip().splitlines()[0] if res.stdout.strip() else res.stderr.strip())
        finally:
            if proc.poll() is None:  # an error above: do not leave it running
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            self._log_file.close()

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # pragma: no cover - no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="quickstart.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-install", action="store_true",
                        help="use this Python as is (workerhost must be importable); do not create .venv")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="the example config (default: %(default)s)")
    parser.add_argument("--installer", choices=("auto", "uv", "pip"), default="auto",
                        help="passed to `workerhost-supervisor provision`")
    args = parser.parse_args(argv)
    if sys.version_info < MIN_PYTHON:
        print(f"quickstart: Python {'.'.join(map(str, MIN_PYTHON))}+ is needed, this is {sys.version.split()[0]}",
              file=sys.stderr)
        return 2
    try:
        if not args.no_install:
            return bootstrap(argv)
        Demo(args.config.resolve(), installer=args.installer).run()
    except QuickstartError as exc:
        print(f"\nquickstart: FAILED: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nquickstart: interrupted", file=sys.stderr)
        return 130
    say()
    say("Done. Next: `workerhost-supervisor --help`, README.md (CLI reference), docs/ (configuration, workers, "
        "protocol, operations).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
