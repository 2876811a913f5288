"""The probe collector against a real OpenAI-compatible test server on 127.0.0.1 that streams as vLLM and MindIE
do (tests/helpers/serving_server.py): role-only first chunks, reasoning fields, usage where each server puts
it, and what goes wrong: 500s, unknown models, errors in the middle of a stream, streams that stall, end
without [DONE], carry lines that are not JSON, or answer nothing.

No assertion is about speed: where the server waits on purpose, a measured time is only checked to include
that wait; a stall is checked to be reported as a timeout, with a generous bound as a safety net.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

from npuagent.builtin import probe, scrape
from npuagent.config import freeze
from npuagent.context import PluginContext
from npuagent.model import Event, Sample
from npuagent.options import validate_table

from .conftest import make_plugins
from .helpers.serving_server import (
    DONE,
    Handler,
    ServingServer,
    mindie_chat,
    models,
    sse,
    stream,
    text,
    vllm_chat,
    vllm_completions,
)

OUTER = 15.0
CHAT = "/v1/chat/completions"


@pytest.fixture
def server() -> Iterator[ServingServer]:
    with ServingServer() as s:
        s.route("/v1/models", models("qwen3-8b", "other"))
        yield s


def build(timeout: float = 5.0, name: str = "canary", **raw: Any) -> probe.Probe:
    ct = probe.npuagent_collector_types()[0]
    values, errors = validate_table(raw, ct.options)
    assert not errors, errors
    # frozen as the configuration hands options over
    return ct.factory(PluginContext(name=name, type="probe", options=freeze(values), timeout=timeout))


class Result:
    """One collection, read by name."""

    def __init__(self, items: List[Any]) -> None:
        self.samples = [i for i in items if isinstance(i, Sample)]
        self.events = [i for i in items if isinstance(i, Event)]

    def get(self, name: str, **labels: str) -> Any:
        found = [s for s in self.samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
        assert len(found) <= 1, found
        return found[0].value if found else None

    @property
    def success(self) -> float:
        return self.get("probe_success")

    def errors(self) -> Dict[str, float]:
        return {s.labels["kind"]: s.value for s in self.samples if s.name == "probe_errors_total"}

    @property
    def kind(self) -> str:
        failed = [k for k, v in self.errors().items() if v]
        return ",".join(failed)

    @property
    def message(self) -> str:
        return self.events[0].message if self.events else ""


def run(p: probe.Probe) -> Result:
    started = time.monotonic()
    got = Result(p.collect())
    assert time.monotonic() - started < OUTER
    return got


def probe_once(server: ServingServer, events: List[bytes], path: str = CHAT, timeout: float = 5.0,
               **raw: Any) -> Result:
    server.route(path, stream(events))
    return run(build(timeout, url=server.url(path), **raw))


# ---------------------------------------------------------------------------
# Answers as vLLM and MindIE stream them
# ---------------------------------------------------------------------------


def test_vllm_stream_ttft_at_the_first_text_not_the_role_chunk(server: ServingServer) -> None:
    events = vllm_chat(["O", "K", ".", " Sure", "!"])
    # the role-only chunk at once, then 0.3 s before the first text
    server.route(CHAT, stream(events, delays=[0.0, 0.3]))
    r = run(build(url=server.url(CHAT)))
    assert r.success == 1.0 and not r.events
    assert r.get("probe_ttft_seconds") >= 0.3
    assert r.get("probe_output_tokens") == 5.0  # usage.completion_tokens of vLLM's last chunk
    assert 0 <= r.get("probe_tpot_seconds") < r.get("probe_duration_seconds")
    assert r.get("probe_duration_seconds") >= r.get("probe_ttft_seconds")
    assert r.get("probe_http_status_code") == 200.0
    assert r.errors() == dict.fromkeys(probe.KINDS, 0.0)  # every kind from the start
    assert all(s.labels["probe"] == "canary" for s in r.samples)


def test_the_request_is_a_bounded_canary_with_the_discovered_model(server: ServingServer) -> None:
    probe_once(server, vllm_chat(["OK"]), max_tokens=8)
    listed, asked = server.requests[-2:]
    assert (listed.method, listed.path) == ("GET", "/v1/models")
    assert asked.headers["content-type"] == "application/json"
    assert asked.headers["accept"] == "text/event-stream"
    assert asked.body == {"model": "qwen3-8b", "max_tokens": 8, "temperature": 0, "stream": True,
                          "messages": [{"role": "user", "content": probe.DEFAULT_PROMPT}],
                          "stream_options": {"include_usage": True}}


def test_the_model_is_looked_up_once_and_again_after_a_404(server: ServingServer) -> None:
    p = build(url=server.url(CHAT))
    server.route(CHAT, stream(vllm_chat(["OK"])))
    run(p)
    run(p)
    assert [r.path for r in server.requests] == ["/v1/models", CHAT, CHAT]
    server.route(CHAT, text(json.dumps({"object": "error", "message": "The model `qwen3-8b` does not exist.",
                                        "type": "NotFoundError", "param": None, "code": 404}).encode(),
                            status=404, content_type="application/json"))
    r = run(p)
    assert r.kind == "http" and r.get("probe_http_status_code") == 404.0
    assert "HTTP 404 Not Found: The model `qwen3-8b` does not exist." in r.message
    server.route("/v1/models", models("qwen3-8b-v2"))
    server.route(CHAT, stream(vllm_chat(["OK"])))
    assert run(p).success == 1.0
    assert server.requests[-1].body["model"] == "qwen3-8b-v2"


def test_mindie_stream_usage_in_the_finish_chunk_and_role_in_every_delta(server: ServingServer) -> None:
    r = probe_once(server, mindie_chat(["Hello", " there", "."]), model="deepseek-r1")
    assert r.success == 1.0
    assert r.get("probe_output_tokens") == 3.0
    assert r.get("probe_ttft_seconds") is not None
    assert server.requests[-1].path == CHAT  # a model given: no lookup


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_reasoning_text_counts_for_ttft_and_the_answer_is_the_content(server: ServingServer, field: str) -> None:
    events = vllm_chat(["OK"], reasoning=["Let", " me", " think"], reasoning_field=field)
    server.route(CHAT, stream(events, delays=[0.0, 0.2, 0.0, 0.0, 0.4]))
    r = run(build(url=server.url(CHAT)))
    assert r.success == 1.0
    ttft = r.get("probe_ttft_seconds")
    assert 0.2 <= ttft < r.get("probe_duration_seconds")  # the first reasoning chunk, not the content after 0.6 s
    assert r.get("probe_output_tokens") == 4.0


def test_mindie_reasoning_that_used_every_token_is_an_empty_answer_unless_accepted(server: ServingServer) -> None:
    events = mindie_chat([""], reasoning=["Okay", ",", " the", " user"], finish="length")
    r = probe_once(server, events, model="deepseek-r1")
    assert r.success == 0.0 and r.kind == "empty"
    assert "finish_reason length" in r.message and "characters of reasoning but no answer" in r.message
    assert r.get("probe_output_tokens") == 5.0 and r.get("probe_ttft_seconds") is not None
    assert probe_once(server, events, model="deepseek-r1", accept_reasoning=True).success == 1.0


def test_an_empty_answer_fails_counts_and_is_an_event(server: ServingServer) -> None:
    p = build(url=server.url(CHAT), labels={"app": "vllm"})
    server.route(CHAT, stream(vllm_chat([])))
    r = run(p)
    assert r.success == 0.0 and r.kind == "empty"
    assert "empty answer (finish_reason stop, 0 token(s))" in r.message
    assert r.get("probe_ttft_seconds") is None and r.get("probe_output_tokens") == 0.0
    [event] = r.events
    assert event.kind == "probe_failed" and dict(event.labels) == {"probe": "canary", "app": "vllm", "kind": "empty"}
    server.route(CHAT, stream(vllm_chat(["  ", "\n"])))  # blank is empty too
    r = run(p)
    assert r.errors()["empty"] == 2.0 and r.get("probe_errors_total", kind="empty", app="vllm") == 2.0


def test_completions_endpoint_text_chunks(server: ServingServer) -> None:
    r = probe_once(server, vllm_completions(["The", " sky", " is"]), path="/v1/completions")
    assert r.success == 1.0 and r.get("probe_output_tokens") == 3.0  # chunks with text: no usage asked here
    body = server.requests[-1].body
    assert body["prompt"] == probe.DEFAULT_PROMPT and "messages" not in body


def test_expect_regex(server: ServingServer) -> None:
    assert probe_once(server, vllm_chat(["Sure, ", "OK"]), expect="(?i)\\bok\\b").success == 1.0
    r = probe_once(server, vllm_chat(["No", " way"]), expect="(?i)\\bok\\b")
    assert r.kind == "mismatch" and "does not match expect '(?i)\\\\bok\\\\b': 'No way'" in r.message


def test_sse_comments_and_other_fields_are_ignored_and_data_lines_joined(server: ServingServer) -> None:
    chunk = {"choices": [{"index": 0, "delta": {"content": "OK"}, "finish_reason": "stop"}]}
    body = json.dumps(chunk)
    events = [b": ping\n\n", b"event: message\nid: 1\nretry: 100\n",
              b"data: " + body[:10].encode() + b"\ndata:" + body[10:].encode() + b"\n\n", DONE]
    r = probe_once(server, events)
    assert r.success == 1.0 and r.get("probe_output_tokens") == 1.0


def test_a_stream_over_http_1_0_ended_by_closing(server: ServingServer) -> None:
    server.route(CHAT, stream(vllm_chat(["OK"]), chunked=False))
    assert run(build(url=server.url(CHAT))).success == 1.0


def test_a_plain_json_answer_with_stream_false(server: ServingServer) -> None:
    answer = {"id": "x", "object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "OK"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}}
    server.route(CHAT, text(json.dumps(answer).encode(), content_type="application/json"))
    r = run(build(url=server.url(CHAT), stream=False))
    assert r.success == 1.0 and r.get("probe_output_tokens") == 2.0
    assert r.get("probe_ttft_seconds") is None and r.get("probe_tpot_seconds") is None
    assert "stream_options" not in server.requests[-1].body and server.requests[-1].body["stream"] is False


def test_a_server_that_answers_a_stream_request_in_one_json(server: ServingServer) -> None:
    """What a user sees: all the text at once; TTFT is then the whole answer's time, and no pace is measurable."""
    answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "OK then"},
                           "finish_reason": "stop"}], "usage": {"completion_tokens": 2}}
    server.route(CHAT, text(json.dumps(answer).encode(), content_type="application/json"))
    r = run(build(url=server.url(CHAT), model="m"))
    assert r.success == 1.0 and r.get("probe_ttft_seconds") is not None and r.get("probe_tpot_seconds") is None


# ---------------------------------------------------------------------------
# Failures
# ---------------------------------------------------------------------------


def test_http_500_with_vllm_error_body(server: ServingServer) -> None:
    err = {"error": {"message": "EngineCore encountered an issue.", "type": "InternalServerError", "param": None,
                     "code": 500}}
    server.route(CHAT, text(json.dumps(err).encode(), status=500, content_type="application/json"))
    r = run(build(url=server.url(CHAT)))
    assert r.success == 0.0 and r.kind == "http" and r.get("probe_http_status_code") == 500.0
    assert "HTTP 500 Internal Server Error: EngineCore encountered an issue. (InternalServerError)" in r.message


def test_401_with_a_bare_error_string(server: ServingServer) -> None:
    server.route(CHAT, text(b'{"error":"Unauthorized"}', status=401, content_type="application/json"))
    r = run(build(url=server.url(CHAT), model="m"))
    assert r.kind == "http" and r.message.endswith("HTTP 401 Unauthorized: Unauthorized")


@pytest.mark.parametrize("error", [
    {"error": {"message": "Engine died", "type": "InternalServerError", "code": 500}},
    {"object": "error", "message": "Engine died", "type": "InternalServerError", "code": 500},  # older vLLM
])
def test_an_error_in_the_middle_of_the_stream(server: ServingServer, error: Dict[str, Any]) -> None:
    events = vllm_chat(["O", "K"], usage=False)[:2] + [sse(error), DONE]
    r = probe_once(server, events)
    assert r.success == 0.0 and r.kind == "api_error"
    assert "error in the stream: Engine died" in r.message and "after 2 chunk(s), first text at" in r.message
    assert r.get("probe_http_status_code") == 200.0


def test_a_data_line_that_is_not_json_fails_as_a_client_would(server: ServingServer) -> None:
    events = vllm_chat(["OK"])
    r = probe_once(server, events[:1] + [b"data: <html>upstream hiccup</html>\n\n"] + events[1:])
    assert r.kind == "protocol" and "a stream event is not JSON: '<html>upstream hiccup</html>'" in r.message


def test_a_stream_that_ends_without_done_is_truncated(server: ServingServer) -> None:
    r = probe_once(server, vllm_chat(["O", "K"])[:3])
    assert r.kind == "truncated" and "ended without data: [DONE] (after 3 chunk(s)" in r.message
    assert r.get("probe_ttft_seconds") is None and r.get("probe_output_tokens") is None


def test_a_stall_mid_stream_is_cut_at_the_deadline(server: ServingServer) -> None:
    events = vllm_chat(["O", "K", "!"])
    server.route(CHAT, stream(events, stall_after=2))
    r = run(build(timeout=0.6, url=server.url(CHAT), model="qwen3-8b"))
    assert r.success == 0.0 and r.kind == "timeout"
    assert "timed out after" in r.message and "reading the answer" in r.message
    assert "after 2 chunk(s), first text at" in r.message


def test_keep_alive_comments_do_not_keep_a_stalled_stream_alive(server: ServingServer) -> None:
    def pings(h: Handler) -> None:
        h.start()
        h.write(vllm_chat(["O"])[0])
        while not h.server.serving.release.is_set():
            h.write(b": ping\n\n")
            h.wait(0.05)

    server.route(CHAT, pings)
    r = run(build(timeout=0.6, url=server.url(CHAT), model="m"))
    assert r.kind == "timeout" and "after 1 chunk(s), no text yet" in r.message


def test_no_answer_at_all_before_the_deadline(server: ServingServer) -> None:
    server.route(CHAT, lambda h: h.wait())
    r = run(build(timeout=0.5, url=server.url(CHAT), model="m"))
    assert r.kind == "timeout" and "waiting for the answer" in r.message
    assert r.get("probe_http_status_code") == 0.0


def test_connection_refused() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = run(build(url=f"http://127.0.0.1:{port}{CHAT}", model="m"))
    assert r.kind == "connect" and "connection refused" in r.message


def test_the_model_lookup_fails_as_a_probe_failure(server: ServingServer) -> None:
    server.route("/v1/models", text(b'{"object":"list","data":[]}', content_type="application/json"))
    r = run(build(url=server.url(CHAT)))
    assert r.kind == "protocol" and "no model id in the answer (set model)" in r.message


def test_an_oversized_answer(server: ServingServer) -> None:
    events = vllm_chat(["x" * 2000] * 10)
    r = probe_once(server, events, max_bytes=4096)
    assert r.kind == "protocol" and "over max_bytes (4096)" in r.message


def test_errors_accumulate_per_kind_and_a_recovery_is_logged(server: ServingServer, caplog: Any) -> None:
    caplog.set_level(logging.INFO)
    p = build(url=server.url(CHAT), model="m")
    server.route(CHAT, text(b"busy", status=503))
    run(p)
    r = run(p)
    assert r.errors()["http"] == 2.0 and sum(r.errors().values()) == 2.0
    server.route(CHAT, stream(vllm_chat(["OK"])))
    r = run(p)
    assert r.success == 1.0 and r.errors()["http"] == 2.0
    messages = [rec.getMessage() for rec in caplog.records]
    assert len([m for m in messages if "failed (http)" in m]) == 1  # warned once per streak
    assert any("answers again" in m for m in messages)


def test_a_server_that_refuses_stream_options_is_asked_without_them(server: ServingServer) -> None:
    def strict(h: Handler) -> None:
        if "stream_options" in (h.server.serving.requests[-1].body or {}):
            h.reply(422, b'{"detail":[{"loc":["body","stream_options"],"msg":"extra fields not permitted"}]}',
                    "application/json")
        else:
            stream(mindie_chat(["OK"]))(h)

    server.route(CHAT, strict)
    p = build(url=server.url(CHAT), model="m")
    assert run(p).success == 1.0  # retried at once
    assert run(p).success == 1.0
    assert ["stream_options" in r.body for r in server.requests] == [True, False, False]


# ---------------------------------------------------------------------------
# Credentials, options
# ---------------------------------------------------------------------------


def test_api_key_from_env_or_file_sent_and_never_logged(server: ServingServer, tmp_path: Path, caplog: Any,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("TEST_VLLM_KEY", "sk-env-1")
    server.route(CHAT, text(b'{"error":"Unauthorized"}', status=401, content_type="application/json"))
    r = run(build(url=server.url(CHAT), api_key_env="TEST_VLLM_KEY", headers={"X-Team": "t-9"}))
    assert [q.headers.get("authorization") for q in server.requests] == ["Bearer sk-env-1"] * 2  # models too
    assert server.requests[-1].headers["x-team"] == "t-9"
    key = tmp_path / "key"
    key.write_text("sk-file-2\n")
    key.chmod(0o600)
    r2 = run(build(url=server.url(CHAT), model="m", api_key_file=str(key)))
    assert server.requests[-1].headers["authorization"] == "Bearer sk-file-2"
    shown = r.message + r2.message + " ".join(rec.getMessage() for rec in caplog.records)
    assert "sk-env-1" not in shown and "sk-file-2" not in shown and "t-9" not in shown


def test_a_missing_key_is_the_agent_side_and_fails_the_collection(server: ServingServer, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_VLLM_KEY", raising=False)
    with pytest.raises(scrape.ClientConfigError, match="TEST_VLLM_KEY is not set"):
        build(url=server.url(CHAT), model="m", api_key_env="TEST_VLLM_KEY").collect()
    with pytest.raises(scrape.ClientConfigError, match="cannot read api_key_file"):
        build(url=server.url(CHAT), model="m", api_key_file=str(tmp_path / "none")).collect()


def test_extra_body_is_merged_into_the_request(server: ServingServer) -> None:
    probe_once(server, vllm_chat(["OK"]), model="m", extra_body={"chat_template_kwargs": {"enable_thinking": False},
                                                                  "temperature": 0.1, "stop": ["\n"]})
    body = server.requests[-1].body
    assert body["chat_template_kwargs"] == {"enable_thinking": False}
    assert body["temperature"] == 0.1 and body["stop"] == ["\n"]


@pytest.mark.parametrize("raw, message", [
    ({"url": "http://h/v1/generate"}, "api: cannot tell"),
    ({"url": "http://h/generate", "api": "chat"}, "model: required"),
    ({"url": "http://h/v1/chat/completions", "api_key_env": "A", "api_key_file": "/k"}, "give one of them"),
    ({"url": "http://h/v1/chat/completions", "labels": {"kind": "x"}}, '"kind" is set by the probe'),
])
def test_factory_refuses_what_cannot_work(raw: Dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build(**raw)


@pytest.mark.parametrize("raw, message", [
    ({"url": "http://h/v1/chat/completions", "max_tokens": 0}, "max_tokens"),
    ({"url": "http://h/v1/chat/completions", "prompt": "  "}, "a non-empty prompt"),
    ({"url": "http://h/v1/chat/completions", "expect": "(["}, "not a valid regular expression"),
    ({"url": "http://h/v1/chat/completions", "api": "embeddings"}, "one of"),
    ({"url": "http://h/v1/chat/completions", "api_key_env": "1BAD"}, "an environment variable name"),
])
def test_options_are_checked_when_the_configuration_is_read(raw: Dict[str, Any], message: str) -> None:
    _values, errors = validate_table(raw, probe.npuagent_collector_types()[0].options)
    assert errors and message in str(errors)


def test_api_error_shapes() -> None:
    assert probe.api_error({"error": {"message": "bad", "type": "BadRequestError", "code": 400}}) == \
        "bad (BadRequestError)"
    assert probe.api_error({"object": "error", "message": "gone", "code": 404}) == "gone"
    assert probe.api_error({"error": "Unauthorized"}) == "Unauthorized"
    assert probe.api_error({"choices": []}) is None and probe.api_error([1]) is None


def test_registered_as_a_builtin_not_enabled_by_default() -> None:
    plugin, ct = make_plugins(builtins=True).collector_types()["probe"]
    assert plugin == "probe" and not ct.enabled_by_default
    declared = {m.name for m in ct.metrics}
    assert declared == {"probe_success", "probe_duration_seconds", "probe_ttft_seconds", "probe_tpot_seconds",
                        "probe_output_tokens", "probe_http_status_code", "probe_errors_total"}
    assert all(m.help for m in ct.metrics)
    assert math.isclose(ct.interval, 30.0)
