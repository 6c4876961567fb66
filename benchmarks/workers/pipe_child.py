"""The practical limit: a child that answers task frames over a pipe, nothing else.

Same framing as a real worker (``prismq_worker_sdk.protocol``) and the same
handlers, but one thread, blocking reads, no context, no stdout capture,
no reader thread: the least a persistent worker can do per task.

    python pipe_child.py json|msgpack
"""

import os
import sys

import bench_handlers
from prismq_worker_sdk.protocol import FrameDecoder, FrameEncoder


def main() -> int:
    codec = sys.argv[1]
    decoder = FrameDecoder(codec)
    encoder = FrameEncoder(codec)
    handlers = {"echo": bench_handlers.echo, "work": bench_handlers.work}
    os.write(1, encoder.encode({"op": "hello", "pid": os.getpid()}))
    while True:
        data = os.read(0, 1 << 16)
        if not data:
            return 0
        for frame in decoder.feed(data):
            result = handlers[frame["type"]]({"params": frame.get("params") or {}})
            out = memoryview(encoder.encode({"op": "result", "id": frame["id"], "success": True, "result": result}))
            while out:
                out = out[os.write(1, out):]


if __name__ == "__main__":
    sys.exit(main())
