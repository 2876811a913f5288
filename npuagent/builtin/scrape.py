"""The ``scrape`` collector: Prometheus text endpoints of inference servers (vLLM, MindIE, SGLang, any exporter).

::

    [collectors.vllm]
    type = "scrape"
    url = "http://127.0.0.1:8000/metrics"        # vLLM serves /metrics on its API port
    labels = { app = "vllm" }

    [collectors.mindie]
    type = "scrape"
    url = "https://127.0.0.2:1027/metrics"       # MindIE Server: metricsPort on the management IP, TLS by default
    ca_file = "/etc/npuagent/mindie-ca.pem"
    server_name = "mindie-server"                # the name its certificate carries, when not the IP
    labels = { app = "mindie" }

Decisions, and why:

* **Names as exposed.** Samples keep the names and labels the server wrote, so the PromQL and dashboards
  operators already have (vLLM's Grafana board, llm-d's alerts) read them unchanged: a counter keeps its
  ``_total`` (``vllm:prompt_tokens_total``); a counter exposed without one keeps it bare, although
  prometheus_client's parser would append ``_total`` to it; histograms stay ``_bucket`` (with ``le``),
  ``_sum`` and ``_count``, which is what ``agg = "p99"`` in a threshold rule reads. The ``*_created``
  series that prometheus_client servers add beside every counter and histogram are dropped: they are
  constants that only multiply the series.
* **The text format only**, parsed by prometheus_client's own parser (``Accept`` asks for
  ``text/plain; version=0.0.4``; gzip answers are taken and inflated). Exposed timestamps are ignored:
  every sample is stamped when the collection ends, by the agent's clock, so windows, staleness and
  ``rules test`` see one time line.
* **A failed scrape is a collector error, not a series.** Unreachable, refused, slow (the collector's
  ``timeout``), an HTTP status other than 200, an answer over ``max_bytes`` (reading stops there), over
  ``sample_limit`` samples, or text that does not parse: the collection raises with the URL and what went
  wrong, the agent counts it (``npuagent_collector_up{collector}`` 0, ``npuagent_collector_errors_total``),
  and the series of the last good scrape leave ``/metrics`` at once, as Prometheus's staleness does. A
  half-parsed exposition is never served: one bad line fails the scrape, as it fails Prometheus's. So no
  ``up`` series: ``npuagent_collector_up{collector="vllm"}`` *is* Prometheus's ``up{job="vllm"}`` (a series
  of ours that said 0 could never reach the store, which takes nothing from a failed collection), and an
  ``absent`` rule with ``collector = "vllm"`` is the "endpoint down" alert.
* **What Prometheus records of every scrape**, labelled ``collector`` (and the extra ``labels``):
  ``scrape_duration_seconds``, ``scrape_samples_scraped``, ``scrape_samples_post_metric_relabeling`` (after
  ``keep``/``drop``) and ``scrape_body_size_bytes`` (inflated), under the names Prometheus gives them, so
  a "the exporter got slow" or "cardinality grew" rule reads as it would in Prometheus.
* **keep / drop** are lists of regular expressions matched against the whole metric name (anchored, as
  Prometheus's relabelling is), either the sample's own name or its family's: ``keep =
  ["vllm:time_to_first_token_seconds"]`` keeps the histogram's ``_bucket``, ``_sum`` and ``_count``.
  ``sample_limit`` then bounds what one scrape may add, because a fleet multiplies every series.
* **Extra labels win**: ``labels = { app = "vllm" }`` is added to every sample; a scraped label of the
  same name is kept as ``exported_<name>`` (Prometheus's ``honor_labels = false``). Two scrape
  collectors whose servers expose the same series (two vLLM on one host serving the same model) must be
  told apart with ``labels``, or their samples would land in one series.
* **HTTP done by hand** (``http.client``), because a scrape must end by its deadline whatever the server
  does: a timer shuts the socket at the deadline, so a server that sends a byte a second is cut as surely
  as one that sends nothing. The deadline is the collector's ``timeout`` less a small margin, so the
  collector reports its own timeout, with the URL, before the agent abandons it. Environment proxies are
  not used (the endpoints are on this host); redirects are followed (up to 5; a FastAPI mount answers
  ``/metrics`` with a redirect to ``/metrics/``), and credentials are not sent to another host.
* **Secrets**: ``bearer_token_file`` is read at every scrape (tokens rotate) and never logged; URLs are
  shown with their password masked; header values never appear in a message. TLS files (``ca_file``,
  ``cert_file``, ``key_file``) are loaded when first needed and again when one of them changes. A file
  that is missing or unreadable is a collector error that names the file, not a refused configuration:
  the agent keeps running while MindIE's certificates are being put in place.
* MindIE Server's ``npu_cache_usage_perc`` and ``npu_prefix_cache_hit_rate`` are declared here, because
  ``npuagent check`` takes a rule's metric for a misspelling when no collector declares it but another
  declares names of its family (``npu_``, the Ascend collector's). Every other scraped name is left
  undeclared: servers add and rename metrics between versions, and a declared list would reject them.

The HTTP client here (:class:`Endpoint`) is also the ``probe`` collector's.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import logging
import os
import re
import socket
import ssl
import stat
import threading
import time
import zlib
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import urljoin, urlsplit

from prometheus_client.parser import text_fd_to_metric_families

from npuagent import __version__, hookimpl
from npuagent.builtin.host import Regex
from npuagent.context import PluginContext
from npuagent.model import CollectorType, MetricSpec, Sample
from npuagent.options import REQUIRED, Array, Boolean, Integer, Map, Option, OptionError, String, ValueType

log = logging.getLogger("npuagent.scrape")

USER_AGENT = f"npuagent/{__version__}"
ACCEPT = "text/plain;version=0.0.4;q=1,*/*;q=0.1"
MAX_REDIRECTS = 5
_REDIRECTS = (301, 302, 303, 307, 308)

_METRIC_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_TYPE_RE = re.compile(r"^[ \t]*#[ \t]*TYPE[ \t]+(\S+)[ \t]*(\S*)[^\n]*$", re.MULTILINE)
_TYPES = ("counter", "gauge", "histogram", "summary", "untyped")


# ---------------------------------------------------------------------------
# Option types and the options both HTTP collectors share
# ---------------------------------------------------------------------------


_USERINFO_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://[^/?#@:]*):[^/?#@]*@")


def redact(url: str) -> str:
    """The URL as it may be shown: a password in it is masked (also in a URL that does not parse)."""
    return _USERINFO_RE.sub(r"\1:***@", url)


class Url(ValueType):
    """An ``http://`` or ``https://`` URL with a host, checked when the configuration is read."""

    description = 'an http:// or https:// URL such as "http://127.0.0.1:8000/metrics"'

    def convert(self, value: Any) -> str:
        if not isinstance(value, str):
            raise self.wrong(value)
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 -- raises ValueError on a port that is not a number
        except ValueError as e:
            raise OptionError(f"not a valid URL ({e}): {redact(value)!r}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise OptionError(f"expected {self.description}, got {redact(value)!r}")
        return value


class HeaderValue(ValueType):
    """A header value: one line. An error does not echo it, since header values are often credentials."""

    description = "a header value (one line)"

    def convert(self, value: Any) -> str:
        if not isinstance(value, str) or any(c in value for c in "\r\n\x00"):
            raise OptionError(f"expected {self.description}; the value is not shown")
        return value


HEADER_NAME = r"[A-Za-z0-9-]+"

#: The keys of the HTTP client, shared by ``scrape`` and ``probe``.
CLIENT_OPTIONS = [
    Option("headers", Map(HeaderValue(), HEADER_NAME, "a table of header names to values"), {},
           'Request headers, e.g. { "X-Tenant" = "ops" }. Values are never logged.'),
    Option("ca_file", String(), "",
           "PEM file of the certificate authorities trusted for https (default: the system's)."),
    Option("cert_file", String(), "", "PEM client certificate, for servers that require mutual TLS."),
    Option("key_file", String(), "", "PEM private key of cert_file (when it is not in cert_file)."),
    Option("server_name", String(), "",
           "The name expected in the server's certificate (and sent as SNI) when the URL's host is an IP "
           "or another name: MindIE listens on 127.0.0.2 with a certificate made for a host name."),
    Option("insecure_skip_verify", Boolean(), False,
           "Accept any server certificate (encrypts, but does not authenticate the server)."),
    Option("labels", Map(String()), {}, 'Labels added to every series, e.g. { app = "vllm" }.'),
]


# ---------------------------------------------------------------------------
# The HTTP client
# ---------------------------------------------------------------------------


class ClientConfigError(Exception):
    """The agent's side is wrong (a token or certificate file it cannot read): not the server's fault."""


class HttpError(Exception):
    """A request that got no usable answer. ``kind`` says how it failed: ``connect``, ``tls``,
    ``timeout``, ``truncated`` or ``protocol``; the message names the request and what went wrong."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def read_secret(path: str, option: str, warned: Optional[set] = None) -> str:
    """A token from a file: its content without surrounding whitespace. Never logged.

    :raises ClientConfigError: naming the option and the file (never the content).
    """
    try:
        with open(path, encoding="utf-8") as f:
            st = os.fstat(f.fileno())
            secret = f.read(65536).strip()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        raise ClientConfigError(f"cannot read {option} {path}: {reason}") from None
    if not secret:
        raise ClientConfigError(f"{option} {path} is empty")
    if any(c in secret for c in "\r\n"):
        raise ClientConfigError(f"{option} {path} holds more than one line")
    if warned is not None and st.st_mode & stat.S_IROTH and path not in warned:
        warned.add(path)
        log.warning("%s %s can be read by every user of this host; make it mode 0600 or 0640", option, path)
    return secret


class TlsFiles:
    """The SSL context made from the configured files, made again when one of them changes (certificates
    are rotated in place); loaded on first use, so a missing file is an error of the collection."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.files = [(key, options[key]) for key in ("ca_file", "cert_file", "key_file") if options[key]]
        self.insecure: bool = options["insecure_skip_verify"]
        self._stamp: Optional[tuple] = None
        self._context: Optional[ssl.SSLContext] = None
        self._lock = threading.Lock()

    def context(self) -> ssl.SSLContext:
        stamp = []
        for key, path in self.files:
            try:
                st = os.stat(path)
            except OSError as e:
                raise ClientConfigError(f"cannot read {key} {path}: {e.strerror}") from None
            stamp.append((st.st_ino, st.st_size, st.st_mtime_ns))
        with self._lock:
            if self._context is None or tuple(stamp) != self._stamp:
                self._context = self._make()
                self._stamp = tuple(stamp)
            return self._context

    def _make(self) -> ssl.SSLContext:
        files = dict(self.files)
        try:
            ctx = ssl.create_default_context(cafile=files.get("ca_file"))
        except (OSError, ssl.SSLError) as e:
            raise ClientConfigError(f"cannot load ca_file {files['ca_file']}: {e}") from None
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if "cert_file" in files:
            try:
                ctx.load_cert_chain(files["cert_file"], files.get("key_file"))
            except (OSError, ssl.SSLError) as e:
                raise ClientConfigError(f"cannot load cert_file {files['cert_file']}"
                                        f"{' with key_file ' + files['key_file'] if 'key_file' in files else ''}: "
                                        f"{e}") from None
        return ctx


class _HTTPSConnection(http.client.HTTPSConnection):
    """An https connection that verifies (and sends as SNI) ``server_name`` instead of the URL's host."""

    def __init__(self, host: str, port: Optional[int], timeout: float, context: ssl.SSLContext,
                 server_name: str) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self.server_name = server_name or host

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)
        self.sock = self._context.wrap_socket(self.sock, server_hostname=self.server_name)  # type: ignore[attr-defined]


def _origin(url: str) -> Tuple[str, str, Optional[int]]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port


class Endpoint:
    """Where and how to ask: TLS, headers and credentials, made once per collector from its options.

    :param token: returns the bearer token to send (or None), called at every request, so a rotated
        token file is read again; it may raise :class:`ClientConfigError`.
    """

    def __init__(self, url: str, options: Mapping[str, Any],
                 token: Optional[Callable[[], Optional[str]]] = None) -> None:
        self.url = url
        self.headers: Dict[str, str] = dict(options["headers"])
        self.tls = TlsFiles(options)
        self.server_name: str = options["server_name"]
        self.token = token or (lambda: None)

    def request(self, method: str, url: str, deadline: float, body: Optional[bytes] = None,
                headers: Optional[Mapping[str, str]] = None, follow: bool = False) -> Exchange:
        """Send a request; return the exchange with its answer's status and headers read.

        The caller reads the body through the exchange and closes it (it is a context manager).

        :raises HttpError: no answer (refused, timed out, TLS failed...).
        :raises ClientConfigError: a local file cannot be read.
        """
        for hop in range(MAX_REDIRECTS + 1):
            ex = Exchange(method, url, deadline)
            try:
                ex.send(self._connection(url, ex), body, self._headers(url, headers))
            except BaseException:
                ex.close()
                raise
            location = ex.response.getheader("Location") if ex.response is not None else None
            if not (follow and ex.status in _REDIRECTS and location and hop < MAX_REDIRECTS):
                return ex
            ex.close()
            url = urljoin(url, location)
            try:
                Url().convert(url)
            except OptionError:
                raise HttpError("protocol", f"{method} {redact(self.url)}: redirected to {redact(url)}, "
                                            f"which is not an http or https URL") from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _headers(self, url: str, extra: Optional[Mapping[str, str]]) -> Dict[str, str]:
        out = {"User-Agent": USER_AGENT, **(extra or {})}
        if _origin(url) != _origin(self.url):
            return out  # redirected elsewhere: our credentials stay with the configured host
        out.update(self.headers)
        parts = urlsplit(url)
        if parts.username is not None:
            pair = f"{parts.username}:{parts.password or ''}".encode()
            out["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        token = self.token()
        if token:
            out["Authorization"] = f"Bearer {token}"
        return out

    def _connection(self, url: str, ex: Exchange) -> http.client.HTTPConnection:
        parts = urlsplit(url)
        host = parts.hostname or ""
        timeout = max(ex.left(), 0.001)
        if parts.scheme == "https":
            return _HTTPSConnection(host, parts.port, timeout, self.tls.context(), self.server_name)
        return http.client.HTTPConnection(host, parts.port, timeout=timeout)


class Exchange:
    """One request and its answer, cut at a deadline however the server dribbles.

    Socket timeouts alone cannot do that (a byte every second resets them), so a timer shuts the socket
    down at the deadline: whatever read is blocked then returns, and is reported as a timeout.
    """

    def __init__(self, method: str, url: str, deadline: float) -> None:
        self.method, self.url, self.deadline = method, url, deadline
        self.shown = f"{method} {redact(url)}"
        self.started = time.monotonic()
        self.cut = False
        self.status = 0
        self.reason = ""
        self.conn: Optional[http.client.HTTPConnection] = None
        self.sock: Optional[socket.socket] = None
        self.response: Optional[http.client.HTTPResponse] = None
        self._timer = threading.Timer(max(deadline - self.started, 0.0), self._cut_off)
        self._timer.daemon = True
        self._timer.start()

    def __enter__(self) -> Exchange:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def _cut_off(self) -> None:
        self.cut = True
        sock = self.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                # the raw socket's shutdown, also under TLS: it wakes a reader blocked in SSL_read
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def _arm(self) -> None:
        """Before each blocking step: give up if the deadline passed, else bound the step by it."""
        left = self.left()
        if self.cut or left <= 0:
            raise socket.timeout("deadline")
        if self.sock is not None:
            self.sock.settimeout(left)

    def send(self, conn: http.client.HTTPConnection, body: Optional[bytes], headers: Mapping[str, str]) -> None:
        parts = urlsplit(self.url)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.conn = conn
        try:
            conn.connect()
            self.sock = conn.sock
            self._arm()
            conn.request(self.method, path, body=body, headers=dict(headers))
            self._arm()
            self.response = conn.getresponse()
        except Exception as e:
            raise self.failure(e, "waiting for the answer") from None
        self.status, self.reason = self.response.status, self.response.reason

    def header(self, name: str) -> str:
        return (self.response.getheader(name) if self.response is not None else None) or ""

    def read1(self, n: int = 65536) -> bytes:
        """Up to ``n`` bytes of the body as they arrive; b"" at its end."""
        assert self.response is not None
        try:
            self._arm()
            data = self.response.read1(n)
        except Exception as e:
            raise self.failure(e, "reading the answer") from None
        if not data and self.cut:
            raise self.failure(socket.timeout("deadline"), "reading the answer")
        return data

    def readline(self, limit: int) -> bytes:
        """One line of the body (at most ``limit`` bytes); b"" at its end."""
        assert self.response is not None
        try:
            self._arm()
            data = self.response.readline(limit)
        except Exception as e:
            raise self.failure(e, "reading the answer") from None
        if not data and self.cut:
            raise self.failure(socket.timeout("deadline"), "reading the answer")
        return data

    def excerpt(self, limit: int = 300) -> str:
        """The start of the body, on one line, for an error message (best effort, never raises)."""
        try:
            self._arm()
            data = self.response.read(2048) if self.response is not None else b""
        except Exception:
            return ""
        text = " ".join(data.decode("utf-8", "replace").split())
        return text if len(text) <= limit else text[: limit - 3] + "..."

    def close(self) -> None:
        self._timer.cancel()
        for thing in (self.response, self.conn):
            if thing is not None:
                # closing what a cut socket left behind may complain; there is nothing more to do
                with contextlib.suppress(Exception):
                    thing.close()

    def failure(self, e: BaseException, doing: str) -> HttpError:
        """An exception of http.client, ssl or socket as an :class:`HttpError` that says what happened."""
        if isinstance(e, HttpError):
            return e
        parts = urlsplit(self.url)
        where = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
        budget = self.deadline - self.started
        if self.cut or isinstance(e, (socket.timeout, TimeoutError)) or self.left() <= 0:
            return HttpError("timeout", f"{self.shown}: timed out after {budget:.3g}s {doing}")
        if isinstance(e, ssl.SSLCertVerificationError):
            return HttpError("tls", f"{self.shown}: the server's certificate is not trusted: "
                                    f"{e.verify_message or e} (set ca_file to its CA, or server_name to the "
                                    f"name it carries)")
        if isinstance(e, ssl.SSLError):
            hint = " (the server does not speak TLS there: use http://)" if "WRONG_VERSION_NUMBER" in str(e) else ""
            return HttpError("tls", f"{self.shown}: TLS failed: {e.reason or e}{hint}")
        if isinstance(e, ConnectionRefusedError):
            return HttpError("connect", f"{self.shown}: connection refused (is the server listening on {where}?)")
        if isinstance(e, socket.gaierror):
            return HttpError("connect", f"{self.shown}: cannot resolve {parts.hostname}: {e.strerror}")
        if isinstance(e, http.client.IncompleteRead):
            return HttpError("truncated", f"{self.shown}: the answer ended early ({len(e.partial)} bytes read, "
                                          f"{e.expected} more announced)")
        # a TLS server asked in plain http resets the connection or answers with bytes that are not HTTP
        hint = " (does it want https?)" if parts.scheme == "http" and self.response is None else ""
        if isinstance(e, http.client.RemoteDisconnected):
            return HttpError("connect", f"{self.shown}: the server closed the connection without answering{hint}")
        if isinstance(e, http.client.HTTPException):
            return HttpError("protocol", f"{self.shown}: not a valid HTTP answer: {type(e).__name__}"
                                         f"{': ' + str(e)[:100] if str(e) else ''}{hint}")
        if isinstance(e, OSError):
            kind = "truncated" if self.response is not None else "connect"
            return HttpError(kind, f"{self.shown}: {e.strerror or e} {doing}{hint}")
        if isinstance(e, ValueError):  # http.client refusing a header: its text would show the value
            return HttpError("protocol", f"{self.shown}: the request could not be sent ({type(e).__name__})")
        return HttpError("protocol", f"{self.shown}: {type(e).__name__}: {e}")


def time_budget(ctx: PluginContext) -> float:
    """Seconds a collection's requests may take: what is left of its time, less a margin, so that the
    collector reports its own timeout (with the URL) before the agent abandons the collection."""
    left = ctx.remaining()
    return max(left - min(0.5, left * 0.1), 0.0)


def read_body(ex: Exchange, limit: int) -> bytes:
    """The whole body, inflated when gzip- or deflate-encoded, refused beyond ``limit`` bytes (inflated:
    a small gzip bomb must not become a large allocation).

    :raises HttpError: over the limit (``too_large``), a corrupt encoding, or any failure of the read.
    """
    length = ex.header("Content-Length")
    if length.isdigit() and int(length) > limit:
        raise HttpError("too_large", f"{ex.shown}: the answer is {int(length)} bytes, over max_bytes ({limit}); "
                                     f"not read")
    encoding = ex.header("Content-Encoding").strip().lower() or "identity"
    if encoding in ("gzip", "x-gzip"):
        inflate: Optional[Any] = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif encoding == "deflate":
        inflate = zlib.decompressobj()
    elif encoding == "identity":
        inflate = None
    else:
        raise HttpError("protocol", f"{ex.shown}: unsupported Content-Encoding {encoding!r}")
    parts: List[bytes] = []
    size = 0

    def add(data: bytes) -> None:
        nonlocal size
        size += len(data)
        if size > limit:
            raise HttpError("too_large", f"{ex.shown}: the answer is over max_bytes ({limit}); reading stopped "
                                         f"there")
        parts.append(data)

    try:
        while True:
            chunk = ex.read1(65536)
            if not chunk:
                break
            if inflate is None:
                add(chunk)
                continue
            while chunk:
                add(inflate.decompress(chunk, limit - size + 1))
                chunk = inflate.unconsumed_tail
        if inflate is not None:
            add(inflate.flush())
            if not inflate.eof:
                raise HttpError("truncated", f"{ex.shown}: the {encoding} body ends early")
    except zlib.error as e:
        raise HttpError("protocol", f"{ex.shown}: the {encoding} body is corrupt: {e}") from None
    return b"".join(parts)


# ---------------------------------------------------------------------------
# The text format
# ---------------------------------------------------------------------------


class MalformedExposition(ValueError):
    """The text does not parse; ``line`` is the 1-based number of the line at fault (0 when unknown)."""

    def __init__(self, message: str, line: int = 0, text: str = "") -> None:
        shown = text if len(text) <= 120 else text[:117] + "..."
        super().__init__(f"line {line}: {message}: {shown!r}" if line else message)
        self.line = line


class _Lines:
    """The lines of a text, counted as the parser takes them, so that an error can name its line."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.number = 0
        self.line = ""

    def __iter__(self) -> Iterator[str]:
        for line in self.text.split("\n"):
            self.number += 1
            self.line = line
            yield line


ParsedSample = Tuple[str, str, Mapping[str, str], float]


def parse(text: str) -> List[ParsedSample]:
    """The samples of a Prometheus text exposition as ``(name, family, labels, value)``, names as exposed.

    Differences from prometheus_client's parser, which does the parsing: a counter exposed without
    ``_total`` keeps its name (the parser appends ``_total``); the ``*_created`` companions of counters,
    histograms and summaries are left out; metric and label names are checked (the parser takes
    ``a-b="x"``, which would make the agent's own /metrics unreadable).

    :raises MalformedExposition: at the first line that does not parse.
    """
    bare = set()
    for m in _TYPE_RE.finditer(text):
        name, typ = m.groups()
        if typ not in _TYPES:  # found here, where its line is known; the parser notices it a family later
            line = text.count("\n", 0, m.start()) + 1
            raise MalformedExposition(f"unknown metric type {typ!r}" if typ else "TYPE without a type", line,
                                      m.group(0).strip())
        if typ == "counter" and not name.endswith("_total"):
            bare.add(name)
    lines = _Lines(text)
    try:
        families = list(text_fd_to_metric_families(lines))
    except Exception as e:
        raise MalformedExposition(f"{type(e).__name__}: {e}", lines.number, lines.line.strip()) from None
    with_created = {f.name for f in families if f.type in ("counter", "histogram", "summary")}
    out: List[ParsedSample] = []
    for f in families:
        rename = f.type == "counter" and f.name in bare
        for s in f.samples:
            name = s.name
            if rename and name == f.name + "_total":
                name = f.name
            if name.endswith("_created") and name[:-8] in with_created:
                continue
            if not _METRIC_NAME_RE.fullmatch(name):
                raise MalformedExposition(f"invalid metric name {name!r}")
            for label in s.labels:
                if not _LABEL_NAME_RE.fullmatch(label):
                    raise MalformedExposition(f"invalid label name {label!r} in a sample of {name}")
            out.append((name, f.name, s.labels, s.value))
    return out


# ---------------------------------------------------------------------------
# The collector
# ---------------------------------------------------------------------------


class ScrapeError(Exception):
    """A scrape that failed: the message names the URL and what went wrong."""


class ScrapeCollector:
    """One endpoint, read at every collection."""

    def __init__(self, ctx: PluginContext) -> None:
        o = ctx.options
        self.ctx = ctx
        self.url: str = o["url"]
        self.max_bytes: int = o["max_bytes"]
        self.sample_limit: int = o["sample_limit"]
        self.keep = [re.compile(p) for p in o["keep"]]
        self.drop = [re.compile(p) for p in o["drop"]]
        self.labels: Dict[str, str] = dict(o["labels"])
        if "collector" in self.labels:
            raise ValueError('labels: "collector" is set by the agent (the scrape_* series carry the collector\'s '
                             "name in it)")
        self.meta_labels = {**self.labels, "collector": ctx.name}
        self._warned: set = set()
        token_file = o["bearer_token_file"]
        self.endpoint = Endpoint(self.url, o, (lambda: read_secret(token_file, "bearer_token_file", self._warned))
                                 if token_file else None)
        self._decisions: Dict[Tuple[str, str], bool] = {}

    def collect(self) -> List[Sample]:
        started = time.monotonic()
        budget = time_budget(self.ctx)
        try:
            with self.endpoint.request("GET", self.url, started + budget, follow=True,
                                       headers={"Accept": ACCEPT, "Accept-Encoding": "gzip"}) as ex:
                if ex.status != 200:
                    excerpt = ex.excerpt()
                    raise ScrapeError(f"{ex.shown}: HTTP {ex.status} {ex.reason}" + (f": {excerpt}" if excerpt else ""))
                ctype = ex.header("Content-Type").split(";")[0].strip().lower()
                if ctype in ("text/html", "application/json"):
                    raise ScrapeError(f"{ex.shown}: the answer is {ctype}, not the Prometheus text format "
                                      f"(is this the metrics URL?)")
                body = read_body(ex, self.max_bytes)
                shown = ex.shown
        except HttpError as e:
            raise ScrapeError(str(e)) from None
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ScrapeError(f"{shown}: the answer is not UTF-8 text (byte {e.start})") from None
        try:
            parsed = parse(text)
        except MalformedExposition as e:
            raise ScrapeError(f"{shown}: not valid Prometheus text format: {e}") from None
        if not parsed:
            self._warn_once("empty", "%s: the answer holds no samples (MindIE Server exposes its metrics only "
                            "when started with MIES_SERVICE_MONITOR_MODE=1)", shown)
        out = self._samples(parsed)
        if self.sample_limit and len(out) > self.sample_limit:
            raise ScrapeError(f"{shown}: {len(out)} samples after keep/drop, over sample_limit "
                              f"({self.sample_limit}); keep fewer metrics or raise the limit")
        meta = self.meta_labels
        out += [
            Sample("scrape_duration_seconds", meta, time.monotonic() - started),
            Sample("scrape_samples_scraped", meta, float(len(parsed))),
            Sample("scrape_samples_post_metric_relabeling", meta, float(len(out))),
            Sample("scrape_body_size_bytes", meta, float(len(body))),
        ]
        return out

    def _samples(self, parsed: Sequence[ParsedSample]) -> List[Sample]:
        out = []
        extra = self.labels
        for name, family, labels, value in parsed:
            if not self._wanted(name, family):
                continue
            if extra:
                merged = dict(labels)
                for k, v in extra.items():
                    if k in merged:
                        merged["exported_" + k] = merged[k]
                    merged[k] = v
                labels = merged
            out.append(Sample(name, labels, value))
        return out

    def _wanted(self, name: str, family: str) -> bool:
        key = (name, family)
        decision = self._decisions.get(key)
        if decision is None:
            def hit(patterns: Sequence[re.Pattern]) -> bool:
                return any(p.fullmatch(name) or p.fullmatch(family) for p in patterns)

            decision = (not self.keep or hit(self.keep)) and not hit(self.drop)
            if len(self._decisions) > 100_000:  # names churn only with a server that invents them
                self._decisions.clear()
            self._decisions[key] = decision
        return decision

    def _warn_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self.ctx.log.warning(message, *args)

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------

OPTIONS = [
    Option("url", Url(), REQUIRED,
           'The metrics endpoint, e.g. "http://127.0.0.1:8000/metrics" (vLLM) or "https://127.0.0.2:1027/metrics" '
           "(MindIE Server)."),
    Option("keep", Array(Regex()), (),
           "Keep only metrics whose name (or histogram/counter family name) fully matches one of these regular "
           "expressions; empty keeps all."),
    Option("drop", Array(Regex()), (),
           'Drop metrics whose name (or family name) fully matches one of these, e.g. ["python_.*", "process_.*"].'),
    Option("max_bytes", Integer(min=1024), 16 << 20,
           "Refuse an answer larger than this many bytes (after gzip), and stop reading there."),
    Option("sample_limit", Integer(min=0), 50_000,
           "Fail the scrape when it has more samples than this after keep/drop (0: no limit)."),
    Option("bearer_token_file", String(), "",
           "A file holding a token sent as `Authorization: Bearer`, read at every scrape; never logged."),
    *CLIENT_OPTIONS,
]

METRICS = [
    MetricSpec("scrape_duration_seconds", "gauge", "Duration of the collector's latest scrape, reading and parsing."),
    MetricSpec("scrape_samples_scraped", "gauge", "Samples the endpoint exposed in the latest scrape."),
    MetricSpec("scrape_samples_post_metric_relabeling", "gauge",
               "Samples kept from the latest scrape after keep and drop."),
    MetricSpec("scrape_body_size_bytes", "gauge", "Size of the latest scrape's answer, uncompressed."),
    MetricSpec("npu_cache_usage_perc", "gauge",
               "MindIE Server, scraped: KV-cache NPU block usage, 1 = 100 %."),
    MetricSpec("npu_prefix_cache_hit_rate", "gauge", "MindIE Server, scraped: prefix-cache hit rate."),
]


def make_collector(ctx: PluginContext) -> ScrapeCollector:
    return ScrapeCollector(ctx)


@hookimpl
def npuagent_collector_types() -> List[CollectorType]:
    """``scrape``: one per endpoint, each in its own ``[collectors.<name>]`` table with ``type = "scrape"``."""
    return [CollectorType(
        name="scrape",
        factory=make_collector,
        options=OPTIONS,
        help="A Prometheus text endpoint (vLLM, MindIE, SGLang, any exporter): its series as exposed, "
             "and scrape_* figures of each scrape.",
        interval=15.0,
        timeout=10.0,
        enabled_by_default=False,
        metrics=METRICS,
    )]


__all__ = [
    "CLIENT_OPTIONS",
    "ClientConfigError",
    "Endpoint",
    "Exchange",
    "HttpError",
    "ScrapeCollector",
    "ScrapeError",
    "Url",
    "npuagent_collector_types",
    "parse",
    "read_body",
    "read_secret",
    "redact",
    "time_budget",
]
