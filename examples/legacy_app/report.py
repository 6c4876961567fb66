"""A worker project that is stuck on an old ``six`` (its venv pins six==1.15.0).

The handler reports the version it really imported, so you can see that
two namespaces of the same supervisor run against conflicting versions of
one dependency, each in its own virtualenv.
"""

import os
import platform

import six

try:  # Python 3.8+: the installed distribution's version, read from its metadata
    from importlib.metadata import version as dist_version
except ImportError:  # pragma: no cover - Python < 3.8
    dist_version = None


def which_six(task, ctx):
    ctx.log.info("reporting the six this venv imports")
    return {
        "project": "legacy_app",
        "six": six.__version__,
        "six_dist": dist_version("six") if dist_version else six.__version__,
        "python": platform.python_version(),
        "pid": os.getpid(),
        "attempt": ctx.attempt,
    }
