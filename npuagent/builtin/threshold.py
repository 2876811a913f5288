"""Rule types ``threshold`` and ``ratio``: a value, or the quotient of two, against a limit.

``threshold`` reads one metric and compares, per series, either its newest sample
(``agg = "last"``) or an aggregation over a window (``avg``, ``p99``, ``rate``...)
with ``above`` or ``below``. ``clear_below``/``clear_above`` give a separate
clear threshold: the band between them and the fire threshold moves nothing,
which is what keeps a value that hovers at the limit from flapping.

``ratio`` divides one metric by another on matching labels (used / total memory,
errors / requests over 5 m) and compares the scaled quotient the same way.

This module also holds what ``predict`` and ``change`` share with these two:
the aggregation over a window (:class:`Measurement`, :func:`window_function`),
the cached selection of a rule's series (:class:`Selection`), and the PromQL
spelling of all of it for ``npuagent rules export``.

Why it is built this way:

* Evaluation runs on the loop thread after every collection round, for every
  rule (the budget is 1,000 rules x 16 devices in 20 ms). So everything that
  does not change between evaluations is done once: the options are turned
  into a sign and two numbers in the factory, the ``store.select()`` result is
  kept until the store's series set may have changed (:class:`Selection`), the
  label dict of each series is built once, and a rule that has no open alert
  emits verdicts only for series that fire -- the engine keeps no state for
  the others, so building their verdicts would be wasted work.
* A value the window cannot give (no sample in it, fewer than two for rate,
  NaN, a zero denominator) gives no verdict: the engine then treats the series
  as missing, and ``stale_after`` and ``on_missing`` decide, as for a series
  that stopped answering. A NaN is "no measurement", not "fine". A series its
  collector stopped returning while still answering (a process gone, a health
  text changed) is ended, as by a Prometheus staleness marker: its alert clears
  at once. A collector that fails says nothing, and the alert holds.
* The functions are PromQL's (from :mod:`npuagent.store`), so an operator can
  check an alert against Prometheus with the expression ``export()`` gives.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple

from npuagent import hookimpl
from npuagent.context import PluginContext
from npuagent.model import RuleType
from npuagent.options import REQUIRED, Array, Duration, Map, Number, Option, String, format_duration
from npuagent.rules import EvalContext, Verdict
from npuagent.store import (
    Series,
    avg_over,
    bucket_increases,
    bucket_series,
    delta,
    deriv,
    histogram_quantile,
    increase,
    max_over,
    min_over,
    quantile_over,
    rate,
    stddev_over,
    sum_over,
)

# ---------------------------------------------------------------------------
# Option types shared by the rule types of this package
# ---------------------------------------------------------------------------

#: Aggregations over a window, by name (quantiles are written p50, p99, p99.9).
WINDOW_AGGS = ("avg", "min", "max", "sum", "count", "stddev", "cv", "rate", "increase", "delta", "deriv")
AGGS = ("last", *WINDOW_AGGS)
_QUANTILE = r"p(?:100|\d{1,2}(?:\.\d+)?)"

METRIC_NAME = String(r"[A-Za-z_:][A-Za-z0-9_:]*", "a metric name")
LABEL_NAME = String(r"[A-Za-z_][A-Za-z0-9_]*", "a label name")
AGG = String("|".join((*AGGS, _QUANTILE)),
             "one of " + ", ".join(f'"{a}"' for a in AGGS) + ', or a quantile such as "p50", "p99" or "p99.9"')
AGG_NO_QUANTILE = String("|".join(AGGS), "one of " + ", ".join(f'"{a}"' for a in AGGS))

MATCH_HELP = 'Label values a series must have, e.g. { device_id = "0" } (exact match; "" matches a missing label).'



def quantile_of(agg: str) -> Optional[Decimal]:
    """``"p99.9"`` -> ``Decimal("0.999")``; None for a non-quantile aggregation.

    Decimal, so that the PromQL export says ``0.999`` and not ``0.9990000000000001``.
    """
    if not agg.startswith("p"):
        return None
    return (Decimal(agg[1:]) / 100).normalize()


def exactly_one(options: Mapping[str, Any], *keys: str) -> str:
    """The one key of ``keys`` that is set; ValueError naming all of them otherwise."""
    given = [k for k in keys if options.get(k) is not None]
    if len(given) != 1:
        listed = ", ".join(keys[:-1]) + f" or {keys[-1]}"
        if given:
            raise ValueError(f"give only one of {listed} (got {' and '.join(given)})")
        raise ValueError(f"give one of {listed}")
    return given[0]


def declared_labels(ctx: PluginContext, metric: str, match: Mapping[str, str],
                    drop: Sequence[str] = ()) -> Optional[Set[str]]:
    """The label names the alerts of a rule on ``metric`` carry: the declared ones plus the match keys.

    None when the metric does not declare its labels (then any template field may be meant).
    """
    labels = getattr(ctx.metrics.get(metric), "labels", None)
    if labels is None:
        return None
    return (set(labels) - set(drop)) | set(match)


def label_key(on: Optional[Sequence[str]]) -> Callable[[Series], Tuple[Any, ...]]:
    """How two series are matched: on the ``on`` labels (a missing one counts as ""), else on all labels."""
    if on is None:
        return lambda s: s.labels
    names = tuple(on)

    def key(s: Series) -> Tuple[str, ...]:
        labels = dict(s.labels)
        return tuple(labels.get(n, "") for n in names)
    return key


# ---------------------------------------------------------------------------
# Measuring a series: the newest sample, or an aggregation over a window
# ---------------------------------------------------------------------------

#: ``f(ts, vs, start, end) -> value or None`` over the samples of ``(start, end]``.
WindowFunction = Callable[[Any, Any, float, float], Optional[float]]


def _cv(ts: Any, vs: Any, start: float, end: float) -> Optional[float]:
    """stddev / avg, with Go's division (x/0 is +Inf, 0/0 is NaN) so it agrees with the PromQL expression."""
    mean = avg_over(vs)
    if mean is None:
        return None
    sd = stddev_over(vs)
    assert sd is not None
    if mean == 0:
        return math.nan if sd == 0 or sd != sd else math.copysign(math.inf, mean)
    return sd / mean


_WINDOW_FUNCTIONS: Dict[str, WindowFunction] = {
    "avg": lambda ts, vs, start, end: avg_over(vs),
    "min": lambda ts, vs, start, end: min_over(vs),
    "max": lambda ts, vs, start, end: max_over(vs),
    "sum": lambda ts, vs, start, end: sum_over(vs),
    # count_over_time answers an empty window with 0; an empty window is "no data" here, as everywhere.
    "count": lambda ts, vs, start, end: float(len(vs)) if len(vs) else None,
    "stddev": lambda ts, vs, start, end: stddev_over(vs),
    "cv": _cv,
    "rate": rate,
    "increase": increase,
    "delta": delta,
    "deriv": lambda ts, vs, start, end: deriv(ts, vs),
}


def window_function(agg: str) -> WindowFunction:
    """The function computing ``agg`` over a window's ``(timestamps, values)`` (not for ``last``)."""
    q = quantile_of(agg)
    if q is not None:
        qf = float(q)
        return lambda ts, vs, start, end: quantile_over(qf, vs)
    return _WINDOW_FUNCTIONS[agg]


class Measurement:
    """``agg`` of one series at ``now``: the newest sample younger than ``stale_after``, or the
    aggregation over ``(now - over, now]``. None when the series has nothing to say."""

    __slots__ = ("fn", "over", "stale_after")

    def __init__(self, agg: str, over: Optional[float], stale_after: float) -> None:
        self.fn: Optional[WindowFunction] = None if agg == "last" else window_function(agg)
        self.over = over or 0.0
        self.stale_after = stale_after

    def __call__(self, s: Series, now: float, memo: Optional[Dict[Any, Any]] = None) -> Optional[float]:
        """``memo``: the evaluation's :attr:`EvalContext.memo`, shared with the other rules."""
        if self.fn is None:
            last = s.last()
            if last is None or last[0] <= now - self.stale_after:
                return None
            return last[1]
        start = now - self.over
        key = (self.fn, s, start)
        if memo is not None and key in memo:
            return memo[key]
        ts, vs = s.window(start, now)
        value = self.fn(ts, vs, start, now) if len(vs) else None
        if memo is not None:
            memo[key] = value
        return value

    def window(self) -> float:
        """Seconds of history it reads (the newest sample may be ``stale_after`` old)."""
        return self.stale_after if self.fn is None else self.over


def check_agg_over(o: Mapping[str, Any], agg_key: str = "agg", over_key: str = "over") -> None:
    """``over`` is required with a window aggregation and meaningless with ``last``."""
    agg, over = o[agg_key], o[over_key]
    if agg == "last" and over is not None:
        raise ValueError(f'{over_key} does not apply to {agg_key} = "last" (the newest sample); '
                         f'remove it, or choose an aggregation over the window such as "avg"')
    if agg != "last" and over is None:
        raise ValueError(f'{over_key} is required with {agg_key} = "{agg}": the window to aggregate over')


class Bounds:
    """``above``/``below`` with an optional ``clear_below``/``clear_above``, as one comparison.

    Multiplying by ``sign`` (-1 for ``below``) turns every case into "fire when
    greater than, clear when less than", so the hot loop has a single form.
    """

    __slots__ = ("clear_at", "fire_at", "key", "sign", "threshold")

    def __init__(self, o: Mapping[str, Any]) -> None:
        self.key = exactly_one(o, "above", "below")
        self.threshold: float = o[self.key]
        clear_key, other = ("clear_below", "clear_above") if self.key == "above" else ("clear_above", "clear_below")
        if o[other] is not None:
            raise ValueError(f"{other} goes with {'below' if other == 'clear_above' else 'above'}, "
                             f"not with {self.key}; use {clear_key}")
        clear = o[clear_key]
        if clear is not None:
            if self.key == "above" and clear > self.threshold:
                raise ValueError(f"clear_below ({clear:g}) must be <= above ({self.threshold:g})")
            if self.key == "below" and clear < self.threshold:
                raise ValueError(f"clear_above ({clear:g}) must be >= below ({self.threshold:g})")
        self.sign = 1.0 if self.key == "above" else -1.0
        self.fire_at = self.sign * self.threshold
        self.clear_at: Optional[float] = None if clear is None else self.sign * clear

    @property
    def hysteresis(self) -> Optional[str]:
        """The clear key in use, if any (PromQL cannot express it)."""
        if self.clear_at is None:
            return None
        return "clear_below" if self.key == "above" else "clear_above"

    def verdict(self, labels: Mapping[str, str], v: float, everything: bool) -> Optional[Verdict]:
        """The verdict for value ``v``; None for NaN, or for a value that does not fire when only
        firing ones are wanted (``everything`` false)."""
        x = v * self.sign
        if x != x:
            return None
        fire = x > self.fire_at
        if not (fire or everything):
            return None
        clear_at = self.clear_at
        return Verdict(labels, v, fire, (not fire) if clear_at is None else x < clear_at)

    def promql(self) -> str:
        """`` > 80``: the comparison of the fire condition."""
        return f" {'>' if self.key == 'above' else '<'} {promql_number(self.threshold)}"


def bounds_options(what: str = "the value") -> List[Option]:
    return [
        Option("above", Number(), None, f"Fire when {what} is above this (give exactly one of above, below)."),
        Option("below", Number(), None, f"Fire when {what} is below this."),
        Option("clear_below", Number(), None,
               "With above: resolve only when the value is below this (<= above); between the two nothing moves. "
               "Default: resolve as soon as it is not above."),
        Option("clear_above", Number(), None, "With below: resolve only when the value is above this (>= below)."),
    ]


# ---------------------------------------------------------------------------
# The cached selection of a rule's series
# ---------------------------------------------------------------------------


class Selection:
    """The series of one metric that match a rule's ``match``, with their label dicts.

    ``store.select()`` walks every series of the name and compares labels; doing
    that for every rule at every evaluation is most of an evaluation's cost when
    the answer almost never changes. So the rows are kept and selected again only
    when the store is another object or its ``generation`` moved (a series was
    created or swept).
    Keeping a series that has since aged out of the retention is harmless: its
    ``last()`` is None and its windows are empty, exactly as if it were not selected.

    ``histogram``: False reads the series themselves; True reads ``<name>_bucket``
    grouped by the labels other than ``le`` (rows hold a list of bucket series);
    None reads the buckets if there are any, else the series (a metric nobody declared).
    """

    __slots__ = ("_generation", "_store", "histogram", "is_histogram", "matchers", "name", "rows", "version")

    def __init__(self, name: str, matchers: Mapping[str, str], histogram: Optional[bool] = False) -> None:
        self.name = name
        self.matchers: Optional[Dict[str, str]] = dict(matchers) or None
        self.histogram = histogram
        self.is_histogram = bool(histogram)
        self.rows: List[Tuple[Any, Dict[str, str]]] = []
        self._store: Any = None
        self._generation = -1
        #: Incremented at every new selection, so a rule can rebuild what it derives from the rows.
        self.version = 0

    def refresh(self, store: Any, now: float) -> bool:
        """Select again if the store may have new series; True if it did."""
        generation = store.generation
        if store is self._store and generation == self._generation:
            return False
        rows: Optional[List[Tuple[Any, Dict[str, str]]]] = None
        if self.histogram is not False:
            groups = bucket_series(store, self.name, self.matchers)
            if groups or self.histogram:
                rows = [(buckets, dict(labels)) for labels, buckets in groups.items()]
        self.is_histogram = rows is not None
        if rows is None:
            rows = [(s, s.labels_dict()) for s in store.select(self.name, self.matchers)]
        self.rows = rows
        self._store, self._generation = store, generation
        self.version += 1
        return True


# ---------------------------------------------------------------------------
# PromQL spelling, for export()
# ---------------------------------------------------------------------------


def promql_number(x: float) -> str:
    """80.0 -> ``80``, 0.2 -> ``0.2``: the shortest text PromQL reads back as the same float."""
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    if x == int(x) and abs(x) < 1e15:
        return str(int(x))
    return repr(x)


def promql_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def promql_selector(metric: str, match: Mapping[str, str]) -> str:
    """``npu_temperature_celsius{device_id="0"}``, the matchers in the order the rule wrote them."""
    if not match:
        return metric
    return metric + "{" + ",".join(f"{k}={promql_string(v)}" for k, v in match.items()) + "}"


def promql_duration(seconds: float) -> str:
    return format_duration(seconds)


_PROMQL_FUNCTIONS = {"avg": "avg_over_time", "min": "min_over_time", "max": "max_over_time",
                     "sum": "sum_over_time", "count": "count_over_time", "stddev": "stddev_over_time",
                     "rate": "rate", "increase": "increase", "delta": "delta", "deriv": "deriv"}


def promql_agg(agg: str, metric: str, match: Mapping[str, str], over: Optional[float],
               histogram: bool = False) -> Tuple[str, bool]:
    """The PromQL of ``agg`` of a metric: the expression, and whether it is a binary operation
    (which needs parentheses as an operand of another one)."""
    sel = promql_selector(metric, match)
    if agg == "last":
        return sel, False
    assert over is not None
    rng = f"[{promql_duration(over)}]"
    q = quantile_of(agg)
    if q is not None:
        if histogram:
            return f"histogram_quantile({q}, rate({promql_selector(metric + '_bucket', match)}{rng}))", False
        return f"quantile_over_time({q}, {sel}{rng})", False
    if agg == "cv":
        return f"stddev_over_time({sel}{rng}) / avg_over_time({sel}{rng})", True
    return f"{_PROMQL_FUNCTIONS[agg]}({sel}{rng})", False


def promql_operand(expr: Tuple[str, bool]) -> str:
    return f"({expr[0]})" if expr[1] else expr[0]


def promql_on(on: Optional[Sequence[str]]) -> str:
    """The vector matching that keeps the left side's labels, as our alerts do.

    One-to-one matching with ``on(...)`` would keep only the ``on`` labels in
    the result; ``group_left`` keeps all of the left side's (and is exact for
    one-to-one pairs too). Without ``on``, PromQL matches on all labels, as we do.
    """
    if on is None:
        return ""
    return f" on({', '.join(on)}) group_left"


# ---------------------------------------------------------------------------
# threshold
# ---------------------------------------------------------------------------

THRESHOLD_OPTIONS = [
    Option("metric", METRIC_NAME, REQUIRED, "The metric to watch."),
    Option("match", Map(String()), {}, MATCH_HELP),
    Option("agg", AGG, "last",
           'How the series is read: "last" (its newest sample, if newer than stale_after), or an aggregation '
           'over the window `over`: avg, min, max, sum, count, stddev, cv (stddev/avg), rate, increase, delta, '
           'deriv, or a quantile such as p99 (of a histogram\'s buckets when the metric is one).'),
    Option("over", Duration(), None, 'The window of the aggregation ("5m"); required unless agg is "last".'),
    *bounds_options(),
]


class ThresholdRule:
    """One verdict per matching series (per histogram, for a histogram quantile)."""

    def __init__(self, ctx: PluginContext) -> None:
        o = ctx.options
        check_agg_over(o)
        self.bounds = Bounds(o)
        self.name = ctx.name
        self.metric: str = o["metric"]
        self.match: Dict[str, str] = dict(o["match"])
        self.agg: str = o["agg"]
        self.over: Optional[float] = o["over"]
        self.stale_after: float = o["stale_after"]
        spec = ctx.metrics.get(self.metric)
        self.quantile = quantile_of(self.agg)
        # A quantile reads buckets when the metric is a declared histogram, or -- undeclared -- when
        # buckets turn out to exist; a declared gauge is never read as a histogram.
        histogram: Optional[bool] = False
        if self.quantile is not None:
            histogram = None if spec is None else spec.type == "histogram"
        self.selection = Selection(self.metric, self.match, histogram)
        self.measure = Measurement(self.agg, self.over, self.stale_after)
        self._fields = declared_labels(ctx, self.metric, self.match, drop=("le",))

    def evaluate(self, ctx: EvalContext) -> List[Verdict]:
        now = ctx.now
        sel = self.selection
        sel.refresh(ctx.store, now)
        everything = bool(ctx.alerts(self.name))
        verdict = self.bounds.verdict
        out = []
        if sel.is_histogram:
            assert self.over is not None and self.quantile is not None
            q = float(self.quantile)
            start = now - self.over
            for buckets, labels in sel.rows:
                increases = bucket_increases(buckets, start, now)
                if not increases:
                    continue
                v = verdict(labels, histogram_quantile(q, increases), everything)
                if v is not None:
                    out.append(v)
            return out
        # The hot path of the whole engine: Measurement and Bounds.verdict inlined, one call
        # (last or window) per series, and no Verdict built for a series that is fine.
        fn = self.measure.fn
        oldest = now - self.stale_after
        start = now - (self.over or 0.0)
        b = self.bounds
        sign, fire_at, clear_at = b.sign, b.fire_at, b.clear_at
        append = out.append
        memo = ctx.memo
        for s, _labels in sel.rows:
            if fn is None:
                last = s.last()
                if last is None or last[0] <= oldest:
                    continue
                value = last[1]
                if s.ended:
                    # its collector says it is gone (a process exited, a health text changed): its alert
                    # clears now, as Prometheus's staleness marker ends it, not stale_after later
                    if everything:
                        append(Verdict(s.labels, value, False, True))
                    continue
            else:
                key = (fn, s, start)
                value = memo.get(key, memo)
                if value is memo:
                    ts, vs = s.window(start, now)
                    value = memo[key] = fn(ts, vs, start, now) if len(vs) else None
                if value is None:
                    continue
            x = value * sign
            if x > fire_at:  # s.labels: the sorted tuple the engine keys alerts by, no sorting per verdict
                append(Verdict(s.labels, value, True, False))
            elif everything and x == x:
                append(Verdict(s.labels, value, False, True if clear_at is None else x < clear_at))
        return out

    def metrics(self) -> Sequence[str]:
        return [self.metric]

    def window(self) -> float:
        return self.measure.window()

    def template_fields(self) -> Optional[Set[str]]:
        return self._fields

    def export(self) -> str:
        clear = self.bounds.hysteresis
        if clear:
            raise ValueError(f"{clear} is hysteresis (a separate clear threshold), which PromQL cannot express")
        sel = self.selection
        histogram = sel.histogram is True
        if sel.histogram is None:
            # A quantile of a metric nobody declares (a scraped one): histogram_quantile or
            # quantile_over_time is what the series showed at evaluation, and unknown before.
            if not sel.rows:
                raise ValueError(f"no collector declares {self.metric}: whether it is a histogram is known only "
                                 f"once the agent has seen its series")
            histogram = sel.is_histogram
        expr = promql_agg(self.agg, self.metric, self.match, self.over, histogram)
        return expr[0] + self.bounds.promql()


def make_threshold(ctx: PluginContext) -> ThresholdRule:
    return ThresholdRule(ctx)


# ---------------------------------------------------------------------------
# ratio
# ---------------------------------------------------------------------------

RATIO_OPTIONS = [
    Option("metric", METRIC_NAME, REQUIRED, "The numerator metric; the alerts carry its labels."),
    Option("per", METRIC_NAME, REQUIRED, "The denominator metric."),
    Option("match", Map(String()), {}, MATCH_HELP + " Applied to both metrics unless per_match is given."),
    Option("per_match", Map(String()), None,
           'The denominator\'s own label matchers (errors/requests of one counter: match = {status = "error"}, '
           "per_match = {}); default: match."),
    Option("on", Array(LABEL_NAME), None,
           "Label names that must be equal for two series to be divided; the denominators sharing them are summed "
           "(as PromQL's sum by). Default: all labels must be equal."),
    Option("agg", AGG, "last", "The aggregation applied to both metrics (see threshold), e.g. increase."),
    Option("over", Duration(), None, 'The window of the aggregation ("5m"); required unless agg is "last".'),
    Option("scale", Number(), 1.0, "The quotient is multiplied by this: 100 for a percentage."),
    *bounds_options("scale x metric / per"),
]


class RatioRule:
    """``scale x agg(metric) / agg(per)`` per numerator series; no verdict for a zero or missing denominator.

    Several numerator series may share one denominator (process memory / device
    memory on ``device_id``), and the denominator series sharing an ``on`` key
    are summed (requests of every status per ``app``), as ``sum by`` would.
    """

    def __init__(self, ctx: PluginContext) -> None:
        o = ctx.options
        check_agg_over(o)
        self.bounds = Bounds(o)
        self.name = ctx.name
        self.metric: str = o["metric"]
        self.per: str = o["per"]
        self.match: Dict[str, str] = dict(o["match"])
        self.per_match: Dict[str, str] = dict(o["per_match"]) if o["per_match"] is not None else self.match
        if self.per == self.metric and self.per_match == self.match:
            raise ValueError("per names the same metric as metric with the same matchers, so the ratio would "
                             "always be 1: give the denominator its own per_match")
        self.on: Optional[Tuple[str, ...]] = o["on"]
        self.agg: str = o["agg"]
        self.over: Optional[float] = o["over"]
        self.scale: float = o["scale"]
        if self.scale == 0:
            raise ValueError("scale must not be 0")
        self.num = Selection(self.metric, self.match)
        self.den = Selection(self.per, self.per_match)
        self.measure = Measurement(self.agg, self.over, o["stale_after"])
        self._key = label_key(self.on)
        self._pairs: List[Tuple[Series, Dict[str, str], List[Series]]] = []
        self._versions = (-1, -1)
        self._fields = declared_labels(ctx, self.metric, self.match)

    def _join(self) -> None:
        index: Dict[Any, List[Series]] = {}
        key = self._key
        for s, _labels in self.den.rows:
            index.setdefault(key(s), []).append(s)
        self._pairs = [(s, labels, index[key(s)]) for s, labels in self.num.rows if key(s) in index]

    def evaluate(self, ctx: EvalContext) -> List[Verdict]:
        now = ctx.now
        self.num.refresh(ctx.store, now)
        self.den.refresh(ctx.store, now)
        if self._versions != (self.num.version, self.den.version):
            self._join()
            self._versions = (self.num.version, self.den.version)
        everything = bool(ctx.alerts(self.name))
        verdict = self.bounds.verdict
        measure = self.measure
        scale = self.scale
        memo = ctx.memo
        out = []
        for s, labels, dens in self._pairs:
            parts = [x for x in (measure(d, now, memo) for d in dens) if x is not None]
            b = sum(parts) if parts else None
            if not b:  # None, or a zero denominator
                continue
            a = measure(s, now, memo)
            if a is None:
                continue
            v = verdict(labels, scale * a / b, everything)
            if v is not None:
                out.append(v)
        return out

    def metrics(self) -> Sequence[str]:
        return [self.metric, self.per]

    def window(self) -> float:
        return self.measure.window()

    def template_fields(self) -> Optional[Set[str]]:
        return self._fields

    def export(self) -> str:
        """E.g. ``(increase(a[5m]) / on(device_id) group_left increase(b[5m])) * 100 > 0.1``.

        A zero denominator gives Inf or NaN in PromQL, and no verdict here.
        """
        clear = self.bounds.hysteresis
        if clear:
            raise ValueError(f"{clear} is hysteresis (a separate clear threshold), which PromQL cannot express")
        a = promql_operand(promql_agg(self.agg, self.metric, self.match, self.over))
        b = promql_agg(self.agg, self.per, self.per_match, self.over)
        b = f"sum by ({', '.join(self.on)}) ({b[0]})" if self.on else promql_operand(b)
        expr = f"{a} /{promql_on(self.on)} {b}"
        if self.scale != 1:
            expr = f"({expr}) * {promql_number(self.scale)}"
        return expr + self.bounds.promql()


def make_ratio(ctx: PluginContext) -> RatioRule:
    return RatioRule(ctx)


@hookimpl
def npuagent_rule_types() -> List[RuleType]:
    """``threshold`` and ``ratio``."""
    return [
        RuleType(name="threshold", factory=make_threshold, options=THRESHOLD_OPTIONS,
                 help="Fire when a metric (its newest sample, or an aggregation over a window) is above or below a "
                      "limit; clear_below/clear_above give a separate clear threshold (hysteresis)."),
        RuleType(name="ratio", factory=make_ratio, options=RATIO_OPTIONS,
                 help="Fire when scale x metric / per (on matching labels) is above or below a limit: used/total "
                      "memory, errors/requests over 5m."),
    ]
