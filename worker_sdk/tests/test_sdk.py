"""SDK tests: stdlib unittest only, so they run on every Python from 3.8 up.

Run with ``python -m unittest discover worker_sdk/tests`` in any venv that
has the SDK installed (the main suite runs them on 3.8 and 3.13 too).
"""

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import unittest

from prismq_worker_sdk import PROTOCOL_VERSION, ProtocolError, ValidationError
from prismq_worker_sdk.protocol import FrameDecoder, FrameEncoder
from prismq_worker_sdk.runner import describe_exception

HANDLERS = textwrap.dedent(
    '''
    import os, sys
    from prismq_worker_sdk import ValidationError

    def double(task, ctx):
        print("printed")
        ctx.progress(50)
        return {"n": task["params"]["n"] * 2, "attempt": ctx.attempt}

    async def adouble(task):
        return {"n": task["params"]["n"] * 2}

    def invalid(task):
        raise ValidationError("n must be positive")

    def boom(task):
        raise KeyError("x")

    def exits(task):
        sys.exit(2)
    '''
)


class FramingTest(unittest.TestCase):
    def test_json_round_trip_in_pieces(self):
        enc, dec = FrameEncoder("json"), FrameDecoder("json")
        data = enc.encode({"op": "task", "id": "1", "params": {"s": "é\n"}}) * 3
        out = []
        for i in range(0, len(data), 7):
            out.extend(dec.feed(data[i : i + 7]))
        self.assertEqual(len(out), 3)
        self.assertEqual(out[0]["params"]["s"], "é\n")
        self.assertEqual(data.count(b"\n"), 3)  # escaped newline never splits a frame

    def test_msgpack_round_trip(self):
        try:
            import msgpack  # noqa: F401
        except ImportError:
            self.skipTest("msgpack not installed in this Python")
        enc, dec = FrameEncoder("msgpack"), FrameDecoder("msgpack")
        data = enc.encode({"op": "result", "id": "1", "result": b"\x00\x01"})
        self.assertEqual(dec.feed(data[:3]), [])
        self.assertEqual(dec.feed(data[3:])[0]["result"], b"\x00\x01")

    def test_limits_and_garbage(self):
        dec = FrameDecoder("json", max_frame_bytes=1024)
        with self.assertRaises(ProtocolError):
            dec.feed(b"x" * 2000)
        for bad in (b"not json\n", b"[1,2]\n", b'{"no_op": 1}\n', b"\xff\xfe\n"):
            with self.assertRaises(ProtocolError):
                FrameDecoder("json").feed(bad)
        with self.assertRaises(ProtocolError):
            FrameEncoder("json", max_frame_bytes=1024).encode({"op": "x", "v": "y" * 2000})
        with self.assertRaises(ProtocolError):
            FrameEncoder("json").encode({"op": "x", "v": object()})
        with self.assertRaises(ProtocolError):
            FrameEncoder("nope")

    def test_describe_exception(self):
        self.assertFalse(describe_exception(ValidationError("bad"))["retry_possible"])
        err = describe_exception(KeyError("x"))
        self.assertTrue(err["retry_possible"])
        self.assertEqual(err["type"], "KeyError")


class WorkerProcessTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp()
        with open(os.path.join(self.dir, "h.py"), "w") as f:
            f.write(HANDLERS)

    def serve(self, frames, handler="h:double"):
        stdin = "".join(json.dumps(f) + "\n" for f in frames)
        proc = subprocess.Popen(
            [sys.executable, "-m", "prismq_worker_sdk", handler],
            cwd=self.dir, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        # Keep stdin open until the shutdown frame was handled: end of input
        # means "the supervisor died" and ends the worker at once.
        proc.stdin.write(stdin.encode())
        proc.stdin.flush()
        out = []
        dec = FrameDecoder("json")
        while True:
            chunk = proc.stdout.read1(65536) if hasattr(proc.stdout, "read1") else proc.stdout.read(1)
            if not chunk:
                break
            out.extend(dec.feed(chunk))
            if any(f["op"] == "result" for f in out) and frames[-1]["op"] == "shutdown":
                pass
        proc.stdin.close()
        proc.wait(10)
        return proc.returncode, out

    def test_handshake_task_progress_print(self):
        code, out = self.serve([
            {"op": "ping", "seq": 7},
            {"op": "task", "id": "t1", "type": "x", "params": {"n": 21}, "attempt": 2},
            {"op": "shutdown"},
        ])
        self.assertEqual(code, 0)
        self.assertEqual(out[0]["op"], "hello")
        self.assertEqual(out[0]["protocol"], PROTOCOL_VERSION)
        ops = [f["op"] for f in out]
        self.assertIn("pong", ops)
        result = [f for f in out if f["op"] == "result"][0]
        self.assertEqual(result["result"], {"n": 42, "attempt": 2})
        self.assertIn({"op": "progress", "id": "t1", "progress": 50}, out)
        logs = [f for f in out if f["op"] == "log"]
        self.assertEqual(logs[0]["message"], "printed")
        self.assertEqual(logs[0]["task_id"], "t1")

    def test_async_handler_and_errors(self):
        for handler, check in (
            ("h:adouble", lambda r: r["result"] == {"n": 2}),
            ("h:invalid", lambda r: r["error"]["type"] == "ValidationError" and not r["error"]["retry_possible"]),
            ("h:boom", lambda r: r["error"]["retry_possible"] and "Traceback" in r["error"]["traceback"]),
            ("h:exits", lambda r: not r["error"]["retry_possible"]),
        ):
            code, out = self.serve([{"op": "task", "id": "a", "type": "x", "params": {"n": 1}}, {"op": "shutdown"}],
                                   handler=handler)
            result = [f for f in out if f["op"] == "result"][0]
            self.assertTrue(check(result), (handler, result))

    def test_import_failure_is_a_fatal_frame(self):
        code, out = self.serve([{"op": "shutdown"}], handler="missing_module:fn")
        self.assertEqual(code, 2)
        self.assertEqual(out[0]["op"], "fatal")
        self.assertIn("missing_module", out[0]["error"]["message"])

    def test_oneshot_exit_codes(self):
        def run(handler, task):
            p = subprocess.run(
                [sys.executable, "-m", "prismq_worker_sdk", "--oneshot", handler],
                cwd=self.dir, input=task.encode(), capture_output=True,
            )
            return p.returncode, json.loads(p.stdout.decode())

        code, doc = run("h:double", json.dumps({"id": "1", "type": "x", "params": {"n": 4}}))
        self.assertEqual((code, doc["success"], doc["result"]["n"]), (0, True, 8))
        code, doc = run("h:invalid", json.dumps({"id": "1", "type": "x", "params": {}}))
        self.assertEqual((code, doc["error"]["type"]), (2, "ValidationError"))
        code, doc = run("h:boom", json.dumps({"id": "1", "type": "x", "params": {}}))
        self.assertEqual(code, 1)
        code, doc = run("h:double", "not json")
        self.assertEqual((code, doc["error"]["type"]), (2, "JSONDecodeError"))


if __name__ == "__main__":
    unittest.main()
