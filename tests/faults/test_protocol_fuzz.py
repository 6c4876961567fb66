"""Protocol fuzzing: the frame decoders raise ProtocolError and nothing else, for any bytes in any chunking.

The supervisor's reader catches exactly ``ProtocolError`` (worker.py
``_on_stdout``): anything else a decoder raised would escape into the event
loop's reader callback, and the worker would be neither failed nor
replaced. So "only ProtocolError" is the property that keeps a broken
worker from wedging the pool.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prismq_worker_sdk.protocol import FrameDecoder, FrameEncoder, ProtocolError

msgpack = pytest.importorskip("msgpack")

pytestmark = pytest.mark.timeout(300)

FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CODECS = ("json", "msgpack")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2 ** 63), 2 ** 63) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
frames = st.builds(lambda op, body: {"op": op, **body}, st.sampled_from(["result", "log", "pong", "hello", "x"]),
                   st.dictionaries(st.text(min_size=1, max_size=8).filter(lambda k: k != "op"), json_values,
                                   max_size=4))


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in points + [len(data)]:
        out.append(data[last:p])
        last = p
    return out


def feed_all(decoder: FrameDecoder, chunks: list[bytes]) -> list[dict[str, Any]]:
    """Feed every chunk; return the frames; only ProtocolError may escape."""
    got: list[dict[str, Any]] = []
    for chunk in chunks:
        try:
            got += decoder.feed(chunk)
        except ProtocolError:
            raise
        except BaseException as exc:  # noqa: BLE001 - this is exactly what the test hunts
            raise AssertionError(f"{decoder.codec} decoder raised {type(exc).__name__}: {exc!r}") from exc
        # Memory stays bounded: an unfinished frame never grows past the limit plus one chunk.
        assert decoder.pending_bytes <= decoder.max_frame_bytes + 4 + len(chunk)
    return got


@pytest.mark.parametrize("codec", CODECS)
@FUZZ
@given(data=st.binary(max_size=3000), cuts=st.lists(st.integers(0, 3000), max_size=12),
       limit=st.sampled_from([1024, 4096, 1 << 20]))
def test_any_bytes_in_any_chunking_only_raise_protocol_error(codec: str, data: bytes, cuts: list[int],
                                                             limit: int) -> None:
    decoder = FrameDecoder(codec, max_frame_bytes=limit)
    try:
        frames_out = feed_all(decoder, chunked(data, cuts))
    except ProtocolError:
        return
    for frame in frames_out:
        assert isinstance(frame, dict) and isinstance(frame["op"], str)


@pytest.mark.parametrize("codec", CODECS)
@FUZZ
@given(messages=st.lists(frames, min_size=1, max_size=6), cuts=st.lists(st.integers(0, 10_000), max_size=20))
def test_valid_frames_survive_any_chunking(codec: str, messages: list[dict[str, Any]], cuts: list[int]) -> None:
    encoder = FrameEncoder(codec, max_frame_bytes=1 << 20)
    wire = b"".join(encoder.encode(m) for m in messages)
    decoder = FrameDecoder(codec, max_frame_bytes=1 << 20)
    assert feed_all(decoder, chunked(wire, cuts)) == [_normalised(m) for m in messages]
    assert decoder.pending_bytes == 0


@pytest.mark.parametrize("codec", CODECS)
@FUZZ
@given(messages=st.lists(frames, min_size=1, max_size=4), junk=st.binary(min_size=1, max_size=200),
       at=st.integers(0, 4), cuts=st.lists(st.integers(0, 5000), max_size=10))
def test_valid_frames_with_junk_spliced_in(codec: str, messages: list[dict[str, Any]], junk: bytes, at: int,
                                           cuts: list[int]) -> None:
    encoder = FrameEncoder(codec)
    parts = [encoder.encode(m) for m in messages]
    parts.insert(at % (len(parts) + 1), junk)
    decoder = FrameDecoder(codec, max_frame_bytes=4096)
    try:
        feed_all(decoder, chunked(b"".join(parts), cuts))
    except ProtocolError:
        pass


@FUZZ
@given(payload=st.binary(max_size=500), declared=st.integers(0, 2 ** 32 - 1))
def test_msgpack_length_prefix_lies(payload: bytes, declared: int) -> None:
    """A length prefix that claims more (or less) than follows: refused or waited for, never buffered past the limit."""
    decoder = FrameDecoder("msgpack", max_frame_bytes=1024)
    try:
        feed_all(decoder, [struct.pack(">I", declared) + payload])
    except ProtocolError:
        return


@pytest.mark.parametrize("line", [
    b"[" * 200_000 + b"\n",  # nesting deep enough to blow the recursion limit
    b'{"op": "x", "a": ' + b"[" * 200_000 + b"\n",
    b"\xff\xfe\n",
    b"\x00\n",
    b'{"op": 1}\n',
    b"[1, 2]\n",
    b'"just a string"\n',
    b"NaN\n",
    b'{"op": "x", "n": 1e999999}\n',
    b'{"op": "x", "n": ' + b"9" * 100_000 + b"}\n",  # int longer than Python's str->int digit limit
])
def test_nasty_json_lines(line: bytes) -> None:
    decoder = FrameDecoder("json", max_frame_bytes=1 << 20)
    try:
        feed_all(decoder, [line])
    except ProtocolError:
        pass


@pytest.mark.parametrize("obj", [
    [1, 2], "text", 7, None, {"no_op": 1}, {"op": 5}, {1: "int key"}, {(1, 2): "tuple key"},
    msgpack.ExtType(5, b"ext"), {"op": "x", "deep": [[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]},
])
def test_nasty_msgpack_payloads(obj: Any) -> None:
    payload = msgpack.packb(obj, use_bin_type=True)
    decoder = FrameDecoder("msgpack", max_frame_bytes=1 << 20)
    try:
        frames_out = feed_all(decoder, [struct.pack(">I", len(payload)) + payload])
    except ProtocolError:
        return
    assert all(isinstance(f["op"], str) for f in frames_out)


def test_msgpack_map_with_unhashable_key() -> None:
    # fixmap of one entry whose key is an array: unpacking it raises TypeError inside msgpack.
    payload = b"\x81\x91\x01\x01"
    decoder = FrameDecoder("msgpack")
    with pytest.raises(ProtocolError):
        feed_all(decoder, [struct.pack(">I", len(payload)) + payload])


@FUZZ
@given(message=frames)
def test_the_encoder_refuses_only_with_protocol_error(message: dict[str, Any]) -> None:
    for codec in CODECS:
        try:
            FrameEncoder(codec, max_frame_bytes=1024).encode(message)
        except ProtocolError:
            pass


def test_encoder_refuses_what_json_cannot_carry() -> None:
    for bad in ({"op": "x", "v": float("nan")}, {"op": "x", "v": object()}, {"op": "x", "v": b"bytes"}):
        with pytest.raises(ProtocolError):
            FrameEncoder("json").encode(bad)


def _normalised(message: dict[str, Any]) -> dict[str, Any]:
    """What a round trip gives back (JSON turns tuples into lists, and so does msgpack)."""
    return json.loads(json.dumps(message))
