"""Session-scoped real virtualenvs for the tests (created once, offline)."""

from __future__ import annotations

import subprocess
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest


def build_wheel(out: Path, name: str, version: str, module_source: str) -> Path:
    """A minimal pure-Python wheel of one module, so test venvs can pin versions offline."""
    dist = f"{name}-{version}.dist-info"
    wheel = out / f"{name}-{version}-py3-none-any.whl"
    files = {
        f"{name}.py": module_source,
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: prismq-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{path},,\n" for path in files) + f"{dist}/RECORD,,\n"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
        zf.writestr(f"{dist}/RECORD", record)
    return wheel


@pytest.fixture(scope="session")
def make_venv(tmp_path_factory: pytest.TempPathFactory, sdk_wheel: Path) -> Callable[..., Path]:
    """Create (once per key) a real venv with the SDK and extra wheels; return its python."""
    cache: dict[tuple[str, tuple[str, ...]], Path] = {}
    base = tmp_path_factory.mktemp("venvs")

    def make(python: str, *, wheels: tuple[Path, ...] = (), name: str | None = None) -> Path:
        key = (python, tuple(str(w) for w in wheels))
        if key in cache:
            return cache[key]
        target = base / (name or f"venv{len(cache)}")
        subprocess.run([python, "-m", "venv", str(target)], check=True)
        py = target / "bin" / "python"
        subprocess.run(
            [str(py), "-m", "pip", "install", "-q", "--no-index", "--no-deps", str(sdk_wheel), *map(str, wheels)],
            check=True,
        )
        cache[key] = py
        return py

    return make
