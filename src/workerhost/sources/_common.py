"""Small helpers shared by the broker sources (redis, amqp)."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from workerhost.records import FailureKind, TaskError


def redact(url: str) -> str:
    """``scheme://user:***@host:port/path``; a URL without a password is returned as is."""
    try:
        parts = urlsplit(url)
        password, user, host, port = parts.password, parts.username, parts.hostname, parts.port
    except ValueError:
        return "<unparseable URL>"
    if password is None:
        return url
    netloc = f"{user or ''}:***@{host or ''}" + (f":{port}" if port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def final_status(error: TaskError) -> str:
    """"dead" when the retries were spent, "failed" when the task could not be retried at all."""
    return "dead" if error.retry_possible and error.kind is not FailureKind.REJECTED else "failed"
