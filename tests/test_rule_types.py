"""The built-in rule types, driven through the real engine, store and event log over simulated time:
fire, clear, the hysteresis band, `for`, missing data, validation messages, template fields, PromQL export."""

from __future__ import annotations

import logging
import math
from types import SimpleNamespace
from typing import Any, Dict, List, Mapping, Optional, Tuple

import pytest

from npuagent.builtin import absent, change, combine, event, predict, threshold
from npuagent.context import PluginContext
from npuagent.events import EventLog
from npuagent.model import Event, MetricSpec, Sample
from npuagent.options import validate_table
from npuagent.plugins import Plugins
from npuagent.rules import FIRING, INACTIVE, PENDING, RULE_COMMON, CompiledRule, Engine, EvalContext, Instance, digest
from npuagent.store import Store

T0 = 1_700_000_000.0
MODULES = (("threshold", threshold), ("predict", predict), ("absent", absent), ("event", event),
           ("combine", combine), ("change", change))


def make_plugins() -> Plugins:
    plugins = Plugins()
    plugins.load(entry_points=False, builtins=())
    for name, module in MODULES:
        plugins.register(module, name)
    return plugins


TYPES = {name: rt for name, (_plugin, rt) in make_plugins().rule_types().items()}

TEMP = "npu_temperature_celsius"
GAUGES = {TEMP: MetricSpec(TEMP, "gauge", labels=["device_id"]),
          "npu_power_watts": MetricSpec("npu_power_watts", "gauge", labels=["device_id"]),
          "inference_latency_seconds": MetricSpec("inference_latency_seconds", "histogram", labels=["stage"])}


def validated(type_: str, table: Mapping[str, Any]) -> Tuple[dict, list]:
    return validate_table({"type": type_, **table}, (*RULE_COMMON, *TYPES[type_].options))


def build(type_: str, name: str = "r", metrics: Optional[Mapping[str, MetricSpec]] = None,
          **table: Any) -> CompiledRule:
    values, errors = validated(type_, {"name": name, **table})
    assert not errors, errors
    ctx = PluginContext(name=name, type=type_, options=values, metrics=GAUGES if metrics is None else metrics)
    impl = TYPES[type_].factory(ctx)
    return CompiledRule(name, type_, values, impl, digest(type_, values))


def factory_error(type_: str, **table: Any) -> str:
    with pytest.raises(ValueError) as e:
        build(type_, **table)
    return str(e.value)


class Sim:
    """A store, an event log, collectors and an engine on a simulated clock (seconds after T0)."""

    def __init__(self, *rules: CompiledRule, retention: float = 3600.0, started: float = 0.0) -> None:
        self.store = Store(retention)
        self.events = EventLog(retention=7200.0)
        self.collectors: Dict[str, Any] = {}
        self.engine = Engine(list(rules), started=T0 + started)
        self.log: List[tuple] = []

    def feed(self, t: float, *samples: Tuple[str, Mapping[str, str], float], source: str = "test",
             interval: float = 10.0) -> None:
        self.store.ingest(source, [Sample(n, dict(labels), v, T0 + t) for n, labels, v in samples], T0 + t, interval)

    def event(self, t: float, kind: str, **labels: str) -> None:
        self.events.add([Event(kind, labels, "", T0 + t)], T0 + t)

    def step(self, t: float) -> List[tuple]:
        got = self.engine.evaluate(T0 + t, self.store, self.events, self.collectors)
        out = [(tr.at - T0, tr.rule, dict(tr.labels), tr.previous, tr.state, tr.value) for tr in got]
        self.log += out
        return out

    def moves(self, rule: Optional[str] = None) -> List[tuple]:
        """(time, labels, previous, state) of every transition so far."""
        return [(t, labels, prev, state) for t, r, labels, prev, state, _v in self.log if rule in (None, r)]

    def values(self, rule: Optional[str] = None) -> List[Optional[float]]:
        return [v for _t, r, _l, _p, _s, v in self.log if rule in (None, r)]

    def verdicts(self, rule: CompiledRule, t: float) -> list:
        ctx = EvalContext(T0 + t, self.store, self.events, self.engine.instances_of, self.collectors,
                          self.engine.started)
        # a verdict's labels are a mapping or the store's sorted tuple of pairs: give the tests mappings
        verdicts = [v._replace(labels=dict(v.labels)) for v in rule.impl.evaluate(ctx)]
        return sorted(verdicts, key=lambda v: sorted(v.labels.items()))


def dev(i: Any) -> Dict[str, str]:
    return {"device_id": str(i)}


def temps(*values: float) -> List[Tuple[str, Dict[str, str], float]]:
    return [(TEMP, dev(i), v) for i, v in enumerate(values)]


# ---------------------------------------------------------------------------
# registration
# ---------------------------------------------------------------------------


def test_every_module_registers_its_types_through_the_hook() -> None:
    assert sorted(TYPES) == ["absent", "all", "any", "change", "event", "predict", "ratio", "threshold"]
    for rt in TYPES.values():
        assert rt.help and all(o.help for o in rt.options)
        assert not {o.name for o in rt.options} & {o.name for o in RULE_COMMON}, rt.name


# ---------------------------------------------------------------------------
# threshold
# ---------------------------------------------------------------------------


def test_threshold_last_pending_firing_band_and_clear_per_device() -> None:
    r = build("threshold", "hot", metric=TEMP, above=80, clear_below=75, **{"for": "20s"})
    sim = Sim(r)
    dev0 = [70, 85, 85, 85, 78, 75, 80, 74, 74]
    for n, v in enumerate(dev0):
        sim.feed(n * 10, *temps(v, 60))
        sim.step(n * 10)
    assert sim.moves() == [
        (10, dev(0), INACTIVE, PENDING),   # above 80
        (30, dev(0), PENDING, FIRING),     # held 20 s
        (70, dev(0), FIRING, INACTIVE),    # 78, 75 and 80 are in the band; 74 is below 75
    ]
    assert sim.values() == [85, 85, 74]


def test_threshold_below_with_clear_above() -> None:
    r = build("threshold", "slow", metric="npu_aicore_frequency_mhz", below=1000, clear_above=1200)
    sim = Sim(r)
    for n, v in enumerate([1500, 900, 1100, 1000, 1250, 900]):
        sim.feed(n * 10, ("npu_aicore_frequency_mhz", dev(0), v))
        sim.step(n * 10)
    assert sim.moves() == [(10, dev(0), INACTIVE, FIRING), (40, dev(0), FIRING, INACTIVE),
                           (50, dev(0), INACTIVE, FIRING)]


def test_threshold_without_clear_threshold_clears_as_soon_as_it_does_not_fire() -> None:
    r = build("threshold", "hot", metric=TEMP, above=80)
    sim = Sim(r)
    for n, v in enumerate([81, 80, 81]):
        sim.feed(n * 10, *temps(v))
        sim.step(n * 10)
    assert sim.moves() == [(0, dev(0), INACTIVE, FIRING), (10, dev(0), FIRING, INACTIVE),
                           (20, dev(0), INACTIVE, FIRING)]


def test_threshold_last_ignores_a_sample_older_than_stale_after_and_the_engine_resolves_it() -> None:
    r = build("threshold", "hot", metric=TEMP, above=80, stale_after="30s")
    sim = Sim(r)
    sim.feed(0, *temps(90))
    for t in range(0, 70, 10):
        sim.step(t)
    assert [v.value for v in sim.verdicts(r, 20)] == [90]
    assert sim.verdicts(r, 30) == []  # the sample at 0 is not newer than 30 - 30
    # last seen at 20, missing for stale_after (30 s) at 50: on_missing = resolve
    assert sim.moves() == [(0, dev(0), INACTIVE, FIRING), (50, dev(0), FIRING, INACTIVE)]


def test_threshold_last_clears_a_series_its_collector_stopped_returning_but_holds_on_a_failure() -> None:
    """npu_health{health="Alarm"} becomes npu_health{health="OK"}: the Alarm series is ended, its alert clears
    at the next evaluation (a staleness marker); a failed collection ends nothing."""
    r = build("threshold", "degraded", metric=TEMP, above=0, stale_after="5m")
    sim = Sim(r)
    alarm, ok = {"device_id": "5", "health": "Alarm"}, {"device_id": "5", "health": "OK"}
    sim.feed(0, (TEMP, alarm, 2.0))
    assert [m[4] for m in sim.step(0)] == [FIRING]
    sim.store.mark_failed("test")  # the collector failed: no news, the alert holds
    assert sim.step(10) == []
    sim.feed(20, (TEMP, ok, 0.0))  # it answers again, and the Alarm series is not in the answer
    assert [(t, labels["health"], prev, state) for t, _r, labels, prev, state, _v in sim.step(20)] == [
        (20, "Alarm", FIRING, INACTIVE)]


def test_threshold_window_without_samples_gives_no_verdict() -> None:
    r = build("threshold", "hot", metric=TEMP, agg="avg", over="30s", above=80)
    sim = Sim(r)
    sim.feed(0, *temps(90))
    assert [v.value for v in sim.verdicts(r, 29)] == [90]
    assert sim.verdicts(r, 30) == []  # (0, 30] holds nothing
    # the engine keeps no state for a series that was never in trouble
    assert build("threshold", "x", metric=TEMP, agg="avg", over="30s", above=100).impl.evaluate(
        EvalContext(T0 + 10, sim.store, None, lambda name: [])) == []


def test_threshold_avg_over_a_left_open_window() -> None:
    r = build("threshold", "hot", metric=TEMP, agg="avg", over="30s", above=85)
    sim = Sim(r)
    for n, v in enumerate([70, 80, 90, 100]):
        sim.feed(n * 10, *temps(v))
        sim.step(n * 10)
    # at 20: (−10, 20] = 70, 80, 90 -> 80; at 30: (0, 30] = 80, 90, 100 -> 90
    assert sim.moves() == [(30, dev(0), INACTIVE, FIRING)]
    assert sim.values() == [90]


# 1, 2, 4, 8 at 10, 20, 30, 40; window (0, 40] at 40 holds all four.
#   stddev: mean 3.75, squared deviations 7.5625 + 3.0625 + 0.0625 + 18.0625 = 28.75, / 4 = 7.1875
#   rate/increase: raw 7 over 30 s; extrapolated to the start (10 s < 1.1 x 10) but not below zero:
#     30 x 1/7 = 4.29 s back, so 7 x 34.29/30 = 8.0 -> rate 8/40 = 0.2; delta has no zero clamp: 7 x 40/30
#   deriv: slope = sum((x-25)(y-3.75)) / sum((x-25)^2) = 115 / 500
#   p50: rank 1.5 between 2 and 4 -> 3; p90: rank 2.7 -> 4 x 0.3 + 8 x 0.7
@pytest.mark.parametrize(("agg", "expected"), [
    ("avg", 3.75), ("min", 1.0), ("max", 8.0), ("sum", 15.0), ("count", 4.0),
    ("stddev", math.sqrt(7.1875)), ("cv", math.sqrt(7.1875) / 3.75), ("rate", 0.2), ("increase", 8.0),
    ("delta", 7 * 40 / 30), ("deriv", 0.23), ("p50", 3.0), ("p90", 6.8),
])
def test_threshold_each_aggregation_reads_the_window_as_promql_does(agg: str, expected: float) -> None:
    r = build("threshold", "x", metric="some_counter", agg=agg, over="40s", above=-1e9)
    sim = Sim(r)
    for t, v in ((10, 1), (20, 2), (30, 4), (40, 8)):
        sim.feed(t, ("some_counter", {}, v))
    sim.step(40)
    assert sim.moves() == [(40, {}, INACTIVE, FIRING)]
    assert sim.values() == [pytest.approx(expected, rel=1e-12)]


def _histogram(sim: Sim, metric: str, stage: str, increases: Mapping[str, float]) -> None:
    """Cumulative buckets sampled at 10..40 s, each rising by exactly its increase from 10 to 40,
    from 1000 so that no bucket's extrapolation is clamped at zero (all scale alike)."""
    for t in (10, 20, 30, 40):
        sim.feed(t, *[(f"{metric}_bucket", {"stage": stage, "le": le}, 1000 + inc * (t - 10) / 30)
                      for le, inc in increases.items()], source=stage)


PREFILL = {"0.1": 20, "0.2": 60, "0.5": 90, "+Inf": 100}
DECODE = {"0.1": 90, "0.2": 95, "0.5": 100, "+Inf": 100}


@pytest.mark.parametrize("declared", [True, False])
def test_threshold_histogram_quantile_interpolates_in_the_bucket_of_the_rank(declared: bool) -> None:
    metrics = GAUGES if declared else {}
    r = build("threshold", "slow", metrics=metrics, metric="inference_latency_seconds", agg="p75", over="40s",
              above=0.3)
    sim = Sim(r)
    _histogram(sim, "inference_latency_seconds", "prefill", PREFILL)
    _histogram(sim, "inference_latency_seconds", "decode", DECODE)
    sim.step(40)
    # prefill: rank 0.75 x 100 = 75 falls in (0.2, 0.5] holding 90 - 60 = 30: 0.2 + 0.3 x (75 - 60) / 30 = 0.35
    # decode: rank 75 falls in (0, 0.1] holding 90: 0.1 x 75 / 90 = 0.0833, below 0.3
    assert sim.moves() == [(40, {"stage": "prefill"}, INACTIVE, FIRING)]
    assert sim.values() == [pytest.approx(0.35)]
    assert [(v.labels, round(v.value, 6)) for v in sim.verdicts(r, 40)] == [
        ({"stage": "decode"}, round(0.1 * 75 / 90, 6)), ({"stage": "prefill"}, 0.35)]


def test_threshold_quantile_of_a_declared_gauge_is_quantile_over_time_even_with_buckets_present() -> None:
    metrics = {"x": MetricSpec("x", "gauge", labels=[])}
    r = build("threshold", "q", metrics=metrics, metric="x", agg="p50", over="40s", above=-1)
    sim = Sim(r)
    _histogram(sim, "x", "prefill", PREFILL)
    for t, v in ((10, 1), (20, 2), (30, 4), (40, 8)):
        sim.feed(t, ("x", {}, v), source="gauge")
    assert [(v.labels, v.value) for v in sim.verdicts(r, 40)] == [({}, 3.0)]


def test_threshold_selects_series_once_until_the_store_gets_new_ones() -> None:
    class CountingStore:
        def __init__(self, store: Store) -> None:
            self.store = store
            self.selects = 0

        def select(self, name: str, matchers: Optional[Mapping[str, str]] = None) -> list:
            self.selects += 1
            return self.store.select(name, matchers)

        @property
        def generation(self) -> int:
            return self.store.generation

    r = build("threshold", "hot", metric=TEMP, above=80)
    sim = Sim(r)
    counting = CountingStore(sim.store)
    fired = []
    for n in range(10):
        sim.feed(n * 10, *temps(*[70 + k for k in range(16)]))
        fired += sim.engine.evaluate(T0 + n * 10, counting)
    assert counting.selects == 1
    assert [t.labels for t in fired] == [dev(11), dev(12), dev(13), dev(14), dev(15)]  # 81 .. 85
    sim.feed(100, *temps(*[70 + k for k in range(17)]))  # device 16 appears
    fired = sim.engine.evaluate(T0 + 100, counting)
    assert counting.selects == 2
    assert [t.labels for t in fired] == [dev(16)]
    # one series swept and another created between two evaluations: the count stays, the generation moves
    before = sim.store.generation
    sim.store._sweep(float("inf"))
    sim.feed(200, *temps(*[90 + k for k in range(17)]))
    assert len(sim.store) == 17 and sim.store.generation == before + 18
    sim.engine.evaluate(T0 + 200, counting)
    assert counting.selects == 3


def test_threshold_emits_only_firing_verdicts_while_the_rule_has_no_alert() -> None:
    r = build("threshold", "hot", metric=TEMP, above=80)
    sim = Sim(r)
    sim.feed(0, *temps(70, 90, 75))
    assert [(v.labels, v.fire) for v in sim.verdicts(r, 0)] == [(dev(1), True)]
    sim.step(0)
    # with an open alert, every series is judged, so the engine sees the others clear too
    assert [(v.labels, v.fire, v.clear) for v in sim.verdicts(r, 0)] == [
        (dev(0), False, True), (dev(1), True, False), (dev(2), False, True)]


def test_threshold_match_selects_exact_label_values() -> None:
    r = build("threshold", "hot", metric=TEMP, match={"device_id": "1"}, above=80)
    sim = Sim(r)
    sim.feed(0, *temps(90, 90))
    sim.step(0)
    assert sim.moves() == [(0, dev(1), INACTIVE, FIRING)]


# ---------------------------------------------------------------------------
# ratio
# ---------------------------------------------------------------------------


def test_ratio_memory_percent_on_equal_label_sets_and_no_verdict_without_a_denominator() -> None:
    r = build("ratio", "mem", metric="npu_memory_used_bytes", per="npu_memory_total_bytes", scale=100, above=90,
              clear_below=80)
    sim = Sim(r)
    used = {0: [95, 85, 79], 1: [50, 50, 50], 2: [10, 10, 10], 3: [99, 99, 99]}
    total = {0: 100, 1: 100, 2: 0}  # device 2: zero, device 3: none
    for n in range(3):
        sim.feed(n * 10, *[("npu_memory_used_bytes", dev(d), v[n]) for d, v in used.items()],
                 *[("npu_memory_total_bytes", dev(d), v) for d, v in total.items()])
        sim.step(n * 10)
    assert sim.moves() == [(0, dev(0), INACTIVE, FIRING), (20, dev(0), FIRING, INACTIVE)]  # 85: in the band
    assert sim.values() == [95, 79]
    assert sim.verdicts(r, 20) == []  # no open alert: only firing verdicts, and none fires
    sim.feed(30, ("npu_memory_used_bytes", dev(0), 95), ("npu_memory_total_bytes", dev(0), 100))
    sim.step(30)
    assert sorted(v.labels["device_id"] for v in sim.verdicts(r, 30)) == ["0", "1"]  # not 2 (zero), not 3


def test_ratio_error_rate_of_increases_on_device_keeps_the_numerator_labels() -> None:
    r = build("ratio", "errors", metric="hccl_errors_total", per="inference_requests_total", on=["device_id"],
              agg="increase", over="40s", scale=100, above=0.1)
    sim = Sim(r)
    for t in (10, 20, 30, 40):
        k = (t - 10) / 30
        sim.feed(t, ("hccl_errors_total", {"device_id": "0", "code": "EI0006"}, 10 + 2 * k),
                 ("hccl_errors_total", {"device_id": "1", "code": "EI0006"}, 10 + 0.5 * k),
                 ("inference_requests_total", dev(0), 10_000 + 1000 * k),
                 ("inference_requests_total", dev(1), 10_000 + 1000 * k))
    sim.step(40)
    # both increases extrapolated by the same factor: 100 x 2 / 1000 = 0.2 % and 0.05 %
    assert sim.moves() == [(40, {"device_id": "0", "code": "EI0006"}, INACTIVE, FIRING)]
    assert sim.values() == [pytest.approx(0.2)]


def test_ratio_sums_the_denominators_sharing_the_on_labels() -> None:
    r = build("ratio", "share", metric="npu_process_memory_bytes", per="npu_memory_total_bytes", on=["device_id"],
              above=0.5)
    sim = Sim(r)
    sim.feed(0, ("npu_process_memory_bytes", {"device_id": "0", "pid": "1"}, 90),
             ("npu_process_memory_bytes", {"device_id": "1", "pid": "2"}, 90),
             ("npu_memory_total_bytes", {"device_id": "0"}, 100),
             ("npu_memory_total_bytes", {"device_id": "1", "chip_id": "0"}, 100),
             ("npu_memory_total_bytes", {"device_id": "1", "chip_id": "1"}, 100))
    sim.step(0)
    # device 1's two chips add up to 200: 90/200 = 0.45 does not fire; device 0: 0.9 does
    assert sim.moves() == [(0, {"device_id": "0", "pid": "1"}, INACTIVE, FIRING)]


def test_ratio_error_rate_of_one_counter_split_by_status_with_per_match() -> None:
    r = build("ratio", "error-rate", metric="inference_requests_total", match={"status": "error"},
              per="inference_requests_total", per_match={}, on=["app"], agg="increase", over="40s", above=0.01)
    sim = Sim(r)
    for t in (10, 20, 30, 40):
        k = (t - 10) / 30
        sim.feed(t, ("inference_requests_total", {"app": "a", "status": "error"}, 5000 + 30 * k),
                 ("inference_requests_total", {"app": "a", "status": "ok"}, 9000 + 970 * k),
                 ("inference_requests_total", {"app": "b", "status": "error"}, 5000 + 1 * k),
                 ("inference_requests_total", {"app": "b", "status": "ok"}, 9000 + 999 * k))
    sim.step(40)
    # app a: 30 errors of 1000 requests (both statuses summed) = 3 %; app b: 0.1 %
    assert sim.moves() == [(40, {"app": "a", "status": "error"}, INACTIVE, FIRING)]
    assert sim.values() == [pytest.approx(0.03)]
    assert r.impl.export() == ('increase(inference_requests_total{status="error"}[40s]) / on(app) group_left '
                               'sum by (app) (increase(inference_requests_total[40s])) > 0.01')


def test_predict_memory_against_the_total_on_device_id() -> None:
    r = build("predict", "oom-soon", metric="npu_memory_used_bytes", over="10m", horizon="30m",
              above_metric="npu_memory_total_bytes", on=["device_id"])
    sim = Sim(r)
    for t in range(0, 3301, 60):
        sim.feed(t, ("npu_memory_used_bytes", {"device_id": "0", "npu_id": "4"}, 50 + 0.01 * t),
                 ("npu_memory_used_bytes", {"device_id": "1", "npu_id": "5"}, 50.0),
                 ("npu_memory_used_bytes", {"device_id": "2", "npu_id": "6"}, 50 + 0.1 * t),  # no total: no verdict
                 ("npu_memory_total_bytes", dev(0), 100), ("npu_memory_total_bytes", dev(1), 100))
        sim.step(t)
    # linear: predicted = 50 + 0.01 x (t + 1800) > 100 once t > 3200: 3240 on the 60 s grid
    assert sim.moves() == [(3240, {"device_id": "0", "npu_id": "4"}, INACTIVE, FIRING)]
    assert sim.values() == [pytest.approx(50 + 0.01 * (3240 + 1800))]


def test_predict_below_a_fixed_limit_needs_two_samples() -> None:
    r = build("predict", "disk", metric="node_filesystem_avail_bytes", over="5m", horizon="1h", below=0)
    sim = Sim(r)
    sim.feed(0, ("node_filesystem_avail_bytes", {}, 1000.0))
    sim.step(0)
    assert sim.verdicts(r, 0) == []  # one sample is no trend
    sim.feed(60, ("node_filesystem_avail_bytes", {}, 900.0))  # -100/min: 0 in 9 min
    sim.step(60)
    assert sim.moves() == [(60, {}, INACTIVE, FIRING)]
    assert sim.values() == [pytest.approx(900 - 6000)]


def test_predict_on_full_labels_without_on() -> None:
    r = build("predict", "p", metric="a_bytes", over="5m", horizon="10m", above_metric="b_bytes")
    sim = Sim(r)
    for t in (0, 60):
        sim.feed(t, ("a_bytes", dev(0), 10 + t), ("a_bytes", dev(1), 10 + t), ("b_bytes", dev(0), 100),
                 ("b_bytes", {"device_id": "1", "x": "y"}, 100))
    sim.step(60)
    assert sim.moves() == [(60, dev(0), INACTIVE, FIRING)]  # 70 + 600 > 100; device 1's limit has other labels


# ---------------------------------------------------------------------------
# absent
# ---------------------------------------------------------------------------


def test_absent_metric_fires_after_the_gap_and_clears_when_it_returns() -> None:
    r = build("absent", "no-temp", metric=TEMP, match={"device_id": "0"}, after="30s")
    sim = Sim(r)
    for t in range(0, 260, 10):
        if t <= 100 or t >= 200:
            sim.feed(t, *temps(50, 50))
        elif t <= 150:
            sim.feed(t, (TEMP, dev(1), 50))  # another device keeps reporting
        sim.step(t)
    assert sim.moves() == [(130, dev(0), INACTIVE, FIRING), (200, dev(0), FIRING, INACTIVE)]
    assert sim.values() == [30, 0]


def test_absent_metric_never_seen_counts_from_the_start_and_holds_a_restored_alert_meanwhile() -> None:
    r = build("absent", "no-temp", metric=TEMP, after="30s")
    sim = Sim(r)
    for t in (0, 10, 20, 30):
        sim.step(t)
    assert sim.moves() == [(30, {}, INACTIVE, FIRING)]
    assert sim.values() == [30]

    r2 = build("absent", "no-temp", metric=TEMP, after="30s")
    inst = r2.instances[()] = Instance("no-temp", ())
    inst.state = FIRING
    sim2 = Sim(r2, started=100)
    for t in (100, 110, 120):
        sim2.step(t)  # neither absent for 30 s yet nor present: the restored alert holds
    assert sim2.moves() == [] and inst.state == FIRING
    sim2.feed(125, *temps(50))
    sim2.step(130)
    assert sim2.moves() == [(130, {}, FIRING, INACTIVE)]


def _runner(interval: float, last_success: float) -> Any:
    return SimpleNamespace(cfg=SimpleNamespace(interval=interval), health=SimpleNamespace(last_success=last_success))


def test_absent_collector_after_intervals_without_success() -> None:
    r = build("absent", "host-down", collector="host")
    sim = Sim(r)
    sim.collectors["host"] = _runner(10.0, T0 + 5)
    assert sim.verdicts(r, 35)[0][1:] == (30, False, True)  # exactly 3 intervals is not late yet
    for t in range(10, 70, 10):
        if t == 50:
            sim.collectors["host"].health.last_success = T0 + 45
        sim.step(t)
    # 35 s since the last success at 40 > 3 x 10 s; a success at 45 clears at 50
    assert sim.moves() == [(40, {"collector": "host"}, INACTIVE, FIRING), (50, {"collector": "host"}, FIRING, INACTIVE)]
    assert sim.values() == [35, 5]


def test_absent_collector_that_never_succeeded_counts_from_the_start() -> None:
    r = build("absent", "host-down", collector="host", intervals=2)
    sim = Sim(r)
    sim.collectors["host"] = _runner(10.0, 0.0)
    assert sim.verdicts(r, 20)[0][1:] == (20, False, False)  # not late, not known healthy either
    for t in (10, 20, 30):
        sim.step(t)
    assert sim.moves() == [(30, {"collector": "host"}, INACTIVE, FIRING)]


def test_absent_unknown_collector_has_no_verdict_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    r = build("absent", "gone", collector="npu")
    sim = Sim(r)
    with caplog.at_level(logging.WARNING, logger="npuagent.rules.absent"):
        for t in (0, 10, 20):
            sim.step(t)
    assert sim.moves() == []
    assert [rec.getMessage() for rec in caplog.records] == [
        "rule gone: no collector named 'npu' is running; the rule has nothing to watch"]


# ---------------------------------------------------------------------------
# event
# ---------------------------------------------------------------------------


def test_event_fires_on_count_per_device_and_resolves_after_the_quiet_period() -> None:
    r = build("event", "hccl", kind="hccl_timeout", over="60s", count=3, by=["device_id"])
    sim = Sim(r)
    for t in (5, 15, 25):
        sim.event(t, "hccl_timeout", device_id="0")
    for t in (5, 15):
        sim.event(t, "hccl_timeout", device_id="1")
    sim.event(20, "device_fault", device_id="1")  # another kind
    for t in range(0, 110, 10):
        if t == 80:
            sim.event(78, "hccl_timeout", device_id="1")
        sim.step(t)
    # device 0: three in (−30, 30] at 30. At 70 only two are in (10, 70], but the last was 45 s ago:
    # not quiet for 60 s yet, so it keeps firing; quiet at 90 (25 + 60 <= 90).
    assert sim.moves() == [(30, dev(0), INACTIVE, FIRING), (90, dev(0), FIRING, INACTIVE)]
    assert sim.values() == [3, 0]
    assert [(v.labels, v.value, v.fire, v.clear) for v in sim.verdicts(r, 70)] == []  # alert gone, nothing firing


def test_event_window_is_left_open() -> None:
    r = build("event", "e", kind="k", over="60s", count=2, clear_after="2m")  # the lookback reaches 0
    sim = Sim(r)
    sim.event(0, "k")
    sim.event(10, "k")
    assert [(v.value, v.fire) for v in sim.verdicts(r, 59.5)] == [(2, True)]
    assert sim.verdicts(r, 60) == []  # (0, 60] holds one event; no alert is open, so nothing to say


def test_event_band_between_not_firing_and_quiet() -> None:
    r = build("event", "hccl", kind="hccl_timeout", over="60s", count=2, clear_after="2m")
    sim = Sim(r)
    sim.event(0, "hccl_timeout", device_id="0")
    sim.event(10, "hccl_timeout", device_id="3")
    for t in range(0, 200, 10):
        sim.step(t)
    # one alert for the rule (no `by`): fires at 10; the events leave the window at 70 (0 and 10 <= 70 - 60):
    # band until 10 + 120 = 130
    assert sim.moves() == [(10, {}, INACTIVE, FIRING), (130, {}, FIRING, INACTIVE)]
    assert [(v.value, v.fire, v.clear) for v in sim.verdicts(r, 10)] == [(2, True, False)]


def test_event_any_kind_with_match_labels_on_the_alert() -> None:
    r = build("event", "ecc", kind="*", match={"code": "EI0006"}, over="1m")
    sim = Sim(r)
    sim.event(1, "device_fault", code="EI0006", device_id="2")
    sim.event(2, "hccl_timeout", code="EI9999", device_id="2")
    sim.step(10)
    assert sim.moves() == [(10, {"code": "EI0006"}, INACTIVE, FIRING)]
    assert sim.values() == [1]


def test_event_rule_without_an_event_log_judges_nothing() -> None:
    r = build("event", "e", kind="x", over="1m")
    assert r.impl.evaluate(EvalContext(T0, None, None, lambda name: [])) == []


# ---------------------------------------------------------------------------
# all / any
# ---------------------------------------------------------------------------


def test_all_and_any_of_two_threshold_rules_on_device_id() -> None:
    hot = build("threshold", "hot", metric=TEMP, above=80)
    power = build("threshold", "power", metric="npu_power_watts", above=300)
    both = build("all", "hot-and-power", rules=["hot", "power"], on=["device_id"])
    either = build("any", "hot-or-power", rules=["hot", "power"], on=["device_id"])
    sim = Sim(both, either, hot, power)  # listed before the rules they read: the engine orders them
    power_w = [[350, 200, 350], [250, 200, 350]]
    for n in range(2):
        sim.feed(n * 10, *temps(90, 90, 50), *[("npu_power_watts", dev(i), w) for i, w in enumerate(power_w[n])])
        sim.step(n * 10)
    assert sim.moves("hot-and-power") == [(0, dev(0), INACTIVE, FIRING), (10, dev(0), FIRING, INACTIVE)]
    assert sorted(sim.moves("hot-or-power"), key=str) == [
        (0, dev(0), INACTIVE, FIRING), (0, dev(1), INACTIVE, FIRING), (0, dev(2), INACTIVE, FIRING)]
    assert sim.values("hot-and-power") == [2, 1]  # at the clear, hot alone still matches device 0
    assert sorted((i.labels, i.value) for i in either.instances.values()) == [
        ((("device_id", "0"),), 1), ((("device_id", "1"),), 1), ((("device_id", "2"),), 1)]


def test_all_counts_pending_alerts_only_when_states_say_so() -> None:
    hot = build("threshold", "hot", metric=TEMP, above=80, **{"for": "20s"})
    power = build("threshold", "power", metric="npu_power_watts", above=300)
    firing = build("all", "f", rules=["hot", "power"])
    early = build("all", "p", rules=["hot", "power"], states=["pending", "firing"])
    only_pending = build("any", "o", rules=["hot", "power"], states=["pending"])
    sim = Sim(hot, power, firing, early, only_pending)
    for t in (0, 10, 20):
        sim.feed(t, *temps(90), ("npu_power_watts", dev(0), 350))
        sim.step(t)
    assert sim.moves("p") == [(0, {}, INACTIVE, FIRING)]
    assert sim.moves("f") == [(20, {}, INACTIVE, FIRING)]
    # hot is pending from 0 and firing at 20; power fires at once and is never pending
    assert sim.moves("o") == [(0, {}, INACTIVE, FIRING), (20, {}, FIRING, INACTIVE)]


def test_any_clears_its_own_alert_when_no_rule_matches_any_more() -> None:
    hot = build("threshold", "hot", metric=TEMP, above=80)
    power = build("threshold", "power", metric="npu_power_watts", above=300)
    either = build("any", "either", rules=["hot", "power"], on=["device_id"])
    sim = Sim(hot, power, either)
    sim.feed(0, *temps(90), ("npu_power_watts", dev(0), 100))
    sim.step(0)
    sim.feed(10, *temps(70), ("npu_power_watts", dev(0), 100))
    sim.step(10)
    assert sim.moves("either") == [(0, dev(0), INACTIVE, FIRING), (10, dev(0), FIRING, INACTIVE)]


# ---------------------------------------------------------------------------
# change
# ---------------------------------------------------------------------------


def _requests(t: float) -> float:
    """100 requests/s for the first hour, then 50/s."""
    return 100.0 * t if t <= 3600 else 360_000 + 50.0 * (t - 3600)


def _run_change(r: CompiledRule) -> Sim:
    sim = Sim(r, retention=7200)
    for t in range(0, 7201, 10):
        sim.feed(t, ("inference_requests_total", {}, _requests(t)),
                 ("idle_requests_total", {}, 0.5 * t if t <= 3600 else 1800 + 0.1 * (t - 3600)))
        if t >= 3600 and t % 60 == 0:
            sim.step(t)
    return sim


# d = seconds after the drop at 3600. Samples every 10 s, so the 5 m window's rate is the slope over
# its last 290 s and the 1 h baseline's over its last 3590 s (extrapolated; a straight line stays one):
#   recent = 50 for d >= 290;  baseline = 100 - 50 d / 3590
#   below 0.6 x baseline from d = 300 on the 60 s grid (d = 240: (100 - 41.4) / 96.7 = 0.606)
#   back to >= 0.6 at d >= 1196.7 (1200 on the grid); >= 0.9 at d >= 3191.1 (3240 on the grid)
def test_change_throughput_that_halves_fires_and_resolves_when_the_baseline_follows() -> None:
    r = build("change", "drop", metric="inference_requests_total", over="5m", baseline="1h", below_ratio=0.6)
    sim = _run_change(r)
    assert sim.moves() == [(3900, {}, INACTIVE, FIRING), (4800, {}, FIRING, INACTIVE)]
    assert sim.values() == [pytest.approx(50 / (100 - 50 * 300 / 3590)),
                            pytest.approx(50 / (100 - 50 * 1200 / 3590))]


def test_change_clear_ratio_holds_the_alert_in_the_band() -> None:
    r = build("change", "drop", metric="inference_requests_total", over="5m", baseline="1h", below_ratio=0.6,
              clear_ratio=0.9)
    sim = _run_change(r)
    assert sim.moves() == [(3900, {}, INACTIVE, FIRING), (6840, {}, FIRING, INACTIVE)]
    assert sim.values()[1] == pytest.approx(50 / (100 - 50 * 3240 / 3590))


def test_change_min_baseline_keeps_an_idle_service_quiet() -> None:
    quiet = build("change", "idle", metric="idle_requests_total", over="5m", baseline="1h", below_ratio=0.6,
                  min_baseline=1)
    loud = build("change", "idle2", metric="idle_requests_total", over="5m", baseline="1h", below_ratio=0.6)
    sim = _run_change(quiet)
    assert sim.moves() == []
    assert sim.verdicts(quiet, 7200) == []
    sim2 = _run_change(loud)  # the same drop (0.5/s to 0.1/s) without the floor does fire
    assert [m[3] for m in sim2.moves()][:1] == [FIRING]


def test_change_above_ratio() -> None:
    r = build("change", "surge", metric="q", agg="avg", over="1m", baseline="10m", above_ratio=2)
    sim = Sim(r)
    for t in range(0, 601, 10):
        sim.feed(t, ("q", {}, 10.0 if t < 560 else 100.0))
    sim.step(600)
    # recent (540, 600]: 10, 100 x 5 -> 85; baseline: 55 x 10 + 5 x 100 over 60 samples -> 17.5
    assert sim.moves() == [(600, {}, INACTIVE, FIRING)]
    assert sim.values() == [pytest.approx(85 / 17.5)]


# ---------------------------------------------------------------------------
# validation: the factory's cross-key checks, and the option types
# ---------------------------------------------------------------------------

M = {"metric": TEMP}


@pytest.mark.parametrize(("type_", "table", "message"), [
    ("threshold", {**M}, "give one of above or below"),
    ("threshold", {**M, "above": 1, "below": 0}, "give only one of above or below (got above and below)"),
    ("threshold", {**M, "agg": "avg", "above": 1}, 'over is required with agg = "avg": the window to aggregate over'),
    ("threshold", {**M, "over": "5m", "above": 1},
     'over does not apply to agg = "last" (the newest sample); remove it, or choose an aggregation over the window '
     'such as "avg"'),
    ("threshold", {**M, "above": 80, "clear_below": 90}, "clear_below (90) must be <= above (80)"),
    ("threshold", {**M, "below": 80, "clear_above": 70}, "clear_above (70) must be >= below (80)"),
    ("threshold", {**M, "below": 80, "clear_below": 70},
     "clear_below goes with above, not with below; use clear_above"),
    ("threshold", {**M, "above": 80, "clear_above": 90},
     "clear_above goes with below, not with above; use clear_below"),
    ("ratio", {**M, "per": TEMP, "above": 1},
     "per names the same metric as metric with the same matchers, so the ratio would always be 1: give the "
     "denominator its own per_match"),
    ("ratio", {**M, "per": "b", "above": 1, "scale": 0}, "scale must not be 0"),
    ("ratio", {**M, "per": "b"}, "give one of above or below"),
    ("ratio", {**M, "per": "b", "above": 1, "agg": "rate"},
     'over is required with agg = "rate": the window to aggregate over'),
    ("predict", {**M, "over": "1h", "horizon": "30m"}, "give one of above, above_metric or below"),
    ("predict", {**M, "over": "1h", "horizon": "30m", "above": 1, "above_metric": "t"},
     "give only one of above, above_metric or below (got above and above_metric)"),
    ("predict", {**M, "over": "1h", "horizon": "30m", "above": 1, "on": ["device_id"]},
     "on applies only to above_metric (a limit that is a metric), not to above"),
    ("predict", {**M, "over": "1h", "horizon": "30m", "above_metric": TEMP},
     "above_metric names the same metric as metric: a value is never above itself"),
    ("absent", {}, "give one of metric or collector"),
    ("absent", {**M, "collector": "host"}, "give only one of metric or collector (got metric and collector)"),
    ("absent", {"collector": "host", "match": {"a": "b"}}, "match goes with metric, not with collector"),
    ("absent", {"collector": "host", "after": "1m"}, "after goes with metric; with collector, use intervals"),
    ("absent", {**M, "intervals": 2}, "intervals goes with collector; with metric, use after"),
    ("all", {"rules": ["a"]}, "rules needs at least 2 rule names to combine (got 1)"),
    ("any", {"rules": ["a", "r"]}, "rules names this rule itself ('r')"),
    ("all", {"rules": ["a", "b", "a"]}, "rules names 'a' more than once"),
    ("all", {"rules": ["a", "b"], "states": []}, 'states needs at least one of "pending", "firing"'),
    ("change", {**M, "over": "1h", "baseline": "5m", "below_ratio": 0.5},
     "baseline (5m) must be longer than over (1h)"),
    ("change", {**M, "over": "5m", "baseline": "5m", "below_ratio": 0.5},
     "baseline (5m) must be longer than over (5m)"),
    ("change", {**M, "over": "5m", "baseline": "1h"}, "give one of below_ratio or above_ratio"),
    ("change", {**M, "over": "5m", "baseline": "1h", "below_ratio": 0.5, "above_ratio": 2},
     "give only one of below_ratio or above_ratio (got below_ratio and above_ratio)"),
    ("change", {**M, "over": "5m", "baseline": "1h", "below_ratio": 0.5, "clear_ratio": 0.4},
     "clear_ratio (0.4) must be >= below_ratio (0.5)"),
    ("change", {**M, "over": "5m", "baseline": "1h", "above_ratio": 2, "clear_ratio": 3},
     "clear_ratio (3) must be <= above_ratio (2)"),
    ("change", {**M, "agg": "last", "over": "5m", "baseline": "1h", "below_ratio": 0.5},
     'agg = "last" reads one sample, the same for both windows; choose an aggregation such as "rate" or "avg"'),
])
def test_factory_refuses_inconsistent_keys_naming_them(type_: str, table: Dict[str, Any], message: str) -> None:
    assert factory_error(type_, **table) == message


@pytest.mark.parametrize(("type_", "table", "path", "message"), [
    ("threshold", {"above": 1}, (), 'missing required key "metric" (a metric name)'),
    ("threshold", {**M, "above": "80"}, ("above",), "expected a number, got '80'"),
    ("threshold", {**M, "above": 1, "agg": "avg", "over": 300}, ("over",),
     'expected a duration such as "30s", "5m" or "1h30m", got an integer 300 (write "300s" for seconds)'),
    ("threshold", {**M, "above": 1, "agg": "p999.x"}, ("agg",),
     'expected one of "last", "avg", "min", "max", "sum", "count", "stddev", "cv", "rate", "increase", "delta", '
     '"deriv", or a quantile such as "p50", "p99" or "p99.9", got \'p999.x\''),
    ("threshold", {**M, "above": 1, "match": {"device_id": 0}}, ("match", "device_id"), "expected a string, got 0"),
    ("threshold", {"metric": "npu temp", "above": 1}, ("metric",), "expected a metric name, got 'npu temp'"),
    ("ratio", {**M, "per": "b", "above": 1, "on": "device_id"}, ("on",),
     "expected an array, each item a label name, got 'device_id'"),
    ("predict", {**M, "over": "1h", "above": 1}, (), 'missing required key "horizon" '
                                                    '(a duration such as "30s", "5m" or "1h30m")'),
    ("absent", {"collector": "host", "intervals": 0}, ("intervals",), "expected an integer >= 1, got 0"),
    ("event", {"kind": "x", "over": "1m", "count": 0}, ("count",), "expected an integer >= 1, got 0"),
    ("event", {"kind": "x", "over": "1m", "by": ["device-id"]}, ("by", 0), "expected a label name, got 'device-id'"),
    ("all", {"rules": ["a", "b"], "states": ["fired"]}, ("states", 0),
     "expected one of \"pending\", \"firing\", got 'fired'"),
    ("change", {**M, "agg": "p99", "over": "5m", "baseline": "1h", "below_ratio": 0.5}, ("agg",),
     'expected one of "last", "avg", "min", "max", "sum", "count", "stddev", "cv", "rate", "increase", "delta", '
     '"deriv", got \'p99\''),
    ("change", {**M, "over": "5m", "baseline": "1h", "below_ratio": -1}, ("below_ratio",),
     "expected a number >= 0, got -1"),
])
def test_option_types_reject_wrong_values(type_: str, table: Dict[str, Any], path: tuple, message: str) -> None:
    _values, errors = validated(type_, {"name": "r", **table})
    assert errors == [(path, message)]


# ---------------------------------------------------------------------------
# template fields, metrics, windows, dependencies
# ---------------------------------------------------------------------------


def test_template_fields_come_from_declared_labels_and_match_keys() -> None:
    assert build("threshold", metric=TEMP, match={"npu_id": "1"}, above=1).impl.template_fields() == {
        "device_id", "npu_id"}
    assert build("threshold", metric="undeclared", above=1).impl.template_fields() is None
    assert build("threshold", metric="inference_latency_seconds", agg="p99", over="5m",
                 above=1).impl.template_fields() == {"stage"}
    assert build("ratio", metric=TEMP, per="t", above=1).impl.template_fields() == {"device_id"}
    assert build("predict", metric=TEMP, over="1h", horizon="1h", above=1).impl.template_fields() == {"device_id"}
    assert build("change", metric=TEMP, over="1m", baseline="1h", below_ratio=1).impl.template_fields() == {
        "device_id"}
    assert build("absent", metric=TEMP, match={"device_id": "0"}).impl.template_fields() == {"device_id"}
    assert build("absent", collector="host").impl.template_fields() == {"collector"}
    assert build("event", kind="k", over="1m", by=["device_id"], match={"code": "x"}).impl.template_fields() == {
        "device_id", "code"}
    assert build("all", rules=["a", "b"], on=["device_id", "npu_id"]).impl.template_fields() == {
        "device_id", "npu_id"}


def test_metrics_windows_and_dependencies() -> None:
    def impl(type_: str, **table: Any) -> Any:
        return build(type_, **table).impl

    t = impl("threshold", metric=TEMP, above=1, stale_after="2m")
    assert (t.metrics(), t.window()) == ([TEMP], 120)
    t = impl("threshold", metric=TEMP, agg="max", over="10m", above=1)
    assert t.window() == 600
    r = impl("ratio", metric="a", per="b", agg="rate", over="5m", above=1)
    assert (r.metrics(), r.window()) == (["a", "b"], 300)
    p = impl("predict", metric="a", over="1h", horizon="1h", above_metric="b")
    assert (p.metrics(), p.window()) == (["a", "b"], 3600)
    a = impl("absent", metric="a", after="10m")
    assert (a.metrics(), a.window()) == (["a"], 600)
    assert impl("absent", collector="host").metrics() == []
    e = impl("event", kind="k", over="10m", clear_after="1h")
    assert (e.metrics(), e.window()) == ([], 3600)
    c = impl("any", rules=["a", "b"])
    assert (list(c.depends_on()), c.window()) == (["a", "b"], 0)
    ch = impl("change", metric="a", over="5m", baseline="1h", below_ratio=0.5)
    assert (ch.metrics(), ch.window()) == (["a"], 3600)


# ---------------------------------------------------------------------------
# PromQL export
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(("type_", "table", "promql"), [
    ("threshold", {**M, "match": {"device_id": "0"}, "agg": "avg", "over": "5m", "above": 80},
     'avg_over_time(npu_temperature_celsius{device_id="0"}[5m]) > 80'),
    ("threshold", {"metric": "npu_aicore_frequency_mhz", "below": 1000}, "npu_aicore_frequency_mhz < 1000"),
    ("threshold", {"metric": "inference_latency_seconds", "agg": "p99", "over": "5m", "above": 0.2},
     "histogram_quantile(0.99, rate(inference_latency_seconds_bucket[5m])) > 0.2"),
    ("threshold", {"metric": "inference_latency_seconds", "match": {"stage": "prefill"}, "agg": "p99.9",
                   "over": "1m30s", "above": 0.25},
     'histogram_quantile(0.999, rate(inference_latency_seconds_bucket{stage="prefill"}[1m30s])) > 0.25'),
    ("threshold", {**M, "agg": "p99.9", "over": "1m", "above": 5},  # a declared gauge
     "quantile_over_time(0.999, npu_temperature_celsius[1m]) > 5"),
    ("threshold", {**M, "agg": "cv", "over": "5m", "above": 0.1},
     "stddev_over_time(npu_temperature_celsius[5m]) / avg_over_time(npu_temperature_celsius[5m]) > 0.1"),
    ("threshold", {"metric": "npu_ecc_errors_total", "agg": "increase", "over": "1h", "above": 0},
     "increase(npu_ecc_errors_total[1h]) > 0"),
    ("threshold", {**M, "match": {"host": 'a"b'}, "above": 1e-05}, 'npu_temperature_celsius{host="a\\"b"} > 1e-05'),
    ("ratio", {"metric": "npu_memory_used_bytes", "per": "npu_memory_total_bytes", "scale": 100, "above": 90},
     "(npu_memory_used_bytes / npu_memory_total_bytes) * 100 > 90"),
    ("ratio", {"metric": "hccl_errors_total", "per": "inference_requests_total", "on": ["device_id"],
               "agg": "increase", "over": "5m", "scale": 100, "above": 0.1},
     "(increase(hccl_errors_total[5m]) / on(device_id) group_left sum by (device_id) "
     "(increase(inference_requests_total[5m]))) * 100"
     " > 0.1"),
    ("ratio", {"metric": "reserved", "per": "allocated", "above": 1.5}, "reserved / allocated > 1.5"),
    ("predict", {"metric": "npu_memory_used_bytes", "over": "1h", "horizon": "30m",
                 "above_metric": "npu_memory_total_bytes", "on": ["device_id"]},
     "predict_linear(npu_memory_used_bytes[1h], 1800) > on(device_id) group_left npu_memory_total_bytes"),
    ("predict", {"metric": "node_filesystem_avail_bytes", "match": {"mountpoint": "/"}, "over": "6h",
                 "horizon": "1d", "below": 0},
     'predict_linear(node_filesystem_avail_bytes{mountpoint="/"}[6h], 86400) < 0'),
    ("absent", {**M, "match": {"device_id": "0"}}, 'absent_over_time(npu_temperature_celsius{device_id="0"}[5m])'),
    ("all", {"rules": ["hot", "power"], "on": ["device_id"]},
     'ALERTS{alertname="hot",alertstate="firing"} and on(device_id) ALERTS{alertname="power",alertstate="firing"}'),
    ("any", {"rules": ["a", "b", "c"], "states": ["pending", "firing"]},
     'ALERTS{alertname="a",alertstate=~"pending|firing"} or on() ALERTS{alertname="b",alertstate=~"pending|firing"}'
     ' or on() ALERTS{alertname="c",alertstate=~"pending|firing"}'),
    ("change", {"metric": "inference_requests_total", "over": "5m", "baseline": "1h", "below_ratio": 0.5},
     "rate(inference_requests_total[5m]) < 0.5 * rate(inference_requests_total[1h])"),
    ("change", {"metric": "q", "agg": "avg", "over": "5m", "baseline": "1h", "above_ratio": 2, "min_baseline": 10},
     "avg_over_time(q[5m]) > 2 * (avg_over_time(q[1h]) > 10)"),
    ("change", {"metric": "q", "agg": "cv", "over": "5m", "baseline": "1h", "below_ratio": 0.5},
     "stddev_over_time(q[5m]) / avg_over_time(q[5m]) < 0.5 * ((stddev_over_time(q[1h]) / avg_over_time(q[1h])) > 0)"),
])
def test_export(type_: str, table: Dict[str, Any], promql: str) -> None:
    assert build(type_, **table).impl.export() == promql


@pytest.mark.parametrize(("type_", "table", "message"), [
    ("threshold", {**M, "above": 80, "clear_below": 75},
     "clear_below is hysteresis (a separate clear threshold), which PromQL cannot express"),
    ("ratio", {**M, "per": "b", "below": 1, "clear_above": 2},
     "clear_above is hysteresis (a separate clear threshold), which PromQL cannot express"),
    ("change", {**M, "over": "5m", "baseline": "1h", "below_ratio": 0.5, "clear_ratio": 0.8},
     "clear_ratio is hysteresis (a separate clear threshold), which PromQL cannot express"),
    ("event", {"kind": "x", "over": "1m"}, "events are not metrics"),
    ("absent", {"collector": "host"}, "the interval of collector 'host' is known only once the agent runs it"),
])
def test_export_refuses_what_promql_cannot_say(type_: str, table: Dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as e:
        build(type_, **table).impl.export()
    assert str(e.value) == message


def test_export_of_an_undeclared_quantile_follows_the_series_the_rule_has_seen() -> None:
    hist = build("threshold", "h", metrics={}, metric="vllm_latency_seconds", agg="p99", over="40s", above=1)
    gauge = build("threshold", "g", metrics={}, metric="queue", agg="p99", over="40s", above=1)
    for r in (hist, gauge):
        with pytest.raises(ValueError) as e:
            r.impl.export()
        assert str(e.value) == (f"no collector declares {r.options['metric']}: whether it is a histogram is known "
                                f"only once the agent has seen its series")
    sim = Sim(hist, gauge)
    _histogram(sim, "vllm_latency_seconds", "prefill", PREFILL)
    sim.feed(40, ("queue", {}, 3.0), source="gauge")
    sim.step(40)
    assert hist.impl.export() == "histogram_quantile(0.99, rate(vllm_latency_seconds_bucket[40s])) > 1"
    assert gauge.impl.export() == "quantile_over_time(0.99, queue[40s]) > 1"


def test_export_of_absent_collector_uses_the_interval_the_agent_runs_it_at() -> None:
    r = build("absent", "host-down", collector="host")
    sim = Sim(r)
    sim.collectors["host"] = _runner(10.0, T0)
    sim.step(0)
    assert r.impl.export() == 'time() - npuagent_collector_last_success_timestamp_seconds{collector="host"} > 30'
