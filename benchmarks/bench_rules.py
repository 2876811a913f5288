"""One evaluation of 1,000 rules over 16 devices, as a share of a 1 s cycle (target < 2 %).

The rules are a realistic mix of the shipped kinds: 60 % thresholds on the newest value (with and
without hysteresis), 20 % window aggregations over 5 m (avg, max, p99 over time), 10 % ratios of two
metrics, 10 % rates of counters; 16 devices, 15 s samples for the last hour. Measured in steady state
(all series fine, the common case), with 10 % of the devices firing, and the floor measured in the same
run: 16,000 comparisons of a stored value with its threshold in a bare Python loop.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

import _util  # noqa: F401
from _util import report

from npuagent import config
from npuagent.model import Sample
from npuagent.plugins import Plugins
from npuagent.rules import Engine, compile_rules
from npuagent.store import Store

DEVICES = 16
RULES = 1000
STEP = 15.0
HOUR = 3600.0


def rules_toml(hot: bool) -> str:
    out = []
    limit = 50 if hot else 1000  # with 50, devices whose value is above it fire
    for i in range(RULES):
        kind = i % 10
        m = f"bench_metric_{i % 40}"
        if kind < 6:
            extra = f"clear_below = {limit - 5}\n" if kind % 2 else ""
            body = f'type = "threshold"\nmetric = "{m}"\nabove = {limit}\n{extra}'
        elif kind < 8:
            agg = ("avg", "max")[kind - 6]
            body = f'type = "threshold"\nmetric = "{m}"\nagg = "{agg}"\nover = "5m"\nabove = {limit}\n'
        elif kind == 8:
            body = (f'type = "ratio"\nmetric = "{m}"\nper = "bench_total"\non = ["device_id"]\n'
                    f'above = {limit / 100}\n')
        else:
            body = f'type = "threshold"\nmetric = "bench_requests_total"\nagg = "rate"\nover = "5m"\nabove = {limit}\n'
        out.append(f'[[rules]]\nname = "r{i}"\n{body}')
    return "\n".join(out)


def setup(hot: bool) -> tuple:
    d = tempfile.mkdtemp()
    path = os.path.join(d, "rules.toml")
    with open(path, "w") as f:
        f.write(rules_toml(hot))
    plugins = Plugins()
    plugins.load(entry_points=False)
    cfg = config.build(config.read_sources(path, strict=False), plugins)
    compiled = compile_rules(cfg, plugins, {})
    store = Store(retention=HOUR)
    t0 = 1_700_000_000.0
    for step in range(int(HOUR / STEP)):
        now = t0 + step * STEP
        batch = []
        for dev in range(DEVICES):
            labels = {"device_id": str(dev)}
            value = 30.0 + dev * 3  # devices 7..15 are above 50
            batch += [Sample(f"bench_metric_{k}", labels, value) for k in range(40)]
            batch += [Sample("bench_total", labels, 100.0), Sample("bench_requests_total", labels, step * 10.0)]
        store.ingest("bench", batch, now, STEP)
    engine = Engine(compiled, started=t0)
    return engine, store, t0 + HOUR


def median_eval(engine: Engine, store: Store, now: float, n: int = 15) -> float:
    engine.evaluate(now, store)  # warm the rules' caches, create the firing alerts
    times = []
    for k in range(n):
        t = time.perf_counter()
        engine.evaluate(now + k, store)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def floor(store: Store) -> float:
    values = [s.last()[1] for k in range(40) for s in store.select(f"bench_metric_{k}")]
    values = (values * (RULES * DEVICES // len(values) + 1))[:RULES * DEVICES]

    def loop() -> int:
        return sum(1 for v in values if v > 1000)

    times = []
    for _ in range(15):
        t = time.perf_counter()
        loop()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    rows = []
    base = None
    for hot in (False, True):
        engine, store, now = setup(hot)
        t = median_eval(engine, store, now)
        firing = len(engine.alerts())
        base = base or floor(store)
        state = f"{firing} alerts firing" if hot else "all fine"
        rows.append({"what": f"{RULES} rules x {DEVICES} devices, {state}",
                     "ms": f"{t * 1e3:.2f}", "share_of_1s": f"{t * 100:.2f}%", "ratio": f"{t / base:.1f}x",
                     "note": "target < 2 %"})
    rows.append({"what": f"baseline: {RULES * DEVICES} bare comparisons", "ms": f"{base * 1e3:.2f}",
                 "share_of_1s": f"{base * 100:.2f}%", "ratio": "1.0x", "note": ""})
    report("One evaluation of all rules", rows)


if __name__ == "__main__":
    main()
