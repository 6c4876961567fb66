"""Protocol v1: the frames a supervisor and a worker exchange over a pipe.

This module is the one place the framing lives; the supervisor imports it
too. It must stay importable on Python 3.8 with nothing but the standard
library (msgpack is optional and only needed for the ``msgpack`` codec).

Two codecs::

    json     one UTF-8 JSON object per line:   {"op": "task", ...}\\n
    msgpack  4-byte big-endian length, then that many bytes of msgpack:
             +--------+--------+--------+--------+=====================+
             |        payload length (uint32)    |  msgpack map ...    |
             +--------+--------+--------+--------+=====================+

Every frame is a map with an ``op`` key. A frame longer than the agreed
maximum, a payload that does not decode, or a payload that is not a map
raises :class:`ProtocolError` and nothing else; the reader then treats the
peer as broken. The full message catalogue is in docs/protocol.md.
"""

from __future__ import annotations

import json
import struct
from typing import Any, Dict, List, Optional

PROTOCOL_VERSION = 1

#: Frames above this size are refused on both sides unless configured
#: otherwise. Large enough for real payloads, small enough that a runaway
#: worker cannot make the supervisor buffer gigabytes.
DEFAULT_MAX_FRAME_BYTES = 16 * 1024 * 1024

CODECS = ("json", "msgpack")

# Message kinds, worker -> supervisor.
OP_HELLO = "hello"  # handshake: protocol, sdk, pid, python, codec
OP_FATAL = "fatal"  # the worker cannot serve (e.g. handler import failed)
OP_RESULT = "result"  # outcome of one task
OP_LOG = "log"  # a log line (logging, print(), fd 1 of C code/children)
OP_PROGRESS = "progress"  # progress of the running task, 0..100
OP_PONG = "pong"  # answer to ping
# Message kinds, supervisor -> worker.
OP_TASK = "task"
OP_CANCEL = "cancel"  # cooperative cancellation of the running task
OP_SHUTDOWN = "shutdown"  # finish the current task (if any), then exit 0
OP_PING = "ping"

_LEN = struct.Struct(">I")


class ProtocolError(Exception):
    """A frame could not be encoded or decoded, or broke the size limit."""


def _load_msgpack() -> Any:
    try:
        import msgpack  # type: ignore[import-not-found]
    except ImportError as exc:  # pragma: no cover - depends on the venv
        raise ProtocolError(
            "codec 'msgpack' needs the msgpack package in this Python "
            "(pip install 'prismq-worker-sdk[msgpack]')"
        ) from exc
    return msgpack


def check_codec(codec: str) -> None:
    if codec not in CODECS:
        raise ProtocolError("unknown codec %r (expected one of %s)" % (codec, ", ".join(CODECS)))
    if codec == "msgpack":
        _load_msgpack()


class FrameEncoder:
    """Turns message maps into bytes ready to write."""

    def __init__(self, codec: str = "json", max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        check_codec(codec)
        self.codec = codec
        self.max_frame_bytes = max_frame_bytes
        self._packb = _load_msgpack().packb if codec == "msgpack" else None
        # One encoder kept, not json.dumps(..., separators=...) per frame:
        # dumps builds a new JSONEncoder whenever it gets options (~0.6 µs of
        # a frame's ~2.5). ensure_ascii (its default) keeps the frame free of
        # raw newlines and of characters that are not valid UTF-8 (lone surrogates).
        self._dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode

    def encode(self, message: Dict[str, Any]) -> bytes:
        try:
            if self._packb is not None:
                payload = self._packb(message, use_bin_type=True)
            else:
                payload = self._dumps(message).encode("ascii")
        except (TypeError, ValueError, OverflowError) as exc:
            raise ProtocolError("cannot encode %s frame: %s" % (message.get("op"), exc)) from exc
        if len(payload) > self.max_frame_bytes:
            raise ProtocolError(
                "%s frame of %d bytes exceeds the limit of %d bytes"
                % (message.get("op"), len(payload), self.max_frame_bytes)
            )
        if self._packb is not None:
            return _LEN.pack(len(payload)) + payload
        return payload + b"\n"


class FrameDecoder:
    """Incremental decoder: feed it bytes as they arrive, get whole messages.

    Memory is bounded by ``max_frame_bytes``: a frame that is still growing
    past the limit is refused before it is buffered in full.
    """

    def __init__(self, codec: str = "json", max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        check_codec(codec)
        self.codec = codec
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()
        self._unpackb = _load_msgpack().unpackb if codec == "msgpack" else None
        self._loads = json.JSONDecoder().decode
        self._scan_from = 0

    @property
    def pending_bytes(self) -> int:
        """Bytes of an incomplete frame still held (0 at a frame boundary)."""
        return len(self._buf)

    def feed(self, data: bytes) -> List[Dict[str, Any]]:
        self._buf += data
        if self._unpackb is not None:
            return self._drain_msgpack()
        return self._drain_json()

    def _drain_json(self) -> List[Dict[str, Any]]:
        out: List[Dict[str, Any]] = []
        buf = self._buf
        start = 0
        while True:
            nl = buf.find(b"\n", max(start, self._scan_from))
            if nl < 0:
                break
            line = bytes(buf[start:nl])
            start = nl + 1
            self._scan_from = start
            if len(line) > self.max_frame_bytes:
                raise ProtocolError(
                    "frame of %d bytes exceeds the limit of %d bytes" % (len(line), self.max_frame_bytes)
                )
            if line.strip():
                out.append(self._parse_json(line))
        del buf[:start]
        self._scan_from = len(buf)
        if len(buf) > self.max_frame_bytes:
            raise ProtocolError(
                "unterminated frame passed the limit of %d bytes" % self.max_frame_bytes
            )
        return out

    def _parse_json(self, line: bytes) -> Dict[str, Any]:
        try:
            message = self._loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise ProtocolError("undecodable frame %r: %s" % (line[:80], exc)) from exc
        return _check_message(message)

    def _drain_msgpack(self) -> List[Dict[str, Any]]:
        out: List[Dict[str, Any]] = []
        buf = self._buf
        pos = 0
        while len(buf) - pos >= 4:
            (size,) = _LEN.unpack_from(buf, pos)
            if size > self.max_frame_bytes:
                raise ProtocolError(
                    "frame of %d bytes exceeds the limit of %d bytes" % (size, self.max_frame_bytes)
                )
            if len(buf) - pos - 4 < size:
                break
            payload = bytes(buf[pos + 4 : pos + 4 + size])
            pos += 4 + size
            try:
                message = self._unpackb(payload, raw=False, strict_map_key=False)  # type: ignore[misc]
            except Exception as exc:  # msgpack raises many unrelated types
                raise ProtocolError("undecodable msgpack frame: %s" % exc) from exc
            out.append(_check_message(message))
        del buf[:pos]
        return out


def _check_message(message: Any) -> Dict[str, Any]:
    if not isinstance(message, dict):
        raise ProtocolError("frame is a %s, expected a map" % type(message).__name__)
    if not isinstance(message.get("op"), str):
        raise ProtocolError("frame has no 'op' field: %r" % (str(message)[:80],))
    return message


def error_payload(
    type_: str, message: str, *, traceback: Optional[str] = None, retry_possible: bool = True
) -> Dict[str, Any]:
    """The ``error`` object of a failed result, as in the design."""
    return {
        "type": type_,
        "message": message,
        "traceback": traceback,
        "retry_possible": retry_possible,
    }
