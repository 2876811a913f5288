"""Where the log collector is in every file and in the journal, and its counters, kept in sqlite.

Everything that must agree is written in one transaction: the offsets of the files, the
journal cursor and the blocks it has open, and the counters those lines added to. So after
a crash (SIGKILL included) the state is the one of the last commit, whole: a restarted
agent reads on from exactly there, its counters saying exactly what the lines before that
point said, and nothing in between is lost or counted twice. Each commit bumps
``generation``; a consumer that must know which of the events it was handed were committed
(the rotation stress test) tags them with the generation they belong to.

WAL with ``synchronous=NORMAL``: a commit survives the process dying at any point; a power
cut may take the last commits back, which means lines read again, not lines lost.

One process owns the file at a time (an ``flock`` on a side file, freed by the kernel however
the owner dies). A second one, ``npuagent once`` beside the running agent, gets the state
to start from but never writes, so it cannot move the agent's offsets.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Optional, Tuple

log = logging.getLogger("npuagent.ascend.cann_log")

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    dev INTEGER NOT NULL, ino INTEGER NOT NULL, path TEXT NOT NULL, offset INTEGER NOT NULL,
    head_len INTEGER NOT NULL, head_hash TEXT NOT NULL, skip INTEGER NOT NULL DEFAULT 0, updated REAL NOT NULL,
    PRIMARY KEY (dev, ino));
CREATE TABLE IF NOT EXISTS counters (name TEXT NOT NULL, labels TEXT NOT NULL, value REAL NOT NULL,
    PRIMARY KEY (name, labels));
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

Key = Tuple[int, int]
CounterKey = Tuple[str, Tuple[Tuple[str, str], ...]]


@dataclass
class Saved:
    """A file's committed position: where to go on from, and how to know it is still the same file."""

    dev: int
    ino: int
    path: str
    offset: int
    head_len: int
    head_hash: str
    #: the file was cut inside an over-long line: what follows up to the next newline is dropped
    skip: bool = False


class LogState:
    """The sqlite file under the plugin's state directory (or nothing, when ``path`` is None)."""

    def __init__(self, path: Optional[str]) -> None:
        self.path = path
        self.read_only = path is None
        #: no state existed before: the very first start on this host
        self.fresh = True
        self.generation = 0
        self.last_commit = 0.0
        self._lock = threading.Lock()
        self._db: Optional[sqlite3.Connection] = None
        self._lockfile: Optional[int] = None
        self._files: Dict[Key, Saved] = {}
        self._counters: Dict[CounterKey, float] = {}
        self._meta: Dict[str, str] = {}
        #: a commit failed: the next one writes everything, not only its own changes
        self._behind = False
        if path is not None:
            self._open(path)

    def _open(self, path: str) -> None:
        try:
            os.makedirs(os.path.dirname(path) or ".", mode=0o750, exist_ok=True)
            self._lockfile = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(self._lockfile, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.read_only = True
                log.info("%s is in use by another process (the running agent): reading it, writing nothing", path)
            self.fresh = not os.path.exists(path)
            self._db = self._connect(path)
        except (OSError, sqlite3.Error) as e:
            log.error("log offsets cannot be kept in %s (%s): following the logs without them, a restart will "
                      "start over at the ends of the files", path, e)
            self.read_only, self._db = True, None
            return
        self._load()

    def _connect(self, path: str) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(SCHEMA)
            db.execute("SELECT count(*) FROM files").fetchone()
            return db
        except sqlite3.DatabaseError as e:
            if self.read_only:
                raise
            aside = f"{path}.corrupt-{int(time.time())}"
            log.error("the log-offset database %s is unreadable (%s): moved to %s, starting over", path, e, aside)
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(path + suffix):
                    os.replace(path + suffix, aside + suffix)
            self.fresh = True
            db = sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(SCHEMA)
            return db

    def _load(self) -> None:
        assert self._db is not None
        for row in self._db.execute("SELECT dev, ino, path, offset, head_len, head_hash, skip FROM files"):
            self._files[(row[0], row[1])] = Saved(row[0], row[1], row[2], row[3], row[4], row[5], bool(row[6]))
        for name, labels, value in self._db.execute("SELECT name, labels, value FROM counters"):
            self._counters[(name, tuple(tuple(kv) for kv in json.loads(labels)))] = value
        self._meta = dict(self._db.execute("SELECT key, value FROM meta"))
        self.generation = int(self._meta.get("generation", "0"))
        self.last_commit = float(self._meta.get("last_commit", "0"))
        if self.generation:
            self.fresh = False

    # -- what was committed -------------------------------------------------

    def files(self) -> Dict[Key, Saved]:
        return dict(self._files)

    def counters(self) -> Dict[CounterKey, float]:
        return dict(self._counters)

    def meta(self, key: str, default: Any = None) -> Any:
        raw = self._meta.get(key)
        return default if raw is None else json.loads(raw)

    # -- committing ---------------------------------------------------------

    def commit(self, files: Iterable[Saved] = (), gone: Iterable[Key] = (),
               counters: Optional[Dict[CounterKey, float]] = None, meta: Optional[Dict[str, Any]] = None) -> bool:
        """Write these changes in one transaction; False when it could not be written (the next commit
        then writes the whole state, so nothing of this one is left out)."""
        files, gone = list(files), list(gone)
        now = time.time()
        with self._lock:
            # forgotten first: an inode number freed and taken again by a new file is both gone and saved
            for key in gone:
                self._files.pop(key, None)
            for f in files:
                self._files[(f.dev, f.ino)] = f
            if counters:
                self._counters.update(counters)
            meta_rows = {k: json.dumps(v) for k, v in (meta or {}).items()}
            self._meta.update(meta_rows)
            if self.read_only or self._db is None:
                return True
            generation = self.generation + 1
            if self._behind:
                files, counters, meta_rows = list(self._files.values()), dict(self._counters), dict(self._meta)
            meta_rows.update(generation=json.dumps(generation), last_commit=json.dumps(now))
            try:
                db = self._db
                db.execute("BEGIN IMMEDIATE")
                try:
                    if self._behind:
                        db.execute("DELETE FROM files")
                    db.executemany("DELETE FROM files WHERE dev = ? AND ino = ?", gone)
                    db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                   [(f.dev, f.ino, f.path, f.offset, f.head_len, f.head_hash, int(f.skip), now)
                                    for f in files])
                    db.executemany("INSERT OR REPLACE INTO counters VALUES (?, ?, ?)",
                                   [(name, json.dumps(labels), value) for (name, labels), value in
                                    (counters or {}).items()])
                    db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(meta_rows.items()))
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as e:
                log.error("log offsets not saved (%s); trying again at the next collection", e)
                self._behind = True
                return False
            self.generation, self.last_commit, self._behind = generation, now, False
            self.fresh = False
            return True

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._db.close()
                self._db = None
            if self._lockfile is not None:
                os.close(self._lockfile)
                self._lockfile = None


def committed_generation(path: str) -> int:
    """The generation of the last commit in a state file, read from outside (tests, tools)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        return int(json.loads(row[0])) if row else 0
    finally:
        db.close()
