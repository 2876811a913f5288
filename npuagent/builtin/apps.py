"""Inference processes connected through :mod:`npuagent.client`: their metrics, and the actions sent to them.

* The ``apps`` collector serves what the connected apps pushed last (latency histograms by
  stage, requests by status, TTFT, TPOT, queue length, output validity, allocator reserved
  and allocated bytes per device), labelled ``app`` and ``pid`` from the kernel's peer
  credentials; a session's series leave when it disconnects.
* The ``empty_cache`` action asks the allocator of the processes on the alert's device to
  give its cached blocks back; ``throttle`` lowers their concurrency limit and restores it
  when the alert resolves (or its ``ttl`` ends).

Which processes: those of ``app`` when the action names one; else the alert's ``pid`` label
when it has one; else the processes on the alert's device: the pids that a device
collector's per-process metric (``process_metric``, by default npu-smi's process table
``npu_process_memory_bytes``) shows on that ``device_id``, matched with the sessions' peer
pids, and the sessions whose hello listed that device. The core names no device: the
metric and label are options.
"""

from __future__ import annotations

import abc
from typing import Any, Dict, List, Sequence

from .. import hookimpl
from ..model import ActionRequest, ActionResult, ActionType, CollectorType, MetricSpec
from ..options import Number, Option, String

_APP = ("app", "pid")

METRICS = [
    MetricSpec("app_connected", "gauge", "1 for each app process connected to the control socket.", _APP),
    MetricSpec("inference_latency_seconds", "histogram", "Time of each stage of a request, as the app measured it.",
               (*_APP, "stage")),
    MetricSpec("inference_requests_total", "counter", "Requests by stage and status (ok, error, cancelled).",
               (*_APP, "stage", "status")),
    MetricSpec("inference_latency_mean_seconds", "gauge", "Mean time of a stage over the app's last push interval.",
               (*_APP, "stage")),
    MetricSpec("inference_ttft_seconds", "histogram", "Time to the first token.", _APP),
    MetricSpec("inference_tpot_seconds", "histogram", "Time per output token after the first.", _APP),
    MetricSpec("inference_queue_length", "gauge", "Requests waiting in the app.", _APP),
    MetricSpec("inference_outputs_total", "counter", "Answers by validity (the app's own check).", (*_APP, "valid")),
    MetricSpec("app_memory_reserved_bytes", "gauge", "Device memory the app's allocator holds (reserved).",
               (*_APP, "device_id")),
    MetricSpec("app_memory_allocated_bytes", "gauge", "Device memory in use by the app's tensors (allocated).",
               (*_APP, "device_id")),
]


class Apps:
    """The ``apps`` collector: the latest push of every connected app (nothing when the agent does not listen)."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx

    def collect(self) -> List[Any]:
        return self.ctx.control.samples() if self.ctx.control is not None else []


TARGETING = [
    Option("app", String(), "", "Send to every process of this app (its hello's name); "
                                "\"\" means the alert's pid, else the processes on the alert's device."),
    Option("process_metric", String(), "npu_process_memory_bytes",
           "A per-process metric with `pid` and the device label: which pids are on a device."),
    Option("device_label", String(), "device_id", "The label naming the device, on the alert and on that metric."),
]


class _AppAction(abc.ABC):
    """What ``empty_cache`` and ``throttle`` share: finding the sessions, sending, summing up the replies."""

    command = ""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        o = ctx.options
        self.app: str = o["app"]
        self.process_metric: str = o["process_metric"]
        self.device_label: str = o["device_label"]

    def target(self, request: ActionRequest) -> str:
        if self.app:
            return f"app:{self.app}"
        if request.labels.get("pid"):
            return f"pid:{request.labels['pid']}"
        return f"{self.device_label}:{request.labels.get(self.device_label, '')}"

    def sessions(self, request: ActionRequest) -> List[Any]:
        control = self.ctx.control
        if control is None:
            return []
        sessions = control.sessions()
        if self.app:
            return [s for s in sessions if s.app == self.app]
        pid = request.labels.get("pid")
        if pid:
            return [s for s in sessions if str(s.pid) == pid]
        device = request.labels.get(self.device_label)
        if device is None or device == "":
            return []
        pids = {s.labels.get("pid") for s in self.ctx.latest(self.process_metric)
                if s.labels.get(self.device_label) == device}
        return [s for s in sessions if str(s.pid) in pids or (device.isdigit() and int(device) in s.devices)]

    def send(self, request: ActionRequest, args: Dict[str, Any], what: str) -> ActionResult:
        name = self.ctx.name
        if self.ctx.control is None:
            return ActionResult(name, "failure", "the agent does not listen for apps ([control] enabled = false)")
        sessions = self.sessions(request)
        if not sessions:
            return ActionResult(name, "skipped", f"no connected app process for {self.target(request)}")
        who = ", ".join(s.describe() for s in sessions)
        if request.dry_run:
            return ActionResult(name, "dry-run", f"would {what} of {who}")
        lines, failed = [], 0
        for s in sessions:
            try:
                result = self.ctx.control.command(s.id, self.command, args, timeout=max(self.ctx.remaining(), 0.5))
                lines.append(f"{s.describe()}: {self.describe(result)}")
            except Exception as e:
                failed += 1
                lines.append(str(e))
        outcome = "success" if failed == 0 else "failure"
        return ActionResult(name, outcome, "\n".join(lines))

    @abc.abstractmethod
    def describe(self, result: Dict[str, Any]) -> str:
        """One app's reply, in words for the audit log and the message."""


def _mib(value: Any) -> str:
    return f"{float(value) / 2**20:.0f} MiB" if isinstance(value, (int, float)) else "?"


class EmptyCache(_AppAction):
    """Frees the allocator's cached, unused device memory (``torch.npu.empty_cache()``) in the app."""

    command = "empty_cache"

    def run(self, request: ActionRequest) -> ActionResult:
        return self.send(request, {}, "free the cached device memory")

    def describe(self, result: Dict[str, Any]) -> str:
        return (f"reserved {_mib(result.get('reserved_before'))} -> {_mib(result.get('reserved_after'))} "
                f"(freed {_mib(result.get('freed'))})")


class Throttle(_AppAction):
    """Lowers the app's concurrency limit (a factor of its original, or a fixed limit); restores it on revert."""

    command = "set_concurrency"

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self.factor = ctx.options["factor"]
        self.limit = ctx.options["limit"]
        if (self.factor is None) == (self.limit is None):
            raise ValueError("give exactly one of factor (of the app's original limit) or limit")

    def run(self, request: ActionRequest) -> ActionResult:
        args = {"factor": self.factor} if self.factor is not None else {"limit": int(self.limit)}
        return self.send(request, args, f"set the concurrency to {self._says(args)}")

    def revert(self, request: ActionRequest) -> ActionResult:
        return self.send(request, {"restore": True}, "restore the original concurrency")

    def describe(self, result: Dict[str, Any]) -> str:
        return f"concurrency {_limit(result.get('old_limit'))} -> {_limit(result.get('new_limit'))}"

    @staticmethod
    def _says(args: Dict[str, Any]) -> str:
        return f"{args['factor']:g} x the original limit" if "factor" in args else str(args["limit"])


def _limit(value: Any) -> str:
    return "unlimited" if value is None else str(value)


@hookimpl
def npuagent_collector_types() -> Sequence[CollectorType]:
    return [CollectorType(
        "apps", Apps, interval=1.0, timeout=1.0, metrics=METRICS,
        help="What inference processes connected through npuagent.client pushed last (needs [control]).",
    )]


@hookimpl
def npuagent_action_types() -> Sequence[ActionType]:
    return [
        ActionType("empty_cache", EmptyCache, options=TARGETING,
                   help="Free the allocator's cached device memory in the app processes on the alert's device."),
        ActionType("throttle", Throttle, options=[
            *TARGETING,
            Option("factor", Number(min=0.01, max=1), None, "The new limit as a share of the app's original one."),
            Option("limit", Number(min=1), None, "The new limit, as a number of concurrent requests."),
        ], help="Lower the concurrency of the app processes on the alert's device; restored on resolve."),
    ]
