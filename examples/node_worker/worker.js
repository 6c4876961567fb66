#!/usr/bin/env node
// A persistent protocol-v1 worker in Node.js: no SDK, no Python, no npm packages.
//
// The protocol is language-neutral (docs/protocol.md): write a `hello`
// frame, then read one JSON object per line from stdin and answer on stdout:
// one `result` per `task`, a `pong` per `ping`; `shutdown` or end of input
// means exit. stdout carries frames only, so console.log is pointed at
// stderr, which the supervisor logs line by line.
"use strict";

const readline = require("node:readline");

const send = (frame) => process.stdout.write(JSON.stringify(frame) + "\n");
console.log = (...args) => process.stderr.write(args.join(" ") + "\n");

function wordCount(params) {
  if (typeof params.text !== "string") {
    // retry_possible: false -> the supervisor fails the task at once.
    const error = new Error("params.text must be a string");
    error.retryPossible = false;
    throw error;
  }
  const words = params.text.split(/\s+/).filter(Boolean);
  const counts = {};
  for (const w of words) counts[w.toLowerCase()] = (counts[w.toLowerCase()] || 0) + 1;
  return { words: words.length, distinct: Object.keys(counts).length, counts, runtime: `node ${process.version}`, pid: process.pid };
}

send({ op: "hello", protocol: 1, sdk: "none", pid: process.pid, python: "n/a", codec: "json" });

const input = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
input.on("line", (line) => {
  if (!line.trim()) return;
  const frame = JSON.parse(line);
  switch (frame.op) {
    case "task":
      try {
        send({ op: "progress", id: frame.id, progress: 50, message: "counting" });
        send({ op: "result", id: frame.id, success: true, result: wordCount(frame.params || {}) });
      } catch (err) {
        send({
          op: "result", id: frame.id, success: false,
          error: { type: err.name === "Error" ? "NodeError" : err.name, message: err.message, traceback: err.stack,
                   retry_possible: err.retryPossible !== false },
        });
      }
      break;
    case "ping":
      send({ op: "pong", seq: frame.seq });
      break;
    case "shutdown":
      process.exit(0);
      break;
    default:
      // `cancel` (tasks here finish at once) and unknown ops are ignored, as protocol v1 allows.
      break;
  }
});
// End of input: the supervisor closed our stdin or died; nobody can read a result.
input.on("close", () => process.exit(0));
