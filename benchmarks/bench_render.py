"""Time to render /metrics with 500 series, against prometheus_client's own registry with the same
500 series (the library's floor) and, when installed, a scrape of node_exporter (target <= 7 ms)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import urllib.request

import _util  # noqa: F401
from _util import free_port, median_seconds, report
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.exposition import generate_latest

from npuagent import config, hookimpl
from npuagent.agent import Agent
from npuagent.http import registry_for
from npuagent.model import CollectorType, MetricSpec, Sample
from npuagent.plugins import Plugins
from npuagent.systemd import Notifier

SERIES = 500


class Five:
    """500 series as an 8-NPU host has them: a few metrics over devices, chips and processes."""

    @hookimpl
    def npuagent_collector_types(self) -> list:
        specs = [MetricSpec(f"npu_bench_{i}", "gauge", "Bench metric.") for i in range(10)]
        return [CollectorType("bench", lambda ctx: self, metrics=specs, enabled_by_default=False)]

    def collect(self) -> list:
        return [Sample(f"npu_bench_{i % 10}", {"device_id": str(i // 10), "npu_id": str(i // 20),
                                               "chip_id": str(i // 10 % 2)}, float(i)) for i in range(SERIES)]


def ours() -> float:
    d = tempfile.mkdtemp()
    with open(os.path.join(d, "a.toml"), "w") as f:
        f.write("[collectors.bench]\n")
    plugins = Plugins()
    plugins.load(entry_points=False, builtins=())
    plugins.register(Five(), "bench")
    agent = Agent(config.build(config.read_sources(os.path.join(d, "a.toml"), strict=False), plugins), plugins,
                  notifier=Notifier())
    agent.step()
    while agent._done.empty():
        time.sleep(0.001)
    agent.step()
    registry = registry_for(agent)
    assert generate_latest(registry).count(b"npu_bench_") >= SERIES
    return median_seconds(lambda: generate_latest(registry), repeat=200)


def library_floor() -> float:
    registry = CollectorRegistry()
    gauges = [Gauge(f"npu_bench_{i}", "Bench metric.", ["device_id", "npu_id", "chip_id"], registry=registry)
              for i in range(10)]
    for i in range(SERIES):
        gauges[i % 10].labels(str(i // 10), str(i // 20), str(i // 10 % 2)).set(i)
    return median_seconds(lambda: generate_latest(registry), repeat=200)


def node_exporter() -> tuple:
    port = free_port()
    proc = subprocess.Popen(["prometheus-node-exporter", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        for _ in range(100):
            try:
                body = urllib.request.urlopen(url, timeout=5).read()
                break
            except OSError:
                time.sleep(0.1)
        series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
        return median_seconds(lambda: urllib.request.urlopen(url, timeout=5).read(), repeat=30), series
    finally:
        proc.terminate()
        proc.wait()


def main() -> None:
    t_ours, t_floor = ours(), library_floor()
    rows = [{"what": f"npuagent /metrics, {SERIES} series + self metrics", "ms": f"{t_ours * 1e3:.2f}",
             "ratio": f"{t_ours / t_floor:.2f}x", "note": "target <= 7 ms"},
            {"what": f"baseline: prometheus_client registry, {SERIES} gauges", "ms": f"{t_floor * 1e3:.2f}",
             "ratio": "1.00x", "note": ""}]
    if shutil.which("prometheus-node-exporter"):
        t_ne, n = node_exporter()
        rows.append({"what": f"baseline: node_exporter scrape ({n} series)", "ms": f"{t_ne * 1e3:.2f}",
                     "ratio": f"{t_ne / t_floor:.2f}x", "note": f"npuagent/node_exporter = {t_ours / t_ne:.2f}x"})
    report("Time to render /metrics", rows)


if __name__ == "__main__":
    main()
