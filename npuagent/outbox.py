"""A durable queue of outgoing messages: written to sqlite before anything is sent.

The notification and Alertmanager actions do not talk to the network from the
remediation worker that runs them: they ``put`` a message here and return. The
message is committed (WAL, ``synchronous=FULL``) before any attempt to send it,
so a message the agent decided to send survives a crash, a restart and a power
cut; a worker thread per outbox then delivers the messages in the order they
were queued, retrying failures for as long as it takes.

Decisions, and why:

* **One table for every outbox.** ``outbox`` rows carry the outbox's ``name`` (one
  per configured action), so the actions of one plugin share one file and one
  WAL; the callers keep their own tables in the same file and can change them in
  the same transaction as a ``put`` (:meth:`Outbox.transaction`), which is how
  "the episode is resolved" and "its message is queued" can never be seen apart.
* **In order, head of line first.** Each outbox sends to one receiver (an action's
  URLs, an Alertmanager), so when the head fails the others would fail too; and
  order matters (a "resolved" must not overtake its "firing"). A message the
  receiver refuses for good (:class:`Rejected`: an HTTP 400) is set aside with its
  error instead of blocking the queue forever. A message that went out in part (to
  one of two URLs) records that (:class:`Partial`), so its retry sends only the rest.
* **Backoff.** After the n-th failed attempt the next one waits
  ``min(initial * 2**(n-1), maximum)`` seconds (1 s doubling to 5 min), times a
  random factor in [0.8, 1.2] capped at the maximum, so a fleet of agents whose
  receiver comes back does not hit it in lockstep. :meth:`Outbox.wake` skips the
  wait (try now); a new ``put`` only wakes an idle worker and keeps the backoff.
  Each message keeps its attempt count, the time of its last attempt and the last
  error (``pending``/``messages``, and what ``npuagent history`` can show).
  A restarted agent tries its pending messages at once: the backoff is a
  courtesy to the receiver, not state worth keeping.
* **Delivered rows are kept, a few.** A delivered (or rejected) message is marked,
  not deleted, and the last :data:`KEEP` of each outbox are kept, so what was sent
  and when (and after how many attempts) can be shown; older ones are pruned in
  the transaction that marks the next delivery.
* **Dedupe keys.** ``put(payload, dedupe_key)`` does nothing when a message with
  that key is still pending (a partial unique index makes this atomic): a
  reminder or a re-post that is still waiting for a receiver that is down is not
  queued again and again.
* **At least once.** The message is marked delivered in its own small transaction
  the moment ``deliver`` returns, so the window in which a crash re-sends a
  message the receiver already has is the time of one sqlite commit. Before each
  attempt the row is marked in flight (its attempt count goes up first), so an
  agent restarted after a crash inside that window knows which message may
  arrive twice and says so in its log. A graceful stop (:meth:`Outbox.close`)
  lets the current attempt finish and mark its message, so it never duplicates.
  Within one process, a per-(file, outbox) lock makes an outbox that replaces
  another on reload wait for the old one's attempt instead of sending the same
  message beside it.
"""

from __future__ import annotations

import json
import logging
import os
import random as _random
import sqlite3
import threading
import time as _time
import weakref
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple

#: Delivered or rejected messages kept per outbox, newest first.
KEEP = 100
#: The first retry waits this long (seconds); each further failure doubles it ...
INITIAL_BACKOFF = 1.0
#: ... up to this.
MAX_BACKOFF = 300.0
#: The spread of the random factor applied to each wait.
JITTER = 0.2
#: An idle worker looks at the table this often even unwoken (another process may have queued).
IDLE_POLL = 60.0
#: ``last_error`` of a message while an attempt to send it is under way.
IN_FLIGHT = "(in flight)"

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    outbox TEXT NOT NULL,               -- the outbox's name: one per configured action
    payload TEXT NOT NULL,              -- JSON
    dedupe_key TEXT,                    -- at most one pending message per (outbox, key)
    status TEXT NOT NULL DEFAULT 'pending',  -- pending | delivered | rejected
    created REAL NOT NULL,              -- when it was queued (seconds since the epoch)
    attempts INTEGER NOT NULL DEFAULT 0,
    last_attempt REAL,
    last_error TEXT NOT NULL DEFAULT '',
    done REAL                           -- when it was delivered or rejected
);
CREATE INDEX IF NOT EXISTS outbox_queue ON outbox (outbox, status, id);
CREATE UNIQUE INDEX IF NOT EXISTS outbox_dedupe ON outbox (outbox, dedupe_key)
    WHERE status = 'pending' AND dedupe_key IS NOT NULL;
"""

#: Every open outbox of this process (the actions that tell, as opposed to those that heal).
_open: weakref.WeakSet[Outbox] = weakref.WeakSet()

_delivery_locks: Dict[Tuple[str, str], threading.Lock] = {}
_delivery_locks_guard = threading.Lock()


def _delivery_lock(path: str, name: str) -> threading.Lock:
    """The process-wide lock that only one worker of one (file, outbox) holds while it sends."""
    key = (os.path.realpath(path), name)
    with _delivery_locks_guard:
        return _delivery_locks.setdefault(key, threading.Lock())


def open_names() -> Set[str]:
    """The names of the outboxes open in this process: the actions whose work is to send a message
    (notify, alertmanager), so an observer can tell their results from those of actions that heal."""
    return {o.name for o in list(_open) if not o._stop}


def _dumps(payload: Any) -> str:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def connect(path: str) -> sqlite3.Connection:
    """A connection as the agent's state database has them: autocommit (explicit transactions),
    WAL so readers never wait for the writer, ``synchronous=FULL`` so a commit survives a power cut."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    db = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    return db


class Rejected(Exception):
    """Raised by ``deliver`` when the receiver refused a message for good (it will never accept it):
    the message is set aside as ``rejected`` with this error, and the queue goes on."""


class Partial(Exception):
    """Raised by ``deliver`` when part of a message went out (one of several URLs): a failure like
    any other, except that ``payload`` (which records what is done) replaces the stored payload,
    so the retry sends only the rest."""

    def __init__(self, message: str, payload: Any) -> None:
        super().__init__(message)
        self.payload = payload


class Outbox:
    """A durable, ordered, retrying queue of JSON payloads for one receiver.

    :param path: the sqlite file (created, with its directory, if missing).
    :param name: this outbox's name in the file (the action's name).
    :param deliver: sends one payload; returns normally when the receiver has it, raises
        :class:`Rejected` when it never will, :class:`Partial` when part of it went out, anything
        else for "try again later". It is called from the worker thread only, one message at a
        time. The text of what it raises is logged and stored: it must hold no secret.
    :param time: the wall clock, for the records; ``monotonic`` and ``wait(event, seconds)``
        pace the retries (tests pass a simulated clock); ``random`` gives the jitter.
    :param start: start the worker thread now; without it, call :meth:`step` yourself.
    """

    def __init__(
        self,
        path: str,
        name: str,
        deliver: Callable[[Any], None],
        log: Optional[logging.Logger] = None,
        *,
        time: Callable[[], float] = _time.time,
        monotonic: Callable[[], float] = _time.monotonic,
        wait: Optional[Callable[[threading.Event, float], bool]] = None,
        random: Callable[[], float] = _random.random,
        initial: float = INITIAL_BACKOFF,
        maximum: float = MAX_BACKOFF,
        keep: int = KEEP,
        start: bool = True,
    ) -> None:
        self.path = path
        self.name = name
        self.deliver = deliver
        self.log = log or logging.getLogger(f"npuagent.outbox.{name}")
        self.time = time
        self.monotonic = monotonic
        self._wait = wait or (lambda event, seconds: event.wait(seconds))
        self.random = random
        self.initial = initial
        self.maximum = maximum
        self.keep = keep
        self.db = connect(path)
        self._lock = threading.RLock()
        self._tx = 0
        self._event = threading.Event()
        self._stop = False
        self._closed = False
        self._retry: Optional[Tuple[int, float]] = None  # (message id, monotonic time it is due)
        self._sending = _delivery_lock(path, name)
        self._thread: Optional[threading.Thread] = None
        with self._lock:
            self.db.executescript(SCHEMA)
            interrupted = self.db.execute(
                "SELECT id, attempts FROM outbox WHERE outbox = ? AND status = 'pending' AND last_error = ?",
                (name, IN_FLIGHT)).fetchall()
        # another outbox of this process on the same queue (the one a reload replaces) may be sending it now
        for msg_id, attempts in [] if self._sending.locked() else interrupted:
            self.log.warning("outbox %s: message %d was being sent (attempt %d) when the agent stopped: it is sent "
                             "again and may arrive twice", name, msg_id, attempts)
        _open.add(self)
        if start:
            self.start()

    # -- the producer's side ---------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction on the outbox's connection: the caller's own tables (in the same
        file) change together with the messages it :meth:`put`\\ s inside it, or not at all.
        Nested use joins the outer transaction."""
        with self._lock:
            if self._closed:
                raise RuntimeError(f"outbox {self.name} is closed")
            if self._tx:
                self._tx += 1
                try:
                    yield self.db
                finally:
                    self._tx -= 1
                return
            self.db.execute("BEGIN IMMEDIATE")
            self._tx = 1
            try:
                yield self.db
                self.db.execute("COMMIT")
            except BaseException:
                self._rollback()  # the body raised, or COMMIT did: never leave the connection mid-transaction
                raise
            finally:
                self._tx = 0
        self._event.set()  # committed: the worker may have something new to send

    def _rollback(self) -> None:
        """Roll back what is open, if anything is (sqlite may have rolled back by itself on some errors)."""
        if self.db.in_transaction:
            try:
                self.db.execute("ROLLBACK")
            except sqlite3.Error:
                self.log.exception("outbox %s: rollback failed", self.name)

    def put(self, payload: Any, dedupe_key: Optional[str] = None) -> Optional[int]:
        """Queue ``payload`` (anything JSON can hold), durably, before anything is sent.

        Returns the message's id, or ``None`` when a message with ``dedupe_key`` is still
        pending (it is not queued twice). Inside :meth:`transaction` the message is
        committed with the rest of it.
        """
        text = _dumps(payload)
        with self.transaction() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO outbox (outbox, payload, dedupe_key, created) VALUES (?, ?, ?, ?)",
                (self.name, text, dedupe_key, self.time()))
            return int(cur.lastrowid) if cur.rowcount else None

    def is_pending(self, msg_id: Optional[int]) -> bool:
        """Whether message ``msg_id`` is still waiting to be delivered."""
        if msg_id is None:
            return False
        with self._lock:
            row = self.db.execute("SELECT 1 FROM outbox WHERE id = ? AND outbox = ? AND status = 'pending'",
                                  (msg_id, self.name)).fetchone()
        return row is not None

    def pending(self) -> int:
        """How many messages wait to be delivered."""
        with self._lock:
            return int(self.db.execute("SELECT count(*) FROM outbox WHERE outbox = ? AND status = 'pending'",
                                       (self.name,)).fetchone()[0])

    def messages(self, status: Optional[str] = None, limit: int = 1000) -> List[Dict[str, Any]]:
        """The messages of this outbox, oldest first, with their attempts and last error."""
        query = ("SELECT id, payload, dedupe_key, status, created, attempts, last_attempt, last_error, done "
                 "FROM outbox WHERE outbox = ?")
        args: List[Any] = [self.name]
        if status is not None:
            query += " AND status = ?"
            args.append(status)
        with self._lock:
            cur = self.db.execute(query + " ORDER BY id LIMIT ?", (*args, limit))
            names = [d[0] for d in cur.description]
            rows = [dict(zip(names, row)) for row in cur.fetchall()]
        for row in rows:
            row["payload"] = json.loads(row["payload"])
        return rows

    def wake(self) -> None:
        """Try the head of the queue now, skipping what is left of its backoff (the receiver is back)."""
        with self._lock:
            self._retry = None
        self._event.set()

    # -- the worker --------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"outbox-{self.name}", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop:
                self._event.clear()  # before looking: a put during the step is not missed
                try:
                    delay = self.step()
                except Exception:
                    self.log.exception("outbox %s: the worker failed; trying again in %gs", self.name, self.maximum)
                    delay = self.maximum
                if self._stop:
                    break
                self._wait(self._event, IDLE_POLL if delay is None else max(delay, 0.0))
        finally:
            with self._lock:
                self._closed = True
                self.db.close()

    def _backoff(self, attempts: int) -> float:
        base = min(self.initial * 2 ** max(attempts - 1, 0), self.maximum)
        return min(base * (1.0 - JITTER + 2 * JITTER * self.random()), self.maximum)

    def step(self) -> Optional[float]:
        """Deliver every message that is due, in order, until the queue is empty or its head must
        wait. Returns the seconds until the head is due again, or ``None`` when nothing is pending."""
        with self._sending:
            while not self._stop:
                with self._lock:
                    row = self.db.execute(
                        "SELECT id, payload, attempts FROM outbox WHERE outbox = ? AND status = 'pending' "
                        "ORDER BY id LIMIT 1", (self.name,)).fetchone()
                    if row is None:
                        self._retry = None
                        return None
                    msg_id, text, attempts = row
                    if self._retry is not None and self._retry[0] == msg_id:
                        left = self._retry[1] - self.monotonic()
                        if left > 0:
                            return left
                    attempts += 1
                    self.db.execute("UPDATE outbox SET attempts = ?, last_attempt = ?, last_error = ? WHERE id = ?",
                                    (attempts, self.time(), IN_FLIGHT, msg_id))
                try:
                    self.deliver(json.loads(text))
                except Rejected as e:
                    self._finish(msg_id, "rejected", str(e) or type(e).__name__)
                    self.log.error("outbox %s: message %d was refused by the receiver and is set aside: %s",
                                   self.name, msg_id, e)
                except Exception as e:
                    error = str(e) or type(e).__name__
                    delay = self._backoff(attempts)
                    with self._lock:
                        self.db.execute("UPDATE outbox SET last_error = ? WHERE id = ?", (error[:2000], msg_id))
                        if isinstance(e, Partial):
                            self.db.execute("UPDATE outbox SET payload = ? WHERE id = ?", (_dumps(e.payload), msg_id))
                        self._retry = (msg_id, self.monotonic() + delay)
                    log = self.log.warning if attempts in (1, 2) or attempts % 10 == 0 else self.log.debug
                    log("outbox %s: message %d not delivered (attempt %d): %s; next try in %.1fs", self.name,
                        msg_id, attempts, error, delay)
                    return delay
                else:
                    self._finish(msg_id, "delivered", "")
                    if attempts > 1:
                        self.log.info("outbox %s: message %d delivered at attempt %d", self.name, msg_id, attempts)
            return 0.0

    def _finish(self, msg_id: int, status: str, error: str) -> None:
        """Mark a message done and prune the old done ones, in one commit: the at-least-once window
        after a successful send is this one transaction."""
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                self.db.execute("UPDATE outbox SET status = ?, done = ?, last_error = ? WHERE id = ?",
                                (status, self.time(), error[:2000], msg_id))
                self.db.execute(
                    "DELETE FROM outbox WHERE outbox = ? AND status != 'pending' AND id NOT IN "
                    "(SELECT id FROM outbox WHERE outbox = ? AND status != 'pending' ORDER BY id DESC LIMIT ?)",
                    (self.name, self.name, self.keep))
                self.db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
            self._retry = None

    def close(self, timeout: float = 10.0) -> bool:
        """Stop: the attempt under way finishes (and is marked), no other starts; what is still
        pending stays queued for the next start. Returns whether the worker stopped in time."""
        self._stop = True
        self._event.set()
        thread = self._thread
        if thread is None:
            with self._lock:
                if not self._closed:
                    self._closed = True
                    self.db.close()
            return True
        thread.join(timeout)
        if thread.is_alive():
            self.log.warning("outbox %s: still sending after %gs; it stops after this attempt", self.name, timeout)
            return False
        return True
