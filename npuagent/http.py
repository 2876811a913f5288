"""``/metrics``, ``/healthz`` and ``/status`` over HTTP.

``/metrics`` is rendered by prometheus_client from one custom collector that
reads the store's live series (only series of a collector's latest successful
collection: stale data never leaves here as fresh) and the agent's own health.
The listener binds 127.0.0.1 unless the configuration says otherwise.
"""

from __future__ import annotations

import gzip
import json
import logging
import platform
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, Iterator, List, Tuple

from prometheus_client.core import CollectorRegistry, Metric
from prometheus_client.exposition import choose_encoder

from . import __version__
from .rules import render

log = logging.getLogger("npuagent.http")

_PROM_TYPES = {"gauge": "gauge", "counter": "counter", "histogram": "histogram", "summary": "summary",
               "info": "gauge", "untyped": "unknown"}


def _family_name(name: str, typ: str) -> Tuple[str, str]:
    """The family name prometheus_client wants, and the type it can honour for ``name``."""
    if typ == "counter":
        return (name[:-6], "counter") if name.endswith("_total") else (name, "unknown")
    if typ in ("histogram", "summary"):
        for suffix in ("_bucket", "_count", "_sum"):
            if name.endswith(suffix):
                return name[: -len(suffix)], typ
        return name, "gauge" if typ == "histogram" else "summary"
    return name, _PROM_TYPES.get(typ, "unknown")


class StoreCollector:
    """Every live series of the store, typed from the collectors' declarations,
    plus the agent's ``npuagent_*`` metrics."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent

    def collect(self) -> Iterator[Metric]:
        specs = self.agent.metric_specs
        families: Dict[str, Metric] = {}
        for name, labels, value in self.agent.store.live():
            spec = specs.get(name)
            base = name
            typ = "unknown"
            if spec is not None:
                base, typ = _family_name(name, spec.type)
            else:
                for suffix in ("_bucket", "_count", "_sum"):  # histograms declared by their base name
                    if name.endswith(suffix) and name[: -len(suffix)] in specs:
                        base, typ = _family_name(name, specs[name[: -len(suffix)]].type)
                        break
            family = families.get(base)
            if family is None:
                help_text = spec.help if spec is not None else (specs[base].help if base in specs else "")
                family = families[base] = Metric(base, help_text or f"{base} (no help declared)", typ)
            family.add_sample(name, dict(labels), value)
        for base in sorted(families):
            yield families[base]
        yield from self_metrics(self.agent)


def _metric(name: str, help_text: str, typ: str, rows: List[Tuple[Dict[str, str], float]]) -> Metric:
    base = name[:-6] if typ == "counter" else name
    m = Metric(base, help_text, typ)
    for labels, value in rows:
        m.add_sample(name, labels, value)
    return m


def self_metrics(agent: Any) -> Iterator[Metric]:
    """The agent's own health: collectors, plugins, configuration, store."""
    runners = sorted(agent.runners.values(), key=lambda r: r.name)

    def per_collector(attr: str) -> List[Tuple[Dict[str, str], float]]:
        return [({"collector": r.name}, float(getattr(r.health, attr))) for r in runners]

    yield _metric("npuagent_build_info", "Version of the agent, with value 1.", "gauge",
                  [({"version": __version__, "python_version": platform.python_version()}, 1.0)])
    yield _metric("npuagent_collector_up", "1 if the collector's latest collection succeeded.", "gauge",
                  per_collector("up"))
    yield _metric("npuagent_collector_duration_seconds", "Duration of the collector's latest collection.", "gauge",
                  per_collector("duration"))
    yield _metric("npuagent_collector_errors_total", "Collections that failed or timed out.", "counter",
                  per_collector("errors"))
    yield _metric("npuagent_collector_skipped_total", "Ticks skipped because the previous collection was running.",
                  "counter", per_collector("skipped"))
    yield _metric("npuagent_collector_last_success_timestamp_seconds",
                  "Time of the collector's latest successful collection.", "gauge", per_collector("last_success"))
    with agent.plugins._errors_lock:
        errors = sorted(agent.plugins.errors.items())
    yield _metric("npuagent_plugin_errors_total", "Exceptions raised by plugin hook implementations.", "counter",
                  [({"plugin": p, "hook": h}, float(n)) for (p, h), n in errors])
    yield _metric("npuagent_config_last_reload_successful", "1 if the latest configuration (re)load succeeded.",
                  "gauge", [({}, float(agent.reload_ok))])
    yield _metric("npuagent_config_last_reload_success_timestamp_seconds",
                  "Time of the latest successful configuration load.", "gauge", [({}, agent.reload_time)])
    yield _metric("npuagent_store_series", "Series held in the store.", "gauge", [({}, float(len(agent.store)))])
    yield _metric("npuagent_store_samples", "Samples held in the store's windows.", "gauge",
                  [({}, float(agent.store.samples_stored()))])
    yield _metric("npuagent_loop_cycles_total", "Passes of the agent's main loop.", "counter",
                  [({}, float(agent.cycles))])
    yield _metric("npuagent_start_time_seconds", "Start time of the agent.", "gauge", [({}, agent.started)])
    remediation = getattr(agent, "remediation", None)
    if remediation is not None:
        yield _metric("npuagent_actions_total", "Action attempts by outcome (success, failure, timeout, skipped, "
                      "dry-run).", "counter",
                      [({"action": a, "outcome": o}, float(n)) for (a, o), n in sorted(remediation.counts.items())])
        breaker = remediation.state.breaker()
        yield _metric("npuagent_breaker_open", "1 while the host-wide breaker refuses disruptive actions.", "gauge",
                      [({}, 1.0 if breaker else 0.0)])
    engine = agent.engine
    if engine is None:
        return
    yield _metric("npuagent_alerts", "Alerts that are pending, firing or resolving, as Prometheus's ALERTS.",
                  "gauge", [({**i.labels_dict(), "rule": r.name, "severity": r.severity, "state": i.state}, 1.0)
                            for r, i in engine.alerts()])
    yield _metric("npuagent_rule_evaluation_duration_seconds", "Duration of the latest evaluation of all rules.",
                  "gauge", [({}, engine.last_duration)])
    yield _metric("npuagent_rule_evaluations_total", "Evaluations of all rules.", "counter",
                  [({}, float(engine.evaluations))])
    yield _metric("npuagent_rule_evaluation_failures_total", "Evaluations of a rule that raised.", "counter",
                  [({"rule": r.name}, float(r.failures)) for r in engine.rules.values()])
    yield _metric("npuagent_silences", "Silences in force.", "gauge",
                  [({}, float(sum(1 for x in engine.silences if x.starts <= agent.clock.time() < x.ends)))])


def registry_for(agent: Any) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(agent))
    return registry


def _alerts(agent: Any) -> List[Dict[str, Any]]:
    """Alerts with their values and timers: when the next step is due if nothing changes."""
    engine, now = agent.engine, agent.clock.time()
    out = []
    for r, i in (engine.alerts() if engine else []):
        due = None
        if i.state == "pending":
            due = i.active_at + r.options["for"]
        elif i.state == "resolving":
            due = i.resolving_at + r.options["clear_for"]
        out.append({"rule": r.name, "labels": i.labels_dict(), "state": i.state, "severity": r.severity,
                    "value": None if i.value is None or i.value != i.value else i.value,
                    "active_at": i.active_at, "fired_at": i.fired_at or None, "next_step_in": None if due is None
                    else max(due - now, 0.0), "silenced": engine.silenced(r.name, i.labels_dict(), now),
                    "summary": render(r.options["summary"], r, i) if r.options["summary"] else ""})
    return out


def status(agent: Any) -> Dict[str, Any]:
    """The JSON of ``/status``."""
    engine = agent.engine
    return {
        "now": agent.clock.time(),
        "alerts": _alerts(agent),
        "silences": [{"id": x.id, "rule": x.rule, "matchers": dict(x.matchers), "starts": x.starts, "ends": x.ends,
                      "reason": x.reason} for x in (engine.silences if engine else [])],
        "rules": {"count": len(engine.rules) if engine else 0,
                  "evaluation_seconds": engine.last_duration if engine else 0.0,
                  "failing": {r.name: r.last_error for r in engine.rules.values() if r.last_error} if engine else {}},
        "events": [{"kind": e.kind, "labels": dict(e.labels), "message": e.message, "at": e.timestamp}
                   for e in agent.events.recent(20)],
        "version": __version__,
        "started": agent.started,
        "cycles": agent.cycles,
        "config": {"files": list(agent.cfg.files), "last_reload_successful": bool(agent.reload_ok)},
        "collectors": [
            {"name": r.name, "type": r.cfg.type, "up": bool(r.health.up), "interval": r.cfg.interval,
             "timeout": r.cfg.timeout, "duration": r.health.duration, "errors": r.health.errors,
             "skipped": r.health.skipped, "last_success": r.health.last_success, "last_error": r.health.last_error,
             "samples": r.health.samples}
            for r in sorted(agent.runners.values(), key=lambda r: r.name)
        ],
    }


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        agent = self.server.agent
        if path == "/metrics":
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            body = encoder(self.server.registry)
            if "gzip" in self.headers.get("Accept-Encoding", ""):
                self._send(200, content_type, gzip.compress(body, 1), {"Content-Encoding": "gzip"})
            else:
                self._send(200, content_type, body)
        elif path == "/healthz":
            healthy = agent.clock.time() - agent.last_cycle < 30
            self._send(200 if healthy else 503, "text/plain; charset=utf-8", b"ok\n" if healthy else b"loop stalled\n")
        elif path == "/status":
            self._send(200, "application/json", json.dumps(status(agent), indent=1).encode())
        elif path == "/":
            self._send(200, "text/html; charset=utf-8",
                       b'<html><body><h1>npuagent</h1><a href="/metrics">metrics</a> '
                       b'<a href="/status">status</a> <a href="/healthz">healthz</a></body></html>\n')
        else:
            self._send(404, "text/plain; charset=utf-8", b"not found\n")

    def _send(self, code: int, content_type: str, body: bytes, headers: Dict[str, str] = {}) -> None:  # noqa: B006
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    agent: Any
    registry: CollectorRegistry


class _Server6(_Server):
    address_family = socket.AF_INET6


def serve(agent: Any, host: str, port: int) -> _Server:
    """Start the HTTP server in a daemon thread; returns it (``server_address`` has the bound port)."""
    server = (_Server6 if ":" in host else _Server)((host, port), _Handler)
    server.agent = agent
    server.registry = registry_for(agent)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    log.info("listening on http://%s:%d/metrics", host, server.server_address[1])
    return server
