"""Rule type ``event``: fire on things that happen, not on values: log matches, device faults.

"Three HCCL timeouts on a device within 10 minutes" is ``kind =
"hccl_connect_timeout"``, ``count = 3``, ``over = "10m"``, ``by = ["device_id"]``.
The count is over ``(now - over, now]``, per combination of the ``by`` labels (a
missing label counts as empty); the alert carries those labels and the ``match``
labels, and its value is the count.

Events have no "everything is fine again" sample, so a log-born alert would never
resolve by itself. ``clear_after`` is the quiet period that stands for it: a
label set that has an open alert but no longer fires is cleared once no matching
event has been seen for that long (default: ``over``). Its verdicts are emitted
from the rule's own open alerts, since no event names them any more.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Set, Tuple

from npuagent import hookimpl
from npuagent.builtin.threshold import LABEL_NAME
from npuagent.context import PluginContext
from npuagent.model import RuleType
from npuagent.options import REQUIRED, Array, Duration, Integer, Map, Option, String
from npuagent.rules import EvalContext, Verdict

OPTIONS = [
    Option("kind", String(r"\S+", "an event kind, or \"*\" for any"), REQUIRED,
           'The kind of event to count ("hccl_connect_timeout", "device_fault"); "*" for any kind.'),
    Option("match", Map(String()), {}, 'Label values an event must have, e.g. { code = "EI0006" } (exact match). '
                                       "The alert carries these labels."),
    Option("over", Duration(), REQUIRED, 'The window events are counted in ("10m").'),
    Option("count", Integer(min=1), 1, "Fire when at least this many matching events are in the window."),
    Option("by", Array(LABEL_NAME), (),
           'Label names to split alerts by (["device_id"]: one alert per device); default: one alert for the rule.'),
    Option("clear_after", Duration(), None,
           "The quiet period: an alert resolves once no matching event has been seen for this long "
           "(default: over)."),
]


class EventRule:
    """A verdict per ``by`` label set that has events in the lookback or an open alert."""

    def __init__(self, ctx: PluginContext) -> None:
        o = ctx.options
        self.name = ctx.name
        self.kind: str = o["kind"]
        self.match: Dict[str, str] = dict(o["match"])
        self.over: float = o["over"]
        self.count: int = o["count"]
        self.by: Tuple[str, ...] = tuple(o["by"])
        self.clear_after: float = self.over if o["clear_after"] is None else o["clear_after"]
        self._matchers = self.match or None
        # The match labels an alert carries (a "" matcher means "label absent", so it adds none).
        self._base = {k: v for k, v in self.match.items() if v}

    def _labels(self, key: Tuple[str, ...]) -> Dict[str, str]:
        labels = dict(self._base)
        labels.update((b, v) for b, v in zip(self.by, key) if v)
        return labels

    def evaluate(self, ctx: EvalContext) -> List[Verdict]:
        if ctx.events is None:
            return []  # no event log: nothing can be judged
        now = ctx.now
        start = now - self.over
        by = self.by
        # count in (now - over, now], newest in the whole lookback
        groups: Dict[Tuple[str, ...], List[float]] = {}
        for e in ctx.events.select(self.kind, self._matchers, now - max(self.over, self.clear_after), now):
            t = e.timestamp or 0.0
            key = tuple(e.labels.get(b, "") for b in by) if by else ()
            g = groups.get(key)
            if g is None:
                g = groups[key] = [0.0, t]
            if t > start:
                g[0] += 1
            if t > g[1]:
                g[1] = t
        open_keys = set()
        for inst in ctx.alerts(self.name):
            labels = dict(inst.labels)
            key = tuple(labels.get(b, "") for b in by)
            open_keys.add(key)
            if key not in groups:
                groups[key] = [0.0, -math.inf]
        out = []
        for key, (n, newest) in groups.items():
            fire = n >= self.count
            if fire or key in open_keys:
                out.append(Verdict(self._labels(key), n, fire, not fire and now - newest >= self.clear_after))
        return out

    def metrics(self) -> Sequence[str]:
        return []

    def window(self) -> float:
        """The events' lookback (the agent keeps events, and samples, at least this long)."""
        return max(self.over, self.clear_after)

    def template_fields(self) -> Optional[Set[str]]:
        return set(self.by) | set(self.match)

    def export(self) -> str:
        raise ValueError("events are not metrics")


def make_event(ctx: PluginContext) -> EventRule:
    return EventRule(ctx)


@hookimpl
def npuagent_rule_types() -> List[RuleType]:
    """``event``."""
    return [RuleType(name="event", factory=make_event, options=OPTIONS,
                     help="Fire when at least `count` matching events (log matches, faults) happened within `over`, "
                          "per `by` labels; resolve after `clear_after` without one.")]
