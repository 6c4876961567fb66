"""The ``venv`` section of a namespace: what ``provision`` builds its venv from.

::

    venv:
      path: ./venvs/youtube          # the venv folder (relative to the config file)
      python: python3.11             # interpreter that creates it: a name on PATH or a path
      requirements: [requests==2.32.3, ./wheels/tool-1.0-py3-none-any.whl]
      # or: requirements: requirements.txt   (a file, relative to the config file)

``venv_python`` is then derived from ``path`` (``path/bin/python``) when
it is not given.
"""

from __future__ import annotations

from pathlib import Path

import attrs

from ._schema import Reader
from .errors import ConfigError


@attrs.frozen(kw_only=True)
class VenvSpec:
    #: The venv folder.
    path: Path
    #: Interpreter that creates the venv; None: the supervisor's own Python.
    python: str | None = None
    #: Requirement lines (pip syntax, options such as ``--find-links`` allowed).
    requirements: tuple[str, ...] = ()
    #: A requirements file instead of (or besides) the inline list.
    requirements_file: Path | None = None


def read_venv(r: Reader | None) -> VenvSpec | None:
    if r is None:
        return None
    path = r.path_("path")
    python = r.str("python", None)
    if python is not None and ("/" in python or "\\" in python):
        python = str(r.path_("python"))  # a path, not a name on PATH: relative to the config file
    raw = r.raw("requirements", [])
    requirements: tuple[str, ...] = ()
    requirements_file: Path | None = None
    if isinstance(raw, str):
        requirements_file = r.path_("requirements")
    elif isinstance(raw, list) and all(isinstance(v, str) and v.strip() for v in raw):
        requirements = tuple(v.strip() for v in raw)
    else:
        raise ConfigError("must be a list of requirement strings or the path of a requirements file",
                          field=r.field("requirements"))
    r.finish()
    return VenvSpec(path=path, python=python, requirements=requirements, requirements_file=requirements_file)
