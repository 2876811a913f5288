"""Following log files the way CANN writes them: many files, each created, filled and deleted.

CANN does not rotate by renaming: each process writes ``plog-<pid>_<created>.log`` until it
reaches 20 MB, then creates a new file, and deletes its oldest once it has more than
``ASCEND_HOST_LOG_FILE_NUM`` (10). Other logs a host has are rotated by ``logrotate``, by
renaming (``create``) or by truncation (``copytruncate``). :class:`Tailer` follows a set of
glob patterns through all of these:

* **Identity.** A file is its (device, inode), not its name, with the hash of its first bytes
  to tell a new file from an old inode number reused. A file renamed within the globs keeps
  its place; one renamed out of them (``app.log`` -> ``app.log.1``) is read to its end
  through the descriptor already open, and one that vanished (CANN deleting it) too: the
  bytes of an unlinked file stay readable while it is open. A file whose name is gone when
  the agent starts is looked for by inode in its directory.
* **Offsets.** Only whole lines are handed out, and only whole records: the consumer says
  how many bytes it took, and a record that may still gain continuation lines is left
  where it is until the file has been quiet for ``block_wait`` (CANN writes a block in
  one go) or a next record starts. A partial last line is never taken; a line longer than
  ``max_line`` is cut there and the rest of it dropped. The offset is what was taken.
* **Truncation.** A file shorter than its offset, or whose first bytes changed, is read
  again from its start. Lines written before the truncation that had not been read yet
  are gone for any reader; they are counted (``truncated``), not guessed at.
* **Descriptors.** At most ``max_open`` files are open. A file is let go (its descriptor
  closed, its position kept) once it is read to the end and its process has gone, a newer
  file of its process exists, or it has been idle for ``idle_close``; it is opened again
  when it grows. To make room for a new file, a file read to its end is closed, one unwritten
  for a few seconds first: closing one that is still written to risks the lines written to it
  before it is deleted. Descriptors of files that are renamed away or deleted with unread bytes
  are never closed to make room, since closing them loses those bytes.
* **Bad input.** A file that cannot be read is counted and tried again later; nothing
  here raises out of :meth:`Tailer.poll` for one file's sake.

New files are found by globbing at every poll, so a file is picked up within one interval. Files idle
for ``idle_close``, closed and read to their end (the logs of processes long gone) are looked at only
every ``COLD_EVERY`` polls: one that grows after all is read up to that many intervals late.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import logging
import os
import re
import stat
import time
from collections import Counter
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .logstate import Key, LogState, Saved
from .plog import LOG_NAME

log = logging.getLogger("npuagent.ascend.cann_log")

HEAD = 256
#: seconds a file must have gone unwritten before its descriptor may be closed to make room for another
EVICT_QUIET = 5.0
#: a cold file (closed, read to its end, idle for idle_close) is looked at once every this many polls
COLD_EVERY = 10
_DEVICE_DIR = re.compile(r"(?:^|/)device-(\d+)$")

#: consume(file, data, final) -> how many bytes of data (whole records) were taken
Consume = Callable[["Tracked", bytes, bool], int]


def head_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=8).hexdigest()


class Tracked:
    """One followed file: its identity and position, and what the last look at it found."""

    __slots__ = (
        "away",
        "created",
        "dev",
        "device_id",
        "dir",
        "dirty",
        "fd",
        "grew",
        "head_hash",
        "head_len",
        "ino",
        "mtime",
        "offset",
        "path",
        "pid",
        "retry_at",
        "size",
        "skip",
        "source",
        "vanished",
    )

    def __init__(self, dev: int, ino: int, path: str, offset: int = 0) -> None:
        self.dev, self.ino, self.path, self.offset = dev, ino, path, offset
        self.head_len, self.head_hash, self.skip = 0, "", False
        self.fd: Optional[int] = None
        self.size, self.mtime = 0, 0.0
        #: monotonic time it last grew
        self.grew = 0.0
        #: the file is gone from the globs (renamed away) / deleted: read to its end, then forgotten
        self.away = self.vanished = False
        self.dirty = True
        self.retry_at = 0.0
        self.pid: Optional[int] = None
        self.created = ""
        self.source = "file"
        self.device_id: Optional[str] = None
        self._describe()

    def _describe(self) -> None:
        self.dir, name = os.path.split(self.path)
        m = LOG_NAME.search(name)
        if m is not None:
            self.pid, self.created = int(m.group("pid")), m.group("created")
        d = _DEVICE_DIR.search(self.dir)
        if name.startswith("device-") and d is not None:
            self.source, self.device_id = "device", d.group(1)
        elif name.startswith("plog-"):
            self.source = "plog"

    def rename(self, path: str) -> None:
        self.path, self.dirty = path, True
        self._describe()

    @property
    def key(self) -> Key:
        return (self.dev, self.ino)

    def saved(self) -> Saved:
        return Saved(self.dev, self.ino, self.path, self.offset, self.head_len, self.head_hash, self.skip)


class Tailer:
    """Follows every file the glob ``patterns`` match; positions are kept in ``state``."""

    def __init__(self, patterns: Sequence[str], state: LogState, start_at: str = "end", max_open: int = 256,
                 max_line: int = 65536, chunk: int = 1 << 20, block_wait: float = 0.5, idle_close: float = 300.0,
                 per_file: int = 16 << 20, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.patterns = list(patterns)
        self.state = state
        self.start_at = start_at
        self.max_open = max(1, max_open)
        self.max_line = max_line
        self.chunk = max(chunk, max_line + 1)
        self.block_wait = block_wait
        self.idle_close = idle_close
        self.per_file = per_file
        self.clock, self.wall = clock, wall
        self.files: Dict[Key, Tracked] = {}
        #: positions committed by an earlier run, not yet matched with a file found now
        self._saved: Dict[Key, Saved] = state.files()
        self._gone: List[Key] = []
        self._polls = 0
        #: what went wrong, by reason: unreadable, vanished_unread, truncated, line_too_long, open_files_capped
        self.problems: Counter[str] = Counter()
        self.bytes_read = 0
        self._said: Dict[str, float] = {}
        #: wall-clock time of the last look for files: what a restart may take as known (commit it with the rest)
        self.scanned = 0.0
        #: path -> key of the cold files, as the last poll found them
        self._cold: Dict[str, Key] = {}

    # -- finding files ------------------------------------------------------

    def _discover(self) -> None:
        self.scanned = self.wall()
        found: Dict[Key, Tuple[str, Optional[os.stat_result]]] = {}
        # cold files (closed, read to their end, idle for idle_close: the logs of processes long gone, which CANN
        # never deletes) are looked at every COLD_EVERY polls only: thousands of them cost a stat each otherwise
        cold = {} if self._polls % COLD_EVERY == 0 else self._cold
        for pattern in self.patterns:
            try:
                paths = glob.glob(pattern)
            except (OSError, re.error) as e:
                self._say(f"glob:{pattern}", "cannot look for %s: %s", pattern, e)
                continue
            for path in paths:
                key = cold.get(path)
                if key is not None:
                    found.setdefault(key, (path, None))
                    continue
                try:
                    st = os.stat(path)
                except OSError:
                    continue  # gone between the listing and now: it will not be missed
                if stat.S_ISREG(st.st_mode):
                    found.setdefault((st.st_dev, st.st_ino), (path, st))
        first = self._polls == 0
        for key, (path, st) in found.items():
            if st is None:
                continue  # cold, and still there
            t = self.files.get(key)
            if t is None:
                t = self.files[key] = self._adopt(key, path, st, first)
            elif t.path != path:
                t.rename(path)
            t.away = False
            self._look(t, st)
        for key in [k for k in self.files if k not in found]:
            self._lost(self.files[key])
        if first:
            self._find_renamed()

    def _adopt(self, key: Key, path: str, st: os.stat_result, first: bool) -> Tracked:
        """A file seen for the first time in this run: where to start reading it."""
        t = Tracked(key[0], key[1], path)
        t.size, t.mtime, t.grew = st.st_size, st.st_mtime, self.clock()
        saved = self._saved.pop(key, None)
        if saved is not None and self._same(t, saved):
            t.offset, t.head_len, t.head_hash, t.skip = saved.offset, saved.head_len, saved.head_hash, saved.skip
            t.dirty = saved.path != path
        elif saved is None and first and self._skip_existing(st):
            t.offset, t.skip = self._end_of_lines(path, st.st_size)
        self._take_head(t)
        return t

    def _end_of_lines(self, path: str, size: int) -> Tuple[int, bool]:
        """Where the last whole line of a file ends (the start of a line being written, if any)."""
        start = max(size - self.max_line, 0)
        data = self._pread_path(path, size - start, start) or b""
        nl = data.rfind(b"\n")
        if nl < 0:
            return (size, True) if start else (0, False)
        return start + nl + 1, False

    def _take_head(self, t: Tracked) -> None:
        """Hash the first bytes (up to HEAD) as far as the file has them, to know it again."""
        want = min(t.size, HEAD)
        if t.head_len < want:
            head = self._pread(t, want, 0)
            if head:
                t.head_len, t.head_hash, t.dirty = len(head), head_hash(head), True

    def _skip_existing(self, st: os.stat_result) -> bool:
        """At start, a file the state does not know is read from its start if it may hold lines written since
        the last run looked for files (``files_scanned``, committed with the positions: a file made between that
        look and the commit is unknown to the state, yet older than the commit); at the very first start, per
        ``start_at``. A second of slack covers file systems with coarse times."""
        if self.state.fresh:
            return self.start_at == "end"
        return st.st_mtime < self.state.meta("files_scanned", self.state.last_commit) - 1.0

    def _same(self, t: Tracked, saved: Saved) -> bool:
        """Is this still the file the saved position is about (not an inode number reused, not truncated)?"""
        if saved.offset > t.size:
            self.problems["truncated"] += 1
            return False
        if saved.head_len:
            head = self._pread_path(t.path, saved.head_len, 0)
            if head is None or len(head) < saved.head_len or head_hash(head) != saved.head_hash:
                return False
        if saved.offset and not saved.skip:
            before = self._pread_path(t.path, 1, saved.offset - 1)
            if before != b"\n":
                return False
        return True

    def _find_renamed(self) -> None:
        """Saved files not found by the globs at start: renamed away while the agent was down (looked for by
        inode in their directory, and read to their end), or gone."""
        for key, saved in list(self._saved.items()):
            hit = _by_inode(os.path.dirname(saved.path) or ".", saved.dev, saved.ino)
            if hit is not None:
                probe = Tracked(saved.dev, saved.ino, hit[0])
                probe.size = hit[1].st_size
                if self._same(probe, saved):
                    t = self._adopt(key, hit[0], hit[1], False)
                    t.away = True
                    self.files[key] = t
                    continue
            self._saved.pop(key, None)
            self._gone.append(key)

    def _look(self, t: Tracked, st: os.stat_result) -> None:
        """The file as it is now: grown, truncated, or rewritten from its start."""
        if st.st_size != t.size or st.st_mtime != t.mtime:
            if st.st_size > t.size:
                t.grew = self.clock()
            t.size, t.mtime = st.st_size, st.st_mtime
            if t.size < t.offset or (t.head_len and not self._head_ok(t)):
                self.problems["truncated"] += 1
                self._say(f"trunc:{t.path}", "%s was truncated or rewritten: reading it again from its start", t.path)
                t.offset, t.head_len, t.head_hash, t.skip, t.dirty = 0, 0, "", False, True

    def _head_ok(self, t: Tracked) -> bool:
        head = self._pread(t, t.head_len, 0)
        return head is None or (len(head) == t.head_len and head_hash(head) == t.head_hash)

    def _lost(self, t: Tracked) -> None:
        """A followed file the globs no longer find: renamed away, deleted, or its directory unreadable."""
        st = None
        if t.fd is not None:
            try:
                st = os.fstat(t.fd)
            except OSError:
                st = None
        if st is None:
            try:
                st = os.stat(t.path)
                if (st.st_dev, st.st_ino) != t.key:
                    st = None
            except OSError:
                st = None
        if st is None:
            hit = _by_inode(os.path.dirname(t.path) or ".", t.dev, t.ino)  # renamed while not open
            if hit is not None:
                t.rename(hit[0])
                st = hit[1]
        if st is None:
            self._forget(t)
            return
        t.vanished = st.st_nlink == 0
        t.away = not t.vanished
        self._look(t, st)

    def _forget(self, t: Tracked) -> None:
        unread = t.size - t.offset
        if unread > 0 and not t.skip:
            self.problems["vanished_unread"] += 1
            self._say(f"gone:{t.path}", "%s went away with %d bytes not read", t.path, unread)
        self._close(t)
        self.files.pop(t.key, None)
        self._gone.append(t.key)

    # -- reading ------------------------------------------------------------

    def poll(self, consume: Consume, deadline: float) -> None:
        """Find files, read what is new in each (until ``deadline``, monotonic), let go of finished ones."""
        self._discover()
        self._polls += 1
        pending = [t for t in self.files.values() if t.size > t.offset and self.clock() >= t.retry_at]
        # open files first (read to their end, they make room for the others under max_open), then the oldest
        # first: the ones CANN deletes soonest
        pending.sort(key=lambda t: (t.fd is None, t.created or "~", t.path))
        while pending and self.clock() < deadline:
            still = []
            for t in pending:
                if self.clock() >= deadline:
                    break
                if self._read(t, consume, deadline) and t.size > t.offset:
                    still.append(t)
            pending = still
        self._let_go()

    def _read(self, t: Tracked, consume: Consume, deadline: float) -> bool:
        """Read ``t`` from its offset; True when it stopped for its share of the budget (more to read)."""
        if t.fd is None and not self._open(t):
            return False
        budget = self.per_file
        while budget > 0 and self.clock() < deadline:
            data = self._pread(t, self.chunk, t.offset)
            if not data:
                if data is not None and t.offset < t.size and t.vanished:
                    t.size = t.offset  # an unlinked file shorter than it looked: nothing more will come
                return False
            self.bytes_read += len(data)
            budget -= len(data)
            if t.skip:
                nl = data.find(b"\n")
                t.offset += len(data) if nl < 0 else nl + 1
                t.skip, t.dirty = nl < 0, True
                continue
            if t.head_len < HEAD and t.offset == 0 and len(data) > t.head_len:
                t.head_len, t.head_hash = min(len(data), HEAD), head_hash(data[:HEAD])
            end = data.rfind(b"\n") + 1
            if end == 0:
                if len(data) < self.max_line:
                    if t.vanished:  # deleted with a line never finished: nothing more will come
                        self.problems["partial_line"] += 1
                        t.size = t.offset
                    return False  # a partial line: wait for its end
                self.problems["line_too_long"] += 1
                taken = consume(t, data[:self.max_line] + b"\n", True)
                t.offset += self.max_line if taken else 0
                t.skip, t.dirty = bool(taken), True
                continue
            full = len(data) == self.chunk
            final = not full and (t.vanished or self.wall() - t.mtime >= self.block_wait)
            taken = consume(t, data[:end], final)
            if taken == 0 and full:
                taken = consume(t, data[:end], True)  # one record longer than a chunk: cut it here
            if taken:
                t.offset += taken
                t.dirty = True
            if taken < end and not full:
                return False  # a record that may still grow: next poll
            # a full read left its last record (its continuation lines may be in the next read): read on from it
        return budget <= 0

    def _open(self, t: Tracked) -> bool:
        if sum(1 for f in self.files.values() if f.fd is not None) >= self.max_open and not self._evict():
            self.problems["open_files_capped"] += 1
            self._say("cap", "more than %d log files to read at once (max_open_files): the rest wait their turn",
                      self.max_open)
            return False
        try:
            fd = os.open(t.path, os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_NOATIME", 0))
        except PermissionError:
            try:
                fd = os.open(t.path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                return self._unreadable(t, e)
        except OSError as e:
            if e.errno == errno.ENOENT:
                return False  # deleted before it could be opened: the next look forgets it
            return self._unreadable(t, e)
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != t.key:
            os.close(fd)  # the name points at another file now: the next look sorts it out
            return False
        t.fd = fd
        return True

    def _unreadable(self, t: Tracked, e: OSError) -> bool:
        self.problems["unreadable"] += 1
        self._say(f"read:{t.path}", "cannot read %s: %s (trying again in a minute)", t.path, e)
        t.retry_at = self.clock() + 60.0
        return False

    def _pread(self, t: Tracked, size: int, offset: int) -> Optional[bytes]:
        if t.fd is None:
            return self._pread_path(t.path, size, offset)
        try:
            return os.pread(t.fd, size, offset)
        except OSError as e:
            self._unreadable(t, e)
            self._close(t)
            return None

    @staticmethod
    def _pread_path(path: str, size: int, offset: int) -> Optional[bytes]:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            return os.pread(fd, size, offset)
        except OSError:
            return None
        finally:
            os.close(fd)

    # -- letting go ---------------------------------------------------------

    def _let_go(self) -> None:
        now, wall = self.clock(), self.wall()
        newest: Dict[Tuple[str, int], str] = {}
        for t in self.files.values():
            if t.pid is not None and not t.away and not t.vanished:
                k = (t.dir, t.pid)
                newest[k] = max(newest.get(k, ""), t.created)
        self._cold = {}
        for t in list(self.files.values()):
            done = t.offset >= t.size
            quiet = wall - t.mtime >= self.block_wait and now - t.grew >= self.block_wait
            if (t.vanished and done) or (t.away and now - t.grew >= self.idle_close):
                self._forget(t)  # read to its end (or renamed away and idle): no more lines will come
                continue
            if t.fd is None and done and not t.away and now - t.grew >= self.idle_close:
                self._cold[t.path] = t.key
            if t.fd is None or not done or not quiet or t.away:
                continue
            superseded = t.pid is not None and newest.get((t.dir, t.pid), "") > t.created
            # the pid in a file name is of the writer's pid namespace: a process in a container may look gone from
            # here, so its file is let go only once it has been unwritten a while, as a file closed to make room
            gone = t.pid is not None and wall - t.mtime >= EVICT_QUIET and not _alive(t.pid)
            if superseded or now - t.grew >= self.idle_close or gone:
                self._close(t)

    def _evict(self) -> bool:
        """Close an open file to make room: one read to its end (as the file says now, not as the last look saw
        it) and still in place; one unwritten for :data:`EVICT_QUIET` first, idle longest first. A file closed
        while it is still written to loses the lines written next if it is deleted (CANN's rotation) before it
        is opened again, so such a file is closed only when every open file is being written (more busy files
        than ``max_open``: then they take turns, which is the cap's price)."""
        wall = self.wall()
        done = []
        for t in self.files.values():
            if t.fd is None or t.away or t.vanished:
                continue
            try:
                st = os.fstat(t.fd)
            except OSError:
                continue
            if st.st_size <= t.offset:
                done.append((wall - st.st_mtime < EVICT_QUIET, t.grew, t))
        if not done:
            return False
        self._close(min(done, key=lambda d: d[:2])[2])
        return True

    @staticmethod
    def _close(t: Tracked) -> None:
        if t.fd is not None:
            with contextlib.suppress(OSError):
                os.close(t.fd)
            t.fd = None

    def close(self) -> None:
        for t in self.files.values():
            self._close(t)

    # -- state --------------------------------------------------------------

    def changes(self) -> Tuple[List[Saved], List[Key]]:
        """Positions moved and files forgotten since the last :meth:`committed`."""
        return [t.saved() for t in self.files.values() if t.dirty], list(self._gone)

    def committed(self) -> None:
        for t in self.files.values():
            t.dirty = False
        self._gone = []

    def open_files(self) -> int:
        return sum(1 for t in self.files.values() if t.fd is not None)

    def lag_bytes(self) -> int:
        return sum(max(t.size - t.offset, 0) for t in self.files.values())

    def _say(self, key: str, message: str, *args: object) -> None:
        """Log a problem once per key and hour, not at every poll."""
        now = self.clock()
        if now - self._said.get(key, -3600.0) >= 3600.0:
            if len(self._said) > 1000:  # keys name files: forget those said more than an hour ago
                self._said = {k: t for k, t in self._said.items() if now - t < 3600.0}
            self._said[key] = now
            log.warning(message, *args)


def _by_inode(directory: str, dev: int, ino: int) -> Optional[Tuple[str, os.stat_result]]:
    """The entry of ``directory`` that is the file (dev, ino), if any."""
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.inode() == ino and entry.is_file(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    if st.st_dev == dev:
                        return entry.path, st
    except OSError:
        pass
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OverflowError, ValueError):
        return False  # no such pid can exist (a file name with a number too large for one)
    except OSError:
        return True
    return True
