"""Rule type ``absent``: fire when something that should be reporting is not.

Silence is the failure every other rule misses: a dead exporter, a device that
dropped off the bus, a collector whose command hangs at every run all make
threshold rules quiet. Two forms:

* ``metric`` (+ ``match``): no matching series has a sample newer than
  ``now - after``. One alert, labelled with the match labels (as PromQL's
  ``absent_over_time`` labels its result); the value is the seconds since the
  newest sample ever seen, or since the agent started when none was.
* ``collector``: the collector has had no successful collection for
  ``intervals`` of its intervals, counted from the agent's start when it never
  succeeded. Labelled ``{collector = "<name>"}``; the value is the seconds since
  the last success (or the start).

"Counted from the start" is what keeps a restarted agent from paging about every
metric before its collectors have had their first chance to run: until ``after``
(or the intervals) has passed since the start, a metric not seen yet is neither
absent nor present, and the rule says so with a verdict that moves nothing (an
alert restored from before the restart keeps its state).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Dict, List, Optional, Sequence, Set

from npuagent import hookimpl
from npuagent.builtin.threshold import (
    MATCH_HELP,
    METRIC_NAME,
    Selection,
    exactly_one,
    promql_number,
    promql_selector,
)
from npuagent.context import PluginContext
from npuagent.model import RuleType
from npuagent.options import Duration, Integer, Map, Option, String, format_duration
from npuagent.rules import EvalContext, Verdict

log = logging.getLogger("npuagent.rules.absent")

DEFAULT_AFTER = 300.0
DEFAULT_INTERVALS = 3

OPTIONS = [
    Option("metric", METRIC_NAME, None, "Fire when no series of this metric (matching `match`) reports "
                                        "(exactly one of metric, collector)."),
    Option("match", Map(String()), {}, MATCH_HELP + " The alert carries these labels."),
    Option("after", Duration(), None, 'With metric: how long without a sample means absent (default "5m").'),
    Option("collector", String(), None, "Fire when this collector has had no successful collection for a while."),
    Option("intervals", Integer(min=1), None,
           "With collector: how many of its intervals without a success mean absent (default 3)."),
]


class AbsentMetric:
    """At most one verdict, for the match labels."""

    def __init__(self, ctx: PluginContext) -> None:
        o = ctx.options
        self.metric: str = o["metric"]
        self.match: Dict[str, str] = dict(o["match"])
        self.after: float = DEFAULT_AFTER if o["after"] is None else o["after"]
        self.selection = Selection(self.metric, self.match)
        self.labels = dict(self.match)
        #: The newest sample time seen by this rule: the store forgets series older than its retention.
        self.newest = -math.inf

    def evaluate(self, ctx: EvalContext) -> List[Verdict]:
        now = ctx.now
        sel = self.selection
        sel.refresh(ctx.store, now)
        newest = self.newest
        for s, _labels in sel.rows:
            last = s.last()
            if last is not None and last[0] > newest:
                newest = last[0]
        self.newest = newest
        if now - newest < self.after:
            return [Verdict(self.labels, max(now - newest, 0.0), False, True)]
        since = now - (newest if newest > -math.inf else ctx.started)
        # Not seen yet, and the agent has not run `after` yet: neither fire nor clear.
        return [Verdict(self.labels, since, since >= self.after, False)]

    def metrics(self) -> Sequence[str]:
        return [self.metric]

    def window(self) -> float:
        return self.after

    def template_fields(self) -> Optional[Set[str]]:
        return set(self.match)

    def export(self) -> str:
        return f"absent_over_time({promql_selector(self.metric, self.match)}[{format_duration(self.after)}])"


class AbsentCollector:
    """One verdict, ``{collector = name}``, while the collector exists."""

    def __init__(self, ctx: PluginContext) -> None:
        o = ctx.options
        self.rule = ctx.name
        self.collector: str = o["collector"]
        self.intervals: int = DEFAULT_INTERVALS if o["intervals"] is None else o["intervals"]
        self.labels = {"collector": self.collector}
        self._warned = False
        #: The collector's interval as last seen: the factory cannot know it, export() needs it.
        self.interval: Optional[float] = None

    def evaluate(self, ctx: EvalContext) -> List[Verdict]:
        runner: Any = ctx.collectors.get(self.collector)
        if runner is None:
            # Collectors come from plugins: a disabled plugin or a reload may remove one. Say it once.
            if not self._warned:
                log.warning("rule %s: no collector named %r is running; the rule has nothing to watch",
                            self.rule, self.collector)
                self._warned = True
            return []
        self._warned = False
        self.interval = interval = float(runner.cfg.interval)
        last = runner.health.last_success
        if last > 0:
            since = ctx.now - last
            fire = since > self.intervals * interval
            return [Verdict(self.labels, since, fire, not fire)]
        # Never succeeded since the start: late once the intervals have passed, and until then not
        # known to be healthy either (a restored alert keeps its state).
        since = ctx.now - ctx.started
        return [Verdict(self.labels, since, since > self.intervals * interval, False)]

    def metrics(self) -> Sequence[str]:
        return []

    def window(self) -> float:
        return 0.0

    def template_fields(self) -> Optional[Set[str]]:
        return {"collector"}

    def export(self) -> str:
        """``time() - npuagent_collector_last_success_timestamp_seconds{collector="host"} > 30``.

        A collector that never succeeded has 0 there, so Prometheus fires at once where this
        rule counts from the agent's start.
        """
        if self.interval is None:
            raise ValueError(f"the interval of collector {self.collector!r} is known only once the agent runs it")
        sel = promql_selector("npuagent_collector_last_success_timestamp_seconds", self.labels)
        return f"time() - {sel} > {promql_number(self.intervals * self.interval)}"


def make_absent(ctx: PluginContext) -> Any:
    o = ctx.options
    key = exactly_one(o, "metric", "collector")
    if key == "collector":
        if o["match"]:
            raise ValueError("match goes with metric, not with collector")
        if o["after"] is not None:
            raise ValueError("after goes with metric; with collector, use intervals")
        return AbsentCollector(ctx)
    if o["intervals"] is not None:
        raise ValueError("intervals goes with collector; with metric, use after")
    return AbsentMetric(ctx)


@hookimpl
def npuagent_rule_types() -> List[RuleType]:
    """``absent``."""
    return [RuleType(name="absent", factory=make_absent, options=OPTIONS,
                     help="Fire when a metric has no fresh sample for `after`, or a collector has had no successful "
                          "collection for `intervals` of its intervals.")]
