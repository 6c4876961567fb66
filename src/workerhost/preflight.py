"""Preflight (``workerhost-supervisor check``): can every namespace really start?

For each namespace, in order, stopping at the first problem:

1. ``venv``    the interpreter exists (a missing venv is the most common failure);
2. ``python``  it runs, and is new enough for the SDK (3.8+);
3. ``sdk``     the worker SDK imports in it and speaks our protocol version
               (and msgpack imports when the namespace uses that codec);
4. ``handler`` a real worker starts and says hello: the same spawn and
               handshake the pool does, so an entrypoint that does not import
               fails here with the worker's own error. Its cold-start time is
               measured. Oneshot namespaces get an import check of their
               module instead (or a look-up of their ``command``).

Checks run one namespace at a time so the cold-start figures are not
inflated by the others starting at once.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from collections.abc import Callable

import attrs
from prismq_worker_sdk.protocol import PROTOCOL_VERSION

from .config import Config, NamespaceConfig
from .errors import WorkerStartError
from .worker import WorkerProcess, describe_exit

#: The design promises workers warm in under this many seconds; slower ones get a note.
COLD_START_TARGET = 2.0
#: The oldest Python the worker SDK supports.
MIN_PYTHON = (3, 8)

#: Runs in the namespace's Python (any version from 3.8): what it is and what SDK it has.
_PROBE = r"""
import json, platform, sys
out = {"python": platform.python_version(), "executable": sys.executable}
try:
    import prismq_worker_sdk
    from prismq_worker_sdk.protocol import PROTOCOL_VERSION
    out["sdk"] = prismq_worker_sdk.__version__
    out["protocol"] = PROTOCOL_VERSION
except Exception as exc:
    out["sdk_error"] = "%s: %s" % (type(exc).__name__, exc)
if "--msgpack" in sys.argv:
    try:
        import msgpack  # noqa: F401
    except Exception as exc:
        out["msgpack_error"] = "%s: %s" % (type(exc).__name__, exc)
sys.stdout.write(json.dumps(out))
"""

#: Oneshot namespaces: import the module and find the function, as ``python -m module function`` would.
_IMPORT = r"""
import importlib, os, sys
sys.path.insert(0, os.getcwd())
module = importlib.import_module(sys.argv[1])
if not callable(getattr(module, sys.argv[2])):
    raise TypeError("%s.%s is not callable" % (sys.argv[1], sys.argv[2]))
"""


@attrs.frozen(kw_only=True)
class NamespaceCheck:
    name: str
    #: None when every step passed; else the step that failed (venv, python, sdk, handler).
    failed_step: str | None = None
    reason: str | None = None
    python: str | None = None
    python_version: str | None = None
    sdk_version: str | None = None
    protocol: int | None = None
    cold_start: float | None = None
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.failed_step is None


async def check_config(
    config: Config, *, on_step: Callable[[str, str], None] | None = None
) -> list[NamespaceCheck]:
    """Check every namespace; ``on_step(namespace, step)`` reports progress."""
    return [await check_namespace(ns, on_step=on_step) for ns in config.namespaces]


async def check_namespace(
    ns: NamespaceConfig, *, on_step: Callable[[str, str], None] | None = None
) -> NamespaceCheck:
    report = NamespaceCheck(name=ns.name, python=str(ns.python))

    def step(name: str) -> None:
        if on_step is not None:
            on_step(ns.name, name)

    def failed(step_name: str, reason: str) -> NamespaceCheck:
        return attrs.evolve(report, failed_step=step_name, reason=reason)

    step("venv")
    if ns.command:
        # A foreign command (any language): it must exist; the handshake tells the rest.
        exe = ns.command[0]
        if shutil.which(exe, path=ns.worker_env().get("PATH")) is None and not os.access(exe, os.X_OK):
            return failed("venv", f"command {exe!r} not found")
        return await _handshake(ns, report) if ns.mode == "persistent" else report
    if not ns.python.is_file():
        hint = "run `workerhost-supervisor provision`" if ns.venv else "create the venv or fix venv_python"
        return failed("venv", f"venv missing: {ns.python} does not exist ({hint})")
    if not os.access(ns.python, os.X_OK):
        return failed("venv", f"{ns.python} is not executable")

    step("python")
    args = ["--msgpack"] if ns.codec == "msgpack" else []
    code, out, err = await _run(ns, ["-c", _PROBE, *args])
    if code != 0:
        return failed("python", f"{ns.python} does not run ({describe_exit(code)}): {_last_line(err)}")
    try:
        probe = json.loads(out)
    except ValueError:
        return failed("python", f"{ns.python} printed something unexpected: {_last_line(out)}")
    report = attrs.evolve(report, python_version=probe.get("python"))
    version = tuple(int(p) for p in str(probe.get("python", "0.0")).split(".")[:2] if p.isdigit())
    if version < MIN_PYTHON:
        return failed("python", f"Python {probe.get('python')} is too old: the worker SDK needs "
                                f"{'.'.join(map(str, MIN_PYTHON))}+")

    step("sdk")
    if ns.mode == "persistent":  # oneshot workers do not use the SDK
        if "sdk_error" in probe:
            return failed("sdk", f"the worker SDK is not importable ({probe['sdk_error']}); install "
                                 f"prismq-worker-sdk into {ns.python} or run `workerhost-supervisor provision`")
        report = attrs.evolve(report, sdk_version=probe.get("sdk"), protocol=probe.get("protocol"))
        if probe.get("protocol") != PROTOCOL_VERSION:
            return failed("sdk", f"SDK mismatch: prismq-worker-sdk {probe.get('sdk')} speaks protocol "
                                 f"v{probe.get('protocol')}, this supervisor speaks v{PROTOCOL_VERSION}")
        if "msgpack_error" in probe:
            return failed("sdk", f"codec msgpack needs the msgpack package in the venv ({probe['msgpack_error']})")

    step("handler")
    if ns.mode == "oneshot":
        code, _, err = await _run(ns, ["-c", _IMPORT, str(ns.module), str(ns.function)])
        if code != 0:
            return failed("handler", f"{ns.module}.{ns.function} does not import: {_last_line(err)}")
        return report
    return await _handshake(ns, report)


async def _handshake(ns: NamespaceConfig, report: NamespaceCheck) -> NamespaceCheck:
    worker = WorkerProcess(ns)
    try:
        await worker.start()
    except WorkerStartError as exc:
        await worker.wait(5.0)
        return attrs.evolve(report, failed_step="handler", reason=f"worker did not start: {exc}")
    try:
        cold = (worker.ready_at or time.monotonic()) - worker.started_at
        hello = worker.hello
    finally:
        await worker.shutdown(grace=ns.kill_grace, reason="shutdown")
    notes = []
    if cold > COLD_START_TARGET:
        notes.append(f"cold start above {COLD_START_TARGET:.0f}s: look at what the handler module imports")
    return attrs.evolve(report, cold_start=cold, sdk_version=hello.get("sdk") or report.sdk_version,
                        protocol=hello.get("protocol"), notes=tuple(notes))


async def _run(ns: NamespaceConfig, args: list[str], *, timeout: float | None = None) -> tuple[int | None, str, str]:
    """Run the namespace's Python as a worker would be (its cwd and env); (exit code, stdout, stderr)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            str(ns.python), *args, cwd=ns.project_path, env=ns.worker_env(),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        return 127, "", str(exc)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout or ns.start_timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        return None, "", f"no answer within {timeout or ns.start_timeout}s"
    return proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"
