"""Alert state machines and rule evaluation. Rule *types* are plugins (``npuagent_rule_types``).

Every (rule, label set) has a state machine::

    inactive ─fire─▶ pending ─fire held `for`─▶ firing ─clear─▶ resolving ─clear held `clear_for`─▶ inactive
        └───────────fire, `for` = 0──────────────▲  ▲──fire, or in the band──┘

The fire and clear conditions are separate (fire above 80, clear only below 75):
a value between them moves nothing, and that band is what stops flapping. A
pending alert needs its fire condition at every evaluation; a resolving one needs
its clear condition at every evaluation, else it returns to firing (quietly: no
"resolved" was ever said).

A series that stops answering keeps its alert's state for ``stale_after``, then
``on_missing`` decides: ``resolve`` (the default, as Prometheus does), ``keep``,
or ``fire``. "Missing" is counted from the agent's own start too, so a restarted
agent does not resolve alerts just because its slow collectors have not answered yet.

A rule type's factory returns an object with ``evaluate(ctx) -> Iterable[Verdict]``;
it may also have ``metrics()`` (names it reads, checked by ``npuagent check``),
``window()`` (seconds of history it needs: the store keeps that much),
``template_fields()`` (label names its alerts carry, or ``None`` when unknown),
``depends_on()`` (rules it reads, for ``all``/``any``) and ``export()`` (its PromQL,
for ``npuagent rules export``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import string
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Set, Tuple

from .model import AlertTransition
from .options import Array, Duration, Map, OneOf, Option, String

log = logging.getLogger("npuagent.rules")

INACTIVE, PENDING, FIRING, RESOLVING = "inactive", "pending", "firing", "resolving"
SEVERITIES = ("info", "warning", "critical")
COMMON_FIELDS = frozenset({"value", "rule", "severity", "labels"})

#: Keys every rule has, whatever its type.
RULE_COMMON = (
    Option("name", String(r"[A-Za-z0-9_.:-]+", "a name of letters, digits, _ . : -"), help="The rule's name."),
    Option("type", String(), help="The rule type."),
    Option("severity", OneOf(*SEVERITIES), "warning", "How bad it is when it fires."),
    Option("for", Duration(allow_zero=True), 0.0, "The fire condition must hold this long before the alert fires."),
    Option("clear_for", Duration(allow_zero=True), 0.0,
           "The clear condition must hold this long before a firing alert resolves."),
    Option("on_missing", OneOf("resolve", "keep", "fire"), "resolve",
           "What a series that stopped answering for stale_after means: resolve its alert, keep its state, or fire."),
    Option("stale_after", Duration(), 300.0, "How long a series may go without a sample before it is missing."),
    Option("summary", String(), "", 'One line, a template: "NPU {device_id} at {value:.0f} °C".'),
    Option("description", String(), "", "More text, a template like summary."),
    Option("labels", Map(String()), {}, "Labels added to every alert of the rule (team, runbook...)."),
    Option("actions", Array(String()), (), "Names of [actions.<name>] to run when it fires and resolves."),
    Option("runbook", String(), "", "A link for people, added to the alert's annotations."),
)


class Verdict(NamedTuple):
    """What a rule says of one label set at one evaluation.

    ``fire``: the fire condition holds; ``clear``: the clear condition holds;
    neither: the value is in the hysteresis band and nothing moves. ``labels`` may
    be a mapping, or (faster) the store's sorted tuple of pairs (``Series.labels``).
    """

    labels: Any
    value: Optional[float]
    fire: bool
    clear: bool


@dataclass
class EvalContext:
    """What a rule's ``evaluate`` is given."""

    now: float
    store: Any
    events: Any
    alerts: Callable[[str], Iterable[Instance]]
    collectors: Mapping[str, Any] = field(default_factory=dict)
    started: float = 0.0
    #: Lives for one evaluation: rules reading the same aggregate of the same series (a warning and a
    #: critical threshold on one 5 m average) compute it once. Key it with everything the value depends on.
    memo: Dict[Any, Any] = field(default_factory=dict)


class Instance:
    """The state of one (rule, label set)."""

    __slots__ = ("active_at", "fired_at", "labels", "last_seen", "resolving_at", "rule", "silenced", "state",
                 "value")

    def __init__(self, rule: str, labels: Tuple[Tuple[str, str], ...]) -> None:
        self.rule = rule
        self.labels = labels
        self.state = INACTIVE
        self.active_at = 0.0      # since when the fire condition holds (pending/firing)
        self.fired_at = 0.0       # when it started firing
        self.resolving_at = 0.0   # since when the clear condition holds
        self.value: Optional[float] = None
        self.last_seen = 0.0
        self.silenced = False

    def labels_dict(self) -> Dict[str, str]:
        return dict(self.labels)

    def record(self) -> Dict[str, Any]:
        return {"rule": self.rule, "labels": dict(self.labels), "state": self.state, "active_at": self.active_at,
                "fired_at": self.fired_at, "resolving_at": self.resolving_at, "value": self.value}


@dataclass
class CompiledRule:
    """A configured rule: its common settings, its type's object, and its alerts."""

    name: str
    type: str
    options: Mapping[str, Any]
    impl: Any
    digest: str
    instances: Dict[Tuple[Tuple[str, str], ...], Instance] = field(default_factory=dict)
    evaluations: int = 0
    failures: int = 0
    last_error: str = ""

    @property
    def severity(self) -> str:
        return self.options["severity"]


def digest(type_name: str, options: Mapping[str, Any]) -> str:
    """A rule's identity across restarts and reloads: its type and options, not its place in a file."""
    text = json.dumps([type_name, _plain(options)], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def template_fields(template: str) -> Set[str]:
    """The field names a ``str.format`` template refers to (``{value:.0f}`` -> ``value``).

    :raises ValueError: the template is not valid format syntax.
    """
    out = set()
    for _text, name, _spec, _conv in string.Formatter().parse(template):
        if name is None:
            continue
        root = name.split(".", 1)[0].split("[", 1)[0]
        if not root or root.isdigit():
            raise ValueError(f"template field {{{name}}} needs a name")
        out.add(root)
    return out


class _Fields(dict):
    def __missing__(self, key: str) -> str:
        return ""


def render(template: str, rule: CompiledRule, instance: Instance) -> str:
    """Fill a template; a label the alert lacks renders empty, and a template never breaks an alert."""
    value = instance.value if instance.value is not None else math.nan
    fields = _Fields(instance.labels)
    fields.update(value=value, rule=rule.name, severity=rule.severity, labels=dict(instance.labels))
    try:
        return template.format_map(fields)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
        return f"{template} (template error: {e})"


def annotations(rule: CompiledRule, instance: Instance) -> Dict[str, str]:
    """An alert's annotations as they read now: its templates rendered, and its runbook."""
    o = rule.options
    out = {k: render(o[k], rule, instance) for k in ("summary", "description") if o[k]}
    if o["runbook"]:
        out["runbook"] = o["runbook"]
    return out


class Silence(NamedTuple):
    id: int
    rule: Optional[str]
    matchers: Mapping[str, str]
    starts: float
    ends: float
    reason: str

    def matches(self, rule: str, labels: Mapping[str, str], now: float) -> bool:
        return (self.starts <= now < self.ends and (self.rule is None or self.rule == rule)
                and all(labels.get(k) == v for k, v in self.matchers.items()))


class Engine:
    """Evaluates the rules, moves their alerts' state machines, persists them, reports transitions.

    :param state: a :class:`npuagent.state.State` (or ``None``: nothing persists).
    :param notify: called with the transitions of each evaluation, after they are persisted.
    """

    def __init__(self, rules: Sequence[CompiledRule], state: Any = None, started: Optional[float] = None,
                 notify: Optional[Callable[[List[AlertTransition]], None]] = None) -> None:
        self.rules: Dict[str, CompiledRule] = {r.name: r for r in order(rules)}
        self.state = state
        self.started = time.time() if started is None else started
        self.notify = notify
        self.silences: List[Silence] = []
        self.last_duration = 0.0
        self.evaluations = 0
        if state is not None:
            self._restore(state.load_alerts())
            self.silences = state.silences(self.started)

    # -- persistence -----------------------------------------------------------

    def _restore(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Resume the alerts of rules whose definition is unchanged; forget the others."""
        stale = []
        for row in rows:
            rule = self.rules.get(row["rule"])
            if rule is None or rule.digest != row["digest"]:
                stale.append((row["rule"], row["labels"]))
                continue
            inst = Instance(rule.name, tuple(sorted(row["labels"].items())))
            inst.state, inst.value = row["state"], row["value"]
            inst.active_at, inst.fired_at, inst.resolving_at = row["active_at"], row["fired_at"], row["resolving_at"]
            rule.instances[inst.labels] = inst
        if stale and self.state is not None:
            self.state.delete_alerts(stale)

    def adopt(self, previous: Engine) -> None:
        """After a reload: keep the alerts of rules whose definition did not change."""
        for name, rule in self.rules.items():
            old = previous.rules.get(name)
            if old is not None and old.digest == rule.digest:
                rule.instances = old.instances
        self.silences = previous.silences
        self.started = previous.started
        if self.state is not None:
            gone = [(r.name, i.labels_dict()) for r in previous.rules.values()
                    if r.name not in self.rules or self.rules[r.name].digest != r.digest
                    for i in r.instances.values()]
            self.state.delete_alerts(gone)

    # -- evaluation ------------------------------------------------------------

    def instances_of(self, rule: str) -> Any:
        """The alerts of ``rule`` (a live view, no copy: rules ask this for every evaluation)."""
        r = self.rules.get(rule)
        return r.instances.values() if r else ()

    def evaluate(self, now: float, store: Any, events: Any = None,
                 collectors: Optional[Mapping[str, Any]] = None) -> List[AlertTransition]:
        """Evaluate every rule once at ``now``; returns the transitions (already persisted)."""
        t0 = time.perf_counter()
        if self.state is not None and self.state.changed():
            self.silences = self.state.silences(now)
        ctx = EvalContext(now, store, events, self.instances_of, collectors or {}, self.started)
        transitions: List[AlertTransition] = []
        for rule in self.rules.values():
            try:
                verdicts = rule.impl.evaluate(ctx)
                self._apply(rule, verdicts, now, transitions)
            except Exception as e:
                rule.failures += 1
                rule.last_error = f"{type(e).__name__}: {e}"
                log.exception("rule %s failed to evaluate; its alerts keep their state", rule.name)
            rule.evaluations += 1
        if transitions and self.state is not None:
            self.state.save_transitions(transitions, self._rows(transitions))
        self.evaluations += 1
        self.last_duration = time.perf_counter() - t0
        if transitions and self.notify is not None:
            self.notify(transitions)
        return transitions

    def _rows(self, transitions: Sequence[AlertTransition]) -> List[Dict[str, Any]]:
        rows = []
        for t in transitions:
            rule = self.rules[t.rule]
            inst = rule.instances.get(tuple(sorted(t.labels.items())))
            row = {"rule": t.rule, "digest": rule.digest, "labels": dict(t.labels), "state": t.state,
                   "active_at": 0.0, "fired_at": 0.0, "resolving_at": 0.0, "value": t.value}
            if inst is not None and inst.state != INACTIVE:
                row.update(active_at=inst.active_at, fired_at=inst.fired_at, resolving_at=inst.resolving_at)
            rows.append(row)
        return rows

    def _apply(self, rule: CompiledRule, verdicts: Iterable[Verdict], now: float,
               out: List[AlertTransition]) -> None:
        o = rule.options
        extra = o["labels"]
        seen = set()
        for v in verdicts:
            labels = v.labels if type(v.labels) is tuple else tuple(sorted(v.labels.items()))
            if extra:
                labels = tuple(sorted({**dict(labels), **extra}.items()))
            seen.add(labels)
            inst = rule.instances.get(labels)
            if inst is None:
                if not v.fire:
                    continue  # no state is kept for series that are fine
                inst = rule.instances[labels] = Instance(rule.name, labels)
            inst.value = v.value
            inst.last_seen = now
            if inst.state == FIRING and not v.clear:
                continue  # the common case of a long alert: nothing moves
            self._step(rule, inst, v.fire, v.clear, now, out)
        if len(seen) != len(rule.instances):
            for labels, inst in list(rule.instances.items()):
                if labels in seen:
                    continue
                if now - max(inst.last_seen, self.started) < o["stale_after"]:
                    continue  # not missing yet: hold the state
                how = o["on_missing"]
                if how == "resolve":
                    self._step(rule, inst, False, True, now, out)
                elif how == "fire":
                    self._step(rule, inst, True, False, now, out)
        for labels in [k for k, i in rule.instances.items() if i.state == INACTIVE]:
            del rule.instances[labels]

    def _step(self, rule: CompiledRule, inst: Instance, fire: bool, clear: bool, now: float,
              out: List[AlertTransition]) -> None:
        o = rule.options
        before = inst.state
        state = before
        if state == INACTIVE:
            if fire:
                inst.active_at = now
                state = PENDING if o["for"] > 0 else FIRING
        elif state == PENDING:
            if not fire:
                state = INACTIVE
        elif state == FIRING:
            if clear:
                inst.resolving_at = now
                state = RESOLVING if o["clear_for"] > 0 else INACTIVE
        elif state == RESOLVING and not clear:
            state = FIRING
        if state == PENDING and now - inst.active_at >= o["for"]:
            state = FIRING
        if state == RESOLVING and now - inst.resolving_at >= o["clear_for"]:
            state = INACTIVE
        if state == FIRING and before in (INACTIVE, PENDING):
            inst.fired_at = now
        if state == before:
            return
        inst.state = state
        labels = inst.labels_dict()
        inst.silenced = self.silenced(rule.name, labels, now)
        out.append(AlertTransition(rule.name, labels, before, state, now, inst.value, o["severity"],
                                   annotations(rule, inst), inst.silenced))

    # -- views -----------------------------------------------------------------

    def silenced(self, rule: str, labels: Mapping[str, str], now: float) -> bool:
        """Whether a silence in force covers this alert now."""
        return any(s.matches(rule, labels, now) for s in self.silences)

    def alerts(self) -> List[Tuple[CompiledRule, Instance]]:
        """Every alert not inactive, with its rule."""
        return [(r, i) for r in self.rules.values() for i in r.instances.values() if i.state != INACTIVE]

    def window(self) -> float:
        """The longest history any rule needs."""
        return max((float(getattr(r.impl, "window", lambda: 0.0)()) for r in self.rules.values()), default=0.0)


def order(rules: Sequence[CompiledRule]) -> List[CompiledRule]:
    """Rules that read other rules (``all``/``any``) after the rules they read.

    :raises ValueError: rules that depend on each other in a cycle.
    """
    by_name = {r.name: r for r in rules}
    done: Dict[str, bool] = {}
    out: List[CompiledRule] = []

    def visit(rule: CompiledRule, path: Tuple[str, ...]) -> None:
        if done.get(rule.name):
            return
        if rule.name in path:
            raise ValueError("rules depend on each other in a cycle: " + " -> ".join((*path, rule.name)))
        for dep in getattr(rule.impl, "depends_on", lambda: ())():
            if dep in by_name:
                visit(by_name[dep], (*path, rule.name))
        done[rule.name] = True
        out.append(rule)

    for r in rules:
        visit(r, ())
    return out


def _declared(metrics: Mapping[str, Any]) -> Set[str]:
    names = set(metrics)
    for name, spec in metrics.items():
        if getattr(spec, "type", "") in ("histogram", "summary"):
            names.update(f"{name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
    return names


def compile_rules(cfg: Any, plugins: Any, metrics: Mapping[str, Any]) -> List[CompiledRule]:
    """Build every configured rule through its type's factory and check what only a built rule can tell:
    its templates, the actions and rules it names, the metrics it reads, and dependency cycles.

    A metric name is unknown when no collector declares it but some collector declares metrics of the
    same family (the name up to its first ``_``): ``npu_temprature_celsius`` is caught, a scraped
    ``vllm:num_requests_running`` is not.

    :raises npuagent.config.ConfigError: with every problem found, as ``file:line: rules[i].key: message``.
    """
    from . import config as config_mod
    from .context import PluginContext
    from .options import close_matches

    types_ = plugins.rule_types()
    declared = _declared(metrics)
    families = {n.split("_", 1)[0] for n in declared}
    problems: List[Any] = []
    compiled: List[CompiledRule] = []
    names = {r.name for r in cfg.rules}

    def problem(table: Any, index: int, key: str, message: str) -> None:
        file, line = table.where(key)
        problems.append(config_mod.Problem(file, line, f"rules[{index}]" + (f".{key}" if key else ""), message))

    for index, table in enumerate(cfg.rules):
        o = table.options
        ctx = PluginContext(name=table.name, type=table.type, options=o,
                            plugin_options=cfg.plugin_options.get(table.plugin, {}), metrics=metrics)
        try:
            impl = types_[table.type][1].factory(ctx)
        except Exception as e:
            problem(table, index, "", str(e))
            continue
        fields = getattr(impl, "template_fields", lambda: None)()
        allowed = None if fields is None else set(fields) | COMMON_FIELDS | set(o["labels"])
        for key in ("summary", "description"):
            try:
                used = template_fields(o[key])
            except ValueError as e:
                problem(table, index, key, f"not a valid template: {e}")
                continue
            if allowed is None:
                continue  # the metric does not declare its labels: any label name may be meant
            for f in sorted(used - allowed):
                problem(table, index, key, f"unknown field {{{f}}}{close_matches(f, sorted(allowed))} "
                                           f"(known: {', '.join(sorted(allowed))})")
        for action in o["actions"]:
            if action not in cfg.actions:
                problem(table, index, "actions", f"unknown action {action!r}{close_matches(action, list(cfg.actions))}"
                                                 f" (define it as [actions.{action}])")
        for dep in getattr(impl, "depends_on", lambda: ())():
            if dep not in names:
                problem(table, index, "rules", f"unknown rule {dep!r}{close_matches(dep, sorted(names))}")
        for metric in getattr(impl, "metrics", lambda: ())():
            if metric not in declared and metric.split("_", 1)[0] in families:
                key = next((k for k, v in o.items() if v == metric), "metric")
                problem(table, index, key, f"unknown metric {metric!r}{close_matches(metric, sorted(declared))}"
                                                f" (no collector declares it)")
        compiled.append(CompiledRule(table.name, table.type, o, impl, digest(table.type, o)))
    if not problems:
        try:
            order(compiled)
        except ValueError as e:
            first = cfg.rules[0]
            problems.append(config_mod.Problem(first.file, first.line, "rules", str(e)))
    if problems:
        raise config_mod.ConfigError(problems)
    return compiled
