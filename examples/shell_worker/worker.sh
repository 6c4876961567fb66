#!/bin/sh
# A persistent protocol-v1 worker in plain POSIX sh: no SDK, no Python.
#
# It shows that the protocol is language-neutral (docs/protocol.md): send a
# `hello` frame, then answer each line of stdin. Frames are one JSON object
# per line; the supervisor writes them compactly ({"op":"task","id":"...",
# ...}), which is what the sed patterns below rely on. A real worker in
# another language would use a JSON parser; this one only reads the task id
# and a flat string parameter `name`.
#
# stdout carries frames and nothing else; anything for humans goes to
# stderr, which the supervisor logs line by line with the worker's pid.

frame() { printf '%s\n' "$1"; }

frame "{\"op\":\"hello\",\"protocol\":1,\"sdk\":\"none\",\"pid\":$$,\"python\":\"n/a\",\"codec\":\"json\"}"
served=0
while IFS= read -r line; do
  case $line in
    *'"op":"task"'*)
      id=$(printf '%s\n' "$line" | sed -n 's/^{"op":"task","id":"\([^"]*\)".*/\1/p')
      name=$(printf '%s\n' "$line" | sed -n 's/.*"params":{[^}]*"name":"\([^"\\]*\)".*/\1/p')
      served=$((served + 1))
      echo "task $id: greeting ${name:-world}" >&2
      if [ "$name" = "" ] && printf '%s' "$line" | grep -q '"params":{[^}]*"name":'; then
        # A failure the design's way: retry_possible=false ends the task at once.
        frame "{\"op\":\"result\",\"id\":\"$id\",\"success\":false,\"error\":{\"type\":\"ValidationError\",\"message\":\"params.name must be a non-empty string\",\"traceback\":null,\"retry_possible\":false}}"
      else
        frame "{\"op\":\"result\",\"id\":\"$id\",\"success\":true,\"result\":{\"greeting\":\"hello, ${name:-world}\",\"language\":\"sh\",\"pid\":$$,\"served\":$served}}"
      fi
      ;;
    *'"op":"ping"'*)
      frame "{\"op\":\"pong\",\"seq\":$(printf '%s\n' "$line" | sed -n 's/.*"seq":\([0-9]*\).*/\1/p')}"
      ;;
    *'"op":"shutdown"'*)
      exit 0
      ;;
    *)
      # `cancel` (tasks here are instant) and unknown ops: ignore, as protocol v1 allows.
      ;;
  esac
done
# End of input: the supervisor closed our stdin or died. Exit at once.
exit 0
