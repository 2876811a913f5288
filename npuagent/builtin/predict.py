"""Rule type ``predict``: fire before a limit is reached, from the trend of the recent past.

"NPU memory in 30 minutes, extrapolated from the last hour, above the device's
total" pages while there is still time to act, where a threshold on the current
value would page at the moment of the OOM. The value is PromQL's
``predict_linear(x[over], horizon)``: the least-squares line through the window,
read ``horizon`` seconds after now.

The limit is a number (``above``, ``below``) or another metric's newest value on
the same label set (``above_metric``), restricted to the ``on`` labels when the
two metrics are labelled differently. A series whose limit has no fresh sample
(older than ``stale_after``) gives no verdict: an unknown limit is not a breach.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

from npuagent import hookimpl
from npuagent.builtin.threshold import (
    LABEL_NAME,
    MATCH_HELP,
    METRIC_NAME,
    Measurement,
    Selection,
    declared_labels,
    exactly_one,
    label_key,
    promql_number,
    promql_on,
    promql_selector,
)
from npuagent.context import PluginContext
from npuagent.model import RuleType
from npuagent.options import REQUIRED, Array, Duration, Map, Number, Option, String, format_duration
from npuagent.rules import EvalContext, Verdict
from npuagent.store import Series, predict_linear

OPTIONS = [
    Option("metric", METRIC_NAME, REQUIRED, "The metric whose trend is extrapolated."),
    Option("match", Map(String()), {}, MATCH_HELP),
    Option("over", Duration(), REQUIRED, 'The regression window: how much of the past the trend is fitted to ("1h").'),
    Option("horizon", Duration(), REQUIRED, 'How far ahead to predict ("30m").'),
    Option("above", Number(), None, "Fire when the predicted value is above this (exactly one of above, "
                                    "above_metric, below)."),
    Option("above_metric", METRIC_NAME, None,
           "Fire when the predicted value is above this metric's newest value on the same labels "
           '(e.g. "npu_memory_total_bytes").'),
    Option("below", Number(), None, "Fire when the predicted value is below this."),
    Option("on", Array(LABEL_NAME), None,
           "With above_metric: the label names the two metrics are matched on; default: all labels must be equal."),
]


class PredictRule:
    """One verdict per matching series with at least two samples in the window; clear = not fire."""

    def __init__(self, ctx: PluginContext) -> None:
        o = ctx.options
        self.key = exactly_one(o, "above", "above_metric", "below")
        self.on: Optional[Tuple[str, ...]] = o["on"]
        if self.on is not None and self.key != "above_metric":
            raise ValueError(f"on applies only to above_metric (a limit that is a metric), not to {self.key}")
        self.name = ctx.name
        self.metric: str = o["metric"]
        self.match: Dict[str, str] = dict(o["match"])
        self.over: float = o["over"]
        self.horizon: float = o["horizon"]
        self.limit: Optional[float] = o[self.key] if self.key != "above_metric" else None
        self.limit_metric: Optional[str] = o["above_metric"]
        if self.limit_metric == self.metric:
            raise ValueError("above_metric names the same metric as metric: a value is never above itself")
        self.sign = -1.0 if self.key == "below" else 1.0
        self.selection = Selection(self.metric, self.match)
        self.stale_after: float = o["stale_after"]
        self.limits: Optional[Selection] = None
        self._limit_of = Measurement("last", None, self.stale_after)
        if self.limit_metric is not None:
            self.limits = Selection(self.limit_metric, {})
        self._key = label_key(self.on)
        self._rows: List[Tuple[Series, Dict[str, str], Optional[Series]]] = []
        self._versions = (-1, -1)
        self._fields = declared_labels(ctx, self.metric, self.match)

    def _join(self) -> None:
        """Pair each series with its limit series (None for a fixed limit)."""
        if self.limits is None:
            self._rows = [(s, labels, None) for s, labels in self.selection.rows]
            return
        index: Dict[Any, Optional[Series]] = {}
        key = self._key
        for s, _labels in self.limits.rows:
            k = key(s)
            index[k] = None if k in index else s  # None: ambiguous, no verdict
        rows = []
        for s, labels in self.selection.rows:
            limit = index.get(key(s))
            if limit is not None:
                rows.append((s, labels, limit))
        self._rows = rows

    def evaluate(self, ctx: EvalContext) -> List[Verdict]:
        now = ctx.now
        self.selection.refresh(ctx.store, now)
        versions = (self.selection.version, -1)
        if self.limits is not None:
            self.limits.refresh(ctx.store, now)
            versions = (self.selection.version, self.limits.version)
        if versions != self._versions:
            self._join()
            self._versions = versions
        everything = bool(ctx.alerts(self.name))
        start = now - self.over
        horizon = self.horizon
        sign = self.sign
        fixed = self.limit
        limit_of = self._limit_of
        out = []
        for s, labels, limit_series in self._rows:
            ts, vs = s.window(start, now)
            predicted = predict_linear(ts, vs, now, horizon)
            if predicted is None or predicted != predicted:
                continue
            limit = fixed if limit_series is None else limit_of(limit_series, now)
            if limit is None or limit != limit:
                continue
            fire = predicted * sign > limit * sign
            if fire or everything:
                out.append(Verdict(labels, predicted, fire, not fire))
        return out

    def metrics(self) -> Sequence[str]:
        return [self.metric] + ([self.limit_metric] if self.limit_metric else [])

    def window(self) -> float:
        return max(self.over, self.stale_after) if self.limit_metric else self.over

    def template_fields(self) -> Optional[Set[str]]:
        return self._fields

    def export(self) -> str:
        """``predict_linear(x[1h], 1800) > on(device_id) group_left npu_memory_total_bytes``."""
        expr = f"predict_linear({promql_selector(self.metric, self.match)}[{format_duration(self.over)}], " \
               f"{promql_number(self.horizon)})"
        op = "<" if self.key == "below" else ">"
        if self.limit_metric is not None:
            return f"{expr} {op}{promql_on(self.on)} {self.limit_metric}"
        assert self.limit is not None
        return f"{expr} {op} {promql_number(self.limit)}"


def make_predict(ctx: PluginContext) -> PredictRule:
    return PredictRule(ctx)


@hookimpl
def npuagent_rule_types() -> List[RuleType]:
    """``predict``."""
    return [RuleType(name="predict", factory=make_predict, options=OPTIONS,
                     help="Fire when a metric's linear trend over `over`, extrapolated `horizon` ahead, crosses a "
                          "limit: a number, or another metric (above_metric) such as the device's total memory.")]
