"""prismq-worker-sdk: run a plain handler function as a prismq-workerhost worker.

Workers install this package into their own virtualenv; the supervisor
starts ``python -m prismq_worker_sdk module:function`` with that venv's
Python and speaks protocol v1 (see :mod:`prismq_worker_sdk.protocol`).
"""

from __future__ import annotations

__version__ = "0.1.0"

from .context import Context
from .errors import NonRetriableError, RetriableError, TaskCancelled, TaskError, ValidationError
from .protocol import PROTOCOL_VERSION, ProtocolError

__all__ = [
    "PROTOCOL_VERSION",
    "Context",
    "NonRetriableError",
    "ProtocolError",
    "RetriableError",
    "TaskCancelled",
    "TaskError",
    "ValidationError",
    "__version__",
]
