#!/usr/bin/env python3
"""Benchmark of npuagent.store: memory per stored sample, and the cost of each window function.

Every figure is a ratio against a baseline measured in the same run, so the
numbers mean the same on a laptop and on a loaded CI runner:

* memory: bytes per stored sample (``tracemalloc``) with full windows, against
  the same samples kept as a list of ``(t, v)`` tuples per series; the
  target is at most 16 bytes a sample, everything included;
* time: the median cost of each function over a one-hour window at 1 s
  (3600 samples), against ``sum(list_of_3600_floats) / 3600`` -- the cheapest
  mean Python can compute, i.e. "one C-level pass over the data". Functions
  get the windows of ``Series.window``: values as ``array('d')``, timestamps as
  ``Times``, converted from milliseconds only where a function reads them.

Run ``python benchmarks/bench_store.py`` for a table, ``--json`` for JSON.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import collections
import gc
import json
import random
import statistics
import time
import tracemalloc
from typing import Any, Callable, Dict, List, Tuple

from npuagent.store import (
    Store,
    absent,
    avg_over,
    bucket_increases,
    bucket_series,
    count_over,
    delta,
    deriv,
    histogram_quantile,
    increase,
    last_value,
    max_over,
    min_over,
    predict_linear,
    quantile_over,
    rate,
    stddev_over,
    sum_over,
)

Sample = collections.namedtuple("Sample", "name labels value timestamp")

T0 = 1_700_000_000.0
HOUR = 3600
TARGET_BYTES = 16.0


def _filled_store(n_series: int, n_samples: int, extra: int) -> Store:
    """``n_series`` series at 1 s with a retention of ``n_samples`` s, fed past full so the rings wrap."""
    store = Store(retention=float(n_samples))
    labels = [{"device": str(k), "host": "bench"} for k in range(n_series)]
    for i in range(n_samples + extra):
        value = float(i % 97)
        store.ingest("bench", [Sample("npu_temperature", lab, value, None) for lab in labels], now=T0 + i, interval=1.0)
    return store


def bench_memory(n_series: int, n_samples: int) -> Dict[str, Any]:
    """Bytes per stored sample in steady state, ours and as lists of (t, v) tuples."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        store = _filled_store(n_series, n_samples, extra=50)
        ours = tracemalloc.get_traced_memory()[0] - before
        stored = store.samples_stored()
        array_bytes = sum(sys.getsizeof(s._ts) + sys.getsizeof(s._vs) for s in store._series.values())
        some = next(iter(store._series.values()))
        data_bytes = some._ts.itemsize + some._vs.itemsize  # timestamp offset + value
        del store
        gc.collect()

        per_series = stored // n_series
        before = tracemalloc.get_traced_memory()[0]
        baseline_store: Dict[Tuple[str, Tuple[Tuple[str, str], ...]], List[Tuple[float, float]]] = {}
        for k in range(n_series):
            key = ("npu_temperature", (("device", str(k)), ("host", "bench")))
            baseline_store[key] = [(T0 + i, float(i % 97)) for i in range(per_series)]
        baseline = tracemalloc.get_traced_memory()[0] - before
        baseline_samples = sum(len(v) for v in baseline_store.values())
        del baseline_store
    finally:
        tracemalloc.stop()
    ours_per = ours / stored
    base_per = baseline / baseline_samples
    return {
        "series": n_series,
        "samples_stored": stored,
        "bytes_per_sample": ours_per,
        "array_bytes_per_sample": array_bytes / stored,
        "data_bytes_per_sample": data_bytes,
        "baseline_bytes_per_sample": base_per,
        "ratio": ours_per / base_per,
        "target_bytes_per_sample": TARGET_BYTES,
    }


def _median_ns(fn: Callable[[], Any], runs: int, min_run_ns: int = 200_000) -> float:
    """Median time of one call, over ``runs`` runs of enough calls to dwarf the timer's resolution."""
    inner = 1
    while True:
        t = time.perf_counter_ns()
        for _ in range(inner):
            fn()
        if time.perf_counter_ns() - t >= min_run_ns or inner >= 1 << 16:
            break
        inner *= 2
    results = []
    for _ in range(runs):
        t = time.perf_counter_ns()
        for _ in range(inner):
            fn()
        results.append((time.perf_counter_ns() - t) / inner)
    return statistics.median(results)


def bench_functions(runs: int) -> Dict[str, Any]:
    rng = random.Random(42)
    store = Store(retention=float(HOUR))
    now = T0 + HOUR + 100
    # A gauge (random walk), a counter with two resets, and a 12-bucket histogram.
    gauge, counter = 50.0, 0.0
    bounds = ["0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf"]
    cumulative = [0.0] * len(bounds)
    for i in range(HOUR + 101):
        t = T0 + i
        gauge += rng.uniform(-1, 1)
        counter = 0.0 if i in (1200, 2500) else counter + rng.uniform(0, 10)
        batch = [Sample("gauge", {}, gauge, t), Sample("counter_total", {}, counter, t)]
        observations = [rng.expovariate(4.0) for _ in range(3)]
        for b, le in enumerate(bounds):
            cumulative[b] += sum(1 for o in observations if o <= float(le))
            batch.append(Sample("latency_seconds_bucket", {"le": le}, cumulative[b], t))
        store.ingest("bench", batch, now=t, interval=1.0)

    start, end = now - HOUR, now
    g = store.get("gauge", {})
    c = store.get("counter_total", {})
    assert g is not None and c is not None
    gts, gvs = g.window(start, end)
    cts, cvs = c.window(start, end)
    assert len(gvs) == HOUR and len(cvs) == HOUR, (len(gvs), len(cvs))
    (buckets,) = bucket_series(store, "latency_seconds").values()
    incs = bucket_increases(buckets, start, end)
    assert len(incs) == 12

    plain = list(gvs)
    baseline_ns = _median_ns(lambda: sum(plain) / HOUR, runs)

    cases: List[Tuple[str, Callable[[], Any]]] = [
        ("Series.window (1 h slice)", lambda: g.window(start, end)),
        ("last_value", lambda: last_value(gts, gvs)),
        ("avg_over", lambda: avg_over(gvs)),
        ("min_over", lambda: min_over(gvs)),
        ("max_over", lambda: max_over(gvs)),
        ("sum_over", lambda: sum_over(gvs)),
        ("count_over", lambda: count_over(gvs)),
        ("stddev_over", lambda: stddev_over(gvs)),
        ("quantile_over(0.9)", lambda: quantile_over(0.9, gvs)),
        ("rate (2 resets)", lambda: rate(cts, cvs, start, end)),
        ("increase (2 resets)", lambda: increase(cts, cvs, start, end)),
        ("delta", lambda: delta(gts, gvs, start, end)),
        ("deriv", lambda: deriv(gts, gvs)),
        ("predict_linear", lambda: predict_linear(gts, gvs, end, 3600.0)),
        ("histogram_quantile (12 buckets)", lambda: histogram_quantile(0.99, incs)),
        (
            "histogram pipeline (12 x window+increase, quantile)",
            lambda: histogram_quantile(0.99, bucket_increases(buckets, start, end)),
        ),
        ("absent (12 series)", lambda: absent(buckets, end, 300.0)),
    ]
    rows = []
    for name, fn in cases:
        ns = _median_ns(fn, runs)
        rows.append({"function": name, "us": ns / 1000, "ratio": ns / baseline_ns})
    return {
        "samples": HOUR,
        "baseline": "sum(list_of_3600_floats) / 3600",
        "baseline_us": baseline_ns / 1000,
        "rows": rows,
    }


def bench_ingest(runs: int) -> Dict[str, Any]:
    """Cost per sample of ingesting a batch of 200, against appending a (t, v) tuple to a list."""
    labels = [{"device": str(k)} for k in range(200)]
    store = Store(retention=600.0)
    clock = [T0]

    def ingest() -> None:
        clock[0] += 1
        store.ingest("bench", [Sample("npu_power", lab, 1.5, None) for lab in labels], now=clock[0], interval=1.0)

    lists: List[List[Tuple[float, float]]] = [[] for _ in range(200)]

    def append() -> None:
        clock[0] += 1
        t = clock[0]
        for lst in lists:
            lst.append((t, 1.5))
            if len(lst) > 600:
                del lst[0]

    for _ in range(700):  # reach steady state: full rings, full lists
        ingest()
        append()
    ours = _median_ns(ingest, runs) / 200
    base = _median_ns(append, runs) / 200
    return {
        "us_per_sample": ours / 1000,
        "baseline": "list.append((t, v)) per sample",
        "baseline_us": base / 1000,
        "ratio": ours / base,
    }


def print_table(result: Dict[str, Any]) -> None:
    mem = result["memory"]
    print(f"npuagent.store benchmark (Python {sys.version.split()[0]})")
    print()
    print(f"Memory, {mem['series']} series x {mem['samples_stored'] // mem['series']} samples, full rings")
    print(f"  {'':34} {'bytes/sample':>12} {'ratio':>7}")
    print(f"  {'store (everything, tracemalloc)':34} {mem['bytes_per_sample']:12.2f} {mem['ratio']:7.3f}")
    print(f"  {'  of which array buffers':34} {mem['array_bytes_per_sample']:12.2f}")
    print(f"  {'baseline: list of (t, v) tuples':34} {mem['baseline_bytes_per_sample']:12.2f} {1.0:7.3f}")
    verdict = "met" if mem["bytes_per_sample"] <= mem["target_bytes_per_sample"] else "NOT met"
    print(
        f"  target: <= {mem['target_bytes_per_sample']:.0f} bytes/sample, all-in ({verdict}):"
        f" data {mem['data_bytes_per_sample']:.2f} (8 value + 4 timestamp offset)"
        f" + array headers {mem['array_bytes_per_sample'] - mem['data_bytes_per_sample']:.2f}"
        f" + per-series bookkeeping {mem['bytes_per_sample'] - mem['array_bytes_per_sample']:.2f} (amortised)"
    )
    print()
    fun = result["functions"]
    print(f"Window functions over {fun['samples']} samples (1 h at 1 s), median per call")
    print(f"  baseline: {fun['baseline']} = {fun['baseline_us']:.1f} us")
    width = max(len(r["function"]) for r in fun["rows"])
    print(f"  {'function':{width}} {'us':>9} {'x baseline':>11}")
    for r in fun["rows"]:
        print(f"  {r['function']:{width}} {r['us']:9.1f} {r['ratio']:11.2f}")
    print()
    ing = result["ingest"]
    print("Ingest, batches of 200 samples, steady state")
    print(
        f"  store.ingest: {ing['us_per_sample']:.3f} us/sample; baseline {ing['baseline']}: "
        f"{ing['baseline_us']:.3f} us; ratio {ing['ratio']:.2f}"
    )


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--runs", type=int, default=101, help="timed runs per function (median is reported)")
    parser.add_argument("--series", type=int, default=200, help="series in the memory benchmark")
    args, _unknown = parser.parse_known_args(argv)  # ./dev bench passes its arguments to every benchmark
    result = {
        "memory": bench_memory(args.series, HOUR),
        "functions": bench_functions(args.runs),
        "ingest": bench_ingest(max(11, args.runs // 4)),
    }
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
