"""A real HTTP server on 127.0.0.1 that plays an inference server: ``/metrics`` and OpenAI-compatible endpoints.

A test sets what each path answers with :meth:`ServingServer.route` and a function of the request
handler; the handler's helpers write whole answers, chunked streams (as uvicorn sends vLLM's) or
close-delimited ones (HTTP/1.0 style), slowly, or not at all (a stall that ends when the server stops, so a
test never leaves a thread behind). Every request is recorded (path, headers, JSON body).

The chunk builders write what vLLM and MindIE send (shared/reference/serving-metrics.md §4): vLLM opens with
a role-only chunk and sends usage in a last chunk of its own with ``"choices": []``; MindIE repeats
``"role": "assistant"`` in every delta and puts usage in the chunk with ``finish_reason``.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

DONE = b"data: [DONE]\n\n"


def sse(obj: Any) -> bytes:
    """One server-sent event holding ``obj`` as JSON, as vLLM frames it."""
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


@dataclass
class Recorded:
    method: str
    path: str
    headers: Dict[str, str]
    body: Any


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _dispatch(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw
        path = self.path.split("?", 1)[0]
        self.server.serving.requests.append(
            Recorded(method, path, {k.lower(): v for k, v in self.headers.items()}, body))
        handler = self.server.serving.routes.get(path)
        if handler is None:
            self.reply(404, b'{"detail":"Not Found"}', "application/json")
            return
        try:
            handler(self)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            self.close_connection = True  # the client gave up (a test's deadline): nothing to answer

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    # -- answers ---------------------------------------------------------------------------------

    def reply(self, status: int, body: bytes, content_type: str = "text/plain; version=0.0.4; charset=utf-8",
              headers: Optional[Dict[str, str]] = None) -> None:
        """A whole answer with its Content-Length."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def start(self, status: int = 200, content_type: str = "text/event-stream; charset=utf-8",
              chunked: bool = True, headers: Optional[Dict[str, str]] = None) -> None:
        """Open an answer of unknown length: chunked (as uvicorn streams), or ended by closing the connection."""
        self.chunked = chunked
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.flush()

    def write(self, data: bytes) -> None:
        if self.chunked:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            self.wfile.write(data)
        self.wfile.flush()

    def finish_stream(self) -> None:
        if self.chunked:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

    def wait(self, seconds: Optional[float] = None) -> None:
        """Sleep, or stall until the server stops (``None``)."""
        self.server.serving.release.wait(seconds)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    serving: ServingServer

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.serving.tls is not None:
            try:  # the handshake in the request's thread: a client that gives up must not block the server
                request = self.serving.tls.wrap_socket(request, server_side=True)
            except (OSError, ssl.SSLError):
                return
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients cut by their deadline are the point of several tests


class ServingServer:
    """The server, listening on 127.0.0.1 on a free port, served by a thread (a context manager)."""

    def __init__(self, tls: Optional[ssl.SSLContext] = None) -> None:
        self.tls = tls
        self.routes: Dict[str, Callable[[Handler], None]] = {}
        self.requests: List[Recorded] = []
        self.release = threading.Event()
        self.httpd = _Server(("127.0.0.1", 0), Handler)
        self.httpd.serving = self
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    def url(self, path: str, scheme: Optional[str] = None) -> str:
        return f"{scheme or ('https' if self.tls else 'http')}://127.0.0.1:{self.port}{path}"

    def route(self, path: str, handler: Callable[[Handler], None]) -> None:
        self.routes[path] = handler

    def stop(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)

    def __enter__(self) -> ServingServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


# ---------------------------------------------------------------------------
# Ready-made answers
# ---------------------------------------------------------------------------


def text(body: bytes, status: int = 200, content_type: str = "text/plain; version=0.0.4; charset=utf-8",
         headers: Optional[Dict[str, str]] = None) -> Callable[[Handler], None]:
    return lambda h: h.reply(status, body, content_type, headers)


def stream(events: Iterable[bytes], delays: Sequence[float] = (), chunked: bool = True,
           stall_after: Optional[int] = None, content_type: str = "text/event-stream; charset=utf-8",
           status: int = 200) -> Callable[[Handler], None]:
    """Send ``events`` one write each; ``delays[i]`` seconds before the i-th; after ``stall_after`` events,
    stall until the server stops."""
    events = list(events)

    def handle(h: Handler) -> None:
        h.start(status, content_type, chunked)
        for i, event in enumerate(events):
            if stall_after is not None and i == stall_after:
                h.wait()
                return
            if i < len(delays) and delays[i]:
                time.sleep(delays[i])
            h.write(event)
        h.finish_stream()

    return handle


def models(*ids: str) -> Callable[[Handler], None]:
    """``/v1/models`` as vLLM answers it."""
    data = [{"id": i, "object": "model", "created": 1735689600, "owned_by": "vllm", "root": f"/models/{i}",
             "parent": None, "max_model_len": 32768, "permission": []} for i in ids]
    return text(json.dumps({"object": "list", "data": data}).encode(), content_type="application/json")


def _chunk(model: str, choices: List[dict], obj: str = "chat.completion.chunk", **extra: Any) -> dict:
    return {"id": "chatcmpl-8f1c2a", "object": obj, "created": 1735689600, "model": model, "choices": choices,
            **extra}


def vllm_chat(pieces: Sequence[str], model: str = "qwen3-8b", finish: str = "stop", usage: bool = True,
              reasoning: Sequence[str] = (), reasoning_field: str = "reasoning_content") -> List[bytes]:
    """The events of a vLLM chat stream: a role-only first chunk, reasoning chunks, content chunks (the
    last with ``finish_reason``), a usage chunk with no choices, and ``[DONE]``."""
    def choice(delta: dict, finish_reason: Optional[str] = None) -> List[dict]:
        return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]

    out = [sse(_chunk(model, choice({"role": "assistant", "content": ""})))]
    out += [sse(_chunk(model, choice({reasoning_field: r}))) for r in reasoning]
    for i, piece in enumerate(pieces):
        out.append(sse(_chunk(model, choice({"content": piece}, finish if i == len(pieces) - 1 else None))))
    if not pieces:
        out.append(sse(_chunk(model, choice({"content": ""}, finish))))
    if usage:
        tokens = len(pieces) + len(reasoning)
        out.append(sse(_chunk(model, [], usage={"prompt_tokens": 14, "completion_tokens": tokens,
                                                "total_tokens": 14 + tokens})))
    return out + [DONE]


def mindie_chat(pieces: Sequence[str], model: str = "deepseek-r1", finish: str = "stop",
                reasoning: Sequence[str] = ()) -> List[bytes]:
    """The events of a MindIE chat stream: ``role`` in every delta, reasoning in ``reasoning_content``, and
    usage (with reasoning_tokens) in the chunk that carries ``finish_reason``."""
    out = [sse(_chunk(model, [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]))]
    for r in reasoning:
        out.append(sse(_chunk(model, [{"index": 0, "delta": {"role": "assistant", "content": "",
                                                             "reasoning_content": r}, "finish_reason": None}])))
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        extra: Dict[str, Any] = {}
        if last:
            tokens = len(pieces) + len(reasoning)
            extra["usage"] = {"prompt_tokens": 9, "completion_tokens": tokens, "total_tokens": 9 + tokens,
                              "completion_tokens_details": {"reasoning_tokens": len(reasoning)}}
        out.append(sse(_chunk(model, [{"index": 0, "delta": {"role": "assistant", "content": piece},
                                       "finish_reason": finish if last else None}], **extra)))
    return out + [DONE]


def vllm_completions(pieces: Sequence[str], model: str = "qwen3-8b") -> List[bytes]:
    """The events of a vLLM /v1/completions stream: text in ``choices[].text``."""
    out = []
    for i, piece in enumerate(pieces):
        out.append(sse(_chunk(model, [{"index": 0, "text": piece, "logprobs": None,
                                       "finish_reason": "length" if i == len(pieces) - 1 else None}],
                              obj="text_completion")))
    return out + [DONE]


# ---------------------------------------------------------------------------
# Certificates (openssl)
# ---------------------------------------------------------------------------


@dataclass
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def server_context(self, require_client: bool = False) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(self.server_cert), str(self.server_key))
        if require_client:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(str(self.ca))
        return ctx


def make_certs(directory: Path, server_name: str = "mindie-server") -> Certs:
    """A private CA, a server certificate for ``server_name`` only (not for 127.0.0.1, as MindIE's are
    made for a host name), and a client certificate, made with the openssl command."""

    def run(*argv: str) -> None:
        subprocess.run(["openssl", *argv], check=True, capture_output=True, cwd=directory)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=npuagent test CA")
    for name, cn in (("server", server_name), ("client", "npuagent")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj",
            f"/CN={cn}")
        (directory / f"{name}.ext").write_text(f"subjectAltName=DNS:{cn}\n" if name == "server" else
                                               "extendedKeyUsage=clientAuth\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out",
            f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")
    return Certs(directory / "ca.pem", directory / "server.pem", directory / "server.key",
                 directory / "client.pem", directory / "client.key")
