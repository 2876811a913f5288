"""/metrics rendering (typed families, escaping, staleness) and the HTTP endpoints."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import urllib.error
import urllib.request
from typing import Any

import pytest
from prometheus_client.exposition import generate_latest

from npuagent import config, hookimpl
from npuagent.agent import Agent
from npuagent.http import registry_for, serve
from npuagent.model import CollectorType, MetricSpec, Sample
from npuagent.systemd import Notifier

from .conftest import FakeClock, make_plugins
from .test_agent import wait_results


class Typed:
    """One collector that declares a gauge, a counter, a histogram, and leaves one metric undeclared."""

    def __init__(self, items: list) -> None:
        self.items = items

    @hookimpl
    def npuagent_collector_types(self) -> list:
        metrics = [MetricSpec("t_temperature_celsius", "gauge", "Temperature."),
                   MetricSpec("t_requests_total", "counter", "Requests."),
                   MetricSpec("t_odd", "counter", "A counter without the _total suffix."),
                   MetricSpec("t_latency_seconds", "histogram", "Latency.")]
        return [CollectorType("typed", lambda ctx: self, metrics=metrics, enabled_by_default=False)]

    def collect(self) -> list:
        return list(self.items)


def rendered_agent(tmp_path: Any, items: list) -> Agent:
    plugins = make_plugins(Typed(items))
    (tmp_path / "a.toml").write_text("[collectors.typed]\n")
    clock = FakeClock()
    agent = Agent(config.build(config.read_sources(str(tmp_path / "a.toml"), strict=False), plugins), plugins,
                  clock=clock, notifier=Notifier(clock.monotonic))
    agent.step()
    wait_results(agent)
    agent.step()
    return agent


ITEMS = [
    Sample("t_temperature_celsius", {"device_id": "0"}, 71.5),
    Sample("t_temperature_celsius", {"device_id": "1"}, float("nan")),
    Sample("t_requests_total", {"status": "ok"}, 10.0),
    Sample("t_odd", {}, 3.0),
    Sample("t_latency_seconds_bucket", {"le": "0.1"}, 4.0),
    Sample("t_latency_seconds_bucket", {"le": "+Inf"}, 5.0),
    Sample("t_latency_seconds_sum", {}, 0.9),
    Sample("t_latency_seconds_count", {}, 5.0),
    Sample("t_undeclared", {"text": 'say "hi"\\\nbye'}, 1.0),
]


def test_families_are_typed_from_declarations_and_labels_escaped(tmp_path: Any) -> None:
    agent = rendered_agent(tmp_path, ITEMS)
    text = generate_latest(registry_for(agent)).decode()
    assert "# TYPE t_temperature_celsius gauge\n" in text
    assert 't_temperature_celsius{device_id="0"} 71.5\n' in text
    assert 't_temperature_celsius{device_id="1"} NaN\n' in text
    assert "# TYPE t_requests_total counter\n" in text and 't_requests_total{status="ok"} 10.0' in text
    assert "# TYPE t_odd untyped\n" in text  # a counter must end in _total; otherwise it is not claimed as one
    assert "# TYPE t_latency_seconds histogram\n" in text
    assert 't_latency_seconds_bucket{le="+Inf"} 5.0' in text and "t_latency_seconds_count 5.0" in text
    assert "# HELP t_undeclared t_undeclared (no help declared)\n" in text
    assert 't_undeclared{text="say \\"hi\\"\\\\\\nbye"} 1.0' in text
    assert 'npuagent_collector_up{collector="typed"} 1.0' in text
    assert 'npuagent_build_info{python_version=' in text


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian package prometheus) is not installed")
def test_rendering_passes_promtool_check_metrics(tmp_path: Any) -> None:
    agent = rendered_agent(tmp_path, ITEMS + [Sample("t_temperature_celsius", {"device_id": str(i)}, i)
                                              for i in range(2, 500)])
    text = generate_latest(registry_for(agent)).decode()
    assert text.count("t_temperature_celsius{") == 500
    result = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_endpoints(tmp_path: Any) -> None:
    agent = rendered_agent(tmp_path, ITEMS)
    server = serve(agent, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
            assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            assert b"t_requests_total" in r.read()
        req = urllib.request.Request(base + "/metrics", headers={"Accept-Encoding": "gzip",
                                                                 "Accept": "application/openmetrics-text"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.headers["Content-Encoding"] == "gzip"
            assert r.headers["Content-Type"].startswith("application/openmetrics-text")
            assert gzip.decompress(r.read()).endswith(b"# EOF\n")
        with urllib.request.urlopen(base + "/healthz", timeout=10) as r:
            assert r.read() == b"ok\n"
        with urllib.request.urlopen(base + "/status", timeout=10) as r:
            status = json.loads(r.read())
        assert status["collectors"][0]["name"] == "typed" and status["collectors"][0]["up"] is True
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(base + "/nope", timeout=10)
        assert e.value.code == 404
        agent.clock.advance(60)  # the loop has not passed for a minute: unhealthy
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(base + "/healthz", timeout=10)
        assert e.value.code == 503
    finally:
        server.shutdown()
        agent.shutdown()


def test_the_listener_binds_loopback_by_default(tmp_path: Any) -> None:
    (tmp_path / "a.toml").write_text("")
    plugins = make_plugins()
    cfg = config.build(config.read_sources(str(tmp_path / "a.toml"), strict=False), plugins)
    assert cfg.listen == ("127.0.0.1", 9740)
    (tmp_path / "a.toml").write_text('[http]\nlisten = "[::1]:9100"\n')
    cfg = config.build(config.read_sources(str(tmp_path / "a.toml"), strict=False), plugins)
    assert cfg.listen == ("::1", 9100)
