"""The agent's memory across restarts: one sqlite database in WAL mode under ``state_dir``.

It holds alert states with their timers and silences (more tables come with
later capabilities: the audit log, log offsets, the message queue). WAL lets
``npuagent silence`` write while the daemon reads; ``synchronous=FULL`` makes a
committed transition survive a power cut, and transitions are rare enough for it.
Another process's writes (a new silence) are noticed through ``PRAGMA
data_version``, which costs nothing to ask every cycle.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from .rules import Silence

SCHEMA = [
    # version 1
    """
    CREATE TABLE alerts (
        rule TEXT NOT NULL,
        labels TEXT NOT NULL,           -- JSON object, keys sorted
        digest TEXT NOT NULL,           -- the rule's definition when the state was written
        state TEXT NOT NULL,
        active_at REAL NOT NULL,
        fired_at REAL NOT NULL,
        resolving_at REAL NOT NULL,
        value REAL,
        updated REAL NOT NULL,
        PRIMARY KEY (rule, labels)
    );
    CREATE TABLE silences (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        rule TEXT,
        matchers TEXT NOT NULL,         -- JSON object
        starts REAL NOT NULL,
        ends REAL NOT NULL,
        reason TEXT NOT NULL,
        author TEXT NOT NULL,
        created REAL NOT NULL
    );
    """,
    # version 2: the audit log of actions, and the host-wide breaker
    """
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,               -- when the attempt was decided
        rule TEXT NOT NULL,
        labels TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        kind TEXT NOT NULL,             -- run, revert
        disruptive INTEGER NOT NULL,
        dry_run INTEGER NOT NULL,
        outcome TEXT,                   -- NULL while it runs: an interrupted attempt keeps NULL
        finished REAL,
        duration REAL,
        output TEXT
    );
    CREATE INDEX audit_target ON audit (action, target, at);
    CREATE TABLE breaker (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        opened_at REAL NOT NULL,
        reason TEXT NOT NULL
    );
    """,
]


def _labels_key(labels: Mapping[str, str]) -> str:
    return json.dumps(dict(labels), sort_keys=True, separators=(",", ":"))


class State:
    """The state database. One connection per process; safe to use from several threads."""

    def __init__(self, path: str) -> None:
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
        self._lock = threading.RLock()
        self.db = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self._migrate()
        self._data_version = self._version()

    def _migrate(self) -> None:
        with self._lock:
            current = self.db.execute("PRAGMA user_version").fetchone()[0]
            for version, script in enumerate(SCHEMA[current:], current + 1):
                self.db.execute("BEGIN IMMEDIATE")
                try:
                    for statement in script.split(";"):
                        if statement.strip():
                            self.db.execute(statement)
                    self.db.execute(f"PRAGMA user_version={version}")
                    self.db.execute("COMMIT")
                except BaseException:
                    self.db.execute("ROLLBACK")
                    raise

    def _version(self) -> int:
        return self.db.execute("PRAGMA data_version").fetchone()[0]

    def changed(self) -> bool:
        """Whether another connection wrote since the last call (a silence added by the CLI)."""
        with self._lock:
            version = self._version()
            changed, self._data_version = version != self._data_version, version
            return changed

    def close(self) -> None:
        with self._lock:
            self.db.close()

    # -- alerts ----------------------------------------------------------------

    def load_alerts(self) -> List[Dict[str, Any]]:
        with self._lock:
            rows = self.db.execute(
                "SELECT rule, labels, digest, state, active_at, fired_at, resolving_at, value FROM alerts").fetchall()
        return [{"rule": r, "labels": json.loads(lb), "digest": d, "state": s, "active_at": a, "fired_at": f,
                 "resolving_at": rs, "value": v} for r, lb, d, s, a, f, rs, v in rows]

    def save_transitions(self, transitions: Sequence[Any], rows: Sequence[Mapping[str, Any]]) -> None:
        """Write the alerts that changed in one evaluation, in one transaction: inactive ones are deleted."""
        now = time.time()
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                for row in rows:
                    key = (row["rule"], _labels_key(row["labels"]))
                    if row["state"] == "inactive":
                        self.db.execute("DELETE FROM alerts WHERE rule = ? AND labels = ?", key)
                    else:
                        self.db.execute(
                            "INSERT OR REPLACE INTO alerts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (*key, row["digest"], row["state"], row["active_at"], row["fired_at"],
                             row["resolving_at"], row["value"], now))
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self._data_version = self._version()

    def delete_alerts(self, keys: Iterable[Tuple[str, Mapping[str, str]]]) -> None:
        with self._lock:
            self.db.executemany("DELETE FROM alerts WHERE rule = ? AND labels = ?",
                                [(rule, _labels_key(labels)) for rule, labels in keys])
            self._data_version = self._version()

    # -- audit -----------------------------------------------------------------

    def audit_intent(self, at: float, rule: str, labels: Mapping[str, str], action: str, target: str, kind: str,
                     disruptive: bool, dry_run: bool) -> int:
        """Record an attempt before it runs; returns its id for :meth:`audit_outcome`."""
        with self._lock:
            cur = self.db.execute(
                "INSERT INTO audit (at, rule, labels, action, target, kind, disruptive, dry_run) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (at, rule, _labels_key(labels), action, target, kind, int(disruptive), int(dry_run)))
            return int(cur.lastrowid)

    def audit_outcome(self, attempt: int, outcome: str, finished: float, duration: float, output: str) -> None:
        with self._lock:
            self.db.execute("UPDATE audit SET outcome = ?, finished = ?, duration = ?, output = ? WHERE id = ?",
                            (outcome, finished, duration, output[-4000:], attempt))

    def attempts(self, action: Optional[str] = None, target: Optional[str] = None, since: float = 0.0,
                 rule: Optional[str] = None, disruptive: Optional[bool] = None) -> List[Dict[str, Any]]:
        """Audit rows, oldest first, filtered as given; an interrupted attempt has outcome None."""
        query = "SELECT * FROM audit WHERE at >= ?"
        args: List[Any] = [since]
        for column, value in (("action", action), ("target", target), ("rule", rule)):
            if value is not None:
                query += f" AND {column} = ?"
                args.append(value)
        if disruptive is not None:  # what the breaker counts: real attempts, not refusals or dry runs
            query += " AND disruptive = ? AND dry_run = 0 AND (outcome IS NULL OR outcome != 'skipped')"
            args.append(int(disruptive))
        with self._lock:
            cur = self.db.execute(query + " ORDER BY id", args)
            names = [d[0] for d in cur.description]
            rows = [dict(zip(names, row)) for row in cur.fetchall()]
        for row in rows:
            row["labels"] = json.loads(row["labels"])
        return rows

    # -- breaker ---------------------------------------------------------------

    def breaker(self) -> Optional[Tuple[float, str]]:
        """(opened at, why) while the host-wide breaker is open."""
        with self._lock:
            row = self.db.execute("SELECT opened_at, reason FROM breaker").fetchone()
        return (row[0], row[1]) if row else None

    def open_breaker(self, at: float, reason: str) -> None:
        with self._lock:
            self.db.execute("INSERT OR IGNORE INTO breaker VALUES (1, ?, ?)", (at, reason))

    def reset_breaker(self) -> bool:
        with self._lock:
            return self.db.execute("DELETE FROM breaker").rowcount > 0

    # -- silences --------------------------------------------------------------

    def add_silence(self, rule: Optional[str], matchers: Mapping[str, str], starts: float, ends: float,
                    reason: str, author: str) -> int:
        if not rule and not matchers:
            raise ValueError("a silence needs a rule or at least one label matcher")
        if ends <= starts:
            raise ValueError("a silence must end after it starts")
        with self._lock:
            cur = self.db.execute(
                "INSERT INTO silences (rule, matchers, starts, ends, reason, author, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (rule, json.dumps(dict(matchers), sort_keys=True), starts, ends, reason, author, time.time()))
            return int(cur.lastrowid)

    def remove_silence(self, silence_id: int, now: Optional[float] = None) -> bool:
        """End a silence now; False when there is no such silence still running."""
        now = time.time() if now is None else now
        with self._lock:
            cur = self.db.execute("UPDATE silences SET ends = ? WHERE id = ? AND ends > ?", (now, silence_id, now))
            return cur.rowcount > 0

    def silences(self, now: Optional[float] = None) -> List[Silence]:
        """Silences not yet over (running or starting later), oldest first."""
        now = time.time() if now is None else now
        with self._lock:
            rows = self.db.execute("SELECT id, rule, matchers, starts, ends, reason FROM silences WHERE ends > ? "
                                   "ORDER BY id", (now,)).fetchall()
        return [Silence(i, r, json.loads(m), s, e, reason) for i, r, m, s, e, reason in rows]
