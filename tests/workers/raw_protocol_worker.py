"""A persistent worker that does not use the SDK: protocol v1 by hand (stdlib only)."""

import json
import os
import sys


def send(frame):
    sys.stdout.write(json.dumps(frame) + "\n")
    sys.stdout.flush()


send({"op": "hello", "protocol": int(os.environ.get("RAW_PROTOCOL", "1")), "sdk": "none", "pid": os.getpid(),
      "python": "n/a", "codec": "json"})
for line in sys.stdin:
    frame = json.loads(line)
    if frame["op"] == "task":
        send({"op": "result", "id": frame["id"], "success": True,
              "result": {"upper": frame["params"]["text"].upper(), "pid": os.getpid()}})
    elif frame["op"] == "ping":
        send({"op": "pong", "seq": frame["seq"]})
    elif frame["op"] == "shutdown":
        break
