"""Import a handler named ``module:function`` (or ``module.function``)."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any, Callable


def parse_spec(spec: str) -> "tuple[str, str]":
    if ":" in spec:
        module, _, function = spec.partition(":")
    else:
        module, _, function = spec.rpartition(".")
    if not module or not function:
        raise ValueError("handler must be given as 'module:function', got %r" % spec)
    return module, function


def load_handler(spec: str) -> Callable[..., Any]:
    module_name, function = parse_spec(spec)
    # The supervisor starts us with cwd = the namespace's project_path; make
    # its packages importable as they would be from a script run there.
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    module = importlib.import_module(module_name)
    try:
        handler = getattr(module, function)
    except AttributeError:
        raise AttributeError("module %r has no attribute %r" % (module_name, function)) from None
    if not callable(handler):
        raise TypeError("%s is not callable" % spec)
    return handler
