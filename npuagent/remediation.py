"""Remediation: the actions of a rule, run on its alert's transitions, behind guards, with an audit log.

A rule's ``actions`` hold two kinds: actions that *tell* (their object has
``run_group``: notify, alertmanager) run on every firing and every resolution;
actions that *heal* form a ladder, tried one at a time in the rule's order (free the
cache, throttle, restart, page a person). The ladder moves to its next step when
the current one is refused by its budget, fails, or was ineffective: the alert has
not cleared ``verify`` after it ran. An action's ``escalate`` names its next step
explicitly.

Guards, all decided before anything runs:

* a ``cooldown`` per (action, target): an action never runs twice on one target
  inside it, restarts of the agent included (the audit log is the memory);
* a ``budget = {max, within}`` per (action, target), in wall-clock windows;
* one action per target at a time;
* a host-wide breaker: at most ``[agent] breaker.max`` disruptive actions (restarts)
  per ``breaker.within`` across all targets; then it stays open, refusing disruptive
  actions, until ``npuagent breaker reset``;
* ``dry_run``, for the whole agent or per action: the action is asked to say what it
  would do and does nothing.

Every attempt is written to the audit log before it runs (its intent) and after
(outcome, duration, an excerpt of its output), so an agent killed in the middle
leaves an attempt without outcome, and never runs it twice inside its cooldown.
Actions that change a service (throttle, environment) are reverted when the alert
resolves, or after their ``ttl``. Nothing here runs on the collection path: the
loop only hands transitions over; actions run in a small pool of workers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .model import ActionRequest, ActionResult, AlertTransition
from .options import Boolean, Duration, Integer, Option, String, Table

log = logging.getLogger("npuagent.remediation")

WORKERS = 4
OUTPUT_EXCERPT = 2000

#: Keys every action has, whatever its type.
ACTION_COMMON = (
    Option("name", String()),
    Option("type", String(), help="The action type."),
    Option("cooldown", Duration(allow_zero=True), 0.0,
           "After it ran on a target, it does not run on that target again for this long."),
    Option("budget", Table([Option("max", Integer(min=1), help="Runs allowed in the window."),
                            Option("within", Duration(), help="The window.")]), None,
           'At most `max` runs per target `within` the window, e.g. { max = 4, within = "1h" }; then the '
           "rule's ladder escalates."),
    Option("verify", Duration(allow_zero=True), 0.0,
           'If the alert has not cleared this long after the action ran, it was ineffective: escalate ("0s": do '
           "not check)."),
    Option("escalate", String(), "", "The action to run next when this one is spent, fails or does not help "
                                     "(default: the next healing action of the rule's list)."),
    Option("ttl", Duration(allow_zero=True), 0.0, "Revert the change after this long even if the alert still fires."),
    Option("revert", Boolean(), True, "Undo the change when the alert resolves (for actions that can)."),
    Option("dry_run", Boolean(), False, "Say what it would do, and do nothing."),
    Option("timeout", Duration(), 60.0, "The action is abandoned (its commands killed) after this long."),
)

#: The ``[agent]`` keys of remediation (read by config.py).
AGENT_OPTIONS = (
    Option("dry_run", Boolean(), False, "Every action says what it would do, and does nothing."),
    Option("breaker", Table([Option("max", Integer(min=1), 3, "Disruptive actions allowed in the window."),
                             Option("within", Duration(), 3600.0, "The window.")]),
           {"max": 3, "within": 3600.0},
           "The host-wide breaker: after `max` disruptive actions (restarts) `within` the window, no more run "
           "until `npuagent breaker reset`."),
)


@dataclass
class Bound:
    """A configured action: its name, options and object."""

    name: str
    type: str
    options: Mapping[str, Any]
    impl: Any
    ctx: Any
    disruptive: bool = False

    @property
    def tells(self) -> bool:
        return hasattr(self.impl, "run_group")

    def target(self, request: ActionRequest) -> str:
        fn = getattr(self.impl, "target", None)
        if fn is not None:
            return str(fn(request))
        return ",".join(f"{k}={v}" for k, v in sorted(request.labels.items())) or "-"


@dataclass
class Episode:
    """One alert from firing to resolved, and what the agent did about it."""

    rule: str
    labels: Dict[str, str]
    started_at: float
    transition: AlertTransition
    step: int = -1                    # index in the ladder of the action tried last
    history: List[ActionResult] = field(default_factory=list)
    verify_at: Optional[float] = None
    busy: bool = False
    waiting: bool = False             # the current step waits for its target to be free
    changed: List[Tuple[Bound, ActionRequest, float]] = field(default_factory=list)  # to revert, with ttl ends


class Remediation:
    """Runs actions on transitions. ``handle`` and ``tick`` are called on the loop's thread and only queue work."""

    def __init__(self, actions: Mapping[str, Bound], state: Any, observe: Any = None,
                 clock: Any = None, dry_run: bool = False,
                 breaker: Mapping[str, Any] = AGENT_OPTIONS[1].default) -> None:
        self.actions = dict(actions)
        self.state = state
        self.observe = observe  # plugins.action_result
        self.clock = clock or time
        self.dry_run = dry_run
        self.breaker_max = breaker["max"]
        self.breaker_within = breaker["within"]
        self.pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="remediation")
        self.episodes: Dict[Tuple[str, Tuple[Tuple[str, str], ...]], Episode] = {}
        self.counts: Counter = Counter()
        self._busy_targets: set = set()
        self._lock = threading.RLock()
        self._futures: List[Future] = []

    # -- the loop's side ---------------------------------------------------------

    def handle(self, transitions: Sequence[AlertTransition], rules: Mapping[str, Any]) -> None:
        """Start what the transitions of one evaluation call for. Silenced alerts call for nothing."""
        tell: Dict[str, List[ActionRequest]] = {}
        for t in transitions:
            rule = rules.get(t.rule)
            if rule is None or t.silenced:
                continue
            fired = t.state == "firing" and t.previous in ("inactive", "pending")
            resolved = t.state == "inactive" and t.previous in ("firing", "resolving")
            if not (fired or resolved):
                continue
            key = (t.rule, tuple(sorted(t.labels.items())))
            with self._lock:
                if fired:
                    episode = self.episodes[key] = Episode(t.rule, dict(t.labels), t.at, t)
                else:
                    episode = self.episodes.pop(key, None) or Episode(t.rule, dict(t.labels), t.at, t)
                    episode.transition = t
            names = list(rule.options["actions"])
            # the first step is started before the message is made, under the lock its end needs: the message
            # says which step runs now (or why none could), never "if this does not help" of a step under way
            with self._lock:
                if fired:
                    self._step(episode, names, 0)
                else:
                    self._revert_all(episode)
                for name in names:
                    bound = self.actions.get(name)
                    if bound is not None and bound.tells:
                        request = self._request(bound, episode, "firing" if fired else "resolved", names)
                        tell.setdefault(name, []).append(request)
        for name, requests in tell.items():
            self._submit(self._tell, self.actions[name], requests)

    def tick(self, now: float, rules: Mapping[str, Any]) -> None:
        """After every evaluation: verify timers, ttl reverts, targets that became free, the actions' own ticks."""
        with self._lock:
            episodes = list(self.episodes.values())
        for episode in episodes:
            rule = rules.get(episode.rule)
            if rule is None:
                continue
            names = list(rule.options["actions"])
            with self._lock:
                if episode.busy:
                    continue
                if episode.waiting:
                    episode.waiting = False
                    self._step(episode, names, episode.step)
                elif episode.verify_at is not None and now >= episode.verify_at:
                    episode.verify_at = None
                    ladder = self._ladder(names)
                    current = ladder[episode.step] if 0 <= episode.step < len(ladder) else None
                    log.warning("%s: still firing after %s: escalating", episode.rule,
                                current.name if current else "the last step")
                    explicit = current.options["escalate"] if current else ""
                    if not (explicit and self._escalate_outside(episode, ladder, explicit, names)):
                        self._step(episode, names, names_index(ladder, explicit) if explicit
                                   else episode.step + 1)
                for item in [c for c in episode.changed if c[2] and now >= c[2]]:
                    episode.changed.remove(item)
                    self._submit(self._revert, item[0], item[1])
        for bound in self.actions.values():
            if hasattr(bound.impl, "tick"):
                self._submit(self._tick, bound, now)

    # -- decisions -----------------------------------------------------------------

    def _ladder(self, names: Sequence[str]) -> List[Bound]:
        return [self.actions[n] for n in names if n in self.actions and not self.actions[n].tells]

    def _request(self, bound: Bound, episode: Episode, state: str, names: Sequence[str]) -> ActionRequest:
        t = episode.transition
        return ActionRequest(
            action=bound.name, rule=episode.rule, labels=dict(episode.labels), state=state, value=t.value,
            summary=t.annotations.get("summary", ""), dry_run=self.dry_run or bound.options["dry_run"],
            annotations=dict(t.annotations), severity=t.severity, started_at=episode.started_at,
            at=self.clock.time(), history=tuple(episode.history), next_step=self._next_step(episode, names))

    def _next_step(self, episode: Episode, names: Sequence[str]) -> str:
        ladder = self._ladder(names)
        current = ladder[episode.step] if 0 <= episode.step < len(ladder) else None
        now = f"running {current.name} now; " if current is not None and episode.busy else ""
        upcoming = ladder[episode.step + 1:] if episode.step >= 0 else ladder
        if not upcoming:
            return now + "nothing more: the agent has no further remedy for this alert" if episode.step >= 0 else ""
        verify = current.options["verify"] if current else 0.0
        when = f"if not cleared within {verify:g}s, " if verify else "if it fails, " if current else \
            "if this does not help, "
        return now + when + "then " + ", then ".join(b.name for b in upcoming)

    def _step(self, episode: Episode, names: Sequence[str], index: int) -> None:
        """Try the ladder from ``index``: the first step the guards let through runs."""
        ladder = self._ladder(names)
        now = self.clock.time()
        while index < len(ladder):
            bound = ladder[index]
            explicit = bound.options["escalate"]
            request = self._request(bound, episode, "firing", names)
            target = bound.target(request)
            refusal = self._refusal(bound, target, now)
            episode.step = index
            if refusal == "busy":
                episode.waiting = True  # tried again at the next tick, not skipped
                return
            if refusal is None:
                self._start(bound, request, target, episode, names)
                return
            log.warning("%s: %s on %s refused: %s", episode.rule, bound.name, target, refusal)
            self._record_refusal(bound, request, target, refusal, episode)
            if explicit and self._escalate_outside(episode, ladder, explicit, names):
                return
            index = names_index(ladder, explicit) if explicit else index + 1

    def _escalate_outside(self, episode: Episode, ladder: Sequence[Bound], name: str, names: Sequence[str]) -> bool:
        """``escalate`` names an action outside the rule's ladder (page a person): run it, and the ladder ends."""
        if any(b.name == name for b in ladder) or name not in self.actions:
            return False
        bound = self.actions[name]
        episode.step = len(ladder)
        request = self._request(bound, episode, "firing", names)
        target = bound.name if bound.tells else bound.target(request)
        refusal = self._refusal(bound, target, self.clock.time())
        if refusal is not None and refusal != "busy":  # a person paged an hour ago need not be paged again
            log.warning("%s: escalation to %s refused: %s", episode.rule, name, refusal)
            self._record_refusal(bound, request, target, refusal, episode)
            return True
        if bound.tells:
            self._submit(self._tell, bound, [request])
        else:
            self._start(bound, request, target, episode, names)
        return True

    def _refusal(self, bound: Bound, target: str, now: float) -> Optional[str]:
        o = bound.options
        if target in self._busy_targets:
            return "busy"
        if bound.disruptive and not (self.dry_run or o["dry_run"]):
            if self.state.breaker():
                return "the host-wide breaker is open (npuagent breaker reset)"
            recent = self.state.attempts(since=now - self.breaker_within, disruptive=True)
            if len(recent) >= self.breaker_max:
                reason = f"{len(recent)} disruptive actions within {self.breaker_within:g}s"
                self.state.open_breaker(now, reason)
                log.error("host-wide breaker opened: %s; disruptive actions stop until `npuagent breaker reset`",
                          reason)
                return f"the host-wide breaker opened: {reason}"
        runs = [a for a in self.state.attempts(action=bound.name, target=target,
                                               since=now - max(o["cooldown"], (o["budget"] or {}).get("within", 0)))
                if a["kind"] == "run" and a["outcome"] not in ("skipped",)]
        if o["cooldown"] and any(a["at"] > now - o["cooldown"] for a in runs):
            return f"in its cooldown ({o['cooldown']:g}s)"
        budget = o["budget"]
        if budget and sum(1 for a in runs if a["at"] > now - budget["within"]) >= budget["max"]:
            return f"its budget is spent ({budget['max']} within {budget['within']:g}s)"
        return None

    def _record_refusal(self, bound: Bound, request: ActionRequest, target: str, why: str, episode: Episode) -> None:
        now = self.clock.time()
        attempt = self.state.audit_intent(now, request.rule, request.labels, bound.name, target, "run",
                                          bound.disruptive, request.dry_run)
        self.state.audit_outcome(attempt, "skipped", now, 0.0, why)
        result = ActionResult(bound.name, "skipped", why, 0.0, request)
        episode.history.append(result)
        self.counts[(bound.name, "skipped")] += 1

    # -- work (in the pool) ----------------------------------------------------------

    def _submit(self, fn: Any, *args: Any) -> None:
        future = self.pool.submit(self._guarded, fn, *args)
        with self._lock:
            self._futures = [f for f in self._futures if not f.done()] + [future]

    def _guarded(self, fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("remediation work failed")

    def _attempt(self, bound: Bound, request: ActionRequest, target: str, kind: str,
                 call: Any) -> ActionResult:
        """Audit the intent, call, audit the outcome, count, tell the observers."""
        started = self.clock.time()
        attempt = self.state.audit_intent(started, request.rule, request.labels, bound.name, target, kind,
                                          bound.disruptive, request.dry_run)
        t0 = time.monotonic()
        try:
            with bound.ctx.deadline_here(t0 + bound.options["timeout"]):
                result = call()
            if not isinstance(result, ActionResult):
                result = ActionResult(bound.name, "failure", f"the action returned {result!r}")
        except Exception as e:
            result = ActionResult(bound.name, "failure", f"{type(e).__name__}: {e}")
        duration = time.monotonic() - t0
        if duration > bound.options["timeout"] and result.outcome == "success":
            result = replace(result, outcome="timeout")
        result = replace(result, duration=duration, request=request)
        self.state.audit_outcome(attempt, result.outcome, self.clock.time(), duration, result.output[:OUTPUT_EXCERPT])
        self.counts[(bound.name, result.outcome)] += 1
        log.info("%s %s on %s for %s: %s (%.2fs)%s", kind, bound.name, target, request.rule, result.outcome,
                 duration, f": {result.output[:200]}" if result.output else "")
        if self.observe is not None:
            self.observe(result)
        return result

    def _start(self, bound: Bound, request: ActionRequest, target: str, episode: Episode,
               names: Sequence[str]) -> None:
        """Hand a step to a worker; its target is busy from now on, not from when a worker takes it up."""
        with self._lock:
            episode.busy = True
            self._busy_targets.add(target)
        self._submit(self._run, bound, request, target, episode, names)

    def _run(self, bound: Bound, request: ActionRequest, target: str, episode: Episode,
             names: Sequence[str]) -> None:
        try:
            result = self._attempt(bound, request, target, "run", lambda: bound.impl.run(request))
        finally:
            with self._lock:
                self._busy_targets.discard(target)
        with self._lock:
            episode.busy = False
            episode.history.append(result)
            still = self.episodes.get((episode.rule, tuple(sorted(episode.labels.items())))) is episode
            if result.ok and not request.dry_run and hasattr(bound.impl, "revert"):
                ttl = bound.options["ttl"]
                episode.changed.append((bound, request, self.clock.time() + ttl if ttl else 0.0))
                if not still:  # resolved while it ran: undo at once
                    self._revert_all(episode)
            if not still:
                return
            if not result.ok:
                explicit = bound.options["escalate"]
                ladder = self._ladder(names)
                if not (explicit and self._escalate_outside(episode, ladder, explicit, names)):
                    self._step(episode, names, names_index(ladder, explicit) if explicit else episode.step + 1)
            elif bound.options["verify"]:
                episode.verify_at = self.clock.time() + bound.options["verify"]

    def _tell(self, bound: Bound, requests: Sequence[ActionRequest]) -> None:
        """One call for all the alerts of an evaluation (one message), one audit row."""
        self._attempt(bound, requests[0], bound.name, "run", lambda: _first(bound.impl.run_group(list(requests))))

    def _revert_all(self, episode: Episode) -> None:
        for bound, request, _ttl in episode.changed:
            if bound.options["revert"]:
                self._submit(self._revert, bound, request)
        episode.changed.clear()

    def _revert(self, bound: Bound, request: ActionRequest) -> None:
        self._attempt(bound, request, bound.target(request), "revert", lambda: bound.impl.revert(request))

    def _tick(self, bound: Bound, now: float) -> None:
        try:
            for result in bound.impl.tick(now) or ():
                self.counts[(bound.name, result.outcome)] += 1
        except Exception:
            log.exception("action %s failed in its tick", bound.name)

    # -- lifecycle -------------------------------------------------------------------

    def wait(self, timeout: float = 30.0) -> None:
        """Wait for the work queued so far (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                pending = [f for f in self._futures if not f.done()]
            if not pending or time.monotonic() > deadline:
                return
            pending[0].result(timeout=max(deadline - time.monotonic(), 0.01))

    def close(self) -> None:
        self.wait(10.0)
        self.pool.shutdown(wait=False)
        for bound in self.actions.values():
            close = getattr(bound.impl, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    log.exception("action %s failed to close", bound.name)


def _first(results: Any) -> ActionResult:
    """One result for the audit row of a grouped call: the worst outcome of the group."""
    results = list(results or ())
    if not results:
        return ActionResult("?", "failure", "the action returned no result")
    bad = [r for r in results if not r.ok]
    return bad[0] if bad else results[0]


def names_index(ladder: Sequence[Bound], name: str) -> int:
    """The ladder index of the action ``name`` (past the end when it is not a healing action of the rule)."""
    for i, b in enumerate(ladder):
        if b.name == name:
            return i
    return len(ladder)
