"""The ``cann_log`` collector: CANN plog and device logs, and the journal of serving units.

What it reads
    The plog and device logs under every log root: ``$HOME/ascend/log`` of each of ``users``
    (CANN's default root), the agent's own ``$ASCEND_PROCESS_LOG_PATH`` when set, and ``roots``
    (the ``ASCEND_PROCESS_LOG_PATH`` jobs use, glob characters allowed); in both the
    ``debug|run/plog/plog-*.log`` + ``debug|run/device-*/device-*.log`` layout and the older flat
    ``plog/`` + ``device-*/`` one. Plus any ``globs``, read as plog lines, and the journal of
    ``units`` (a service's stderr: "Ascend Error Message" blocks, torch_npu errors, and plog
    lines when ``ASCEND_SLOG_PRINT_TO_STDOUT=1``). How files are followed through CANN's
    rotation: :mod:`.tail`; the journal: :mod:`.journal`.

What it gives
    * ``cann_log_messages_total{level,module}``: every plog message (a header line; its
      continuation lines are part of it);
    * ``hccl_errors_total{code,kind}`` and ``cann_errors_total{code,kind}``: error records by
      the kind and code :mod:`.classify` finds (``code`` is "" when the record has none);
    * events ``hccl_error`` and ``cann_error`` for every error record of a known kind (not
      ``other``), with labels ``kind``, ``code``, and where the text says them ``device_id``,
      ``rank``, ``remote_rank``, ``phy_id``, ``pid``, ``process``, ``module``; ``file`` or ``unit``
      says where it was read. The shipped rule ``hccl-connect-timeout`` matches
      ``kind = "hccl_error"`` with ``match = { kind = "connect_timeout" }``;
    * its own health: ``npuagent_cann_log_files``, ``npuagent_cann_log_open_files``,
      ``npuagent_cann_log_lag_bytes``, ``npuagent_cann_log_read_bytes_total``,
      ``npuagent_cann_log_events_total{event,kind}``, ``npuagent_cann_log_journal_up`` and
      ``npuagent_cann_log_problems_total{reason}`` (unreadable, vanished_unread, truncated,
      line_too_long, partial_line, open_files_capped, journal_exit, journal_bad_entry,
      events_dropped, label_sets_capped, bad_record).

Decisions
    * **Exactly once across restarts.** Events are handed to the agent with ``ctx.emit`` as
      soon as a collection has read them, and only then are the offsets, the journal cursor
      and the counters committed, in one sqlite transaction (:mod:`.logstate`). A line is
      never taken before it is whole, nor a record before it is complete.
    * **Counters are restored from that state**, so they never go backwards across a restart
      and always equal what the committed lines said: ``increase()`` over a restart neither
      drops nor doubles, and a dashboard's totals stay totals. (Prometheus would cope with a
      reset; a reset would only lose information.) Label sets are capped (1000 per metric;
      more go to ``module``/``code`` "other").
    * **Events carry the time they were read**, not the line's own time: CANN writes local
      time without a zone, and a container's clock zone often differs from the host's, which
      would put events outside every rule's window. The line's time stays in the message.
    * **Bursts become one event.** One HCCL failure logs a dozen ERROR lines in a few
      milliseconds; records of one kind from one process in one file within ``dedup`` of each
      other are one event (the counters still count every record), which takes the first code,
      device and rank any of them names; records naming another device or rank are another
      event. At most ``max_events`` events per collection; the rest are counted as dropped.
    * **A device for every event where it can be known**: the record's own text, else the
      ``device-<id>`` directory of a device log, else the device the same process last named
      in the same file (HCCL's LINK_ERROR_INFO names it in the row after the timeout).
    * **First start.** With no saved state at all, files and journal are read from their end
      (``start_at = "end"``): an agent installed on a busy host does not page for last
      week's errors. Afterwards every new file is read from its start.
    * **Bad input is counted, never fatal**: unreadable files, binary garbage (decoded with
      replacement), lines longer than ``max_line_length`` (cut there), a journal that will not
      start. Work per collection is bounded by half the collection's time.
"""

from __future__ import annotations

import logging
import os
import pwd
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from npuagent.model import Event, MetricSpec, Sample
from npuagent.options import Array, Duration, Integer, OneOf, Option, String

from . import plog, textlog
from .classify import Finding, classify
from .journal import Journal, message
from .logstate import CounterKey, LogState
from .tail import Tailer, Tracked

log = logging.getLogger("npuagent.ascend.cann_log")

#: under each root: the debug/run (and security, operation) layout, and the older flat one
LAYOUT = ("*/plog/plog-*.log", "*/device-*/device-*.log", "plog/plog-*.log", "device-*/device-*.log")
MAX_LABEL_SETS = 1000
MAX_MESSAGE = 4000
#: journalctl exits in a row, started with the saved cursor, after which the cursor is given up for --since
CURSOR_REFUSALS = 3
#: seconds a journal writer must be quiet before its open block ends while journalctl keeps the queue full
BUSY_WAIT = 10.0
PERSISTED = ("cann_log_messages_total", "hccl_errors_total", "cann_errors_total")

OPTIONS = [
    Option("users", Array(String()), ("root",),
           "Users whose $HOME/ascend/log (CANN's default log root) is followed; a missing user is skipped."),
    Option("roots", Array(String()), (),
           "More log roots: the ASCEND_PROCESS_LOG_PATH your jobs use (glob characters allowed). The agent's own "
           "ASCEND_PROCESS_LOG_PATH is added when it is set."),
    Option("globs", Array(String()), (), "More files to follow, as glob patterns; their lines are read as plog lines."),
    Option("units", Array(String()), (),
           "systemd units whose journal is followed (a service's stderr: Ascend Error Message blocks, torch_npu "
           "errors, plog lines printed with ASCEND_SLOG_PRINT_TO_STDOUT=1)."),
    Option("journalctl", Array(String()), ("journalctl",), "journalctl as an argv list (a path, or a stand-in)."),
    Option("start_at", OneOf("end", "beginning"), "end",
           'At the very first start (no saved state): read what the files and the journal already hold ("beginning") '
           'or only what comes after ("end"). Later starts always go on from where the last one stopped.'),
    Option("max_open_files", Integer(min=1), 256, "Log files open at once at most; the idle ones are closed first."),
    Option("max_line_length", Integer(min=256), 65536,
           "Bytes; a longer line is cut there and the rest of it dropped (counted as line_too_long)."),
    Option("dedup", Duration(allow_zero=True), 1.0,
           'Error records of one kind from one process, device and rank within this long of each other are one '
           'event ("0s": every record is an event). Counters count every record either way.'),
    Option("max_events", Integer(min=1), 100, "Events handed over per collection at most; the rest are counted."),
    Option("block_wait", Duration(allow_zero=True), 0.5,
           "How long a file or a journal writer must be quiet before its last message is taken as complete."),
    Option("idle_close", Duration(), 300.0, "A log file idle this long is closed (and opened again when it grows)."),
]

METRICS = [
    MetricSpec("cann_log_messages_total", "counter",
               "CANN log messages (plog and device log lines, plog lines in followed journals) by level and module.",
               ("level", "module")),
    MetricSpec("hccl_errors_total", "counter",
               "HCCL error records (a plog ERROR record or an error block) by kind and code.", ("code", "kind")),
    MetricSpec("cann_errors_total", "counter",
               "CANN runtime, driver and device error records by kind and code.", ("code", "kind")),
    MetricSpec("npuagent_cann_log_files", "gauge", "Log files followed.", ()),
    MetricSpec("npuagent_cann_log_open_files", "gauge", "Log files open now.", ()),
    MetricSpec("npuagent_cann_log_lag_bytes", "gauge", "Bytes written to followed files and not read yet.", ()),
    MetricSpec("npuagent_cann_log_read_bytes_total", "counter", "Bytes read from log files.", ()),
    MetricSpec("npuagent_cann_log_events_total", "counter", "Events handed to the rules, by event and kind.",
               ("event", "kind")),
    MetricSpec("npuagent_cann_log_journal_up", "gauge", "1 while journalctl follows the configured units.", ()),
    MetricSpec("npuagent_cann_log_problems_total", "counter",
               "Input that could not be used, by reason (unreadable, vanished_unread, truncated, line_too_long, "
               "partial_line, open_files_capped, journal_exit, journal_bad_entry, events_dropped, label_sets_capped, "
               "bad_record).",
               ("reason",)),
]


def roots(users: Sequence[str], extra: Sequence[str], env: Optional[Dict[str, str]] = None) -> List[str]:
    """The log roots: each user's $HOME/ascend/log, the agent's ASCEND_PROCESS_LOG_PATH, and ``extra``."""
    env = os.environ if env is None else env
    out = []
    for user in users:
        try:
            out.append(os.path.join(pwd.getpwnam(user).pw_dir, "ascend", "log"))
        except KeyError:
            log.info("cann_log: no user %r, its $HOME/ascend/log is not followed", user)
    if env.get("ASCEND_PROCESS_LOG_PATH"):
        out.append(env["ASCEND_PROCESS_LOG_PATH"])
    out.extend(extra)
    return list(dict.fromkeys(os.path.normpath(r) for r in out))


def patterns(root_dirs: Sequence[str], globs: Sequence[str]) -> List[str]:
    """The glob patterns of the CANN layouts under each root (a root's own glob characters are kept: a root may
    be ``/data/jobs/*/log`` on purpose), and the extra globs."""
    return [os.path.join(r, p) for r in root_dirs for p in LAYOUT] + list(globs)


class _Pending:
    """An event being put together from the records of one burst (``last``: the newest record's log time)."""

    __slots__ = ("count", "event_kind", "labels", "last", "message", "seen", "sent")

    def __init__(self, finding: Finding, labels: Dict[str, str], at: float) -> None:
        self.event_kind, self.labels, self.last = finding.event_kind, labels, at
        self.message, self.count = finding.record.text[:MAX_MESSAGE], 1
        #: monotonic time of its last record, and whether it has been handed over
        self.seen, self.sent = time.monotonic(), False


class CannLogCollector:
    """Follows the CANN logs and the configured journals; see the module docstring."""

    def __init__(self, ctx: Any) -> None:
        o = ctx.options
        self.ctx = ctx
        self.users: Tuple[str, ...] = tuple(o["users"])
        self.roots: Tuple[str, ...] = tuple(o["roots"])
        self.globs: Tuple[str, ...] = tuple(o["globs"])
        self.units: Tuple[str, ...] = tuple(o["units"])
        self.journalctl: Tuple[str, ...] = tuple(o["journalctl"])
        if self.units and not self.journalctl:
            raise ValueError("journalctl must name the journalctl program (an argv list of at least one item)")
        self.start_at: str = o["start_at"]
        self.max_open: int = o["max_open_files"]
        self.max_line: int = o["max_line_length"]
        self.dedup: float = o["dedup"]
        self.max_events: int = o["max_events"]
        self.block_wait: float = o["block_wait"]
        self.idle_close: float = o["idle_close"]
        # made at the first collection: a factory does no I/O
        self.state: Optional[LogState] = None
        self.tailer: Optional[Tailer] = None
        self.journal: Optional[Journal] = None
        self.assembler = textlog.TextAssembler(max_line_length=self.max_line)
        self.counters: Dict[CounterKey, float] = {}
        self._changed: Dict[CounterKey, float] = {}
        self._label_sets: Dict[str, int] = {}
        self.problems: Dict[str, int] = {}
        self.emitted: Dict[Tuple[str, str], int] = {}
        self._batch: List[_Pending] = []
        self._bursts: Dict[Tuple[str, ...], _Pending] = {}
        #: the device a (file or unit, pid) last named
        self._devices: Dict[Tuple[str, str], str] = {}
        self._cursor: Optional[str] = None
        self._since: Optional[float] = None
        self._busy = threading.Lock()
        self._closed = False

    # -- setting up ---------------------------------------------------------

    def _start(self) -> None:
        path = os.path.join(self.ctx.state_dir, f"{self.ctx.name}.db") if self.ctx.state_dir else None
        self.state = LogState(path)
        self.counters = {k: v for k, v in self.state.counters().items() if k[0] in PERSISTED}
        for name, _labels in self.counters:
            self._label_sets[name] = self._label_sets.get(name, 0) + 1
        found = roots(self.users, self.roots)
        self.tailer = Tailer(patterns(found, self.globs), self.state, start_at=self.start_at, max_open=self.max_open,
                             max_line=self.max_line, block_wait=self.block_wait, idle_close=self.idle_close)
        if self.units:
            self.journal = Journal(self.units, self.journalctl)
            self._cursor = self.state.meta("journal_cursor")
            self._since = self.state.meta("journal_since")
            if self._since is None and not self.state.fresh:
                self._since = self.state.last_commit or None
            self.assembler.restore(self.state.meta("journal_open", []), time.monotonic())
        log.info("cann_log: following %s%s", ", ".join(found + list(self.globs)) or "no log roots",
                 f"; the journal of {', '.join(self.units)}" if self.units else "")

    # -- one collection -----------------------------------------------------

    def collect(self) -> List[Any]:
        if not self._busy.acquire(blocking=False):
            return []
        try:
            if self._closed:
                return []
            if self.tailer is None:
                self._start()
            assert self.tailer is not None and self.state is not None
            # half of what the collection may take, and half an interval: a backlog is caught up over several
            # collections instead of starving the host or overrunning the timeout
            share = self.ctx.remaining() * 0.5
            if self.ctx.interval:
                share = min(share, max(self.ctx.interval * 0.5, 0.05))
            deadline = time.monotonic() + share
            self.tailer.poll(self._consume, deadline)
            meta = self._follow_journal(deadline) if self.journal is not None else {}
            events = self._events()
            if events:
                if self.ctx.emitter is not None:
                    self.ctx.emit(events)
                for e in events:
                    k = (e.kind, e.labels.get("kind", ""))
                    self.emitted[k] = self.emitted.get(k, 0) + 1
            files, gone = self.tailer.changes()
            meta["files_scanned"] = self.tailer.scanned
            if self.state.commit(files, gone, self._changed, meta):
                self.tailer.committed()
                self._changed = {}
            out: List[Any] = self._samples()
            if self.ctx.emitter is None:
                out.extend(events)  # no agent to hand them to at once (a test, a tool): return them
            return out
        finally:
            self._busy.release()
            # close() may have come while this collection ran, and found it busy: shut down now (it is idempotent)
            if self._closed and self._busy.acquire(blocking=False):
                try:
                    self._shutdown()
                finally:
                    self._busy.release()

    def _consume(self, t: Tracked, data: bytes, final: bool) -> int:
        """Whole lines of one file, from the tailer: count them, classify the error records."""
        taken, counts, records = plog.scan(data, final)
        for key, n in counts.items():
            level, module = plog.key_of(key)
            self._count("cann_log_messages_total", (("level", level), ("module", module)), n)
        for raw in records:
            if len(raw) > self.max_line:
                self._problem("line_too_long", 1)
                raw = raw[:self.max_line]
            try:
                self._found(plog.parse_record(raw.decode("utf-8", "replace")), t.device_id, ("file", t.path))
            except Exception:  # a record no rule foresaw: counted and passed, never read again and again
                self._bad_record(raw)
        return taken

    def _bad_record(self, raw: Any) -> None:
        self._problem("bad_record", 1)
        if self.problems["bad_record"] == 1 or log.isEnabledFor(logging.DEBUG):
            log.warning("cann_log: a record could not be read (counted as bad_record): %.200r", raw, exc_info=True)

    def _follow_journal(self, deadline: float) -> Dict[str, Any]:
        """Take what journalctl wrote; the cursor and the open blocks to commit."""
        journal = self.journal
        assert journal is not None and self.state is not None
        exits, bad = journal.exits, journal.bad_entries
        if not journal.running:
            if self._since is None:
                self._since = time.time()  # the first time this state follows the journal
            if self._cursor is not None and journal.failures >= CURSOR_REFUSALS:
                # a cursor journald no longer has (its files vacuumed or rotated away): journalctl exits at once,
                # every time; go on from the time this state last followed the journal instead
                log.warning("cann_log: journalctl refused the saved cursor %d times; following from %s instead",
                            journal.failures, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self._since)))
                self._cursor = None
            if self._cursor is None and self.state.fresh:
                journal.start(None, None, self.start_at)
            else:
                journal.start(self._cursor, self._since, self.start_at)
        for entry in journal.drain(max(deadline, time.monotonic() + 0.01)):
            unit = str(entry.get("_SYSTEMD_UNIT") or entry.get("UNIT") or "")
            key = (unit, str(entry.get("_PID", "")), str(entry.get("_COMM", "")))
            # a block's age is counted from when its lines were taken here, not from the entry's own time: read
            # back after a restart, entries are old, and a block must not end because of that
            now = time.monotonic()
            for line in message(entry).split("\n"):
                try:
                    for rec in self.assembler.feed(line, now, key):
                        self._journal_record(rec, key)
                except Exception:
                    self._bad_record(line)
            self._cursor = entry["__CURSOR"]
        # blocks whose writer has been quiet end: after block_wait when everything queued was taken, and after
        # BUSY_WAIT when journalctl keeps the queue full (a block taken in part goes on in the next collection)
        for key, rec in self.assembler.flush(time.monotonic(), self.block_wait if journal.idle() else BUSY_WAIT):
            try:
                self._journal_record(rec, key)
            except Exception:
                self._bad_record(rec.text)
        for (level, module), n in self.assembler.headers.items():
            self._count("cann_log_messages_total", (("level", level), ("module", module)), n)
        self.assembler.headers.clear()
        self._problem("journal_exit", journal.exits - exits)
        self._problem("journal_bad_entry", journal.bad_entries - bad)
        meta: Dict[str, Any] = {"journal_open": self.assembler.state(), "journal_since": self._since}
        if self._cursor is not None:
            meta["journal_cursor"] = self._cursor
        return meta

    def _journal_record(self, rec: plog.Record, key: Any) -> None:
        unit, pid, comm = key
        if rec.pid is None and pid:
            rec.extra.setdefault("pid", pid)
        if not rec.process and comm:
            rec.extra.setdefault("process", comm)
        self._found(rec, None, ("unit", unit))

    def _found(self, rec: plog.Record, device_id: Optional[str], where: Tuple[str, str]) -> None:
        f = classify(rec)
        if f is None:
            return
        self._count(f"{f.family}_errors_total", (("code", f.code), ("kind", f.kind)), 1)
        writer = (where[1], f.labels.get("pid", ""))
        if "device_id" in f.labels:
            if len(self._devices) > 10000:
                self._devices.clear()
            self._devices[writer] = f.labels["device_id"]
        if f.kind == "other":
            return
        labels = {"kind": f.kind, "code": f.code, **f.labels}
        # a record that does not name its device: the device-<id> directory of a device log, else the device
        # an earlier record of the same process in the same file named
        device_id = device_id or self._devices.get(writer)
        if device_id is not None and "device_id" not in labels:
            labels["device_id"] = device_id
        if rec.module:
            labels["module"] = rec.module
        labels[where[0]] = where[1]
        at = rec.timestamp if rec.timestamp is not None else time.time()
        burst = (f.event_kind, f.kind, labels.get("pid", ""), where[1])
        open_ = self._bursts.get(burst) if self.dedup > 0 else None
        if (open_ is not None and abs(at - open_.last) <= self.dedup
                and all(open_.labels.get(n, v) == v for n in ("device_id", "rank") if (v := labels.get(n)))):
            open_.last, open_.seen = max(open_.last, at), time.monotonic()
            open_.count += 1
            if not open_.sent:
                for name in ("code", "device_id", "rank"):
                    if not open_.labels.get(name) and labels.get(name):
                        open_.labels[name] = labels[name]
            return
        if len(self._batch) >= self.max_events:
            self._problem("events_dropped", 1)  # counted, not kept: a flood must not grow this collection's batch
            return
        pending = _Pending(f, labels, at)
        if self.dedup > 0:
            self._bursts[burst] = pending
        self._batch.append(pending)

    def _events(self) -> List[Event]:
        """The events of this collection's bursts, at most ``max_events``."""
        batch, self._batch = self._batch, []
        expired = time.monotonic() - self.dedup - 10.0
        for key in [k for k, p in self._bursts.items() if p.seen < expired]:
            del self._bursts[key]
        out = []
        for p in batch:
            p.sent = True
            if "device_id" not in p.labels:  # named by a later record of the same process (a LINK_ERROR_INFO row)
                device_id = self._devices.get((p.labels.get("file") or p.labels.get("unit", ""),
                                               p.labels.get("pid", "")))
                if device_id is not None:
                    p.labels["device_id"] = device_id
            text = p.message if p.count == 1 else f"{p.message}\n(and {p.count - 1} more records like it)"
            out.append(Event(p.event_kind, dict(p.labels), text))
        return out

    # -- counting -----------------------------------------------------------

    def _count(self, name: str, labels: Tuple[Tuple[str, str], ...], n: float) -> None:
        key = (name, labels)
        value = self.counters.get(key)
        if value is None:
            if self._label_sets.get(name, 0) >= MAX_LABEL_SETS:
                self._problem("label_sets_capped", 1)
                capped = tuple((k, "other") if k in ("module", "code") else (k, v) for k, v in labels)
                key = (name, capped)
                value = self.counters.get(key, 0.0)
            else:
                self._label_sets[name] = self._label_sets.get(name, 0) + 1
                value = 0.0
        self.counters[key] = self._changed[key] = value + n

    def _problem(self, reason: str, n: int) -> None:
        if n:
            self.problems[reason] = self.problems.get(reason, 0) + n

    def _samples(self) -> List[Sample]:
        assert self.tailer is not None
        out = [Sample(name, dict(labels), value) for (name, labels), value in self.counters.items()]
        t = self.tailer
        out += [Sample("npuagent_cann_log_files", {}, float(len(t.files))),
                Sample("npuagent_cann_log_open_files", {}, float(t.open_files())),
                Sample("npuagent_cann_log_lag_bytes", {}, float(t.lag_bytes())),
                Sample("npuagent_cann_log_read_bytes_total", {}, float(t.bytes_read))]
        problems = dict(self.problems)
        for reason, n in t.problems.items():
            problems[reason] = problems.get(reason, 0) + n
        out += [Sample("npuagent_cann_log_problems_total", {"reason": r}, float(n)) for r, n in problems.items()]
        out += [Sample("npuagent_cann_log_events_total", {"event": e, "kind": k}, float(n))
                for (e, k), n in self.emitted.items()]
        if self.journal is not None:
            out.append(Sample("npuagent_cann_log_journal_up", {}, 1.0 if self.journal.running else 0.0))
        return out

    # -- stopping -----------------------------------------------------------

    def close(self) -> None:
        """Stop following. Called from the agent's loop, possibly while a collection runs: it waits for that
        collection (bounded by its timeout), so that a collector made by a reload finds the state file free; one
        that does not end in time shuts down at its end."""
        self._closed = True
        if self._busy.acquire(timeout=max(self.ctx.timeout, 0.1) + 1.0):
            try:
                self._shutdown()
            finally:
                self._busy.release()

    def _shutdown(self) -> None:
        if self.journal is not None:
            self.journal.close()
        if self.tailer is not None:
            self.tailer.close()
        if self.state is not None:
            self.state.close()
