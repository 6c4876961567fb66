"""Handlers that get hold of the protocol channel itself and abuse it."""

import os


def _channel_fd():
    # The SDK dup()ed the original fd 1 for the protocol; find it as the
    # lowest pipe fd above 2 that is open for writing (the test harness
    # knows the SDK's layout: in=3, out=4 in a fresh interpreter).
    return 4


def garbage(task):
    os.write(_channel_fd(), b"this is not a frame\n")
    return {"ok": True}


def huge_line(task):
    chunk = b"x" * (1 << 20)
    fd = _channel_fd()
    for _ in range(int(task["params"].get("mb", 100))):
        os.write(fd, chunk)
    return {"ok": True}


def invalid_utf8(task):
    os.write(_channel_fd(), b"\xff\xfe\xfd\n")
    return {"ok": True}
