"""The ``alertmanager`` action: hand the host's alerts to Alertmanager, as Prometheus does.

A fleet's grouping, inhibition, silences and routing belong to Alertmanager (run as its HA cluster);
each agent only posts its alerts to the v2 API (``POST {url}/api/v2/alerts``, a JSON list of
``{labels, annotations, startsAt, endsAt, generatorURL}``). Like ``notify`` this is a telling action:
remediation calls ``run_group`` with the firing and resolved alerts of each evaluation and ``tick``
after every evaluation; the posts go through the durable outbox (:mod:`npuagent.outbox`), so a post
made while Alertmanager or the network is down arrives when they are back, after a restart too.

Decisions, and why:

* **Labels.** ``alertname`` is the rule; then the alert's own labels; then ``severity`` (the rule's,
  unless the alert has that label); then the action's ``labels`` (as Prometheus's ``external_labels``:
  an alert's own label of the same name wins); then ``instance``, the host's name unless set. Label
  names Alertmanager would refuse are made valid (``_`` for other characters); empty values are
  dropped, as Prometheus drops them.
* **Annotations.** The rule's annotations (``summary`` among them), the ``value``, what the agent did
  (``actions``) and what it will do next (``next_step``), so a receiver's template can show them.
* **Re-posts and endsAt.** Firing alerts are re-posted every ``repeat`` (1 m, Prometheus's
  ``resend_delay``), each post saying ``endsAt`` = the time of sending + 4 × ``repeat``, as Prometheus
  does: Alertmanager keeps the alert while the agent lives, and resolves it by itself 4 × ``repeat``
  after an agent that died stopped posting (an "agent down" alert from Prometheus's ``up`` covers that
  case). ``endsAt`` is computed when a post is *sent*, not when it was queued, so a post that waited in
  the outbox does not arrive already expired. A re-post still waiting for a receiver that is down is
  not queued again (the outbox's dedupe key); a restarted agent re-posts its firing alerts at its first
  evaluation. A resolution posts the alert with ``endsAt`` = the time it resolved and the labels it
  fired with (kept in the outbox's file, table ``am_alerts``, in the same transaction as the post is
  queued). A resolution of an alert this action never posted is posted all the same: Alertmanager
  takes it as a no-op, and it clears an alert an agent that lost its state left behind. Resolutions
  remediation does not hand over (the action was only an ``escalate`` target, or the alert was
  silenced here when it resolved) are learnt from the alert transitions and posted at a ``tick`` 30 s
  later (:class:`~npuagent.builtin.notify.LateResolutions`).
* **Several Alertmanagers** (``urls``: the members of an HA cluster, which share silences and
  notifications but not alerts) each get every post. A post is done when one of them took it: the
  others catch up at the next re-post, and a resolution they missed expires at its ``endsAt``. One dead
  member so never holds the queue of the live ones.
* **Answers.** 2xx: done. 4xx (except 408 and 429): Alertmanager will never take this post, which is
  set aside as rejected with its error (``npuagent`` logs it) rather than blocking the queue. 5xx,
  408, 429, a refused connection, a timeout: tried again with backoff. ``timeout`` (the key every
  action has) bounds each attempt.
* **Secrets.** A URL may carry basic-auth credentials (``http://user:{env:AM_PASSWORD}@am:9093``) with
  the same ``{env:NAME}`` / ``{secret:NAME}`` placeholders and ``secrets_file`` as ``notify``; they are
  sent as an ``Authorization`` header and masked wherever a URL is shown.
"""

from __future__ import annotations

import base64
import datetime
import http.client
import json
import logging
import os
import re
import socket
import threading
import time as _time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Dict, List, Mapping, Sequence

from npuagent import hookimpl
from npuagent.builtin.notify import (
    LateResolutions,
    Live,
    episode_key,
    history_entry,
    mask,
    masker,
    read_secrets_file,
    render,
    resolution,
    substitute,
    value_text,
)
from npuagent.model import ActionRequest, ActionResult, ActionType, AlertTransition
from npuagent.options import Array, Duration, Map, Option, String
from npuagent.outbox import Outbox, Rejected

#: A firing alert is valid this many re-post intervals after it was sent (Prometheus uses 4).
HORIZON = 4
#: 4xx answers that mean "later", not "never".
RETRYABLE_4XX = (408, 429)
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def rfc3339(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def label_name(name: str) -> str:
    """A label name Alertmanager accepts."""
    if _LABEL_NAME.fullmatch(name):
        return name
    fixed = re.sub(r"[^a-zA-Z0-9_]", "_", name)
    return fixed if _LABEL_NAME.fullmatch(fixed) else "_" + fixed


class Receiver:
    """One Alertmanager: where to post, the credentials to post with, and what may be shown of it."""

    def __init__(self, url: str, index: int) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"urls[{index}]: expected http://host:port or https://host:port of an Alertmanager")
        self.headers = {"Content-Type": "application/json", "User-Agent": "npuagent"}
        if parts.username is not None:
            user = urllib.parse.unquote(parts.username)
            password = urllib.parse.unquote(parts.password or "")
            masker.add([password])
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            self.headers["Authorization"] = f"Basic {token}"
        netloc = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        if parts.port is not None:
            netloc += f":{parts.port}"
        base = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), parts.query, ""))
        self.endpoint = base + "/api/v2/alerts"
        self.shown = mask(base)

    def post(self, body: bytes, timeout: float) -> None:
        request = urllib.request.Request(self.endpoint, data=body, method="POST", headers=self.headers)
        with urllib.request.urlopen(request, timeout=timeout) as r:
            r.read()


class Alertmanager(LateResolutions):
    """The ``alertmanager`` action (see the module docstring)."""

    def __init__(self, ctx: Any, time: Any = _time.time) -> None:
        o = ctx.options
        self.ctx, self.name, self.time = ctx, ctx.name, time
        templates = ([o["url"]] if o["url"] else []) + list(o["urls"])
        if not templates:
            raise ValueError('give the Alertmanager: url = "http://alertmanager:9093" (or urls = [...] for the '
                             'members of a cluster)')
        secrets = read_secrets_file(o["secrets_file"]) if o["secrets_file"] else {}
        self.receivers = []
        for i, template in enumerate(templates):
            url, used = substitute(template, secrets, f"urls[{i}]")
            masker.add(used)
            self.receivers.append(Receiver(url, i))
        self.repeat: float = o["repeat"]
        self.timeout: float = o["timeout"]
        self.extra: Dict[str, str] = {label_name(k): v for k, v in o["labels"].items()}
        self.host = socket.gethostname()
        self.instance: str = o["instance"] or self.host
        self.generator: str = o["generator_url"]
        render(self.generator, self._url_fields(ActionRequest(self.name, "rule", {}, "firing")), "generator_url")
        if not ctx.state_dir:
            raise ValueError("alertmanager needs a state directory for its outbox")
        os.makedirs(ctx.state_dir, mode=0o700, exist_ok=True)
        self._lock = threading.Lock()
        self._next_repost = 0.0
        self._init_late()
        self.outbox = Outbox(os.path.join(ctx.state_dir, "outbox.db"), self.name, self._deliver,
                             logging.getLogger(f"npuagent.alertmanager.{self.name}"), start=False)
        with self.outbox.transaction() as db:
            db.execute("""CREATE TABLE IF NOT EXISTS am_alerts (
                action TEXT NOT NULL, key TEXT NOT NULL, alert TEXT NOT NULL, PRIMARY KEY (action, key))""")
        self.outbox.start()
        self._serial = live.add(self)

    # -- what is posted ------------------------------------------------------------------------------

    def _url_fields(self, r: ActionRequest) -> Dict[str, str]:
        fields = {k: urllib.parse.quote(str(v), safe="") for k, v in r.labels.items()}
        fields.update(host=self.host, instance=urllib.parse.quote(self.instance, safe=""),
                      rule=urllib.parse.quote(r.rule, safe=""))
        return fields

    def labels(self, r: ActionRequest) -> Dict[str, str]:
        out = {"instance": self.instance, **self.extra}
        if r.severity:
            out["severity"] = r.severity
        out.update({label_name(k): str(v) for k, v in r.labels.items() if not k.startswith("__")})
        out["alertname"] = r.rule
        return {k: v for k, v in out.items() if v != ""}

    def alert(self, r: ActionRequest) -> Dict[str, Any]:
        """The alert as queued: times as numbers, ``endsAt`` None while firing (set when sent)."""
        annotations = {k: str(v) for k, v in r.annotations.items() if v != ""}
        if r.summary:
            annotations["summary"] = r.summary
        if r.value is not None:
            annotations["value"] = value_text(r.value)
        done = ["{}: {}{}".format(a, o, f": {out}" if out else "") for a, o, out in map(history_entry, r.history)]
        if done:
            annotations["actions"] = mask("\n".join(done))
        if r.next_step and r.state == "firing":
            annotations["next_step"] = r.next_step
        return {"labels": self.labels(r), "annotations": annotations, "startsAt": r.started_at or r.at,
                "endsAt": None if r.state == "firing" else r.at,
                "generatorURL": render(self.generator, self._url_fields(r), "generator_url")}

    def wire(self, alerts: Sequence[Mapping[str, Any]], now: float) -> List[Dict[str, Any]]:
        """The alerts as Alertmanager takes them, a firing one valid for 4 × ``repeat`` from ``now``."""
        out = []
        for a in alerts:
            ends = a["endsAt"] if a["endsAt"] is not None else max(now, a["startsAt"]) + HORIZON * self.repeat
            out.append({"labels": a["labels"], "annotations": a["annotations"], "startsAt": rfc3339(a["startsAt"]),
                        "endsAt": rfc3339(max(ends, a["startsAt"])), "generatorURL": a["generatorURL"]})
        return out

    def _shown(self) -> str:
        return ", ".join(r.shown for r in self.receivers)

    # -- telling ---------------------------------------------------------------------------------------

    def run(self, request: ActionRequest) -> ActionResult:
        return self.run_group([request])[0]

    def run_group(self, requests: Sequence[ActionRequest]) -> List[ActionResult]:
        """One post for the alerts of one evaluation, queued with the record of what fires."""
        self._taken(requests)
        alerts = []
        dry = all(r.dry_run for r in requests)
        with self._lock:
            if dry:
                alerts = [self.alert(r) for r in requests]
                body = json.dumps(self.wire(alerts, self.time()), indent=1, ensure_ascii=False)
                return [ActionResult(self.name, "dry-run", f"would post {len(alerts)} alert(s) to {self._shown()}:"
                                                           f"\n{body}")]
            with self.outbox.transaction() as db:
                for r in requests:
                    key = episode_key(r.rule, r.labels)
                    if r.state == "firing":
                        alert = self.alert(r)
                        db.execute("INSERT OR REPLACE INTO am_alerts VALUES (?, ?, ?)",
                                   (self.name, key, json.dumps(alert)))
                    else:
                        alert = self.alert(r)
                        row = db.execute("SELECT alert FROM am_alerts WHERE action = ? AND key = ?",
                                         (self.name, key)).fetchone()
                        if row is not None:  # resolve exactly what fired: its labels and start
                            fired = json.loads(row[0])
                            alert.update(labels=fired["labels"], startsAt=fired["startsAt"])
                            db.execute("DELETE FROM am_alerts WHERE action = ? AND key = ?", (self.name, key))
                    alerts.append(alert)
                msg_id = self.outbox.put({"alerts": alerts})
        states = ", ".join(f"{a['labels']['alertname']} ({'firing' if a['endsAt'] is None else 'resolved'})"
                           for a in alerts)
        return [ActionResult(self.name, "success", f"queued post {msg_id} to {self._shown()}: {states}")]

    def tick(self, now: float) -> List[ActionResult]:
        """Every ``repeat``, post every alert still firing again, so that Alertmanager keeps it; and post the
        resolutions remediation did not hand over (see :class:`~npuagent.builtin.notify.LateResolutions`)."""
        results = self._resolve_late(now)
        return results + self._repost(now)

    def _resolve_late(self, now: float) -> List[ActionResult]:
        """Silenced here or not, an alert that resolved is resolved in Alertmanager: it routes and silences
        for the fleet, and would otherwise keep the alert for as long as the agent re-posts it."""
        due = self._late(now)
        if not due:
            return []
        with self._lock, self.outbox.transaction() as db:
            alerts = []
            for key, t in due.items():
                row = db.execute("SELECT alert FROM am_alerts WHERE action = ? AND key = ?",
                                 (self.name, key)).fetchone()
                if row is not None:
                    db.execute("DELETE FROM am_alerts WHERE action = ? AND key = ?", (self.name, key))
                    alerts.append(dict(json.loads(row[0]), endsAt=max(t.at, json.loads(row[0])["startsAt"])))
            if not alerts:
                return []
            msg_id = self.outbox.put({"alerts": alerts})
        return [ActionResult(self.name, "success", f"queued post {msg_id} of {len(alerts)} resolved alert(s)")]

    def _repost(self, now: float) -> List[ActionResult]:
        with self._lock:
            if now < self._next_repost:
                return []
            self._next_repost = now + self.repeat
            with self.outbox.transaction() as db:
                alerts = [json.loads(a) for (a,) in db.execute(
                    "SELECT alert FROM am_alerts WHERE action = ? ORDER BY rowid", (self.name,))]
                if not alerts:
                    return []
                msg_id = self.outbox.put({"alerts": alerts}, dedupe_key="repost")
        if msg_id is None:
            return []  # the previous re-post still waits: it carries these alerts, valid from when it is sent
        return [ActionResult(self.name, "success", f"queued re-post {msg_id} of {len(alerts)} firing alert(s)")]

    # -- delivery (the outbox's worker) ------------------------------------------------------------

    def _deliver(self, message: Dict[str, Any]) -> None:
        body = json.dumps(self.wire(message["alerts"], self.time()), ensure_ascii=False).encode()
        accepted, refused, failed = [], [], []
        for receiver in self.receivers:
            try:
                receiver.post(body, self.timeout)
            except urllib.error.HTTPError as e:
                answer = " ".join(e.read(500).decode(errors="replace").split())
                text = f"{receiver.shown}: {e.code} {e.reason}" + (f": {answer}" if answer else "")
                (failed if e.code >= 500 or e.code in RETRYABLE_4XX else refused).append(mask(text))
            except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
                failed.append(mask(f"{receiver.shown}: {getattr(e, 'reason', e)}"))
            else:
                accepted.append(receiver.shown)
        if accepted:
            if refused or failed:
                self.outbox.log.warning("alertmanager %s: post taken by %s but not by %s", self.name,
                                        ", ".join(accepted), "; ".join(refused + failed))
            return
        if failed:
            raise RuntimeError("; ".join(failed + refused))
        raise Rejected("; ".join(refused))

    def close(self) -> None:
        live.remove(self._serial)
        self.outbox.close()


live = Live()


@hookimpl
def npuagent_alert_transition(transition: AlertTransition) -> None:
    """Note resolutions, for the alerts remediation will not tell the alertmanager actions of."""
    if resolution(transition):
        for action in live.newest():
            action.alert_resolved(transition)


@hookimpl
def npuagent_action_types() -> List[ActionType]:
    return [ActionType("alertmanager", Alertmanager, help="Post the alerts to Alertmanager's v2 API, firing and "
                                                          "resolved, and re-post firing ones as Prometheus does.",
                       options=[
        Option("url", String(), "",
               'The Alertmanager, e.g. "http://alertmanager:9093" (its /api/v2/alerts is posted to). Basic auth: '
               '"http://user:{env:AM_PASSWORD}@host:9093"; {env:NAME} and {secret:NAME} as in notify.'),
        Option("urls", Array(String()), (),
               "Several Alertmanagers (the members of an HA cluster): each gets every post."),
        Option("secrets_file", String(), "",
               "A file of NAME=value lines for {secret:NAME} in the URLs; owned by the agent's user or root, "
               "mode 0600, else refused."),
        Option("repeat", Duration(min=1.0), 60.0,
               "Firing alerts are posted again this often; each post is valid for 4 times this long, so "
               "Alertmanager resolves the alerts of an agent that stopped posting."),
        Option("labels", Map(String()), {},
               'Labels added to every alert, as Prometheus\'s external_labels: { cluster = "bj-1" }. An alert\'s '
               "own label of the same name wins."),
        Option("instance", String(), "", "The instance label (default: the host's name)."),
        Option("generator_url", String(), "http://{host}:9740/status",
               "The alert's generatorURL, a template: {host}, {instance}, {rule} and the alert's labels, "
               "URL-quoted. Set it when the agent's HTTP listener is elsewhere."),
    ])]
