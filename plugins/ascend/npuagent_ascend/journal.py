"""Following the journal of some systemd units: what an inference service prints on stderr.

One ``journalctl -f -o json -u UNIT ... --after-cursor CURSOR`` child for all the units (a
cursor is a position in the whole journal, so one cursor serves them all). A thread reads its
output line by line into a bounded queue: when the collector falls behind, journalctl
blocks on its pipe and nothing is dropped. The collector takes the entries out in its own
collection (:meth:`Journal.drain`), hands over what they say, and commits the cursor of the
last entry it took together with the blocks still open (see :mod:`.textlog`): that is the
journal's "offset".

Where to start when there is no cursor yet: at the very first start, at the end (``-n 0``,
or everything with ``start_at = "beginning"``); later, since the time the journal was first
followed, so entries written while the agent was down are not lost even if it had never
seen one before.

journalctl exiting (a missing binary, a unit name it refuses, a crash) is logged with its
last words and counted; it is started again from the last cursor after a back-off, once
every entry it gave has been taken.
"""

from __future__ import annotations

import json
import logging
import queue
import subprocess
import threading
import time
from collections import deque
from typing import Any, Deque, Dict, List, Optional, Sequence

log = logging.getLogger("npuagent.ascend.cann_log")

QUEUE_LINES = 20000
#: seconds before journalctl is started again after it exited, doubled with each exit in a row (60 s at most)
RETRY_BASE = 2.0
#: bytes of entries waiting at most (journald's lines go up to 48 KiB, four times that as a JSON array): the
#: reader waits, journalctl's pipe fills, and journalctl waits, rather than the agent's memory growing
QUEUE_BYTES = 64 << 20


class Journal:
    """journalctl following ``units``; entries come out of :meth:`drain`."""

    def __init__(self, units: Sequence[str], command: Sequence[str] = ("journalctl",)) -> None:
        self.units = list(units)
        self.command = list(command)
        self.proc: Optional[subprocess.Popen] = None
        self._queue: queue.Queue = queue.Queue(maxsize=QUEUE_LINES)
        self._stderr: Deque[str] = deque(maxlen=5)
        self._threads: List[threading.Thread] = []
        self.exits = 0
        #: exits since the last entry: the back-off grows with them, and an entry ends it
        self.failures = 0
        self.bad_entries = 0
        self._retry_at = 0.0
        self._ended = True
        self._stopping = False
        self._queued_bytes = 0
        self._bytes_lock = threading.Lock()

    def argv(self, cursor: Optional[str], since: Optional[float], start_at: str) -> List[str]:
        args = [*self.command, "-f", "-o", "json", "--no-pager"]
        for unit in self.units:
            args += ["-u", unit]
        if cursor:
            args += ["--after-cursor", cursor]
        elif since is not None:
            args += ["--since", f"@{int(since)}"]
        else:
            args += ["-n", "all" if start_at == "beginning" else "0"]
        return args

    @property
    def running(self) -> bool:
        return self.proc is not None and not self._ended

    def start(self, cursor: Optional[str], since: Optional[float], start_at: str = "end") -> bool:
        """Start journalctl unless it runs, or its last exit is too recent (back-off); False when it cannot."""
        if self.running or time.monotonic() < self._retry_at or not self._queue.empty():
            return self.running
        argv = self.argv(cursor, since, start_at)
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, start_new_session=True, close_fds=True)
        except OSError as e:
            self._failed(f"cannot run {argv[0]}: {e}")
            return False
        self._ended = False
        self._threads = [threading.Thread(target=self._read_out, args=(self.proc,), name="cann-log-journal",
                                          daemon=True),
                         threading.Thread(target=self._read_err, args=(self.proc,), name="cann-log-journal-err",
                                          daemon=True)]
        for t in self._threads:
            t.start()
        return True

    def _failed(self, why: str) -> None:
        self.exits += 1
        self.failures += 1
        delay = min(RETRY_BASE * 2.0 ** min(self.failures - 1, 5), 60.0)
        self._retry_at = time.monotonic() + delay
        log.warning("journal of %s not followed: %s (trying again in %.0fs)", ", ".join(self.units), why, delay)

    def _read_out(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                if not self._put(line):
                    return
        except (OSError, ValueError):
            pass  # closed under us: the collector is stopping
        self._put(None)

    def _put(self, line: Optional[bytes]) -> bool:
        """Queue a line, waiting while the queue is full (in lines or bytes); False once :meth:`close` was called."""
        size = len(line) if line else 0
        while not self._stopping:
            with self._bytes_lock:
                room = self._queued_bytes + size <= QUEUE_BYTES or self._queued_bytes == 0
                if room:
                    self._queued_bytes += size
            if not room:
                time.sleep(0.05)
                continue
            try:
                self._queue.put(line, timeout=0.5)
                return True
            except queue.Full:
                with self._bytes_lock:
                    self._queued_bytes -= size
        return False

    def _read_err(self, proc: subprocess.Popen) -> None:
        assert proc.stderr is not None
        try:
            for line in proc.stderr:
                self._stderr.append(line.decode("utf-8", "replace").strip())
        except (OSError, ValueError):
            pass

    def drain(self, deadline: float, limit: int = 100000) -> List[Dict[str, Any]]:
        """The entries journalctl has written, parsed, until ``deadline`` (monotonic) or ``limit``."""
        out: List[Dict[str, Any]] = []
        while len(out) < limit and time.monotonic() < deadline:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is None:
                self._ended = True
                code = self.proc.wait() if self.proc is not None else None
                self._failed(f"journalctl exited with {code}: {' | '.join(list(self._stderr)) or 'no message'}")
                break
            with self._bytes_lock:
                self._queued_bytes -= len(line)
            try:
                entry = json.loads(line)
                if not isinstance(entry, dict) or "__CURSOR" not in entry:
                    raise ValueError("not a journal entry")
            except ValueError:
                self.bad_entries += 1
                continue
            out.append(entry)
            self.failures = 0
        return out

    def idle(self) -> bool:
        """Nothing is waiting in the queue (what was read so far has all been taken)."""
        return self._queue.empty()

    def close(self) -> None:
        self._stopping = True  # a reader waiting for room in the queue gives up
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(2.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        self._ended = True


def message(entry: Dict[str, Any]) -> str:
    """An entry's MESSAGE as text (journald gives bytes that are not UTF-8 as an array of numbers)."""
    value = entry.get("MESSAGE")
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        try:
            return bytes(value).decode("utf-8", "replace")
        except (TypeError, ValueError):
            return ""
    return ""

