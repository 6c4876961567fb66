"""Shared pieces of the fault-injection suite: namespaces on the fault handlers, waits, process hunts."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import psutil
import pytest

from tests.conftest import namespace
from tests.helpers.ops import MARK, marked


def fns(name: str, function: str, *, mark: str | None = None, **extra: Any) -> dict[str, Any]:
    """A namespace running ``fault_handlers.<function>``; ``mark`` tags every process it starts."""
    env = dict(extra.pop("env", {}))
    if mark is not None:
        env[MARK] = mark
    extra.setdefault("module", "fault_handlers")
    return namespace(name, function, env=env, **extra)


@pytest.fixture
def mark() -> Iterator[str]:
    """A tag for this test's worker processes (and their children): whatever carries it is killed after."""
    tag = uuid.uuid4().hex
    yield tag
    for pid in marked(tag):
        try:
            psutil.Process(pid).kill()
        except psutil.Error:
            pass


async def eventually(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll a sync or async check until it is truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


def pids_in(path: Any) -> list[int]:
    try:
        return [int(x) for x in path.read_text().split()]
    except FileNotFoundError:
        return []


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
