"""The practical limit: an asyncio parent and bare pipe children, no supervisor logic.

The parent does what a supervisor must do at the least -- encode a task
frame, write it to the child's stdin, wait on the event loop for the
child's stdout, decode the result -- with the same framing and the same
non-blocking, loop-driven I/O as ``workerhost.worker``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from typing import Any

from prismq_worker_sdk.protocol import FrameDecoder, FrameEncoder

from ._common import WORKERS, cpu_seconds, now, payload, rss_bytes, us


class PipeChild:
    def __init__(self, codec: str) -> None:
        self.codec = codec
        self._encoder = FrameEncoder(codec)
        self._decoder = FrameDecoder(codec)
        self._waiting: dict[str, asyncio.Future[Any]] = {}
        self._hello: asyncio.Future[Any] | None = None
        self._popen: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._hello = loop.create_future()
        self._popen = subprocess.Popen(
            [sys.executable, str(WORKERS / "pipe_child.py"), self.codec], cwd=WORKERS,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0,
        )
        assert self._popen.stdin is not None and self._popen.stdout is not None
        self._in = self._popen.stdin.fileno()
        self._out = self._popen.stdout.fileno()
        os.set_blocking(self._in, False)
        os.set_blocking(self._out, False)
        loop.add_reader(self._out, self._on_readable)
        await asyncio.wait_for(self._hello, 30)

    def _on_readable(self) -> None:
        try:
            data = os.read(self._out, 1 << 16)
        except BlockingIOError:
            return
        if not data:
            asyncio.get_running_loop().remove_reader(self._out)
            return
        for frame in self._decoder.feed(data):
            if frame["op"] == "hello":
                assert self._hello is not None
                self._hello.set_result(frame)
            else:
                self._waiting.pop(frame["id"]).set_result(frame.get("result"))

    async def call(self, params: dict[str, Any], task_type: str = "echo") -> Any:
        task_id = uuid.uuid4().hex
        fut = asyncio.get_running_loop().create_future()
        self._waiting[task_id] = fut
        data = self._encoder.encode({
            "op": "task", "id": task_id, "type": task_type, "params": params, "metadata": {}, "attempt": 1,
            "deadline": time.time() + 300,
        })
        await self._write(data)
        return await fut

    async def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._in, view):]
            except BlockingIOError:
                # A 1 MiB frame does not fit the pipe: wait until the child reads.
                writable = asyncio.get_running_loop().create_future()
                asyncio.get_running_loop().add_writer(self._in, writable.set_result, None)
                try:
                    await writable
                finally:
                    asyncio.get_running_loop().remove_writer(self._in)

    def close(self) -> None:
        assert self._popen is not None
        asyncio.get_running_loop().remove_reader(self._out)
        self._popen.stdin.close()  # type: ignore[union-attr]
        self._popen.wait(10)
        self._popen.stdout.close()  # type: ignore[union-attr]


async def latency(*, codec: str, samples: dict[str, int], warmup: int) -> dict[str, Any]:
    """Sequential round trips, one task at a time, per payload: samples in µs."""
    child = PipeChild(codec)
    await child.start()
    out: dict[str, list[float]] = {}
    try:
        for name, n in samples.items():
            params = payload(name)
            for _ in range(warmup):
                await child.call(params)
            times = []
            for _ in range(n):
                t0 = now()
                await child.call(params)
                times.append(us(now() - t0))
            out[name] = times
    finally:
        child.close()
    return {"samples_us": out}


async def throughput(*, codec: str, workers: int, tasks: int, payload_name: str = "noop") -> dict[str, Any]:
    """``tasks`` tasks over ``workers`` children, each kept busy back to back."""
    children = [PipeChild(codec) for _ in range(workers)]
    await asyncio.gather(*(c.start() for c in children))
    params = payload(payload_name)
    try:
        for c in children:  # warm every child's code path
            for _ in range(20):
                await c.call(params)
        share = [tasks // workers + (1 if i < tasks % workers else 0) for i in range(workers)]

        async def drive(child: PipeChild, n: int) -> None:
            for _ in range(n):
                await child.call(params)

        cpu0, t0 = cpu_seconds(), now()
        await asyncio.gather(*(drive(c, n) for c, n in zip(children, share, strict=True)))
        wall, cpu = now() - t0, cpu_seconds() - cpu0
    finally:
        for c in children:
            c.close()
    return {"tasks": tasks, "wall_s": wall, "tasks_per_s": tasks / wall, "parent_cpu_us_per_task": us(cpu) / tasks,
            "parent_rss_bytes": rss_bytes()}


async def fanout(*, children: int, samples: int, codec: str = "json") -> dict[str, Any]:
    """One task at a time, each to the next of ``children`` children (the pipe side of "scale")."""
    kids = [PipeChild(codec) for _ in range(children)]
    await asyncio.gather(*(c.start() for c in kids))
    params = payload("noop")
    try:
        for c in kids:
            await c.call(params)
        times = []
        cpu0 = cpu_seconds()
        for i in range(samples):
            t0 = now()
            await kids[i % children].call(params)
            times.append(us(now() - t0))
        cpu = cpu_seconds() - cpu0
    finally:
        for c in kids:
            c.close()
    return {"samples_us": {"noop": times}, "parent_cpu_us_per_task": us(cpu) / max(1, samples)}
