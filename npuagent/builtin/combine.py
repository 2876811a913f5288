"""Rule types ``all`` and ``any``: alerts made of other rules' alerts.

"Hot *and* throttled on the same device" is worth waking someone for when either
alone is not: ``type = "all"``, ``rules = ["npu-hot", "npu-throttled"]``,
``on = ["device_id"]``. The listed rules' alerts in the chosen ``states`` are
grouped by their ``on`` label values (a missing label counts as empty); ``all``
fires for every group present in *every* listed rule, ``any`` for every group
present in at least one. The value is how many of the listed rules have an alert
in the group, so a template can say "3 of 4".

The engine evaluates the listed rules first (``depends_on``), so this sees their
states of the same evaluation. A ``resolving`` alert still counts as ``firing``:
it has not resolved, and Prometheus's ``ALERTS`` still says firing for it.

The clear condition is "not fire", and it is judged from this rule's own open
alerts: once a group is no longer present no verdict would name it otherwise,
and the engine would hold it for ``stale_after``.
"""

from __future__ import annotations

from typing import Dict, FrozenSet, List, Optional, Sequence, Set, Tuple

from npuagent import hookimpl
from npuagent.builtin.threshold import LABEL_NAME, promql_string
from npuagent.context import PluginContext
from npuagent.model import RuleType
from npuagent.options import REQUIRED, Array, OneOf, Option, String
from npuagent.rules import FIRING, PENDING, RESOLVING, EvalContext, Instance, Verdict

_STATES = {"pending": (PENDING,), "firing": (FIRING, RESOLVING)}

OPTIONS = [
    Option("rules", Array(String(r"[A-Za-z0-9_.:-]+", "a rule name")), REQUIRED,
           "The names of the rules combined (at least 2)."),
    Option("on", Array(LABEL_NAME), (),
           'The label names alerts are matched on (["device_id"]: per device); default: none, one alert for all.'),
    Option("states", Array(OneOf("pending", "firing")), ("firing",),
           'Which alerts of the listed rules count: "firing" (the default), "pending", or both.'),
]


class CombineRule:
    """``all`` (``need_all``) or ``any`` of the listed rules' alerts, per ``on`` group."""

    def __init__(self, ctx: PluginContext, need_all: bool) -> None:
        o = ctx.options
        self.name = ctx.name
        self.need_all = need_all
        self.rules: Tuple[str, ...] = tuple(o["rules"])
        if len(self.rules) < 2:
            raise ValueError(f"rules needs at least 2 rule names to combine (got {len(self.rules)})")
        if self.name in self.rules:
            raise ValueError(f"rules names this rule itself ({self.name!r})")
        twice = sorted({r for r in self.rules if self.rules.count(r) > 1})
        if twice:
            raise ValueError(f"rules names {', '.join(repr(r) for r in twice)} more than once")
        self.on: Tuple[str, ...] = tuple(o["on"])
        self.states: Tuple[str, ...] = tuple(dict.fromkeys(o["states"]))
        if not self.states:
            raise ValueError('states needs at least one of "pending", "firing"')
        self._wanted: FrozenSet[str] = frozenset(s for name in self.states for s in _STATES[name])
        self._need = len(self.rules) if need_all else 1

    def _key(self, inst: Instance) -> Tuple[str, ...]:
        if not self.on:
            return ()
        labels = dict(inst.labels)
        return tuple(labels.get(k, "") for k in self.on)

    def _labels(self, key: Tuple[str, ...]) -> Dict[str, str]:
        return {k: v for k, v in zip(self.on, key) if v}

    def evaluate(self, ctx: EvalContext) -> List[Verdict]:
        wanted = self._wanted
        counts: Dict[Tuple[str, ...], int] = {}
        for rule in self.rules:
            keys = {self._key(i) for i in ctx.alerts(rule) if i.state in wanted}
            for k in keys:
                counts[k] = counts.get(k, 0) + 1
        need = self._need
        out = [Verdict(self._labels(k), float(n), True, False) for k, n in counts.items() if n >= need]
        done = set()
        for inst in ctx.alerts(self.name):
            k = self._key(inst)
            if k in done or counts.get(k, 0) >= need:
                continue
            done.add(k)
            out.append(Verdict(self._labels(k), float(counts.get(k, 0)), False, True))
        return out

    def metrics(self) -> Sequence[str]:
        return []

    def window(self) -> float:
        return 0.0

    def depends_on(self) -> Sequence[str]:
        return self.rules

    def template_fields(self) -> Optional[Set[str]]:
        return set(self.on)

    def export(self) -> str:
        """``ALERTS{alertname="a",alertstate="firing"} and on(device_id) ALERTS{...}`` (``or`` for any)."""
        states = "|".join(self.states)
        state = f'alertstate="{states}"' if len(self.states) == 1 else f'alertstate=~"{states}"'
        op = f" {'and' if self.need_all else 'or'} on({', '.join(self.on)}) "
        return op.join(f"ALERTS{{alertname={promql_string(r)},{state}}}" for r in self.rules)


def make_all(ctx: PluginContext) -> CombineRule:
    return CombineRule(ctx, need_all=True)


def make_any(ctx: PluginContext) -> CombineRule:
    return CombineRule(ctx, need_all=False)


@hookimpl
def npuagent_rule_types() -> List[RuleType]:
    """``all`` and ``any``."""
    return [
        RuleType(name="all", factory=make_all, options=OPTIONS,
                 help="Fire for each `on` label set that has an alert in every one of the listed rules."),
        RuleType(name="any", factory=make_any, options=OPTIONS,
                 help="Fire for each `on` label set that has an alert in at least one of the listed rules."),
    ]
