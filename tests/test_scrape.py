"""The scrape collector against a real HTTP server on 127.0.0.1 serving vLLM and MindIE pages as those servers
render them (tests/helpers/serving_expositions.py), and everything an endpoint can do wrong: refuse, hang,
dribble, answer 500 or HTML, send too much (plainly or as a gzip bomb), or send text that does not parse.

Collectors are built as the agent builds them: options validated by the configuration's own function.
"""

from __future__ import annotations

import gzip
import logging
import math
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest
from prometheus_client.exposition import generate_latest

from npuagent import config
from npuagent.agent import Agent
from npuagent.builtin import scrape, threshold
from npuagent.context import PluginContext
from npuagent.http import registry_for
from npuagent.model import Sample
from npuagent.options import validate_table
from npuagent.rules import RULE_COMMON, CompiledRule, Engine, EvalContext, digest
from npuagent.store import Store
from npuagent.systemd import Notifier

from .conftest import FakeClock, make_plugins
from .helpers import serving_expositions as expo
from .helpers.serving_server import Handler, ServingServer, make_certs, text

#: A safety net only: no assertion is about speed, but a collector that ignored its deadline must not hang.
OUTER = 15.0


@pytest.fixture
def server() -> Iterator[ServingServer]:
    with ServingServer() as s:
        yield s


def build(timeout: float = 5.0, name: str = "vllm", **raw: Any) -> scrape.ScrapeCollector:
    ct = scrape.npuagent_collector_types()[0]
    values, errors = validate_table(raw, ct.options)
    assert not errors, errors
    return ct.factory(PluginContext(name=name, type="scrape", options=values, timeout=timeout))


def collect(timeout: float = 5.0, **raw: Any) -> List[Sample]:
    return build(timeout, **raw).collect()


def failure(timeout: float = 5.0, **raw: Any) -> str:
    started = time.monotonic()
    with pytest.raises(scrape.ScrapeError) as e:
        collect(timeout, **raw)
    assert time.monotonic() - started < OUTER
    return str(e.value)


def one(samples: List[Sample], name: str, **labels: str) -> float:
    found = [s for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, f"{name}{labels}: {found}"
    return found[0].value


def names(samples: List[Sample]) -> set:
    return {s.name for s in samples}


def metrics_route(server: ServingServer, body: str) -> str:
    server.route("/metrics", text(body.encode()))
    return server.url("/metrics")


# ---------------------------------------------------------------------------
# What servers expose
# ---------------------------------------------------------------------------


def test_vllm_page_keeps_names_labels_and_histograms_as_exposed(server: ServingServer) -> None:
    got = collect(url=metrics_route(server, expo.vllm()))
    e0 = {"model_name": "qwen3-8b", "engine": "0"}
    assert one(got, "vllm:num_requests_running", **e0) == 3.0
    assert one(got, "vllm:kv_cache_usage_perc", engine="1") == pytest.approx(0.92)
    # counters keep _total as exposed; their finished_reason label too
    assert one(got, "vllm:prompt_tokens_total", **e0) == 51234.0
    assert one(got, "vllm:request_success_total", engine="1", finished_reason="abort") == 2.0
    # histograms: _bucket with le as exposed, _sum and _count; a histogram whose name ends in _total too
    assert one(got, "vllm:time_to_first_token_seconds_bucket", le="0.1", **e0) == 4.0
    assert one(got, "vllm:time_to_first_token_seconds_bucket", le="+Inf", **e0) == 8.0
    assert one(got, "vllm:time_to_first_token_seconds_count", engine="1") == 6.0
    assert one(got, "vllm:time_to_first_token_seconds_sum", engine="1") == pytest.approx(22.15)
    assert one(got, "vllm:iteration_tokens_total_bucket", le="256.0", **e0) == 8.0
    # the *_created companions are gone; the info gauge keeps its labels
    assert not [n for n in names(got) if n.endswith("_created")]
    assert one(got, "vllm:cache_config_info", num_gpu_blocks="5120") == 1.0
    buckets = [s for s in got if s.name == "vllm:time_to_first_token_seconds_bucket" and s.labels["engine"] == "0"]
    assert len(buckets) == len(expo.TTFT_BUCKETS) + 1
    assert all(s.timestamp is None for s in got)  # stamped by the agent when the collection ends


def test_vllm_ascend_old_aliases_come_through_unchanged(server: ServingServer) -> None:
    got = names(collect(url=metrics_route(server, expo.vllm(old_names=True))))
    assert {"vllm:gpu_cache_usage_perc", "vllm:time_per_output_token_seconds_bucket"} <= got
    assert "vllm:kv_cache_usage_perc" not in got


def test_mindie_page_from_a_cpp_serializer(server: ServingServer) -> None:
    got = collect(url=metrics_route(server, expo.mindie()))
    m = {"model_name": "deepseek-r1"}
    assert one(got, "request_received_total", **m) == 1532.0
    assert one(got, "num_requests_waiting", **m) == 5.0
    assert one(got, "npu_cache_usage_perc", **m) == 0.97
    assert math.isnan(one(got, "npu_prefix_cache_hit_rate", **m))  # spelt "Nan"
    # fixed-notation bounds ("10.000000"), _count and _sum written before the buckets
    assert one(got, "time_to_first_token_seconds_bucket", le="10.000000") == 11.0
    assert one(got, "time_to_first_token_seconds_bucket", le="+Inf") == 13.0
    assert one(got, "time_to_first_token_seconds_count") == 13.0
    assert one(got, "e2e_request_latency_seconds_sum") == 93.0


def test_a_counter_exposed_without_total_keeps_its_name(server: ServingServer) -> None:
    page = "# TYPE legacy_requests counter\nlegacy_requests{code=\"200\"} 7\n# TYPE ok_total counter\nok_total 2\n"
    got = collect(url=metrics_route(server, page))
    assert one(got, "legacy_requests", code="200") == 7.0
    assert one(got, "ok_total") == 2.0
    assert "legacy_requests_total" not in names(got)


def test_untyped_lines_and_exposed_timestamps(server: ServingServer) -> None:
    page = "some_value 3 1700000000000\nother_value{a=\"x\"} +Inf\n"
    got = collect(url=metrics_route(server, page))
    assert one(got, "some_value") == 3.0
    assert one(got, "other_value", a="x") == math.inf
    assert all(s.timestamp is None for s in got)


# ---------------------------------------------------------------------------
# Quantile rules read the scraped buckets
# ---------------------------------------------------------------------------


def test_a_p99_threshold_rule_reads_scraped_ttft_buckets(server: ServingServer) -> None:
    """Two scrapes a minute apart, the second with more slow first tokens on engine 1: the rule's p99 is
    histogram_quantile over the increase of each engine's buckets, engine 1's over the threshold."""
    types = {n: rt for n, (_p, rt) in make_plugins(threshold).rule_types().items()}
    raw = {"type": "threshold", "name": "ttft-p99", "metric": "vllm:time_to_first_token_seconds", "agg": "p99",
           "over": "2m", "above": 5.0}
    values, errors = validate_table(raw, (*RULE_COMMON, *types["threshold"].options))
    assert not errors, errors
    impl = types["threshold"].factory(PluginContext(name="ttft-p99", type="threshold", options=values, metrics={}))
    rule = CompiledRule("ttft-p99", "threshold", values, impl, digest("threshold", values))
    store = Store(3600.0)
    t0 = 1_700_000_000.0
    collector = build(url=server.url("/metrics"))
    before = {"0": [0.05] * 10, "1": [0.05] * 10}
    after = {"0": [0.05] * 10 + [0.07] * 100, "1": [0.05] * 10 + [0.1] * 80 + [15.0] * 20}
    for t, observed in ((t0, before), (t0 + 60, after)):
        server.route("/metrics", text(expo.vllm(observed).encode()))
        store.ingest("vllm", collector.collect(), t, 15.0)
    engine = Engine([rule], started=t0 - 600)
    ctx = EvalContext(t0 + 60, store, None, engine.instances_of, {}, engine.started)
    verdicts = {dict(v.labels)["engine"]: v for v in impl.evaluate(ctx)}
    assert set(verdicts) == {"1"}  # engine 0's p99 (under 0.1 s) does not fire, and no alert asks for its clearing
    # engine 1: 100 new first tokens, 80 under 0.1 s and 20 at 15 s: rank 99 in the (10, 20] bucket, about
    # 10 + 10 x (99 - 80) / 20 (increase() extrapolates each bucket, so not exactly)
    assert verdicts["1"].fire and verdicts["1"].value == pytest.approx(19.5, abs=0.1)


# ---------------------------------------------------------------------------
# keep, drop, labels, the scrape_* series, sample_limit
# ---------------------------------------------------------------------------


def test_keep_by_family_name_keeps_a_whole_histogram_and_drop_removes(server: ServingServer) -> None:
    url = metrics_route(server, expo.vllm())
    got = collect(url=url, keep=["vllm:time_to_first_token_seconds", "vllm:num_requests_.*"],
                  drop=["vllm:num_requests_waiting"])
    assert names(got) == {"vllm:time_to_first_token_seconds_bucket", "vllm:time_to_first_token_seconds_sum",
                          "vllm:time_to_first_token_seconds_count", "vllm:num_requests_running",
                          "scrape_duration_seconds", "scrape_samples_scraped", "scrape_samples_post_metric_relabeling",
                          "scrape_body_size_bytes"}
    kept = len([s for s in got if not s.name.startswith("scrape_")])
    assert one(got, "scrape_samples_post_metric_relabeling") == kept == 2 * (len(expo.TTFT_BUCKETS) + 3) + 2
    assert one(got, "scrape_samples_scraped") == len(scrape.parse(expo.vllm()))
    # anchored: a pattern matches the whole name, as in Prometheus's relabelling
    assert names(collect(url=url, keep=["num_requests"])) == {s for s in names(got) if s.startswith("scrape_")}


def test_extra_labels_win_and_the_scraped_one_is_kept_as_exported(server: ServingServer) -> None:
    page = 'a{app="inner",x="1"} 1\nb 2\n'
    got = collect(url=metrics_route(server, page), labels={"app": "vllm"}, name="llm")
    assert [dict(s.labels) for s in got if s.name == "a"] == [{"app": "vllm", "exported_app": "inner", "x": "1"}]
    assert [dict(s.labels) for s in got if s.name == "b"] == [{"app": "vllm"}]
    meta = [s for s in got if s.name.startswith("scrape_")]
    assert meta and all(dict(s.labels) == {"app": "vllm", "collector": "llm"} for s in meta)
    assert one(got, "scrape_body_size_bytes") == len(page)
    assert one(got, "scrape_duration_seconds") >= 0


def test_collector_is_not_an_extra_label() -> None:
    with pytest.raises(ValueError, match="collector"):
        build(url="http://127.0.0.1:1/metrics", labels={"collector": "x"})


def test_sample_limit_fails_the_scrape(server: ServingServer) -> None:
    url = metrics_route(server, "".join(f"s{i} {i}\n" for i in range(20)))
    message = failure(url=url, sample_limit=10)
    assert "20 samples" in message and "sample_limit (10)" in message and url in message
    assert len(collect(url=url, sample_limit=10, keep=["s[0-4]"])) == 5 + 4


def test_an_empty_page_is_no_samples_and_one_warning(server: ServingServer, caplog: Any) -> None:
    caplog.set_level(logging.WARNING)
    c = build(url=metrics_route(server, ""))
    for _ in range(2):
        got = c.collect()
        assert names(got) == {"scrape_duration_seconds", "scrape_samples_scraped",
                              "scrape_samples_post_metric_relabeling", "scrape_body_size_bytes"}
    warnings = [r for r in caplog.records if "no samples" in r.getMessage()]
    assert len(warnings) == 1 and "MIES_SERVICE_MONITOR_MODE=1" in warnings[0].getMessage()


# ---------------------------------------------------------------------------
# gzip, size limits
# ---------------------------------------------------------------------------


def test_a_gzip_answer_is_inflated(server: ServingServer) -> None:
    page = expo.vllm().encode()
    server.route("/metrics", text(gzip.compress(page), headers={"Content-Encoding": "gzip"}))
    got = collect(url=server.url("/metrics"))
    assert one(got, "vllm:num_requests_running", engine="1") == 4.0
    assert one(got, "scrape_body_size_bytes") == len(page)
    assert server.requests[-1].headers["accept-encoding"] == "gzip"
    assert server.requests[-1].headers["accept"].startswith("text/plain;version=0.0.4")


def test_a_gzip_bomb_stops_at_max_bytes(server: ServingServer) -> None:
    bomb = gzip.compress(b"x 1\n" * (8 << 20))  # 32 MiB of text in about 32 KiB
    server.route("/metrics", text(bomb, headers={"Content-Encoding": "gzip"}))
    message = failure(url=server.url("/metrics"), max_bytes=1 << 20)
    assert "over max_bytes (1048576)" in message and "reading stopped" in message


def test_a_corrupt_or_cut_gzip_body(server: ServingServer) -> None:
    body = bytearray(gzip.compress(b"x 1\n" * 1000))
    body[-8] ^= 0xFF  # its CRC
    server.route("/bad", text(bytes(body), headers={"Content-Encoding": "gzip"}))
    assert "gzip body is corrupt" in failure(url=server.url("/bad"))
    server.route("/cut", text(gzip.compress(b"x 1\n" * 1000)[:40], headers={"Content-Encoding": "gzip"}))
    assert "gzip body ends early" in failure(url=server.url("/cut"))
    server.route("/br", text(b"x", headers={"Content-Encoding": "br"}))
    assert "unsupported Content-Encoding 'br'" in failure(url=server.url("/br"))


def test_oversized_bodies_announced_or_streamed(server: ServingServer) -> None:
    big = b"x 1\n" * 100_000
    server.route("/announced", text(big))
    message = failure(url=server.url("/announced"), max_bytes=100_000)
    assert "400000 bytes, over max_bytes (100000); not read" in message

    def endless(h: Handler) -> None:
        h.start(content_type="text/plain")
        for _ in range(10_000):
            h.write(b"y 2\n" * 1000)
        h.finish_stream()

    server.route("/endless", endless)
    message = failure(url=server.url("/endless"), max_bytes=100_000)
    assert "over max_bytes (100000); reading stopped there" in message


# ---------------------------------------------------------------------------
# Bad text
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("page, line, what", [
    ("ok 1\nbroken{a=\"1\"} notanumber\n", 2, "notanumber"),
    ("# TYPE x histogram\nx_bucket{le=\"1\"} 1\n# TYPE y nosuchtype\ny 1\n", 3, "nosuchtype"),
    ("a 1\nno_value_here\n", 2, "no_value_here"),
])
def test_malformed_text_names_its_line(server: ServingServer, page: str, line: int, what: str) -> None:
    message = failure(url=metrics_route(server, page))
    assert "not valid Prometheus text format" in message and f"line {line}:" in message and what in message
    assert server.url("/metrics") in message


def test_an_invalid_label_name_is_refused_rather_than_served(server: ServingServer) -> None:
    message = failure(url=metrics_route(server, 'a{bad-name="1"} 1\n'))
    assert "invalid label name 'bad-name'" in message


def test_not_utf8_html_and_json_answers(server: ServingServer) -> None:
    server.route("/latin1", text("température 1\n".encode("latin-1")))
    assert "not UTF-8" in failure(url=server.url("/latin1"))
    server.route("/html", text(b"<html>login</html>", content_type="text/html; charset=utf-8"))
    assert "text/html, not the Prometheus text format" in failure(url=server.url("/html"))
    server.route("/json", text(b'{"TTFT":{"value":"0"}}', content_type="application/json"))
    assert "application/json" in failure(url=server.url("/json"))


# ---------------------------------------------------------------------------
# Endpoints that fail
# ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_endpoint_names_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}/metrics"
    message = failure(url=url)
    assert message.startswith(f"GET {url}: connection refused")


def test_http_500_carries_status_and_body_excerpt(server: ServingServer) -> None:
    server.route("/metrics", text(b"Internal Server Error: engine dead\n", status=500))
    message = failure(url=server.url("/metrics"))
    assert "HTTP 500 Internal Server Error: Internal Server Error: engine dead" in message


def test_a_slow_endpoint_is_cut_at_the_timeout(server: ServingServer) -> None:
    server.route("/metrics", lambda h: (h.wait(), h.reply(200, b"late 1\n")))
    message = failure(timeout=0.5, url=server.url("/metrics"))
    assert "timed out" in message and server.url("/metrics") in message


def test_a_dribbling_endpoint_is_cut_at_the_timeout(server: ServingServer) -> None:
    """A byte every 50 ms never trips a socket timeout; the deadline cuts it anyway."""

    def dribble(h: Handler) -> None:
        h.start(content_type="text/plain", chunked=False)
        while not h.server.serving.release.is_set():
            h.write(b"#")
            h.wait(0.05)

    server.route("/metrics", dribble)
    message = failure(timeout=0.5, url=server.url("/metrics"))
    assert "timed out" in message and "reading the answer" in message


def test_redirects_are_followed_without_credentials_to_another_host(server: ServingServer, tmp_path: Path) -> None:
    server.route("/metrics", text(b"", status=307, headers={"Location": "/metrics/"}))
    server.route("/metrics/", text(b"up_here 1\n"))
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    assert one(collect(url=server.url("/metrics"), bearer_token_file=str(token)), "up_here") == 1.0
    assert [r.path for r in server.requests] == ["/metrics", "/metrics/"]
    assert all(r.headers["authorization"] == "Bearer s3cret" for r in server.requests)
    with ServingServer() as other:
        other.route("/m", text(b"elsewhere 1\n"))
        server.route("/away", text(b"", status=302, headers={"Location": other.url("/m").replace("127.0.0.1",
                                                                                                 "localhost")}))
        assert one(collect(url=server.url("/away"), bearer_token_file=str(token)), "elsewhere") == 1.0
        assert "authorization" not in other.requests[-1].headers


def test_endless_or_odd_redirects_end(server: ServingServer) -> None:
    server.route("/loop", text(b"", status=302, headers={"Location": "/loop"}))
    assert "HTTP 302" in failure(url=server.url("/loop"))
    assert len(server.requests) == scrape.MAX_REDIRECTS + 1
    server.route("/ftp", text(b"", status=301, headers={"Location": "ftp://127.0.0.1/metrics"}))
    assert "redirected to ftp://127.0.0.1/metrics, which is not an http or https URL" in failure(url=server.url("/ftp"))
    server.route("/port", text(b"", status=301, headers={"Location": "http://127.0.0.1:port/"}))
    assert "which is not an http or https URL" in failure(url=server.url("/port"))


# ---------------------------------------------------------------------------
# Credentials and headers are sent, never shown
# ---------------------------------------------------------------------------


def test_bearer_token_and_headers_are_sent_and_never_logged(server: ServingServer, tmp_path: Path,
                                                             caplog: Any) -> None:
    caplog.set_level(logging.DEBUG)
    token = tmp_path / "token"
    token.write_text("tok-123\n")
    token.chmod(0o600)
    server.route("/metrics", text(b"denied\n", status=401))
    message = failure(url=server.url("/metrics"), bearer_token_file=str(token), headers={"X-Secret": "hdr-456"})
    got = server.requests[-1].headers
    assert got["authorization"] == "Bearer tok-123" and got["x-secret"] == "hdr-456"
    assert got["user-agent"].startswith("npuagent/")
    shown = message + " ".join(r.getMessage() for r in caplog.records)
    assert "tok-123" not in shown and "hdr-456" not in shown
    token.write_text("tok-789")  # rotated: read again at the next scrape
    server.route("/metrics", text(b"x 1\n"))
    collect(url=server.url("/metrics"), bearer_token_file=str(token))
    assert server.requests[-1].headers["authorization"] == "Bearer tok-789"


def test_a_missing_token_file_is_an_error_of_the_agent_side(tmp_path: Path) -> None:
    c = build(url="http://127.0.0.1:1/metrics", bearer_token_file=str(tmp_path / "nope"))
    with pytest.raises(scrape.ClientConfigError, match=r"cannot read bearer_token_file .*nope: No such file"):
        c.collect()


def test_a_token_file_of_two_lines_is_refused_without_showing_it(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("abc\ndef\n")
    with pytest.raises(scrape.ClientConfigError) as e:
        build(url="http://127.0.0.1:1/metrics", bearer_token_file=str(token)).collect()
    assert "holds more than one line" in str(e.value) and "abc" not in str(e.value)


def test_a_world_readable_token_file_is_warned_about_once(server: ServingServer, tmp_path: Path,
                                                          caplog: Any) -> None:
    token = tmp_path / "token"
    token.write_text("abc")
    token.chmod(0o644)
    c = build(url=metrics_route(server, "x 1\n"), bearer_token_file=str(token))
    c.collect()
    c.collect()
    assert len([r for r in caplog.records if "can be read by every user" in r.getMessage()]) == 1


def test_a_password_in_the_url_is_sent_as_basic_auth_and_masked(server: ServingServer) -> None:
    server.route("/metrics", text(b"nope\n", status=403))
    url = server.url("/metrics").replace("http://", "http://ops:pa55word@")
    message = failure(url=url)
    assert "pa55word" not in message and "ops:***@127.0.0.1" in message
    assert server.requests[-1].headers["authorization"] == "Basic b3BzOnBhNTV3b3Jk"


# ---------------------------------------------------------------------------
# TLS (MindIE serves https by default, with certificates for a host name)
# ---------------------------------------------------------------------------


needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: Any) -> Any:
    return make_certs(tmp_path_factory.mktemp("certs"))


@needs_openssl
def test_https_with_ca_file_and_server_name(certs: Any) -> None:
    with ServingServer(tls=certs.server_context()) as s:
        s.route("/metrics", text(expo.mindie().encode()))
        got = collect(url=s.url("/metrics"), ca_file=str(certs.ca), server_name="mindie-server")
        assert one(got, "npu_cache_usage_perc") == 0.97
        # the certificate names mindie-server, not 127.0.0.1
        message = failure(url=s.url("/metrics"), ca_file=str(certs.ca))
        assert "certificate is not trusted" in message and "server_name" in message
        # not signed by a CA the system trusts
        assert "certificate is not trusted" in failure(url=s.url("/metrics"))
        assert collect(url=s.url("/metrics"), insecure_skip_verify=True)


@needs_openssl
def test_mutual_tls_with_a_client_certificate(certs: Any) -> None:
    with ServingServer(tls=certs.server_context(require_client=True)) as s:
        s.route("/metrics", text(b"mtls_ok 1\n"))
        opts = {"url": s.url("/metrics"), "ca_file": str(certs.ca), "server_name": "mindie-server"}
        got = collect(cert_file=str(certs.client_cert), key_file=str(certs.client_key), **opts)
        assert one(got, "mtls_ok") == 1.0
        assert failure(**opts)  # refused without a client certificate: an error, whatever the TLS stack says


@needs_openssl
def test_tls_files_missing_and_scheme_mismatches(certs: Any, tmp_path: Path) -> None:
    c = build(url="https://127.0.0.1:1/metrics", ca_file=str(tmp_path / "missing.pem"))
    with pytest.raises(scrape.ClientConfigError, match="cannot read ca_file"):
        c.collect()
    with ServingServer() as plain:
        plain.route("/metrics", text(b"x 1\n"))
        assert "use http://" in failure(url=plain.url("/metrics", scheme="https"), insecure_skip_verify=True)
    with ServingServer(tls=certs.server_context()) as s:
        assert "want https" in failure(url=s.url("/metrics", scheme="http"))


# ---------------------------------------------------------------------------
# Configuration and the running agent
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("raw, message", [
    ({}, 'missing required key "url"'),
    ({"url": "ftp://x/metrics"}, "http:// or https:// URL"),
    ({"url": "http://h:port/metrics"}, "not a valid URL"),
    ({"url": "http://u:secret@h:port/"}, "u:***@h"),
    ({"url": "http://h/metrics", "keep": ["("]}, "not a valid regular expression"),
    ({"url": "http://h/metrics", "headers": {"Bad Header": "x"}}, "not a valid name"),
    ({"url": "http://h/metrics", "headers": {"X-Key": "secret\r\nInjected: 1"}}, "a header value (one line)"),
    ({"url": "http://h/metrics", "timeout": "1s"}, "unknown key"),  # the agent's key, not this type's
])
def test_options_are_checked_when_the_configuration_is_read(raw: Dict[str, Any], message: str) -> None:
    _values, errors = validate_table(raw, scrape.npuagent_collector_types()[0].options)
    assert errors and message in str(errors)
    assert "secret" not in str(errors)


def agent_with(tmp_path: Path, body: str) -> Agent:
    plugins = make_plugins(builtins=True)
    (tmp_path / "a.toml").write_text(body)
    clock = FakeClock()
    return Agent(config.build(config.read_sources(str(tmp_path / "a.toml"), strict=False), plugins), plugins,
                 clock=clock, notifier=Notifier(clock.monotonic))


def step_until(agent: Agent, condition: Any) -> None:
    """Run the loop (really waiting for the collectors' workers) until ``condition()`` holds."""
    deadline = time.monotonic() + OUTER
    agent.step()
    while not condition():
        assert time.monotonic() < deadline, "the collection did not finish"
        time.sleep(0.005)
        agent.step()


def test_the_agent_serves_scraped_series_and_counts_a_failed_scrape(server: ServingServer, tmp_path: Path) -> None:
    url = metrics_route(server, expo.vllm())
    agent = agent_with(tmp_path, f'[collectors.vllm]\ntype = "scrape"\nurl = "{url}"\nlabels = {{ app = "vllm" }}\n'
                                 '[collectors.host]\nenabled = false\n')
    health = agent.runners["vllm"].health
    step_until(agent, lambda: health.up == 1)
    page = generate_latest(registry_for(agent)).decode()
    assert 'vllm:time_to_first_token_seconds_bucket{app="vllm",engine="0",le="0.1",model_name="qwen3-8b"} 4.0' \
        in page
    assert "# TYPE scrape_duration_seconds gauge" in page
    assert 'npuagent_collector_up{collector="vllm"} 1.0' in page
    server.route("/metrics", text(b"bad line\n"))
    agent.clock.advance(15)
    step_until(agent, lambda: health.errors == 1)
    page = generate_latest(registry_for(agent)).decode()
    assert 'npuagent_collector_up{collector="vllm"} 0.0' in page
    assert "vllm:num_requests_running" not in page  # the last good scrape is not served as fresh
    assert "not valid Prometheus text format" in agent.runners["vllm"].health.last_error


def test_a_rule_on_mindie_kv_usage_passes_check_beside_the_npu_collector(tmp_path: Path) -> None:
    """npu_cache_usage_perc shares the npu_ family of the Ascend collector's names: declared here, so
    `npuagent check` does not take it for a misspelling."""
    from npuagent.rules import compile_rules

    plugins = make_plugins(builtins=True)
    (tmp_path / "a.toml").write_text('[[rules]]\nname = "kv"\ntype = "threshold"\nmetric = "npu_cache_usage_perc"\n'
                                     "above = 0.95\n")
    cfg = config.build(config.read_sources(str(tmp_path / "a.toml"), strict=False), plugins)
    declared = {m.name: m for _p, kind in plugins.collector_types().values() for m in kind.metrics}
    declared["npu_temperature_celsius"] = None  # what the Ascend collector declares, whether installed or not
    assert [r.name for r in compile_rules(cfg, plugins, declared)] == ["kv"]


def test_registered_as_a_builtin_not_enabled_by_default() -> None:
    types = make_plugins(builtins=True).collector_types()
    plugin, ct = types["scrape"]
    assert plugin == "scrape" and not ct.enabled_by_default
    assert {m.name for m in ct.metrics} >= {"scrape_duration_seconds", "scrape_samples_scraped"}
    assert all(m.help for m in ct.metrics)
