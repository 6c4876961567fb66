# temporary experiment: SDK runner with the main thread reading the protocol itself
import os, sys, threading
from prismq_worker_sdk import runner
from prismq_worker_sdk.protocol import FrameDecoder

mode = os.environ.get("EXP_MODE", "direct")
orig_thread = threading.Thread

class FakeThread:
    def __init__(self, target=None, args=(), name=None, daemon=None):
        self.target, self.args, self.name = target, args, name
    def start(self):
        if self.name == "proto-reader" and mode == "direct":
            w = self.target.__self__
            fd, dec = self.args
            def serve_direct():
                while True:
                    data = os.read(fd, 65536)
                    if not data: os._exit(0)
                    for frame in dec.feed(data):
                        if frame["op"] == "task": w.run_one(frame)
                        else: w._on_frame(frame)
            w.serve_forever = serve_direct
            return
        if self.name == "stdout-capture" and mode == "nocapture":
            return
        orig_thread(target=self.target, args=self.args, name=self.name, daemon=True).start()

runner.threading.Thread = FakeThread
sys.exit(runner.serve(sys.argv[1], codec=sys.argv[2]))
