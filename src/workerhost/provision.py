"""``workerhost-supervisor provision``: build the venvs that namespaces declare.

A namespace with a ``venv`` section (see :mod:`workerhost.venv_config`)
gets that venv created or updated, its requirements installed and the
worker SDK installed into it. Namespaces that only give ``venv_python``
are left alone.

The inputs (the creating interpreter and its version, the requirement
lines, the requirements file's bytes, the SDK's files) are hashed; the
digest is stored in the venv (``.workerhost-provision.json``) after a
successful install, so a second run with nothing changed does no work,
and an install that failed half-way is redone on the next run.

- Installer: ``uv`` when it is on PATH or installed as the ``uv`` Python
  package (fast), else ``python -m venv`` and the venv's own pip. Both are
  driven with argument lists, never a shell.
- Update: requirements are installed again over the venv (pip adds and
  upgrades, it never removes). The venv is only re-created when the
  interpreter's version changed -- and only a folder holding a
  ``pyvenv.cfg``, so a mistyped ``path`` can never delete a project.
- SDK: from a checkout, the local ``worker_sdk/`` is packed into a wheel
  (it is pure Python and dependency-free, so this needs neither network
  nor build tools); from an installed supervisor, ``prismq-worker-sdk``
  of the same version comes from the package index.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs

from .config import Config, NamespaceConfig
from .venv_config import VenvSpec

#: Written into the venv after a successful provision.
STAMP = ".workerhost-provision.json"
SDK_NAME = "prismq-worker-sdk"
#: The checkout's SDK, when this package runs from a source tree.
CHECKOUT_SDK = Path(__file__).resolve().parents[2] / "worker_sdk"

Log = Callable[[str], None]


class ProvisionError(Exception):
    """One venv could not be provisioned (the message says which step and why)."""


@attrs.frozen(kw_only=True)
class ProvisionResult:
    #: The namespaces using this venv.
    namespaces: tuple[str, ...]
    path: Path | None
    #: created | updated | recreated | unchanged | skipped | failed
    action: str
    detail: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.action != "failed"


@attrs.frozen(kw_only=True)
class SdkSource:
    """Where the worker SDK comes from: a local package folder, or the index."""

    version: str
    #: The package folder (``.../prismq_worker_sdk``) to pack; None: the index.
    package_dir: Path | None
    #: A digest of the SDK's files (or its version for the index).
    digest: str

    def requirement(self) -> str:
        return f"{SDK_NAME}=={self.version}"


def find_sdk(checkout: Path = CHECKOUT_SDK) -> SdkSource:
    """The checkout's ``worker_sdk/`` if we run from one, else the installed SDK's version on the index."""
    package = checkout / "src" / "prismq_worker_sdk"
    if (checkout / "pyproject.toml").is_file() and (package / "__init__.py").is_file():
        text = (package / "__init__.py").read_text(encoding="utf-8")
        match = re.search(r"""^__version__\s*=\s*["']([^"']+)["']""", text, re.M)
        if match is None:
            raise ProvisionError(f"cannot read __version__ from {package / '__init__.py'}")
        h = hashlib.sha256()
        for f in _package_files(package):
            h.update(f.relative_to(package).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
        return SdkSource(version=match.group(1), package_dir=package, digest=h.hexdigest())
    import prismq_worker_sdk

    return SdkSource(version=prismq_worker_sdk.__version__, package_dir=None,
                     digest=f"index:{prismq_worker_sdk.__version__}")


def _package_files(package: Path) -> list[Path]:
    return sorted(p for p in package.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                  and p.suffix not in (".pyc", ".pyo"))


def build_sdk_wheel(sdk: SdkSource, out: Path) -> Path:
    """Pack the SDK's package folder into a py3-none-any wheel (with a proper RECORD)."""
    assert sdk.package_dir is not None
    dist = f"prismq_worker_sdk-{sdk.version}.dist-info"
    files: dict[str, bytes] = {
        f"prismq_worker_sdk/{p.relative_to(sdk.package_dir).as_posix()}": p.read_bytes()
        for p in _package_files(sdk.package_dir)
    }
    files[f"{dist}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: {SDK_NAME}\nVersion: {sdk.version}\nRequires-Python: >=3.8\n"
        "Provides-Extra: msgpack\nRequires-Dist: msgpack>=1.0; extra == \"msgpack\"\n"
    ).encode()
    files[f"{dist}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: workerhost-provision\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    files[f"{dist}/top_level.txt"] = b"prismq_worker_sdk\n"
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel = out / f"prismq_worker_sdk-{sdk.version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return wheel


def find_uv() -> str | None:
    """``uv`` on PATH, else the one the ``uv`` Python package installed beside us."""
    found = shutil.which("uv")
    if found is not None:
        return found
    try:
        from uv import find_uv_bin  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        return str(find_uv_bin())
    except FileNotFoundError:
        return None


def venv_python(path: Path) -> Path:
    return path / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def read_stamp(path: Path) -> dict[str, object] | None:
    """The stamp a successful provision left in the venv at ``path``, if any."""
    try:
        doc = json.loads((path / STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


class Provisioner:
    def __init__(self, *, installer: str = "auto", force: bool = False, log: Log = print,
                 sdk: SdkSource | None = None) -> None:
        if installer not in ("auto", "uv", "pip"):
            raise ValueError(f"installer must be auto, uv or pip, got {installer!r}")
        self.uv = find_uv() if installer in ("auto", "uv") else None
        if installer == "uv" and self.uv is None:
            raise ProvisionError("--installer uv: uv is not on PATH")
        self.force = force
        self.log = log
        self.sdk = sdk or find_sdk()

    @property
    def installer(self) -> str:
        return "uv" if self.uv else "pip"

    def run(self, config: Config) -> list[ProvisionResult]:
        """Provision every declared venv once (namespaces may share one); never raises per venv."""
        base_dir = config.path.resolve().parent if config.path is not None else Path.cwd()
        groups: dict[Path, list[NamespaceConfig]] = {}
        results: list[ProvisionResult] = []
        for ns in config.namespaces:
            if ns.venv is None:
                results.append(ProvisionResult(namespaces=(ns.name,), path=None, action="skipped",
                                               detail="no venv section: venv_python is managed elsewhere"))
            else:
                groups.setdefault(ns.venv.path.resolve(), []).append(ns)
        with tempfile.TemporaryDirectory(prefix="workerhost-provision-") as tmp:
            for path, members in groups.items():
                names = tuple(ns.name for ns in members)
                specs = {ns.venv for ns in members}
                if len(specs) > 1:
                    results.append(ProvisionResult(
                        namespaces=names, path=path, action="failed",
                        detail=f"namespaces {', '.join(names)} share this venv path but declare different venvs"))
                    continue
                started = time.monotonic()
                try:
                    action, detail = self.provision(members[0], Path(tmp), base_dir=base_dir)
                except ProvisionError as exc:
                    action, detail = "failed", str(exc)
                results.append(ProvisionResult(namespaces=names, path=path, action=action, detail=detail,
                                               seconds=time.monotonic() - started))
        return results

    # -- one venv ------------------------------------------------------
    def provision(self, ns: NamespaceConfig, tmp: Path, *, base_dir: Path) -> tuple[str, str]:
        spec = ns.venv
        assert spec is not None
        creator = self._creator(spec)
        creator_version = self._python_version(creator)
        inputs = self._inputs(ns, spec, creator, creator_version)
        digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
        py = venv_python(spec.path)
        stamp = read_stamp(spec.path)
        if not self.force and py.is_file() and stamp is not None and stamp.get("digest") == digest:
            return "unchanged", f"Python {creator_version}, SDK {self.sdk.version}"
        say = self._prefix(ns.name)
        if py.is_file() and _minor(self._python_version(py)) == _minor(creator_version):
            action = "updated"
            say(f"updating {spec.path.resolve()} ({self.installer})")
        else:
            action = "recreated" if spec.path.exists() else "created"
            if spec.path.exists():
                if not (spec.path / "pyvenv.cfg").is_file():
                    raise ProvisionError(f"{spec.path} exists and is not a venv (no pyvenv.cfg); not touching it")
                say(f"removing {spec.path.resolve()}: it was built with another Python version")
                shutil.rmtree(spec.path)
            say(f"creating {spec.path.resolve()} with {creator} (Python {creator_version}, {self.installer})")
            self._create(spec.path, creator, say)
        (spec.path / STAMP).unlink(missing_ok=True)  # a failure below leaves the venv marked unfinished
        self._install(ns, spec, tmp, say, base_dir=base_dir)
        (spec.path / STAMP).write_text(json.dumps({
            "digest": digest, "inputs": inputs, "installer": self.installer,
            "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }, indent=2) + "\n", encoding="utf-8")
        return action, f"Python {creator_version}, SDK {self.sdk.version}"

    def _creator(self, spec: VenvSpec) -> str:
        if spec.python is None:
            # The supervisor's own interpreter (its base, when it runs in a venv itself).
            return sys.executable
        found = shutil.which(spec.python) if os.sep not in spec.python else spec.python
        if found is None or not os.path.isfile(found):
            raise ProvisionError(f"venv.python: {spec.python!r} not found")
        return found

    def _python_version(self, python: str | Path) -> str:
        try:
            res = subprocess.run([str(python), "-c", "import platform; print(platform.python_version())"],
                                 capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ProvisionError(f"{python} does not run: {exc}") from exc
        if res.returncode != 0:
            raise ProvisionError(f"{python} does not run: {res.stderr.strip()[-500:]}")
        return res.stdout.strip()

    def _inputs(self, ns: NamespaceConfig, spec: VenvSpec, creator: str, version: str) -> dict[str, object]:
        req_file = None
        if spec.requirements_file is not None:
            try:
                data = spec.requirements_file.read_bytes()
            except OSError as exc:
                raise ProvisionError(f"venv.requirements: cannot read {spec.requirements_file}: {exc}") from exc
            req_file = {"path": str(spec.requirements_file), "sha256": hashlib.sha256(data).hexdigest()}
        return {
            "python": os.path.realpath(creator), "python_version": version,
            "requirements": list(self._requirement_lines(ns, spec)), "requirements_file": req_file,
            "sdk": self.sdk.digest,
        }

    def _requirement_lines(self, ns: NamespaceConfig, spec: VenvSpec) -> tuple[str, ...]:
        extra = ("msgpack>=1.0",) if ns.codec == "msgpack" else ()
        return spec.requirements + extra

    def _create(self, path: Path, creator: str, say: Log) -> None:
        if self.uv:
            self._exec([self.uv, "venv", "--python", creator, str(path)], say, what="uv venv")
        else:
            self._exec([creator, "-m", "venv", str(path)], say, what="python -m venv")

    def _install(self, ns: NamespaceConfig, spec: VenvSpec, tmp: Path, say: Log, *, base_dir: Path) -> None:
        py = venv_python(spec.path)
        lines = list(self._requirement_lines(ns, spec))
        if self.sdk.package_dir is None:
            lines.append(self.sdk.requirement())
        if spec.requirements_file is not None:
            say(f"installing requirements from {spec.requirements_file}")
            # Relative paths inside a requirements file are read from its own folder.
            self._pip(py, ["install", "-r", str(spec.requirements_file)], say, cwd=spec.requirements_file.parent)
        if lines:
            say(f"installing requirements: {' '.join(lines)}")
            # Passed as arguments, relative to the config file's folder: an option line
            # ("--find-links ./wheels") is split into words, a requirement line is one
            # argument (its environment marker may hold spaces). Still no shell.
            args = [word for line in lines for word in (shlex.split(line) if line.startswith("-") else [line])]
            self._pip(py, ["install", *args], say, cwd=base_dir)
        if self.sdk.package_dir is not None:
            wheel = tmp / "sdk" / f"prismq_worker_sdk-{self.sdk.version}-py3-none-any.whl"
            if not wheel.exists():
                wheel.parent.mkdir(exist_ok=True)
                build_sdk_wheel(self.sdk, wheel.parent)
            say(f"installing the worker SDK {self.sdk.version} from {self.sdk.package_dir.parent.parent}")
            # Same version number, newer files (a checkout): reinstall, never resolve.
            reinstall = ["--reinstall-package", "prismq-worker-sdk"] if self.uv else ["--force-reinstall"]
            self._pip(py, ["install", "--no-deps", *reinstall, str(wheel)], say, cwd=spec.path)

    def _pip(self, py: Path, args: list[str], say: Log, *, cwd: Path) -> None:
        if self.uv:
            self._exec([self.uv, "pip", args[0], "--python", str(py), *args[1:]], say, what="uv pip", cwd=cwd)
            return
        if subprocess.run([str(py), "-m", "pip", "--version"], capture_output=True).returncode != 0:
            # A venv made by uv has no pip; ensurepip installs the bundled one, offline.
            self._exec([str(py), "-m", "ensurepip", "--default-pip"], say, what="ensurepip")
        self._exec([str(py), "-m", "pip", "--disable-pip-version-check", "--no-input", *args], say,
                   what="pip", cwd=cwd)

    def _exec(self, argv: Sequence[str], say: Log, *, what: str, cwd: Path | None = None) -> None:
        """Run one installer step, streaming its output as progress; raise with its tail on failure."""
        tail: list[str] = []
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PIP_NO_INPUT": "1"}
        try:
            proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    cwd=cwd, env=env, errors="replace")
        except OSError as exc:
            raise ProvisionError(f"{what}: cannot run {argv[0]}: {exc}") from exc
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            if line:
                say(f"  {line}")
                tail = (tail + [line])[-5:]
        code = proc.wait()
        if code != 0:
            raise ProvisionError(f"{what} failed (exit code {code}): {' | '.join(tail) or 'no output'}")

    def _prefix(self, name: str) -> Log:
        return lambda text: self.log(f"[{name}] {text}")


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])
