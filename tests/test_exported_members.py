"""Keep the public surface honest (as httpx's tests/test_exported_members.py does).

``__all__`` of both packages must list exactly the public names their
``__init__`` binds, sorted; the SDK must stay small and import nothing
outside the standard library; docs/api.md must be the output of
docs/gen_api.py for the current code.
"""

from __future__ import annotations
import __future__

import importlib
import json
import re
import subprocess
import sys
import types

import pytest

from .conftest import ROOT

PACKAGES = ("workerhost", "prismq_worker_sdk")
#: Dunder names that are part of the public surface.
PUBLIC_DUNDERS = {"__version__"}


def _public_names(module: types.ModuleType) -> set[str]:
    return {
        name
        for name, value in vars(module).items()
        if (not name.startswith("_") or name in PUBLIC_DUNDERS)
        # Submodules and `from __future__ import annotations` are bound too but are not API.
        and not isinstance(value, (types.ModuleType, __future__._Feature))
    }


def _isort_key(name: str) -> tuple[int, str]:
    """ruff's RUF022 "isort-style" order: CONSTANTS, then Classes, then everything else."""
    if name.isupper() and not name.startswith("_"):
        return (0, name)
    return (1, name) if name[:1].isupper() else (2, name)


@pytest.mark.parametrize("package", PACKAGES)
def test_all_lists_exactly_the_public_names_sorted(package: str) -> None:
    module = importlib.import_module(package)
    assert module.__all__ == sorted(module.__all__, key=_isort_key), f"{package}.__all__ is not sorted"
    assert len(set(module.__all__)) == len(module.__all__), f"{package}.__all__ has duplicates"
    bound = _public_names(module)
    assert set(module.__all__) - bound == set(), f"{package}.__all__ names things {package} does not bind"
    assert bound - set(module.__all__) == set(), f"{package} binds public names missing from __all__"


def test_the_sdk_surface_stays_tiny_and_dependency_free() -> None:
    sdk = importlib.import_module("prismq_worker_sdk")
    assert len(sdk.__all__) <= 12, "the worker SDK's public surface should stay tiny"
    # Import it in a fresh interpreter and look at everything that came with it
    # (beyond what the interpreter loads at start-up, e.g. from .pth files).
    code = ("import json, sys; before = set(sys.modules); import prismq_worker_sdk; "
            "print(json.dumps(sorted(set(sys.modules) - before)))")
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = {name.split(".")[0] for name in json.loads(out)}
    foreign = loaded - set(sys.stdlib_module_names) - {"prismq_worker_sdk"}
    assert foreign == set(), f"importing the SDK pulled in non-stdlib modules: {sorted(foreign)}"


def test_api_reference_matches_the_code() -> None:
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        gen_api = importlib.import_module("gen_api")
    finally:
        sys.path.remove(str(ROOT / "docs"))
    expected = gen_api.render()
    current = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    assert current == expected, "docs/api.md is stale: run `python docs/gen_api.py` and commit the result"
    for package in PACKAGES:
        for name in importlib.import_module(package).__all__:
            assert f"`{name}`" in current, f"docs/api.md does not mention {package}.{name}"


#: How config readers name the keys they read (``r.int("max_workers", ...)``).
_READ_KEY = re.compile(r"\b(?:r|reader|root)\.(?:str|bool|number|int|str_list|mapping|str_map|path_|child|raw|has)"
                       r"\(\s*\"([a-z_]+)\"")


def test_every_config_key_the_code_reads_is_documented() -> None:
    keys = {key for path in (ROOT / "src" / "workerhost").rglob("*.py") for key in _READ_KEY.findall(path.read_text())}
    assert {"max_workers", "memory_soft_mb", "lease_seconds", "graceful_timeout"} <= keys, "the key scan is broken"
    doc = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    missing = sorted(k for k in keys if not re.search(rf"`(?:[\w.\[\]]+\.)?{k}`", doc))
    assert missing == [], f"docs/configuration.md does not describe these config keys: {missing}"


def test_every_cli_command_is_in_the_readme_reference() -> None:
    import argparse

    from workerhost.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    commands = set(sub.choices)
    assert {"validate", "run", "start", "submit", "status", "check", "provision"} <= commands
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    reference = readme[readme.index("## CLI reference"):]
    missing = sorted(c for c in commands if f"| `{c} " not in reference and f"| `{c}`" not in reference)
    assert missing == [], f"README.md's CLI reference lacks these commands: {missing}"
