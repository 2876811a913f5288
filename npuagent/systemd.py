"""Talking to systemd through sd_notify (the ``sdnotify`` package).

The loop calls :meth:`Notifier.cycle` at the end of every pass, and only there:
the watchdog must be pinged by the loop itself, so that a loop stuck anywhere
stops the pings and systemd restarts the agent. A side thread would keep pinging
while the loop is dead.
"""

from __future__ import annotations

import os
import time
from typing import Callable, Optional

import sdnotify


def watchdog_interval(environ: Optional[dict] = None) -> Optional[float]:
    """Seconds of ``WATCHDOG_USEC``, when systemd asked this process for pings."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or (pid and pid.isdigit() and int(pid) != os.getpid()):
        return None
    try:
        seconds = int(usec) / 1e6
    except ValueError:
        return None
    return seconds if seconds > 0 else None


class Notifier:
    """READY, STATUS, WATCHDOG, RELOADING and STOPPING; silent when not under systemd."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._sd = sdnotify.SystemdNotifier() if self.enabled else None
        self.watchdog = watchdog_interval()
        self._monotonic = monotonic
        self._last_ping = -1e18
        self._status = ""
        self.pings = 0

    def send(self, *lines: str) -> None:
        if self._sd is not None:
            self._sd.notify("\n".join(lines))

    def ready(self, status: str) -> None:
        self._status = status
        self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> None:
        # MONOTONIC_USEC lets Type=notify-reload (systemd >= 253) match the reload it asked for.
        self.send("RELOADING=1", f"MONOTONIC_USEC={int(time.monotonic() * 1e6)}")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping")

    def status(self, text: str) -> None:
        if text != self._status:
            self._status = text
            self.send(f"STATUS={text}")

    def max_sleep(self) -> float:
        """The longest the loop may sleep and still ping in time (a quarter of the period)."""
        return self.watchdog / 4 if self.watchdog else 1.0

    def cycle(self) -> None:
        """End of one loop pass: ping when half the watchdog period has gone by."""
        if not self.watchdog:
            return
        now = self._monotonic()
        if now - self._last_ping >= self.watchdog / 2:
            self._last_ping = now
            self.pings += 1
            self.send("WATCHDOG=1")
