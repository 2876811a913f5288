"""The app side of the agent's control channel: imported by inference processes.

An inference service imports this module, says who it is, and from then on the
agent on its host can see its latency, errors, queue and allocator, and can act
on it (give cached device memory back, lower its concurrency) when a rule fires::

    from npuagent import client as npuagent_client

    agent = npuagent_client.connect("llm-serving", devices=[0, 1], limit=64)
    agent.register("reload_model", lambda args: {"reloaded": reload(args["name"])})

    async def handle(request):
        async with agent.limiter:               # the agent may lower or restore this limit
            with agent.measure("inference"):    # latency histogram, ok/error counts, interval mean
                out = await model.generate(request)
        agent.output(valid=bool(out.text))
        return out

Why it is built this way:

* **Standard library only.** Serving images carry torch, CANN and the framework,
  rarely the agent's dependencies. Importing this module imports nothing outside
  the standard library (``npuagent/__init__.py`` makes ``hookimpl`` lazily for the
  same reason), so it works from a copy of the ``npuagent`` package alone.
* **Fails open.** Every call on the request path (``measure``, ``ttft``, ``tpot``,
  ``queue_length``, ``output``, the limiter with no limit) takes one short lock
  and touches no socket; bad arguments are ignored rather than raised. With no
  agent, or an agent that hangs, requests run exactly as without this module.
  A daemon thread does all the I/O: it connects, says hello, pushes the
  measurements every ``push_interval``, answers commands, and reconnects with
  exponential backoff (0.5 s doubling to 30 s, with jitter) when the agent is
  absent or goes away.
* **Identity comes from the kernel.** The hello names the app and its devices; the
  agent takes the pid and uid from the socket's peer credentials, so in a
  container the pid it sees is already the host's.
* **Commands run in their own threads.** A ``reload_model`` that takes a minute
  must not stop the metrics or an ``empty_cache``; at most :data:`MAX_RUNNING`
  commands run at once, further ones are answered "busy".
* **Measurements are Prometheus-shaped** (cumulative histograms and counters), so
  the agent's rules and ``/metrics`` treat them like any scraped series, and a
  missed push loses nothing but resolution.

The wire protocol (newline-delimited JSON, both ways, at most :data:`MAX_LINE`
bytes a line) is documented with :mod:`npuagent.control`, the agent's side.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import json
import logging
import math
import os
import random
import select
import socket
import sys
import threading
import time
import weakref
from types import TracebackType
from typing import Any, Callable, Deque, Dict, List, Mapping, Optional, Sequence, Tuple, Type

__all__ = [
    "DEFAULT_SOCKET",
    "LATENCY_BUCKETS",
    "MAX_LINE",
    "PROTOCOL",
    "TPOT_BUCKETS",
    "Client",
    "CommandError",
    "Limiter",
    "connect",
]

log = logging.getLogger("npuagent.client")

#: Where the agent listens unless ``NPUAGENT_SOCKET`` or ``path=`` says otherwise.
DEFAULT_SOCKET = "/run/npuagent/control.sock"
#: The protocol version the hello announces.
PROTOCOL = 1
#: The longest line either side accepts; a longer one closes the connection.
MAX_LINE = 1 << 20
#: Commands that may run at once in one process; more are answered "busy".
MAX_RUNNING = 4
#: Distinct stage names kept; further names are counted as stage ``other`` so a
#: stage built from request data cannot blow up the agent's series count.
MAX_STAGES = 32

#: Buckets of the latency and TTFT histograms: Prometheus's defaults, stretched
#: to the seconds-to-a-minute latencies of LLM requests.
LATENCY_BUCKETS: Tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Buckets of the time-per-output-token histogram: finer, since decode steps take 10-200 ms.
TPOT_BUCKETS: Tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5)

_SEND_TIMEOUT = 5.0  # a send to an agent that does not read ends the session, never the app
_CONNECT_TIMEOUT = 2.0
_STABLE_SESSION = 10.0  # a session this long resets the backoff; shorter ones (refusals) keep it growing
_STATUSES = ("ok", "error", "cancelled")


class CommandError(Exception):
    """Raised by a command handler to answer ``ok: false`` with just this message."""


# -- the concurrency limiter ---------------------------------------------------


def _resolve(fut: asyncio.Future) -> None:
    """Wake an async waiter on its own loop; it may have been cancelled meanwhile."""
    if not fut.done():
        fut.set_result(None)


class Limiter:
    """A concurrency limit that the agent can move while requests run.

    ``with limiter:`` in threads, ``async with limiter:`` in coroutines. Both
    count against one counter under one :class:`threading.Condition`, so a
    server that mixes worker threads and an event loop is limited as a whole.

    ``limit`` may be set at any time, from any thread. Lowering it lets the
    requests already running finish; new ones wait until fewer than ``limit``
    run. ``None`` means unlimited (only counted, for ``active`` and ``peak``).

    The async form never blocks the event loop. A waiting coroutine parks on a
    future of its own loop; whoever frees a slot (a thread or another loop)
    wakes it with ``call_soon_threadsafe`` and it tries again. This was chosen
    over an ``asyncio.Condition`` per loop, which cannot be notified from
    another thread, and over a polling loop, which adds latency and wakeups.
    Waiters are not served in strict FIFO order: a newcomer that finds a free
    slot takes it. A waiter that is cancelled after being woken passes the
    wakeup on, so no slot is lost.
    """

    def __init__(self, limit: Optional[int] = None) -> None:
        self._limit = _check_limit(limit)
        self._cond = threading.Condition(threading.Lock())
        self._active = 0
        self._peak = 0
        self._threads_waiting = 0
        self._async_waiters: Deque[Tuple[asyncio.AbstractEventLoop, asyncio.Future]] = collections.deque()

    # -- the limit --

    @property
    def limit(self) -> Optional[int]:
        """How many may run at once; ``None`` is unlimited."""
        return self._limit

    @limit.setter
    def limit(self, value: Optional[int]) -> None:
        value = _check_limit(value)
        with self._cond:
            old, self._limit = self._limit, value
            if value is None or (old is not None and value > old):
                self._cond.notify_all()
                self._wake_async(len(self._async_waiters))

    @property
    def active(self) -> int:
        """How many hold the limiter now."""
        return self._active

    @property
    def peak(self) -> int:
        """The most that ever held it at once: the base of a relative throttle when no limit was set."""
        return self._peak

    @property
    def waiting(self) -> int:
        """How many threads and coroutines wait for a slot."""
        return self._threads_waiting + len(self._async_waiters)

    # -- threads --

    def acquire(self, blocking: bool = True, timeout: Optional[float] = None) -> bool:
        """Take a slot, waiting (up to ``timeout``) while the limit is reached."""
        with self._cond:
            if self._free():
                self._take()
                return True
            if not blocking:
                return False
            deadline = None if timeout is None else time.monotonic() + timeout
            self._threads_waiting += 1
            try:
                while not self._free():
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        # A notify may have raced our timeout; hand it on rather than lose it.
                        if self._free_for_others():
                            self._cond.notify()
                        return False
                    self._cond.wait(remaining)
                self._take()
                return True
            finally:
                self._threads_waiting -= 1

    def release(self) -> None:
        """Give a slot back and wake one waiter (a thread and a coroutine: whichever comes first takes it)."""
        with self._cond:
            if self._active <= 0:
                raise RuntimeError("Limiter released more often than acquired")
            self._active -= 1
            if self._free():
                self._cond.notify()
                self._wake_async(1)

    def __enter__(self) -> Limiter:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    # -- coroutines --

    async def acquire_async(self) -> None:
        """Take a slot without blocking the event loop; cancel the task to stop waiting."""
        loop = asyncio.get_running_loop()
        while True:
            with self._cond:
                if self._free():
                    self._take()
                    return
                fut = loop.create_future()
                entry = (loop, fut)
                self._async_waiters.append(entry)
            try:
                await fut
            except BaseException:
                with self._cond:
                    try:
                        self._async_waiters.remove(entry)
                    except ValueError:  # already woken: pass the wakeup on
                        if self._free():
                            self._cond.notify()
                            self._wake_async(1)
                raise

    async def __aenter__(self) -> Limiter:
        await self.acquire_async()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.release()

    # -- inside, under the condition's lock --

    def _free(self) -> bool:
        return self._limit is None or self._active < self._limit

    def _free_for_others(self) -> bool:
        return self._free() and (self._threads_waiting > 1 or bool(self._async_waiters))

    def _take(self) -> None:
        self._active += 1
        if self._active > self._peak:
            self._peak = self._active

    def _wake_async(self, n: int) -> None:
        while n > 0 and self._async_waiters:
            loop, fut = self._async_waiters.popleft()
            try:
                loop.call_soon_threadsafe(_resolve, fut)
            except RuntimeError:  # that loop is closed; its waiter is gone
                continue
            n -= 1

    def _after_fork(self) -> None:
        """In a forked child: the parent's holders and waiters do not exist here."""
        self._cond = threading.Condition(threading.Lock())
        self._active = self._threads_waiting = 0
        self._async_waiters = collections.deque()

    def __repr__(self) -> str:
        return f"<Limiter limit={self._limit} active={self._active} waiting={self.waiting}>"


def _check_limit(value: Any) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"a concurrency limit is a positive integer or None, not {value!r}")
    return value


# -- measurements --------------------------------------------------------------


class _Histogram:
    """Counts per bucket (not cumulative: one increment per observation), sum and count."""

    __slots__ = ("count", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def add(self, index: int, value: float) -> None:
        self.counts[index] += 1
        self.sum += value
        self.count += 1

    def snapshot(self) -> Tuple[List[int], float, int]:
        return list(self.counts), self.sum, self.count


def _le(bound: float) -> str:
    """The ``le`` label as Prometheus's Python client spells it (``0.5``, ``1.0``, ``+Inf``)."""
    return "+Inf" if bound == math.inf else repr(float(bound))


def _histogram_samples(out: List[Dict[str, Any]], name: str, bounds: Sequence[float], counts: List[int],
                       total: float, count: int, labels: Mapping[str, str]) -> None:
    running = 0
    for bound, n in zip((*bounds, math.inf), counts):
        running += n
        out.append({"name": f"{name}_bucket", "labels": {**labels, "le": _le(bound)}, "value": running})
    out.append({"name": f"{name}_sum", "labels": dict(labels), "value": total})
    out.append({"name": f"{name}_count", "labels": dict(labels), "value": count})


def _seconds(value: Any) -> Optional[float]:
    """A duration the app handed in, or None when it is not a finite non-negative number (ignored, never raised)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if 0.0 <= v < math.inf else None


class _Measure:
    """What ``client.measure(stage)`` returns: times one block, sync or async; never swallows its exception."""

    __slots__ = ("_client", "_stage", "_t0")

    def __init__(self, client: Client, stage: str) -> None:
        self._client = client
        self._stage = stage
        self._t0 = 0.0

    def __enter__(self) -> _Measure:
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        elapsed = time.perf_counter() - self._t0
        if exc_type is None:
            status = "ok"
        elif issubclass(exc_type, Exception):
            status = "error"
        else:  # CancelledError, GeneratorExit, KeyboardInterrupt: the caller gave up, the service did not fail
            status = "cancelled"
        self._client.observe(self._stage, elapsed, status)

    async def __aenter__(self) -> _Measure:
        return self.__enter__()

    async def __aexit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException],
                        tb: Optional[TracebackType]) -> None:
        self.__exit__(exc_type, exc, tb)


# -- devices and torch ---------------------------------------------------------


def _visible_devices() -> Optional[List[int]]:
    """The host ids behind this process's device indexes, when the environment renumbers them.

    ``ASCEND_RT_VISIBLE_DEVICES=4,5`` makes the host's devices 4 and 5 this
    process's 0 and 1; the agent's ``device_id`` is the host's number (the one
    npu-smi and ``npu_memory_used_bytes`` carry), so the client reports 4 and 5.
    ``CUDA_VISIBLE_DEVICES`` likewise, when it lists numbers (not UUIDs).
    """
    for name in ("ASCEND_RT_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES"):
        text = os.environ.get(name, "").strip()
        if not text:
            continue
        try:
            return [int(part) for part in text.split(",") if part.strip()]
        except ValueError:
            return None
    return None


def host_device_id(index: int, visible: Optional[Sequence[int]] = None) -> int:
    """The host's id of this process's device ``index`` (see :func:`_visible_devices`)."""
    if visible is None:
        visible = _visible_devices()
    if visible is not None and 0 <= index < len(visible):
        return visible[index]
    return index


def _torch_backend(import_modules: bool) -> Tuple[Any, str]:
    """``(torch.npu or torch.cuda, "npu" | "cuda")``; ``(None, why)`` when there is neither.

    With ``import_modules`` (an explicit command) torch_npu and torch are
    imported; otherwise (a metrics push) only what the app has already imported
    is used: importing torch takes seconds and may set up a device, which a
    background thread must not do behind the app's back.
    """
    if import_modules:
        with contextlib.suppress(Exception):
            import torch_npu  # noqa: F401  (importing it registers torch.npu)
        try:
            import torch
        except Exception:
            return None, "torch is not importable in this process"
    torch = sys.modules.get("torch")
    if torch is None:
        return None, "torch is not importable in this process"
    npu = getattr(torch, "npu", None)
    if sys.modules.get("torch_npu") is not None and npu is not None:
        return npu, "npu"
    cuda = getattr(torch, "cuda", None)
    try:
        if cuda is not None and cuda.is_available():
            return cuda, "cuda"
    except Exception:
        pass
    return None, "torch has neither torch.npu (torch_npu) nor CUDA in this process"


# -- the client ----------------------------------------------------------------

Handler = Callable[[Dict[str, Any]], Any]

_clients: weakref.WeakSet = weakref.WeakSet()


class Client:
    """An inference process's link to the agent on its host.

    :param app: the service's name, as rules and actions name it (``app = "llm-serving"``).
    :param devices: this process's device indexes (as given to ``torch.npu.set_device``);
        reported to the agent as host ids (see :func:`host_device_id`). ``None``: the
        allocator figures are read for the current device only.
    :param path: the agent's socket; ``None`` means ``$NPUAGENT_SOCKET`` or :data:`DEFAULT_SOCKET`,
        read when the client is made (so an app may set the variable after importing this module).
    :param push_interval: seconds between pushes of the measurements.
    :param limit: the limiter's original concurrency limit (``None``: unlimited);
        ``set_concurrency`` with a ``factor`` scales this one.

    Nothing happens until :meth:`start`; measurements are recorded either way.
    """

    #: the reconnection backoff: first wait and cap, in seconds (tests shorten them)
    backoff_min = 0.5
    backoff_max = 30.0

    def __init__(self, app: str, devices: Optional[Sequence[int]] = None, path: Optional[str] = None,
                 push_interval: float = 1.0, limit: Optional[int] = None) -> None:
        if not isinstance(app, str) or not app.strip():
            raise ValueError("app must be a non-empty string")
        if not push_interval > 0:
            raise ValueError("push_interval must be positive")
        self.app = app.strip()
        self.devices: Optional[List[int]] = [int(d) for d in devices] if devices else None
        self.path = path if path is not None else os.environ.get("NPUAGENT_SOCKET", DEFAULT_SOCKET)
        self.push_interval = float(push_interval)
        self.original_limit = _check_limit(limit)
        self.limiter = Limiter(limit)
        self._handlers: Dict[str, Handler] = {
            "empty_cache": self._empty_cache,
            "set_concurrency": self._set_concurrency,
            "status": self._status,
        }
        self._init_runtime()
        self._reset_measurements()
        _clients.add(self)

    def _init_runtime(self) -> None:
        self._lock = threading.Lock()  # the measurements: held for a few dict operations
        self._send_lock = threading.Lock()  # one writer at a time on the socket
        self._stopping = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._sock: Optional[socket.socket] = None
        self._running = 0  # commands being handled now
        self._was_connected = False
        self.pushes = 0

    def _reset_measurements(self) -> None:
        self._latency: Dict[str, _Histogram] = {}
        self._requests: Dict[Tuple[str, str], int] = {}
        self._interval: Dict[str, List[float]] = {}  # stage -> [sum, count] since the last push
        self._ttft: Optional[_Histogram] = None
        self._tpot: Optional[_Histogram] = None
        self._queue: Optional[float] = None
        self._outputs: Optional[Dict[str, int]] = None

    # -- life --

    def start(self) -> Client:
        """Start the background thread (once; again after :meth:`stop`). Returns the client."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return self
            # a fresh event per thread: a thread still winding down from stop() keeps its own, set one
            self._stopping = threading.Event()
            self._thread = threading.Thread(target=self._run, args=(self._stopping,),
                                            name=f"npuagent-client-{self.app}", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Disconnect and stop the thread; measurements stay (a later :meth:`start` pushes them on)."""
        self._stopping.set()
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes the thread's select at once
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def __enter__(self) -> Client:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def connected(self) -> bool:
        """Whether the agent is connected now (for logs and health pages; nothing depends on it)."""
        return self._sock is not None

    @property
    def device_ids(self) -> List[int]:
        """The host ids of :attr:`devices`, as the hello reports them."""
        visible = _visible_devices()
        return [host_device_id(d, visible) for d in self.devices or ()]

    def register(self, command: str, fn: Optional[Handler] = None) -> Any:
        """Answer the agent's ``command`` with ``fn(args) -> dict`` (also usable as a decorator).

        ``fn`` runs in a thread of its own; what it returns is the reply's
        result (``None`` is ``{}``, a non-dict ``{"value": ...}``); what it
        raises is the reply's error. A handler replaces a built-in one of the
        same name (``empty_cache``, ``set_concurrency``, ``status``), e.g. to run
        ``empty_cache`` between batches on the app's own thread.
        """
        if not isinstance(command, str) or not command:
            raise ValueError("a command name is a non-empty string")
        if fn is None:
            def decorator(f: Handler) -> Handler:
                self._handlers[command] = f
                return f
            return decorator
        self._handlers[command] = fn
        return fn

    # -- measurements (the request path: no I/O, never raises for the agent's sake) --

    def measure(self, stage: str = "inference") -> _Measure:
        """Time a block (``with`` or ``async with``) as one request of ``stage``.

        The duration goes into ``inference_latency_seconds{stage}`` and the
        interval mean; the request is counted in ``inference_requests_total`` as
        ``ok``, ``error`` (it raised an :class:`Exception`, which propagates), or
        ``cancelled`` (CancelledError and other non-Exception exits).
        """
        return _Measure(self, stage)

    def observe(self, stage: str, seconds: float, status: str = "ok") -> None:
        """Record a request of ``stage`` that the app timed itself (e.g. across callbacks).

        ``status`` is ``ok``, ``error`` or ``cancelled``; anything else is ignored
        (a status made from request data must not create series without bound).
        """
        v = _seconds(seconds)
        if v is None or not isinstance(stage, str) or status not in _STATUSES:
            log.debug("npuagent: observe(%r, %r, %r) ignored", stage, seconds, status)
            return
        index = bisect.bisect_left(LATENCY_BUCKETS, v)
        with self._lock:
            h = self._latency.get(stage)
            if h is None:
                if len(self._latency) >= MAX_STAGES:
                    stage = "other"
                    h = self._latency.get(stage)
                if h is None:
                    h = self._latency[stage] = _Histogram(LATENCY_BUCKETS)
                    # both statuses from the start, so an error *rate* exists before the first error
                    self._requests.setdefault((stage, "ok"), 0)
                    self._requests.setdefault((stage, "error"), 0)
            key = (stage, status)
            self._requests[key] = self._requests.get(key, 0) + 1
            if status == "cancelled":
                return  # its duration is the caller's patience, not the service's latency
            h.add(index, v)
            mean = self._interval.get(stage)
            if mean is None:
                self._interval[stage] = [v, 1]
            else:
                mean[0] += v
                mean[1] += 1

    def ttft(self, seconds: float) -> None:
        """Record one request's time to first token."""
        v = _seconds(seconds)
        if v is None:
            return
        index = bisect.bisect_left(LATENCY_BUCKETS, v)
        with self._lock:
            if self._ttft is None:
                self._ttft = _Histogram(LATENCY_BUCKETS)
            self._ttft.add(index, v)

    def tpot(self, seconds: float) -> None:
        """Record one request's time per output token (after the first)."""
        v = _seconds(seconds)
        if v is None:
            return
        index = bisect.bisect_left(TPOT_BUCKETS, v)
        with self._lock:
            if self._tpot is None:
                self._tpot = _Histogram(TPOT_BUCKETS)
            self._tpot.add(index, v)

    def queue_length(self, n: float) -> None:
        """Set how many requests wait in the app's own queue now."""
        try:
            v = float(n)
        except (TypeError, ValueError):
            return
        if v == v:  # not NaN
            self._queue = v  # one assignment: atomic, no lock needed

    def output(self, valid: bool) -> None:
        """Count one output as valid or not (empty text, NaN logits...): the silent-failure rule reads it."""
        key = "true" if valid else "false"
        with self._lock:
            if self._outputs is None:
                self._outputs = {"true": 0, "false": 0}
            self._outputs[key] += 1

    # -- what is pushed --

    def samples(self) -> List[Dict[str, Any]]:
        """What the next push would send (without resetting the interval mean): for debugging and tests."""
        return self._collect(reset=False)

    def _collect(self, reset: bool) -> List[Dict[str, Any]]:
        with self._lock:
            latency = [(stage, h.snapshot()) for stage, h in self._latency.items()]
            requests = list(self._requests.items())
            means = [(stage, s / n) for stage, (s, n) in self._interval.items() if n]
            if reset:
                self._interval = {}
            ttft = self._ttft.snapshot() if self._ttft is not None else None
            tpot = self._tpot.snapshot() if self._tpot is not None else None
            outputs = dict(self._outputs) if self._outputs is not None else None
            queue = self._queue
        out: List[Dict[str, Any]] = []
        for stage, (counts, total, count) in latency:
            _histogram_samples(out, "inference_latency_seconds", LATENCY_BUCKETS, counts, total, count,
                               {"stage": stage})
        for (stage, status), n in requests:
            out.append({"name": "inference_requests_total", "labels": {"stage": stage, "status": status}, "value": n})
        for stage, mean in means:
            out.append({"name": "inference_latency_mean_seconds", "labels": {"stage": stage}, "value": mean})
        if ttft is not None:
            _histogram_samples(out, "inference_ttft_seconds", LATENCY_BUCKETS, *ttft, {})
        if tpot is not None:
            _histogram_samples(out, "inference_tpot_seconds", TPOT_BUCKETS, *tpot, {})
        if queue is not None:
            out.append({"name": "inference_queue_length", "labels": {}, "value": queue})
        if outputs is not None:
            for valid, n in outputs.items():
                out.append({"name": "inference_outputs_total", "labels": {"valid": valid}, "value": n})
        out.extend(self._allocator())
        return out

    def _allocator(self) -> List[Dict[str, Any]]:
        """Reserved and allocated bytes per device from the app's own torch, if it has imported one."""
        backend, _why = _torch_backend(import_modules=False)
        if backend is None:
            return []
        out = []
        try:
            if not getattr(backend, "is_initialized", lambda: True)():
                return []  # asking would set up a device context behind the app's back
            visible = _visible_devices()
            for d in self._local_devices(backend):
                labels = {"device_id": str(host_device_id(d, visible))}
                out.append({"name": "app_memory_reserved_bytes", "labels": labels,
                            "value": float(backend.memory_reserved(d))})
                out.append({"name": "app_memory_allocated_bytes", "labels": dict(labels),
                            "value": float(backend.memory_allocated(d))})
        except Exception as e:  # a broken allocator query costs these series, not the push
            log.debug("npuagent client: allocator figures unavailable: %s", e)
            return []
        return out

    def _local_devices(self, backend: Any) -> List[int]:
        if self.devices is not None:
            return list(self.devices)
        return [int(backend.current_device())]

    # -- built-in commands --

    def _empty_cache(self, args: Dict[str, Any]) -> Dict[str, Any]:
        """Give the allocator's cached, unused blocks back to the device; report reserved bytes before and after."""
        backend, why = _torch_backend(import_modules=True)
        if backend is None:
            raise CommandError(why)
        local = self._local_devices(backend)
        before = [float(backend.memory_reserved(d)) for d in local]
        started = time.monotonic()
        backend.empty_cache()
        took = time.monotonic() - started
        after = [float(backend.memory_reserved(d)) for d in local]
        visible = _visible_devices()
        per_device = [{"device": host_device_id(d, visible), "reserved_before": b, "reserved_after": a}
                      for d, b, a in zip(local, before, after)]
        return {"devices": per_device, "reserved_before": sum(before), "reserved_after": sum(after),
                "freed": sum(before) - sum(after), "seconds": took,
                "backend": "npu" if backend is getattr(sys.modules.get("torch"), "npu", None) else "cuda"}

    def _set_concurrency(self, args: Dict[str, Any]) -> Dict[str, Any]:
        """``{"limit": N}``, ``{"factor": f}`` (of the original limit) or ``{"restore": true}``.

        A factor scales the limit the client was made with, never the current
        one, so a repeated throttle does not compound. With no original limit
        it scales the peak concurrency seen so far (the limiter's ``peak``).
        """
        given = [k for k in ("limit", "factor", "restore") if k in args]
        if len(given) != 1:
            raise CommandError('set_concurrency takes exactly one of "limit", "factor" or "restore"')
        old = self.limiter.limit
        base = self.original_limit if self.original_limit is not None else self.limiter.peak
        if "restore" in args:
            new = self.original_limit
        elif "limit" in args:
            try:
                new = _check_limit(args["limit"])
            except ValueError as e:
                raise CommandError(str(e)) from None
        else:
            factor = args["factor"]
            if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 < factor < math.inf:
                raise CommandError(f"factor must be a positive number, not {factor!r}")
            if base < 1:
                raise CommandError("no limit to scale: the app has no original limit and has run no request yet")
            new = max(1, int(base * factor))
        self.limiter.limit = new
        if new != old:
            log.warning("npuagent: concurrency limit of %s changed from %s to %s by the agent", self.app,
                        "unlimited" if old is None else old, "unlimited" if new is None else new)
        return {"old_limit": old, "new_limit": new, "original_limit": self.original_limit, "base": base,
                "active": self.limiter.active}

    def _status(self, args: Dict[str, Any]) -> Dict[str, Any]:
        """What the app is and does now: for ``npuagent status`` and for checking that it answers."""
        return {"app": self.app, "pid": os.getpid(), "devices": self.device_ids, "limit": self.limiter.limit,
                "original_limit": self.original_limit, "active": self.limiter.active,
                "waiting": self.limiter.waiting, "commands": sorted(self._handlers), "pushes": self.pushes}

    # -- the background thread --

    def _run(self, stopping: threading.Event) -> None:
        delay = self.backoff_min
        while not stopping.is_set():
            try:
                sock = self._open()
                if sock is not None:
                    began = time.monotonic()
                    try:
                        self._session(sock, stopping)
                    finally:
                        self._drop(sock)
                    if time.monotonic() - began >= _STABLE_SESSION:
                        delay = self.backoff_min
            except Exception:  # the thread must outlive any surprise; the app never sees it
                log.debug("npuagent client: unexpected error", exc_info=True)
            if stopping.is_set():
                break
            stopping.wait(delay / 2 + random.uniform(0, delay / 2))
            delay = min(delay * 2, self.backoff_max)

    def _open(self) -> Optional[socket.socket]:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(_CONNECT_TIMEOUT)
        try:
            sock.connect(self.path)
        except OSError as e:
            sock.close()
            if self._was_connected:
                log.info("npuagent: agent at %s not reachable (%s); retrying in the background", self.path, e)
                self._was_connected = False
            else:
                log.debug("npuagent: agent at %s not reachable: %s", self.path, e)
            return None
        sock.settimeout(_SEND_TIMEOUT)
        return sock

    def _drop(self, sock: socket.socket) -> None:
        with self._send_lock:
            if self._sock is sock:
                self._sock = None
        with contextlib.suppress(OSError):
            sock.close()

    def _session(self, sock: socket.socket, stopping: threading.Event) -> None:
        hello = {"type": "hello", "app": self.app, "devices": self.device_ids, "protocol": PROTOCOL,
                 "interval": self.push_interval, "pid": os.getpid()}
        self._write(sock, hello)
        self._sock = sock
        if not self._was_connected:
            log.info("npuagent: connected to the agent at %s as %s", self.path, self.app)
            self._was_connected = True
        buf = bytearray()
        next_push = time.monotonic()
        while not stopping.is_set():
            now = time.monotonic()
            if now >= next_push:
                self._push(sock)
                next_push += self.push_interval
                if next_push <= now:  # fell behind (a slow allocator query): keep the pace, skip the backlog
                    next_push = now + self.push_interval
            ready, _, _ = select.select([sock], [], [], max(0.0, next_push - time.monotonic()))
            if not ready:
                continue
            data = sock.recv(65536)
            if not data:
                log.info("npuagent: the agent closed the connection")
                return
            buf += data
            while True:
                i = buf.find(b"\n")
                if i < 0:
                    break
                line = bytes(buf[:i])
                del buf[: i + 1]
                if len(line) > MAX_LINE or not self._handle_line(sock, line):
                    return
            if len(buf) > MAX_LINE:
                log.warning("npuagent: the agent sent a line over %d bytes; reconnecting", MAX_LINE)
                return

    def _write(self, sock: socket.socket, message: Dict[str, Any]) -> None:
        data = (json.dumps(message, separators=(",", ":"), default=_json_default) + "\n").encode()
        with self._send_lock:
            try:
                sock.sendall(data)
            except OSError:
                # a partial line would garble the stream: end this connection, the thread reconnects
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                raise

    def _push(self, sock: socket.socket) -> None:
        message = {"type": "metrics", "samples": self._collect(reset=True)}
        data = json.dumps(message, separators=(",", ":"))
        if len(data) >= MAX_LINE:
            log.warning("npuagent: %d bytes of metrics exceed the line limit; not sent", len(data))
            return
        with self._send_lock:
            try:
                sock.sendall(data.encode() + b"\n")
            except OSError:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                raise
        self.pushes += 1

    def _handle_line(self, sock: socket.socket, line: bytes) -> bool:
        """One message from the agent; False ends the connection (garbage means a confused peer)."""
        line = line.strip()
        if not line:
            return True
        try:
            msg = json.loads(line)
        except (ValueError, RecursionError):
            log.warning("npuagent: the agent sent a line that is not JSON; reconnecting")
            return False
        if not isinstance(msg, dict):
            log.warning("npuagent: the agent sent a message that is not an object; reconnecting")
            return False
        kind = msg.get("type")
        if kind == "command":
            self._dispatch(sock, msg)
        elif kind == "error":
            log.warning("npuagent: the agent says: %s", msg.get("error"))
        else:  # a newer agent's message: ignoring it keeps old clients working
            log.debug("npuagent: ignored a message of type %r", kind)
        return True

    def _dispatch(self, sock: socket.socket, msg: Dict[str, Any]) -> None:
        cid = msg.get("id")
        name = msg.get("command")
        args = msg.get("args")
        args = args if isinstance(args, dict) else {}
        handler = self._handlers.get(name) if isinstance(name, str) else None
        if handler is None:
            known = ", ".join(sorted(self._handlers))
            self._reply(sock, cid, False, error=f"unknown command {name!r} (this app knows: {known})")
            return
        with self._lock:
            if self._running >= MAX_RUNNING:
                busy = True
            else:
                busy = False
                self._running += 1
        if busy:
            self._reply(sock, cid, False, error=f"busy: {MAX_RUNNING} commands are running")
            return
        thread = threading.Thread(target=self._handle, args=(sock, cid, name, handler, args),
                                  name=f"npuagent-command-{name}", daemon=True)
        thread.start()

    def _handle(self, sock: socket.socket, cid: Any, name: str, handler: Handler, args: Dict[str, Any]) -> None:
        try:
            try:
                result = handler(args)
            except CommandError as e:
                self._reply(sock, cid, False, error=str(e))
                return
            except Exception as e:
                log.warning("npuagent: command %s failed: %s: %s", name, type(e).__name__, e)
                self._reply(sock, cid, False, error=f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)
                return
            if result is None:
                result = {}
            elif not isinstance(result, dict):
                result = {"value": result}
            self._reply(sock, cid, True, result=result)
        finally:
            with self._lock:
                self._running -= 1

    def _reply(self, sock: socket.socket, cid: Any, ok: bool, result: Optional[Dict[str, Any]] = None,
               error: str = "") -> None:
        message: Dict[str, Any] = {"type": "reply", "id": cid, "ok": ok}
        if ok:
            message["result"] = result
        else:
            message["error"] = error
        try:
            json.dumps(message, default=_json_default)
        except (TypeError, ValueError) as e:
            message = {"type": "reply", "id": cid, "ok": False, "error": f"the result is not JSON: {e}"}
        if self._sock is not sock:
            return  # that connection is gone; the agent has given up on this command
        with contextlib.suppress(OSError):
            self._write(sock, message)

    def _after_fork(self) -> None:
        """In a forked child: no thread, no connection, fresh locks and measurements.

        The parent's thread does not exist here, a lock it held would stay held,
        and writing on the inherited socket would interleave with the parent's
        lines. The child starts stopped: call :meth:`start` in it if it serves.
        """
        sock = self._sock
        self._init_runtime()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()  # the child's copy of the descriptor only; the parent's connection stays
        self._reset_measurements()
        self.limiter._after_fork()

    def __repr__(self) -> str:
        state = "connected" if self.connected else ("started" if self._thread is not None else "stopped")
        return f"<npuagent Client app={self.app!r} path={self.path!r} {state}>"


def _json_default(o: Any) -> Any:
    """Lenient JSON for handler results: numpy scalars, tuples, sets; anything else as text."""
    item = getattr(o, "item", None)
    if callable(item):
        try:
            return item()
        except Exception:
            pass
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    return str(o)


def _after_fork_in_child() -> None:
    for c in list(_clients):
        c._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def connect(app: str, devices: Optional[Sequence[int]] = None, **kw: Any) -> Client:
    """Make a :class:`Client` and start it: the one line an inference service adds."""
    return Client(app, devices, **kw).start()
