"""The ``notify`` action: tell people what happened and what the agent did, through apprise.

``notify`` is a telling action (it has ``run_group``): remediation calls it on every firing and
every resolution of the rules that name it, and its ``tick`` after every evaluation. It never
talks to the network itself: it renders the message, ``put``\\ s it in a durable outbox (sqlite in
the plugin's state directory, see :mod:`npuagent.outbox`) and returns at once; the outbox's worker
delivers it through apprise, retrying with backoff for as long as the receivers are down, across
restarts of the agent.

Decisions, and why:

* **One message per evaluation** (``group = true``, the default): the alerts that fire or resolve in
  one evaluation for this action become one message. A failing rack makes eight NPUs hot at once;
  eight messages in a second bury the one that matters. ``group = false`` sends one per alert.
* **Exactly one "resolved" per episode.** Every alert this action told of as firing is kept in a
  table (``notify_episodes``) of the outbox's file, changed in the same transaction as the message is
  queued. A resolution whose firing was never queued (the agent lost it, or the action was added
  while the alert fired) sends nothing; a second resolution finds nothing and sends nothing. A
  restarted agent remembers which alerts it told of. Remediation hands an action the resolution only
  when the rule lists it; for an action that was only an ``escalate`` target (page the on-call person),
  or an alert silenced when it resolved, the plugin learns of the resolution from the alert transitions
  and settles it at a ``tick`` 30 s later if nothing else did: the person paged hears it is over, and a
  silenced alert is forgotten without a message. Reminders of an alert silenced while it fires do go on
  (the action is not told of silences).
* **What a message says.** What happened (rule, summary, labels, severity, since when), the evidence
  (the value), what the agent did (the episode's history: action, outcome, an excerpt of its output),
  the outcome (still firing, or resolved after how long) and what comes next (the next step of the
  rule's ladder). Reminders (``repeat``) carry the history as it is then: the plugin observes action
  results (``npuagent_action_result``) and adds them to the alerts it told of.
* **Secrets.** ``{env:NAME}`` in a URL is replaced by the environment variable ``NAME``;
  ``{secret:NAME}`` by ``NAME`` of ``secrets_file``: ``NAME=value`` lines (``#`` comments, blank lines and
  an ``export`` prefix allowed, one level of quotes around the value removed, so the same file can serve
  systemd's ``EnvironmentFile=``). The file must be a regular file owned by the agent's user or root and
  readable by its owner only (0600 or 0400): anything else is refused, as ssh refuses a readable key. The
  two kinds are kept apart on purpose: a value always comes from where the URL says. Resolved URLs live
  in memory only: the queue holds the message, never the URL, so a pending message goes to the URLs of
  the configuration running when it is sent. Every substituted value, and every part of a URL that
  apprise's own privacy rendering hides (a token written literally), is masked (``***``) in what this
  module returns or stores and in the log records of apprise and urllib3, which print URLs at debug level.
* **Delivery.** A message goes to every URL; when some fail, the ones that took it are recorded (by a
  digest of the URL, never the URL) and the retry sends only the rest. Messages keep their order: a
  "resolved" never overtakes its "firing". The window in which a message may arrive twice is the commit
  after a successful send (see :mod:`npuagent.outbox`). apprise's own timeouts apply to each attempt
  (``?cto=`` and ``?rto=`` of the URL, 4 s each by default).
* **No URL** (``urls = []``, as shipped): the messages are rendered, logged and kept whole in the audit
  log, so the configuration works before anyone has a token to put in it.
* **Dry run.** The message is rendered and returned as the action's output (outcome ``dry-run``), nothing
  is queued; episodes are kept in memory so the demo shows one resolved message per firing, as the real
  thing would.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import re
import socket
import stat
import threading
import time as _time
import weakref
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

from npuagent import hookimpl
from npuagent.model import ActionRequest, ActionResult, ActionType, AlertTransition
from npuagent.options import Array, Boolean, Duration, Option, String, format_duration
from npuagent.outbox import Outbox, Partial, open_names

log = logging.getLogger("npuagent.notify")

#: ``{env:NAME}`` and ``{secret:NAME}`` in a URL.
PLACEHOLDER = re.compile(r"\{(env|secret):([A-Za-z_][A-Za-z0-9_]*)\}")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MASK = "***"
#: Secrets shorter than this are not masked in logs (masking every "1" would garble them; such a value is no secret).
MIN_SECRET = 3
#: Seconds after an alert resolved by which remediation has surely handed the resolution over, if it will.
RESOLVE_GRACE = 30.0
#: History entries kept per alert, and the characters of an action's output shown in a message.
HISTORY_KEEP = 20
OUTPUT_SHOWN = 300
#: The loggers that print URLs of requests (apprise's at debug level, urllib3's connection pool).
URL_LOGGERS = ("apprise", "urllib3", "urllib3.connectionpool", "urllib3.util.retry", "requests")
SEVERITY_ORDER = {"info": 0, "warning": 1, "critical": 2}
_NOTIFY_TYPE = {"info": "info", "warning": "warning", "critical": "failure"}

# -- secrets --------------------------------------------------------------------------------------------


class _Masker(logging.Filter):
    """Every secret this process substituted, and the means to hide them: in a string, and in log records.

    One per process (secrets of every action), installed as a filter on :data:`URL_LOGGERS`: a filter on a
    logger sees the records logged on that very logger, which is where apprise and urllib3 log.
    """

    def __init__(self) -> None:
        super().__init__()
        self.secrets: Set[str] = set()
        self._lock = threading.Lock()
        self._pattern: Optional[re.Pattern] = None

    def add(self, values: Iterable[str]) -> None:
        with self._lock:
            new = {v for v in values if len(v) >= MIN_SECRET} - self.secrets
            if new:
                self.secrets |= new
                # longest first, so a secret containing another is hidden whole
                ordered = sorted(self.secrets, key=len, reverse=True)
                self._pattern = re.compile("|".join(re.escape(s) for s in ordered))

    def mask(self, text: str) -> str:
        pattern = self._pattern
        return pattern.sub(MASK, text) if pattern is not None and text else text

    def filter(self, record: logging.LogRecord) -> bool:
        if self._pattern is None:
            return True
        try:
            message = record.getMessage()
        except Exception:
            return True
        masked = self.mask(message)
        if masked != message:
            record.msg, record.args = masked, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.mask(record.exc_text)
            record.exc_info = None  # the formatter prints exc_text; the raw exception may hold the URL
        if record.stack_info:
            record.stack_info = self.mask(record.stack_info)
        return True


masker = _Masker()
for _name in URL_LOGGERS:
    logging.getLogger(_name).addFilter(masker)


def mask(text: str) -> str:
    """``text`` with every secret of this process replaced by ``***``."""
    return masker.mask(text)


def read_secrets_file(path: str) -> Dict[str, str]:
    """``NAME=value`` lines of a file that only its owner (the agent's user, or root) can read.

    Errors name the file and the line number, never a line's content: it may be a secret.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise ValueError(f"secrets_file {path}: {e.strerror}") from None
    with os.fdopen(fd, "r", encoding="utf-8") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"secrets_file {path}: not a regular file")
        if st.st_uid not in (0, os.geteuid()):
            raise ValueError(f"secrets_file {path}: owned by uid {st.st_uid}; it must belong to the agent's user "
                             f"or root")
        if st.st_mode & 0o077:
            raise ValueError(f"secrets_file {path}: mode {stat.S_IMODE(st.st_mode):04o} lets others read or change "
                             f"it; refused: it must be readable by its owner only (chmod 600 {path})")
        try:
            text = f.read()
        except UnicodeDecodeError:
            raise ValueError(f"secrets_file {path}: not UTF-8 text") from None
    out: Dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        name, sep, value = line.partition("=")
        name = name.strip()
        if not sep or not _NAME.fullmatch(name):
            raise ValueError(f"secrets_file {path}, line {number}: expected NAME=value")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[name] = value
    return out


def substitute(template: str, secrets: Mapping[str, str], where: str,
               environ: Optional[Mapping[str, str]] = None) -> Tuple[str, List[str]]:
    """``template`` with its placeholders filled, and the values used (to be masked).

    :raises ValueError: a placeholder names a variable that is not set (the message names it, not its value).
    """
    env = os.environ if environ is None else environ
    used: List[str] = []

    def fill(m: re.Match) -> str:
        kind, name = m.group(1), m.group(2)
        source = env if kind == "env" else secrets
        value = source.get(name)
        if not value:
            what = f"the environment variable {name}" if kind == "env" else f"{name} of secrets_file"
            raise ValueError(f"{where}: {m.group(0)}: {what} is {'empty' if value == '' else 'not set'}")
        used.append(value)
        return value

    return PLACEHOLDER.sub(fill, template), used


def hidden_parts(url: str, private: str) -> List[str]:
    """The pieces of ``url`` its privacy rendering does not show: tokens written literally in a URL."""
    shown = set(re.split(r"[/?&=:@#,+;]", private))
    return [p for p in re.split(r"[/?&=:@#,+;]", url) if len(p) >= MIN_SECRET and p not in shown]


# -- rendering --------------------------------------------------------------------------------------------


class _Fields(dict):
    """Template fields: a field the alert lacks renders empty, as the other actions' templates do."""

    def __missing__(self, key: str) -> str:
        return ""


def render(template: str, fields: Mapping[str, Any], where: str) -> str:
    try:
        return template.format_map(_Fields(fields))
    except (ValueError, IndexError, AttributeError, KeyError, TypeError) as e:
        raise ValueError(f"{where}: template {template!r}: {e}") from None


def when(ts: float) -> str:
    """Local time with its offset: what the person on call reads on their phone."""
    return _time.strftime("%Y-%m-%d %H:%M:%S %z", _time.localtime(ts))


def took(seconds: float) -> str:
    return format_duration(max(round(seconds), 0))


def value_text(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.6g}"


def labels_text(labels: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "(none)"


def episode_key(rule: str, labels: Mapping[str, str]) -> str:
    return json.dumps([rule, dict(sorted(labels.items()))], separators=(",", ":"), ensure_ascii=False)


def snapshot(request: ActionRequest) -> Dict[str, Any]:
    """What a message needs of a request, as JSON (kept for reminders and the resolution)."""
    return {
        "rule": request.rule, "labels": dict(request.labels), "state": request.state, "value": request.value,
        "summary": request.summary, "severity": request.severity, "annotations": dict(request.annotations),
        "started_at": request.started_at or request.at, "at": request.at, "next_step": request.next_step,
        "history": [history_entry(r) for r in request.history][-HISTORY_KEEP:],
    }


def history_entry(result: ActionResult) -> List[str]:
    output = " ".join(result.output.split())
    if len(output) > OUTPUT_SHOWN:
        output = output[:OUTPUT_SHOWN - 1] + "…"
    return [result.action, result.outcome, output]


def alert_fields(snap: Mapping[str, Any], status: str, host: str) -> Dict[str, Any]:
    """The fields of one alert for the ``body`` template (labels and annotations by name too)."""
    resolved = snap["state"] == "resolved"
    history = "\n".join(f"- {a}: {o}" + (f": {out}" if out else "") for a, o, out in snap["history"])
    fields: Dict[str, Any] = {**snap["labels"], **snap["annotations"]}
    fields.update(
        rule=snap["rule"], state=snap["state"], status=status, severity=snap["severity"], host=host,
        summary=snap["summary"], labels=labels_text(snap["labels"]), value=value_text(snap["value"]),
        since=when(snap["started_at"]), at=when(snap["at"]), duration=took(snap["at"] - snap["started_at"]),
        history=history or "nothing yet", next_step=snap["next_step"] if not resolved else "",
    )
    lines = [f"{status}: {snap['rule']} on {host} (severity {snap['severity']})"]
    if snap["summary"]:
        lines.append(f"What: {snap['summary']}")
    lines.append(f"Labels: {fields['labels']}")
    if resolved:
        lines.append(f"Fired: {fields['since']}; resolved {fields['at']}, after {fields['duration']}")
        lines.append(f"Value: {fields['value']} (at resolution)")
    else:
        lines.append(f"Since: {fields['since']} (firing for {fields['duration']})")
        lines.append(f"Value: {fields['value']}")
    lines.extend(f"{k}: {v}" for k, v in sorted(snap["annotations"].items()) if k != "summary" and v)
    lines.append("Done: nothing" if not history else "Done:\n" + history)
    lines.append(f"Outcome: resolved after {fields['duration']}" if resolved else "Outcome: still firing")
    if fields["next_step"]:
        lines.append(f"Next: {fields['next_step']}")
    fields["text"] = "\n".join(lines)
    return fields


# -- what the telling actions share ------------------------------------------------------------------------


class Live:
    """The telling actions of one kind alive in this process, so the observer hooks can reach them.

    On a reload the new action is made before the old one is closed: only the newest of each
    (outbox file, action name) is told, so what is observed is recorded once.
    """

    def __init__(self) -> None:
        self._actions: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        self._serials = itertools.count()

    def add(self, action: Any) -> int:
        serial = next(self._serials)
        self._actions[serial] = action
        return serial

    def remove(self, serial: int) -> None:
        self._actions.pop(serial, None)

    def newest(self) -> List[Any]:
        out: Dict[Tuple[str, str], Any] = {}
        for _serial, action in sorted(list(self._actions.items()), key=lambda item: item[0]):
            out[(action.outbox.path, action.name)] = action
        return list(out.values())


def resolution(transition: AlertTransition) -> bool:
    return transition.state == "inactive" and transition.previous in ("firing", "resolving")


class LateResolutions:
    """Resolutions remediation will not hand to the action, found from the alert transitions.

    Remediation tells an action of a resolution only when the rule lists the action and the alert is not
    silenced. An action that was only an ``escalate`` target, or whose alert was silenced when it
    resolved, would otherwise keep the alert as firing for ever (reminders, re-posts). The observer
    notes every resolution (on the loop's thread: a dict insert, nothing more); a ``tick`` at least
    :data:`RESOLVE_GRACE` later settles those that no ``run_group`` took meanwhile. The row of the alert
    is deleted in the same transaction as the message is queued, so either path sends it, never both.
    """

    def _init_late(self) -> None:
        self._resolving: Dict[str, AlertTransition] = {}
        self._resolving_lock = threading.Lock()

    def alert_resolved(self, transition: AlertTransition) -> None:
        with self._resolving_lock:
            self._resolving[episode_key(transition.rule, transition.labels)] = transition

    def _taken(self, requests: Sequence[ActionRequest]) -> None:
        """Remediation handed these over itself (a resolution, or a new firing that supersedes it)."""
        with self._resolving_lock:
            for r in requests:
                self._resolving.pop(episode_key(r.rule, r.labels), None)

    def _late(self, now: float) -> Dict[str, AlertTransition]:
        with self._resolving_lock:
            due = {k: t for k, t in self._resolving.items() if t.at + RESOLVE_GRACE <= now}
            for key in due:
                del self._resolving[key]
        return due


# -- the action -------------------------------------------------------------------------------------------


class Target:
    """One apprise URL: its template (as configured), a digest to record deliveries by, what may be shown."""

    def __init__(self, template: str, url: str, index: int) -> None:
        import apprise

        self.template = template
        self.key = hashlib.sha256(template.encode()).hexdigest()[:16]
        self.apprise = apprise.Apprise(asset=apprise.AppriseAsset(async_mode=False))
        if not self.apprise.add(url):
            scheme = template.split("://", 1)[0]
            raise ValueError(f"urls[{index}]: apprise does not understand this {scheme}:// URL")
        private = self.apprise[0].url(privacy=True)
        masker.add(hidden_parts(url, private))
        self.shown = mask(private.split("?", 1)[0])


class Notify(LateResolutions):
    """The ``notify`` action (see the module docstring)."""

    def __init__(self, ctx: Any) -> None:
        o = ctx.options
        self.ctx, self.name = ctx, ctx.name
        self.repeat: float = o["repeat"]
        self.group: bool = o["group"]
        self.title_template: str = o["title"]
        self.body_template: str = o["body"]
        self.host = socket.gethostname()
        sample = alert_fields(snapshot(ActionRequest(self.name, "rule", {}, "firing")), "FIRING", self.host)
        render(self.title_template, {**sample, "count": 1, "rules": "rule", "headline": ""}, "title")
        render(self.body_template, sample, "body")
        secrets = read_secrets_file(o["secrets_file"]) if o["secrets_file"] else {}
        self.targets: List[Target] = []
        for i, template in enumerate(o["urls"]):
            url, used = substitute(template, secrets, f"urls[{i}]")
            masker.add(used)
            self.targets.append(Target(template, url, i))
        if not ctx.state_dir:
            raise ValueError("notify needs a state directory for its outbox")
        os.makedirs(ctx.state_dir, mode=0o700, exist_ok=True)
        self._lock = threading.Lock()
        self._dry: Dict[str, Dict[str, Any]] = {}  # dry-run episodes: told of, never sent
        self._next_check = 0.0
        self._init_late()
        self.outbox = Outbox(os.path.join(ctx.state_dir, "outbox.db"), self.name, self._deliver,
                             logging.getLogger(f"npuagent.notify.{self.name}"), start=False)
        with self.outbox.transaction() as db:
            db.execute("""CREATE TABLE IF NOT EXISTS notify_episodes (
                action TEXT NOT NULL, key TEXT NOT NULL, started_at REAL NOT NULL, last_sent REAL NOT NULL,
                snapshot TEXT NOT NULL, PRIMARY KEY (action, key))""")
        self.outbox.start()
        self._serial = live.add(self)

    # -- messages -----------------------------------------------------------------------------------

    def compose(self, items: Sequence[Tuple[str, Dict[str, Any]]]) -> Dict[str, Any]:
        """One message for (status, snapshot) items: its title, body and apprise type."""
        blocks, counts = [], {}
        for status, snap in items:
            fields = alert_fields(snap, status, self.host)
            blocks.append(mask(render(self.body_template or "{text}", fields, "body")))
            counts[status] = counts.get(status, 0) + 1
        status = ", ".join(s if n == 1 and len(items) == 1 else f"{s}:{n}" for s, n in counts.items())
        rules = ", ".join(dict.fromkeys(snap["rule"] for _s, snap in items))
        first = items[0][1]
        headline = (first["summary"] or labels_text(first["labels"])) if len(items) == 1 else f"{len(items)} alerts"
        firing = [snap for s, snap in items if snap["state"] != "resolved"]
        severity = max((snap["severity"] for _s, snap in items), key=lambda s: SEVERITY_ORDER.get(s, 1))
        title_fields = {"status": status, "rules": rules, "count": len(items), "host": self.host,
                        "severity": severity, "headline": headline, "rule": rules}
        title = (render(self.title_template, title_fields, "title") if self.title_template
                 else f"[{status}] {rules} on {self.host}: {headline}")
        kind = "success"
        if firing:
            top = max((snap["severity"] for snap in firing), key=lambda s: SEVERITY_ORDER.get(s, 1))
            kind = _NOTIFY_TYPE.get(top, "warning")
        return {"title": mask(title), "body": "\n\n".join(blocks), "type": kind, "done": []}

    def _messages(self, items: List[Tuple[str, Dict[str, Any]]]) -> List[Dict[str, Any]]:
        if not items:
            return []
        return [self.compose(items)] if self.group else [self.compose([item]) for item in items]

    def _shown_urls(self) -> str:
        return ", ".join(t.shown for t in self.targets) or "no URL"

    def _queued(self, ids: Sequence[Optional[int]], messages: Sequence[Dict[str, Any]],
                what: str = "message") -> List[ActionResult]:
        """The results of queued messages: the title, or with no URL the whole message (the audit log keeps it)."""
        out = []
        for msg_id, m in zip(ids, messages):
            if msg_id is None:
                out.append(ActionResult(self.name, "success", f"a {what} is already waiting to be sent"))
            elif self.targets:
                out.append(ActionResult(self.name, "success", f"queued {what} {msg_id} for {self._shown_urls()}: "
                                                              f"{m['title']}"))
            else:
                out.append(ActionResult(self.name, "success", f"{m['title']}\n{m['body']}\n(no URL: logged only)"))
        return out

    def _dry_results(self, messages: List[Dict[str, Any]], what: str = "send") -> List[ActionResult]:
        return [ActionResult(self.name, "dry-run", f"would {what}: {m['title']}\n{m['body']}\n"
                                                   f"(to {self._shown_urls()})") for m in messages]

    # -- telling --------------------------------------------------------------------------------------

    def run(self, request: ActionRequest) -> ActionResult:
        results = self.run_group([request])
        return results[0]

    def run_group(self, requests: Sequence[ActionRequest]) -> List[ActionResult]:
        """Queue the message(s) for the alerts of one evaluation; return without waiting for delivery."""
        self._taken(requests)
        dry = [r for r in requests if r.dry_run]
        real = [r for r in requests if not r.dry_run]
        results: List[ActionResult] = []
        skipped: List[str] = []
        with self._lock:
            if dry:
                items = self._dry_items(dry, skipped)
                results += self._dry_results(self._messages(items))
            if real:
                results += self._queue(real, skipped)
            if any(r.state == "firing" for r in requests) and self.repeat:
                self._next_check = min(self._next_check, min(r.at for r in requests) + self.repeat)
        note = f"no resolved message for {', '.join(skipped)}: no firing message was sent for it" if skipped else ""
        if not results:
            return [ActionResult(self.name, "skipped", note or "nothing to send")]
        if note:
            results[-1] = ActionResult(self.name, results[-1].outcome, f"{results[-1].output}\n({note})")
        return results

    def _dry_items(self, requests: Sequence[ActionRequest], skipped: List[str]) -> List[Tuple[str, Dict[str, Any]]]:
        items = []
        for r in requests:
            key, snap = episode_key(r.rule, r.labels), snapshot(r)
            if r.state == "firing":
                self._dry[key] = {"snap": snap, "last_sent": r.at}
                items.append(("FIRING", snap))
            else:
                told = self._dry.pop(key, None)
                if told is None:
                    skipped.append(f"{r.rule} {{{labels_text(r.labels)}}}")
                    continue
                items.append(("RESOLVED", self._resolved(snap, told["snap"])))
        return items

    @staticmethod
    def _resolved(snap: Dict[str, Any], told: Mapping[str, Any]) -> Dict[str, Any]:
        """The resolution's snapshot completed by what was kept since the firing (after a restart,
        remediation no longer knows when the episode began nor what was done)."""
        out = dict(snap)
        out["started_at"] = told["started_at"]
        for key in ("history", "summary", "annotations"):
            if not out[key]:
                out[key] = told[key]
        return out

    def _queue(self, requests: Sequence[ActionRequest], skipped: List[str]) -> List[ActionResult]:
        """Record the episodes and queue their messages in one transaction: both or neither."""
        with self.outbox.transaction() as db:
            items: List[Tuple[str, Dict[str, Any]]] = []
            for r in requests:
                key, snap = episode_key(r.rule, r.labels), snapshot(r)
                if r.state == "firing":
                    db.execute("INSERT OR REPLACE INTO notify_episodes VALUES (?, ?, ?, ?, ?)",
                               (self.name, key, snap["started_at"], r.at, json.dumps(snap)))
                    items.append(("FIRING", snap))
                    continue
                row = db.execute("SELECT snapshot FROM notify_episodes WHERE action = ? AND key = ?",
                                 (self.name, key)).fetchone()
                if row is None:
                    skipped.append(f"{r.rule} {{{labels_text(r.labels)}}}")
                    continue
                db.execute("DELETE FROM notify_episodes WHERE action = ? AND key = ?", (self.name, key))
                items.append(("RESOLVED", self._resolved(snap, json.loads(row[0]))))
            messages = self._messages(items)
            ids = [self.outbox.put(m) for m in messages]
        return self._queued(ids, messages)

    def tick(self, now: float) -> List[ActionResult]:
        """Resolutions remediation did not hand over (see :class:`LateResolutions`), and reminders: every
        ``repeat``, one message for the alerts still firing (none when repeat is 0)."""
        results = self._resolve_late(now)
        return results + self._remind(now) if self.repeat else results

    def _resolve_late(self, now: float) -> List[ActionResult]:
        due = self._late(now)
        if not due:
            return []

        def resolved(snap: Mapping[str, Any], t: AlertTransition) -> Dict[str, Any]:
            return dict(snap, state="resolved", value=t.value, at=t.at, next_step="")

        with self._lock:
            dry_items = []
            for key, t in due.items():
                told = self._dry.pop(key, None)
                if told is not None and not t.silenced:
                    dry_items.append(("RESOLVED", resolved(told["snap"], t)))
            results = self._dry_results(self._messages(dry_items))
            with self.outbox.transaction() as db:
                items = []
                for key, t in due.items():
                    row = db.execute("SELECT snapshot FROM notify_episodes WHERE action = ? AND key = ?",
                                     (self.name, key)).fetchone()
                    if row is None:
                        continue
                    db.execute("DELETE FROM notify_episodes WHERE action = ? AND key = ?", (self.name, key))
                    if not t.silenced:  # a silenced alert sends no message: it is only forgotten
                        items.append(("RESOLVED", resolved(json.loads(row[0]), t)))
                messages = self._messages(items)
                ids = [self.outbox.put(m) for m in messages]
        return results + self._queued(ids, messages)

    def _remind(self, now: float) -> List[ActionResult]:
        with self._lock:
            if now < self._next_check:
                return []
            due = now - self.repeat
            items: List[Tuple[str, Dict[str, Any]]] = []
            dry_items = []
            for told in self._dry.values():
                if told["last_sent"] <= due:
                    told["last_sent"] = now
                    dry_items.append(("STILL FIRING", dict(told["snap"], at=now)))
            results = self._dry_results(self._messages(dry_items), "remind")
            with self.outbox.transaction() as db:
                rows = db.execute("SELECT key, snapshot FROM notify_episodes WHERE action = ? AND last_sent <= ? "
                                  "ORDER BY started_at", (self.name, due)).fetchall()
                for key, text in rows:
                    items.append(("STILL FIRING", dict(json.loads(text), at=now)))
                    db.execute("UPDATE notify_episodes SET last_sent = ? WHERE action = ? AND key = ?",
                               (now, self.name, key))
                # a reminder still waiting for a receiver that is down is not queued again and again
                if self.group:
                    keyed = [("reminder", m) for m in self._messages(items)]
                else:
                    keyed = [("reminder " + episode_key(snap["rule"], snap["labels"]), self.compose([(s, snap)]))
                             for s, snap in items]
                for dedupe, message in keyed:
                    results += self._queued([self.outbox.put(message, dedupe_key=dedupe)], [message], "reminder")
                oldest = db.execute("SELECT min(last_sent) FROM notify_episodes WHERE action = ?",
                                    (self.name,)).fetchone()[0]
            sent = [t["last_sent"] for t in self._dry.values()] + ([oldest] if oldest is not None else [])
            self._next_check = min(sent) + self.repeat if sent else now + self.repeat
        return results

    def observe(self, result: ActionResult) -> None:
        """Add what another action did to the alert it did it for, if this action told of that alert."""
        request = result.request
        if request is None:
            return
        key, entry = episode_key(request.rule, request.labels), history_entry(result)
        with self._lock:
            told = self._dry.get(key)
            if told is not None:
                told["snap"]["history"] = [*told["snap"]["history"], entry][-HISTORY_KEEP:]
            if request.dry_run:
                return
            with self.outbox.transaction() as db:
                row = db.execute("SELECT snapshot FROM notify_episodes WHERE action = ? AND key = ?",
                                 (self.name, key)).fetchone()
                if row is None:
                    return
                snap = json.loads(row[0])
                snap["history"] = [*snap["history"], entry][-HISTORY_KEEP:]
                if request.next_step:
                    snap["next_step"] = request.next_step
                db.execute("UPDATE notify_episodes SET snapshot = ? WHERE action = ? AND key = ?",
                           (json.dumps(snap), self.name, key))

    # -- delivery (the outbox's worker) ------------------------------------------------------------

    def _deliver(self, message: Dict[str, Any]) -> None:
        """Send to every URL that does not have the message yet; raise what the outbox needs to know."""
        from apprise import NotifyFormat

        if not self.targets:  # the shipped configuration's `urls = []`: the message is only logged
            self.outbox.log.info("notify %s has no URL; the message:\n%s\n%s", self.name, message["title"],
                                 message["body"])
            return
        done = set(message.get("done", ()))
        failed = []
        for target in self.targets:
            if target.key in done:
                continue
            if target.apprise.notify(body=message["body"], title=message["title"], notify_type=message["type"],
                                     body_format=NotifyFormat.TEXT):
                done.add(target.key)
            else:
                failed.append(target.shown)
        if not failed:
            return
        error = f"apprise could not deliver to {', '.join(failed)} (its log says why)"
        if done != set(message.get("done", ())):
            raise Partial(error, {**message, "done": sorted(done)})
        raise RuntimeError(error)

    def close(self) -> None:
        live.remove(self._serial)
        self.outbox.close()


live = Live()


@hookimpl
def npuagent_action_result(result: ActionResult) -> None:
    """Keep the history of the alerts the notify actions told of, for their reminders and resolutions."""
    if result.request is None or result.action in open_names():
        return  # what a telling action did is no news for a message
    for notify in live.newest():
        try:
            notify.observe(result)
        except Exception:
            log.exception("notify %s: could not record the result of %s", notify.name, result.action)


@hookimpl
def npuagent_alert_transition(transition: AlertTransition) -> None:
    """Note resolutions, for the alerts remediation will not tell the notify actions of (escalations)."""
    if resolution(transition):
        for notify in live.newest():
            notify.alert_resolved(transition)


@hookimpl
def npuagent_action_types() -> List[ActionType]:
    return [ActionType("notify", Notify, help="Tell people through apprise (DingTalk, WeCom, mail, Slack, …): "
                                              "what happened, what the agent did, what comes next.", options=[
        Option("urls", Array(String()),
               help='apprise URLs, e.g. ["dingtalk://{env:DINGTALK_TOKEN}/", "wecombot://{secret:WECOM_KEY}"]. '
                    "{env:NAME} is replaced by the environment variable NAME, {secret:NAME} by NAME of "
                    "secrets_file; the values are never logged nor stored. With none, messages are logged "
                    "and kept in the audit log only."),
        Option("secrets_file", String(), "",
               "A file of NAME=value lines for {secret:NAME} in urls; it must be owned by the agent's user or root "
               "and mode 0600 (or 0400), else it is refused."),
        Option("title", String(), "",
               "The title, a template: {status} (FIRING, RESOLVED:2, …), {rules}, {count}, {host}, {severity}, "
               "{headline} (the summary of a single alert). Default: \"[{status}] {rules} on {host}: {headline}\"."),
        Option("body", String(), "",
               "The text of each alert, a template: {text} (the default: what happened, value, what was done, "
               "outcome, next step), {rule}, {status}, {state}, {severity}, {summary}, {labels}, {value}, {since}, "
               "{at}, {duration}, {history}, {next_step}, {host}, and the alert's labels and annotations by name."),
        Option("repeat", Duration(allow_zero=True), 0.0,
               'While an alert keeps firing, a reminder every this long ("0s": never).'),
        Option("group", Boolean(), True,
               "The alerts of one evaluation become one message (false: one message per alert)."),
    ])]
