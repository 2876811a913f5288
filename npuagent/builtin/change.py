"""Rule type ``change``: fire when the recent value departs from its own longer baseline.

Absolute thresholds do not fit throughput: 200 requests/s is healthy at night and
an outage at noon. "The request rate over the last 5 minutes is below half of its
rate over the last hour" is ``agg = "rate"``, ``over = "5m"``, ``baseline = "1h"``,
``below_ratio = 0.5``. Both windows end now (the baseline includes the recent
window, as the PromQL ``rate(x[5m]) < 0.5 * rate(x[1h])`` does); the value is
recent / baseline.

``min_baseline`` keeps an idle service quiet: while the baseline is not above it
there is no verdict at all (the default 0 also avoids dividing by zero, and makes
ratios of negative quantities -- a falling gauge's delta -- give none: the rule is
for positive quantities). ``clear_ratio`` is the hysteresis band: with
``below_ratio = 0.5`` and ``clear_ratio = 0.8`` the alert resolves only when the
rate is back to 80 % of its baseline.

The window is read once, for the baseline, and the recent part is a slice of it.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Dict, List, Optional, Sequence, Set

from npuagent import hookimpl
from npuagent.builtin.threshold import (
    AGG_NO_QUANTILE,
    MATCH_HELP,
    METRIC_NAME,
    Selection,
    declared_labels,
    exactly_one,
    promql_agg,
    promql_number,
    promql_operand,
    window_function,
)
from npuagent.context import PluginContext
from npuagent.model import RuleType
from npuagent.options import REQUIRED, Duration, Map, Number, Option, String, format_duration
from npuagent.rules import EvalContext, Verdict

#: Aggregations that are never negative: a zero baseline cannot make the PromQL "below" fire,
#: so the export needs no filter on it.
_NON_NEGATIVE = ("rate", "increase", "count", "stddev")

OPTIONS = [
    Option("metric", METRIC_NAME, REQUIRED, "The metric to watch (a counter's rate, by default)."),
    Option("match", Map(String()), {}, MATCH_HELP),
    Option("agg", AGG_NO_QUANTILE, "rate",
           "The aggregation computed over both windows: rate (the default), increase, avg, min, max, sum, count, "
           "stddev, cv, delta, deriv."),
    Option("over", Duration(), REQUIRED, 'The recent window ("5m").'),
    Option("baseline", Duration(), REQUIRED, 'The longer window it is compared with ("1h"); longer than over.'),
    Option("below_ratio", Number(min=0), None,
           "Fire when recent < below_ratio x baseline (0.5: dropped to half); exactly one of below_ratio, "
           "above_ratio."),
    Option("above_ratio", Number(min=0), None, "Fire when recent > above_ratio x baseline (2: doubled)."),
    Option("clear_ratio", Number(min=0), None,
           "Hysteresis: resolve only when recent/baseline is back to this (>= below_ratio, or <= above_ratio). "
           "Default: resolve as soon as it does not fire."),
    Option("min_baseline", Number(), 0.0, "No verdict while the baseline is not above this: an idle service is "
                                          "not a drop."),
]


class ChangeRule:
    """One verdict per matching series whose baseline is above ``min_baseline``."""

    def __init__(self, ctx: PluginContext) -> None:
        o = ctx.options
        self.name = ctx.name
        self.agg: str = o["agg"]
        if self.agg == "last":
            raise ValueError('agg = "last" reads one sample, the same for both windows; '
                             'choose an aggregation such as "rate" or "avg"')
        self.over: float = o["over"]
        self.baseline: float = o["baseline"]
        if not self.baseline > self.over:
            raise ValueError(f"baseline ({format_duration(self.baseline)}) must be longer than over "
                             f"({format_duration(self.over)})")
        self.key = exactly_one(o, "below_ratio", "above_ratio")
        self.ratio: float = o[self.key]
        self.below = self.key == "below_ratio"
        self.clear_ratio: Optional[float] = o["clear_ratio"]
        c = self.clear_ratio
        if c is not None and self.below and c < self.ratio:
            raise ValueError(f"clear_ratio ({c:g}) must be >= below_ratio ({self.ratio:g})")
        if c is not None and not self.below and c > self.ratio:
            raise ValueError(f"clear_ratio ({c:g}) must be <= above_ratio ({self.ratio:g})")
        self.min_baseline: float = o["min_baseline"]
        self.metric: str = o["metric"]
        self.match: Dict[str, str] = dict(o["match"])
        self.fn = window_function(self.agg)
        self.selection = Selection(self.metric, self.match)
        self._fields = declared_labels(ctx, self.metric, self.match)

    def evaluate(self, ctx: EvalContext) -> List[Verdict]:
        now = ctx.now
        sel = self.selection
        sel.refresh(ctx.store, now)
        everything = bool(ctx.alerts(self.name))
        fn = self.fn
        start_base = now - self.baseline
        start_recent = now - self.over
        min_baseline = self.min_baseline
        ratio_at = self.ratio
        clear_at = self.clear_ratio
        below = self.below
        out = []
        for s, labels in sel.rows:
            ts, vs = s.window(start_base, now)
            n = len(vs)
            if not n:
                continue
            base = fn(ts, vs, start_base, now)
            if base is None or not base > min_baseline:  # NaN is not above it either
                continue
            i = bisect_right(ts, start_recent)
            if i == n:
                continue
            recent = fn(ts[i:], vs[i:], start_recent, now)
            if recent is None or recent != recent:
                continue
            ratio = recent / base
            if below:
                fire = ratio < ratio_at
                clear = (not fire) if clear_at is None else ratio >= clear_at
            else:
                fire = ratio > ratio_at
                clear = (not fire) if clear_at is None else ratio <= clear_at
            if fire or everything:
                out.append(Verdict(labels, ratio, fire, clear))
        return out

    def metrics(self) -> Sequence[str]:
        return [self.metric]

    def window(self) -> float:
        return self.baseline

    def template_fields(self) -> Optional[Set[str]]:
        return self._fields

    def export(self) -> str:
        """``rate(x[5m]) < 0.5 * rate(x[1h])``; the baseline filtered by ``> min_baseline`` where that matters."""
        if self.clear_ratio is not None:
            raise ValueError("clear_ratio is hysteresis (a separate clear threshold), which PromQL cannot express")
        recent = promql_agg(self.agg, self.metric, self.match, self.over)[0]
        base = promql_operand(promql_agg(self.agg, self.metric, self.match, self.baseline))
        if self.min_baseline != 0 or not (self.below and self.agg in _NON_NEGATIVE):
            base = f"({base} > {promql_number(self.min_baseline)})"
        return f"{recent} {'<' if self.below else '>'} {promql_number(self.ratio)} * {base}"


def make_change(ctx: PluginContext) -> ChangeRule:
    return ChangeRule(ctx)


@hookimpl
def npuagent_rule_types() -> List[RuleType]:
    """``change``."""
    return [RuleType(name="change", factory=make_change, options=OPTIONS,
                     help="Fire when a metric over a recent window (`over`) falls below, or rises above, a ratio of "
                          "itself over a longer `baseline`: throughput halved, latency doubled.")]
