"""The ``probe`` collector: a canary request to an OpenAI-compatible endpoint, timed as a user sees it.

::

    [collectors.canary]
    type = "probe"
    url = "http://127.0.0.1:8000/v1/chat/completions"   # or .../v1/completions; MindIE: port 1025
    interval = "30s"                                     # one request per interval, never two at once
    timeout = "20s"                                      # a stream still open then is cut: a timeout
    expect = "(?i)ok"                                    # optional: the answer must match
    labels = { app = "vllm" }

A server's ``/health`` can say 200 while generation is broken (vLLM's does); the only proof that it
serves is an answer. Each collection sends one streamed request (``stream = false`` for a plain one) and
returns what a user would have seen:

* ``probe_success`` 1 when the answer came whole and passed its checks, else 0;
* ``probe_duration_seconds``: from sending to ``data: [DONE]`` (or to the failure);
* ``probe_ttft_seconds``: to the first chunk with text, not the first chunk: vLLM and MindIE both open
  with a role-only chunk (``"content": ""``). Reasoning text (``reasoning_content``, or ``reasoning`` in
  newer vLLM) counts, as a user sees it arrive;
* ``probe_tpot_seconds``: (last text - first text) / (tokens - 1), with the server's
  ``usage.completion_tokens`` (asked with ``stream_options.include_usage``; MindIE puts it in its last
  content chunk) or, without usage, the chunks that carried text;
* ``probe_output_tokens``: those tokens; ``probe_http_status_code`` (0 without an answer);
* ``probe_errors_total{kind}``: failed probes by kind, every kind present from the start at 0 so that
  ``increase()`` sees the first one: ``connect`` (refused, reset, unresolvable), ``tls``, ``timeout``,
  ``http`` (a status other than 200), ``api_error`` (an error object in the answer, also mid-stream after
  the 200), ``truncated`` (the stream ended before ``[DONE]``: a dead engine), ``protocol`` (a stream
  event that is not JSON, an oversized answer), ``empty`` (no answer text: the "suspected bad output"
  case) and ``mismatch`` (``expect`` did not match).

Every series carries ``probe`` (the collector's name) and the extra ``labels``. A failed probe is also an
event, ``probe_failed`` with labels ``probe`` and ``kind`` and the reason as its message, for ``event``
rules ("3 empty answers in 10 minutes").

Decisions, and why:

* **A failed probe is a measurement, not a collector error** (as blackbox_exporter's ``probe_success``):
  the rule "the canary failed twice" reads ``probe_success``. Only what is wrong on the agent's side (an
  API key file it cannot read, a TLS file missing) raises and makes the collection fail, so that a
  broken configuration is not reported as a broken server.
* **Bounded**: one request per ``interval`` (the agent never starts one while the last runs), at most
  ``max_tokens`` tokens (16 by default: a ``length`` finish is normal), ``temperature`` 0, and the
  collector's ``timeout``, enforced by a timer that shuts the socket: a stream that stalls after its
  first chunk, or drips keep-alive comments, is cut at the deadline and reported as ``timeout``.
* **Stream parsing follows server-sent events**: ``data:`` lines (several joined), comments and other
  fields ignored, events ended by a blank line. A ``data:`` payload that is not JSON fails the probe
  (``protocol``), as it fails the OpenAI client a user runs. Errors come in the shapes vLLM has used:
  ``{"error": {...}}``, flat ``{"object": "error", "message": ...}``, and ``{"error": "Unauthorized"}``.
* **An empty answer** is one whose ``content`` (chat) or ``text`` (completions) is empty or blank when
  ``[DONE]`` arrives. A reasoning model that spends ``max_tokens`` thinking gives one: the message says
  so; raise ``max_tokens``, turn thinking off through ``extra_body`` (``{ chat_template_kwargs = {
  enable_thinking = false } }`` with Qwen3-style templates), or set ``accept_reasoning = true``.
* **The model** is ``model``, or else the first ``id`` of ``/v1/models`` beside the URL, asked once and
  again after a 404. ``stream_options`` is left out for good after a 400/422 that names it (a server that
  does not know it), and that probe is sent again at once.
* **Secrets**: ``api_key_env`` or ``api_key_file`` (read at every probe; never logged), sent as
  ``Authorization: Bearer``; header values are never shown.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional
from urllib.parse import urlsplit, urlunsplit

from npuagent import hookimpl
from npuagent.builtin.host import Regex
from npuagent.builtin.scrape import (
    CLIENT_OPTIONS,
    ClientConfigError,
    Endpoint,
    Exchange,
    HttpError,
    Url,
    read_body,
    read_secret,
    time_budget,
)
from npuagent.context import PluginContext
from npuagent.model import Collected, CollectorType, Event, MetricSpec, Sample
from npuagent.options import REQUIRED, Boolean, Integer, OneOf, Option, OptionError, String, ValueType

#: Why a probe failed, in ``probe_errors_total{kind}`` and the ``probe_failed`` event.
KINDS = ("connect", "tls", "timeout", "http", "api_error", "truncated", "protocol", "empty", "mismatch")

DEFAULT_PROMPT = "Reply with the single word OK."
EVENT_KIND = "probe_failed"


class JsonTable(ValueType):
    """A TOML table sent as JSON (``extra_body``)."""

    description = "a table"

    def convert(self, value: Any) -> Mapping[str, Any]:
        if not isinstance(value, dict):
            raise self.wrong(value)
        try:
            json.dumps(value)
        except (TypeError, ValueError) as e:
            raise OptionError(f"cannot be sent as JSON: {e}") from None
        return value


def _thaw(value: Any) -> Any:
    """The configuration's read-only mappings and tuples back to what json.dumps takes."""
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_thaw(v) for v in value]
    return value


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def api_error(obj: Any) -> Optional[str]:
    """The message of an OpenAI-style error object, in any shape vLLM and MindIE use; None when ``obj`` is
    not one."""
    if not isinstance(obj, dict):
        return None
    err = obj.get("error")
    if isinstance(err, dict):
        message = _text(err.get("message")) or json.dumps(err)[:200]
        code = err.get("type") or err.get("code")
        return f"{message} ({code})" if code and str(code) not in message else message
    if isinstance(err, str) and err:
        return err
    if obj.get("object") == "error":
        return _text(obj.get("message")) or json.dumps(obj)[:200]
    return None


class ProbeFailure(Exception):
    """Why one probe failed: ``kind`` (one of :data:`KINDS`) and what happened."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class Answer:
    """What the chunks of one answer add up to: its text, when text came, tokens, and how it finished."""

    def __init__(self, sent: float) -> None:
        self.sent = sent
        self.content = ""
        self.reasoning = ""
        self.first: Optional[float] = None
        self.last: Optional[float] = None
        self.chunks = 0
        self.text_chunks = 0
        self.usage_tokens: Optional[int] = None
        self.finish_reason = ""
        self.done = False

    def add(self, obj: Mapping[str, Any], now: float) -> None:
        """One chunk (or the whole answer of a plain request). Unknown shapes add nothing: servers differ
        in what else they send, and only the text and its timing matter here."""
        self.chunks += 1
        usage = obj.get("usage")
        if isinstance(usage, dict):  # vLLM: a last chunk of its own; MindIE: the chunk with finish_reason
            tokens = usage.get("completion_tokens")
            if isinstance(tokens, int) and not isinstance(tokens, bool):
                self.usage_tokens = tokens
        choices = obj.get("choices")
        if not isinstance(choices, list):
            return
        got = False
        for choice in choices:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            for part in (choice.get("delta"), choice.get("message")):
                if isinstance(part, dict):
                    content = _text(part.get("content"))
                    reasoning = _text(part.get("reasoning_content")) or _text(part.get("reasoning"))
                    self.content += content
                    self.reasoning += reasoning
                    got = got or bool(content or reasoning)
            text = _text(choice.get("text"))  # completions
            self.content += text
            got = got or bool(text)
            reason = choice.get("finish_reason")
            if isinstance(reason, str) and reason:
                self.finish_reason = reason
        if got:
            if self.first is None:
                self.first = now
            self.last = now
            self.text_chunks += 1

    @property
    def tokens(self) -> int:
        return self.usage_tokens if self.usage_tokens is not None else self.text_chunks

    def state(self) -> str:
        """Where the answer had got to, for a failure's message."""
        if not self.chunks:
            return "before any chunk"
        first = f", first text at {self.first - self.sent:.3g}s" if self.first is not None else ", no text yet"
        return f"after {self.chunks} chunk(s){first}"


@dataclass
class Outcome:
    """One probe, as reported."""

    kind: str = ""
    message: str = ""
    status: int = 0
    duration: float = 0.0
    ttft: Optional[float] = None
    tpot: Optional[float] = None
    tokens: Optional[int] = None
    finish_reason: str = ""
    retry: bool = False


class Probe:
    """One canary endpoint, asked once per collection."""

    def __init__(self, ctx: PluginContext) -> None:
        o = ctx.options
        self.ctx = ctx
        self.url: str = o["url"]
        parts = urlsplit(self.url)
        path = parts.path.rstrip("/")
        suffix = next((s for s in ("/chat/completions", "/completions") if path.endswith(s)), None)
        self.api: str = o["api"] or ("chat" if suffix == "/chat/completions" else "completions" if suffix else "")
        if not self.api:
            raise ValueError('api: cannot tell from the url whether it is a chat or a completions endpoint; '
                             'set api = "chat" or "completions"')
        self.models_url = urlunsplit(parts._replace(path=path[: -len(suffix)] + "/models", query="")) \
            if suffix else None
        self.model: str = o["model"]
        if not self.model and self.models_url is None:
            raise ValueError("model: required when the url does not end in /chat/completions or /completions "
                             "(the model cannot be looked up in /v1/models)")
        self.discovered: Optional[str] = None
        self.prompt: str = o["prompt"]
        self.max_tokens: int = o["max_tokens"]
        self.stream: bool = o["stream"]
        self.stream_options: bool = o["include_usage"]
        self.extra_body: Dict[str, Any] = _thaw(o["extra_body"])
        self.expect: Optional[re.Pattern] = re.compile(o["expect"]) if o["expect"] else None
        self.accept_reasoning: bool = o["accept_reasoning"]
        self.max_bytes: int = o["max_bytes"]
        extra = dict(o["labels"])
        for reserved in ("probe", "kind"):
            if reserved in extra:
                raise ValueError(f'labels: "{reserved}" is set by the probe itself')
        self.labels = {"probe": ctx.name, **extra}
        if o["api_key_env"] and o["api_key_file"]:
            raise ValueError("api_key_env and api_key_file: give one of them")
        self._warned: set = set()
        self.key_env: str = o["api_key_env"]
        self.key_file: str = o["api_key_file"]
        self.endpoint = Endpoint(self.url, o, self._api_key)
        self.errors: Counter = Counter()
        self._last_kind: Optional[str] = None

    def _api_key(self) -> Optional[str]:
        if self.key_file:
            return read_secret(self.key_file, "api_key_file", self._warned)
        if self.key_env:
            key = os.environ.get(self.key_env, "").strip()
            if not key:
                raise ClientConfigError(f"api_key_env: the environment variable {self.key_env} is not set "
                                        f"in the agent's environment")
            if any(c in key for c in "\r\n"):
                raise ClientConfigError(f"api_key_env: the environment variable {self.key_env} holds more than "
                                        f"one line")
            return key
        return None

    # -- one collection ----------------------------------------------------------------------------

    def collect(self) -> List[Collected]:
        deadline = time.monotonic() + time_budget(self.ctx)
        outcome = self._attempt(deadline)
        if outcome.retry and deadline > time.monotonic():
            outcome = self._attempt(deadline)
        labels = self.labels
        out: List[Collected] = [
            Sample("probe_success", labels, 0.0 if outcome.kind else 1.0),
            Sample("probe_duration_seconds", labels, outcome.duration),
            Sample("probe_http_status_code", labels, float(outcome.status)),
        ]
        for name, value in (("probe_ttft_seconds", outcome.ttft), ("probe_tpot_seconds", outcome.tpot),
                            ("probe_output_tokens", outcome.tokens)):
            if value is not None:
                out.append(Sample(name, labels, float(value)))
        if outcome.kind:
            self.errors[outcome.kind] += 1
            out.append(Event(EVENT_KIND, {**labels, "kind": outcome.kind}, outcome.message))
        out.extend(Sample("probe_errors_total", {**labels, "kind": kind}, float(self.errors[kind])) for kind in KINDS)
        self._log(outcome)
        return out

    def _log(self, outcome: Outcome) -> None:
        log = self.ctx.log
        if outcome.kind:
            if outcome.kind != self._last_kind:
                log.warning("probe %s failed (%s): %s", self.ctx.name, outcome.kind, outcome.message)
            else:
                log.debug("probe %s failed again (%s): %s", self.ctx.name, outcome.kind, outcome.message)
        elif self._last_kind:
            log.info("probe %s answers again (%.3gs)", self.ctx.name, outcome.duration)
        self._last_kind = outcome.kind or None

    def _attempt(self, deadline: float) -> Outcome:
        outcome = Outcome()
        started = time.monotonic()
        answer: Optional[Answer] = None
        try:
            model = self._model(deadline)
            answer = Answer(time.monotonic())
            headers = {"Content-Type": "application/json",
                       "Accept": "text/event-stream" if self.stream else "application/json"}
            with self.endpoint.request("POST", self.url, deadline, self._body(model), headers) as ex:
                outcome.status = ex.status
                if ex.status != 200:
                    self._refused(ex, outcome)
                try:
                    if self.stream and not ex.header("Content-Type").lower().startswith("application/json"):
                        self._read_stream(ex, answer)
                    else:
                        self._read_whole(ex, answer)
                except HttpError as e:
                    raise ProbeFailure(_kind(e), f"{e} ({answer.state()})") from None
            self._check(ex, answer)
        except HttpError as e:
            outcome.kind, outcome.message = _kind(e), str(e)
        except ProbeFailure as e:
            outcome.kind, outcome.message = e.kind, str(e)
        outcome.duration = time.monotonic() - (answer.sent if answer is not None else started)
        if answer is not None and answer.done:
            outcome.tokens = answer.tokens
            outcome.finish_reason = answer.finish_reason
            if self.stream and answer.first is not None:
                outcome.ttft = answer.first - answer.sent
                # measurable only when text came in two chunks or more: one chunk has no pace
                if answer.tokens >= 2 and answer.text_chunks >= 2 and answer.last is not None:
                    outcome.tpot = (answer.last - answer.first) / (answer.tokens - 1)
        return outcome

    def _body(self, model: str) -> bytes:
        body: Dict[str, Any] = {"model": model, "max_tokens": self.max_tokens, "temperature": 0,
                                "stream": self.stream}
        if self.api == "chat":
            body["messages"] = [{"role": "user", "content": self.prompt}]
        else:
            body["prompt"] = self.prompt
        if self.stream and self.stream_options:
            body["stream_options"] = {"include_usage": True}
        body.update(self.extra_body)
        return json.dumps(body).encode()

    def _model(self, deadline: float) -> str:
        if self.model:
            return self.model
        if self.discovered:
            return self.discovered
        assert self.models_url is not None
        with self.endpoint.request("GET", self.models_url, deadline, headers={"Accept": "application/json"}) as ex:
            if ex.status != 200:
                raise ProbeFailure("http", f"{ex.shown}: HTTP {ex.status} {ex.reason} while looking up the model: "
                                           f"{_error_text(ex)} (or set model)")
            body = read_body(ex, self.max_bytes)
        try:
            first = json.loads(body)["data"][0]["id"]
            if not isinstance(first, str) or not first:
                raise TypeError("not a name")
        except (ValueError, KeyError, IndexError, TypeError):
            raise ProbeFailure("protocol", f"{ex.shown}: no model id in the answer (set model)") from None
        self.discovered = first
        self.ctx.log.info("probe %s: asking model %r, the first that %s lists", self.ctx.name, first, ex.shown)
        return first

    def _refused(self, ex: Exchange, outcome: Outcome) -> None:
        """A status other than 200: fail with the server's own error message."""
        message = _error_text(ex)
        if ex.status == 404 and self.discovered:
            self.discovered = None  # the model list changed (a reload under another name): ask again next time
        if ex.status in (400, 422) and self.stream_options and "stream_options" in message:
            self.stream_options = False
            outcome.retry = True
            self.ctx.log.warning("probe %s: the server refuses stream_options; asking without it from now on "
                                 "(the token count of TPOT then comes from the chunks)", self.ctx.name)
        raise ProbeFailure("http", f"{ex.shown}: HTTP {ex.status} {ex.reason}" + (f": {message}" if message else ""))

    def _read_stream(self, ex: Exchange, answer: Answer) -> None:
        """Server-sent events up to ``data: [DONE]``."""
        total = 0
        data: List[str] = []
        while not answer.done:
            raw = ex.readline(self.max_bytes + 1)
            if not raw:
                if data:  # a last event without its blank line
                    self._event("\n".join(data), ex, answer)
                break
            total += len(raw)
            if total > self.max_bytes:
                raise ProbeFailure("protocol", f"{ex.shown}: the answer is over max_bytes ({self.max_bytes}) "
                                               f"({answer.state()})")
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if not line:
                if data:
                    self._event("\n".join(data), ex, answer)
                    data = []
                continue
            if line.startswith(":"):
                continue  # a comment: keep-alive
            field, _, value = line.partition(":")
            if field == "data":
                data.append(value[1:] if value.startswith(" ") else value)
        if not answer.done:
            raise ProbeFailure("truncated", f"{ex.shown}: the stream ended without data: [DONE] ({answer.state()})")

    def _event(self, payload: str, ex: Exchange, answer: Answer) -> None:
        now = time.monotonic()
        if payload.strip() == "[DONE]":
            answer.done = True
            return
        try:
            obj = json.loads(payload)
        except ValueError:
            shown = payload if len(payload) <= 80 else payload[:77] + "..."
            raise ProbeFailure("protocol", f"{ex.shown}: a stream event is not JSON: {shown!r} "
                                           f"({answer.state()})") from None
        message = api_error(obj)
        if message is not None:
            raise ProbeFailure("api_error", f"{ex.shown}: the server reported an error in the stream: {message} "
                                            f"({answer.state()})")
        if isinstance(obj, dict):
            answer.add(obj, now)

    def _read_whole(self, ex: Exchange, answer: Answer) -> None:
        """A plain JSON answer (``stream = false``, or a server that would not stream)."""
        try:
            body = read_body(ex, self.max_bytes)
        except HttpError as e:
            raise ProbeFailure(_kind(e), str(e)) from None
        try:
            obj = json.loads(body)
        except ValueError:
            raise ProbeFailure("protocol", f"{ex.shown}: the answer is not JSON") from None
        message = api_error(obj)
        if message is not None:
            raise ProbeFailure("api_error", f"{ex.shown}: the server reported an error: {message}")
        if not isinstance(obj, dict):
            raise ProbeFailure("protocol", f"{ex.shown}: the answer is not a JSON object")
        answer.add(obj, time.monotonic())
        answer.done = True

    def _check(self, ex: Exchange, answer: Answer) -> None:
        """The answer came whole: is there an answer in it, and the expected one?"""
        text = answer.content or (answer.reasoning if self.accept_reasoning else "")
        finish = f"finish_reason {answer.finish_reason or 'none'}, {answer.tokens} token(s)"
        if not text.strip():
            hint = ""
            if answer.reasoning.strip() and not self.accept_reasoning:
                hint = (f"; {len(answer.reasoning)} characters of reasoning but no answer: raise max_tokens, turn "
                        f"thinking off through extra_body, or set accept_reasoning = true")
            raise ProbeFailure("empty", f"{ex.shown}: empty answer ({finish}{hint})")
        if self.expect is not None and not self.expect.search(text):
            shown = text if len(text) <= 100 else text[:97] + "..."
            raise ProbeFailure("mismatch", f"{ex.shown}: the answer does not match expect "
                                           f"{self.expect.pattern!r}: {shown!r} ({finish})")

    def close(self) -> None:
        pass


def _kind(e: HttpError) -> str:
    return e.kind if e.kind in KINDS else "protocol"


def _error_text(ex: Exchange) -> str:
    """The server's error message from a refused request's body, or the body's start."""
    try:
        body = read_body(ex, 65536)
    except HttpError:
        return ""
    try:
        message = api_error(json.loads(body))
    except ValueError:
        message = None
    text = message if message is not None else body.decode("utf-8", "replace")
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:297] + "..."


# ---------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------

OPTIONS = [
    Option("url", Url(), REQUIRED,
           'The endpoint: "http://127.0.0.1:8000/v1/chat/completions" (vLLM), ".../v1/completions", or MindIE\'s '
           "business port (1025)."),
    Option("api", OneOf("chat", "completions"), None,
           "The request's shape; default: from the url (…/chat/completions or …/completions)."),
    Option("model", String(), "", "The model to ask; empty: the first that /v1/models beside the url lists."),
    Option("prompt", String(r"(?s).*\S.*", "a non-empty prompt"), DEFAULT_PROMPT, "What to ask."),
    Option("max_tokens", Integer(min=1), 16, "The most tokens the answer may have."),
    Option("stream", Boolean(), True,
           "Stream the answer (true: TTFT and TPOT are measured as a streaming user sees them)."),
    Option("include_usage", Boolean(), True,
           "Ask for the token count (stream_options.include_usage); dropped by itself if the server refuses it."),
    Option("extra_body", JsonTable(), {},
           "Added to the request's JSON, e.g. { chat_template_kwargs = { enable_thinking = false } }."),
    Option("expect", Regex(), "", "A regular expression the answer must contain (searched); empty: any answer."),
    Option("accept_reasoning", Boolean(), False,
           "Count reasoning text (reasoning_content) as an answer when the content is empty."),
    Option("api_key_env", String(r"[A-Za-z_][A-Za-z0-9_]*|", "an environment variable name"), "",
           "An environment variable of the agent holding the API key (Authorization: Bearer); never logged."),
    Option("api_key_file", String(), "", "A file holding the API key, read at every probe; never logged."),
    Option("max_bytes", Integer(min=1024), 1 << 20, "Fail an answer larger than this many bytes."),
    *CLIENT_OPTIONS,
]

METRICS = [
    MetricSpec("probe_success", "gauge", "1 if the latest canary request was answered whole and passed its checks."),
    MetricSpec("probe_duration_seconds", "gauge",
               "Time of the latest canary request, from sending to the end of the answer or the failure."),
    MetricSpec("probe_ttft_seconds", "gauge",
               "Time from sending the latest canary request to its first chunk with text (streamed)."),
    MetricSpec("probe_tpot_seconds", "gauge",
               "Mean time per output token after the first in the latest canary answer (streamed)."),
    MetricSpec("probe_output_tokens", "gauge", "Tokens in the latest canary answer (the server's usage count, "
                                               "else the chunks that carried text)."),
    MetricSpec("probe_http_status_code", "gauge", "HTTP status of the latest canary request; 0 without an answer."),
    MetricSpec("probe_errors_total", "counter",
               "Failed canary requests by kind: " + ", ".join(KINDS) + "."),
]


def make_probe(ctx: PluginContext) -> Probe:
    return Probe(ctx)


@hookimpl
def npuagent_collector_types() -> List[CollectorType]:
    """``probe``: one per endpoint, each in its own ``[collectors.<name>]`` table with ``type = "probe"``."""
    return [CollectorType(
        name="probe",
        factory=make_probe,
        options=OPTIONS,
        help="A canary request to an OpenAI-compatible endpoint: success, TTFT, TPOT and failures by kind, "
             "as a user sees them.",
        interval=30.0,
        timeout=20.0,
        enabled_by_default=False,
        metrics=METRICS,
    )]


__all__ = ["KINDS", "Answer", "Probe", "ProbeFailure", "api_error", "npuagent_collector_types"]
