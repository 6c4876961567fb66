"""systemd's notify protocol: READY, RELOADING, STOPPING, STATUS and WATCHDOG.

Under ``Type=notify`` systemd passes ``NOTIFY_SOCKET``, the address of a
unix datagram socket (a path, or ``@name`` in the abstract namespace), and
waits for ``READY=1`` before it calls the service started. Each message is
one datagram of ``KEY=value`` lines (sd_notify(3)). When the unit sets
``WatchdogSec``, systemd also passes ``WATCHDOG_USEC`` (and
``WATCHDOG_PID``) and kills the service unless ``WATCHDOG=1`` arrives
within that interval; we ping at half of it from the event loop, so a
wedged loop stops the pings and systemd restarts the supervisor.

Without ``NOTIFY_SOCKET`` every call is a no-op, so the supervisor runs the
same under systemd, in a terminal and in tests. A lost notification is
never fatal: it is logged at debug level and the supervisor carries on.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Mapping

from loguru import logger


class Notifier:
    """Sends notifications to the socket systemd gave us (if any)."""

    def __init__(self, address: str | None, *, watchdog_usec: int | None = None) -> None:
        self.address = address
        #: The watchdog period systemd expects pings within, in microseconds.
        self.watchdog_usec = watchdog_usec
        self._sock: socket.socket | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """Read ``NOTIFY_SOCKET`` and ``WATCHDOG_USEC`` (ignored when ``WATCHDOG_PID`` is another process)."""
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or None
        watchdog: int | None = None
        pid = env.get("WATCHDOG_PID")
        if env.get("WATCHDOG_USEC") and (not pid or pid == str(os.getpid())):
            try:
                watchdog = int(env["WATCHDOG_USEC"])
            except ValueError:
                watchdog = None
        return cls(address, watchdog_usec=watchdog if watchdog and watchdog > 0 else None)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings (half the period systemd allows), or None."""
        if self.watchdog_usec is None or not self.enabled:
            return None
        return self.watchdog_usec / 2_000_000

    def notify(self, **fields: str | int) -> bool:
        """Send one message (``READY=1`` is ``notify(READY=1)``); True if it was sent."""
        if self.address is None:
            return False
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode("utf-8")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(message, _sockaddr(self.address))
        except OSError as exc:
            logger.debug("sd_notify to {} failed: {}", self.address, exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.notify(READY=1, **_status(status), MAINPID=os.getpid())

    def reloading(self, status: str | None = None) -> bool:
        # MONOTONIC_USEC lets Type=notify-reload units match this RELOADING=1 to the reload request.
        return self.notify(RELOADING=1, MONOTONIC_USEC=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000,
                           **_status(status))

    def stopping(self, status: str | None = None) -> bool:
        return self.notify(STOPPING=1, **_status(status))

    def status(self, text: str) -> bool:
        return self.notify(STATUS=text)

    def watchdog(self) -> bool:
        return self.notify(WATCHDOG=1)

    async def run_watchdog(self) -> None:
        """Ping the watchdog from the event loop until cancelled (returns at once without one)."""
        interval = self.watchdog_interval
        if interval is None:
            return
        while True:
            self.watchdog()
            await asyncio.sleep(interval)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _status(text: str | None) -> dict[str, str]:
    # STATUS is one line: a newline would start another field.
    return {"STATUS": " ".join(text.split())} if text else {}


def _sockaddr(address: str) -> str | bytes:
    # "@name" is Linux's abstract namespace: a leading NUL byte, no file.
    if address.startswith("@"):
        return b"\0" + address[1:].encode("utf-8")
    return address
