"""npuagent-ascend: Huawei Ascend NPUs for npuagent, as a plugin found through the entry points.

One collector type, ``npu``, reads every chip through one of two sources:

* ``dcmi``: libdcmi.so through ctypes (:mod:`npuagent_ascend.dcmi`): fast, and it can
  report device faults the moment the driver sees them;
* ``npu-smi``: the command's tables, parsed by cells and tokens
  (:mod:`npuagent_ascend.npusmi`): slow (1 to 10 s on a busy 8-NPU host), but there
  wherever the driver is.

``mode = "auto"`` (the default) prefers DCMI and falls back to npu-smi when the
library is missing or fails; both fill one :class:`~npuagent_ascend.model.Snapshot`
and :func:`~npuagent_ascend.model.samples` alone names the metrics, so rules do not
care which source answered. Device fault codes are labelled with their fault level
(:mod:`npuagent_ascend.faults`) and become ``device_fault`` events when they appear.

Configuration (all optional)::

    [collectors.npu]
    mode = "auto"                 # auto, dcmi or npu-smi
    interval = "30s"              # npu-smi costs seconds: keep it slow
    timeout = "20s"
    command = ["npu-smi"]         # or the simulator: ["npuagent-npu-sim", "--scenario", "overheat.toml"]
    library = ""                  # libdcmi.so; "" tries the usual paths
    details = []                  # npu-smi -t forms: usages, common, power, temp, health, ecc, memory
    mapping = false               # npu-smi info -m, for device_id on chips whose table lacks it
"""

from __future__ import annotations

import logging
from typing import Any, List, Optional, Set

from npuagent import hookimpl
from npuagent.model import CollectorType
from npuagent.options import Array, Boolean, OneOf, Option, String

from . import faults
from .model import METRICS, FaultTracker, Snapshot, samples

log = logging.getLogger("npuagent.ascend")

FORMS = ("usages", "common", "power", "temp", "health", "ecc", "memory")

OPTIONS = [
    Option("mode", OneOf("auto", "dcmi", "npu-smi"), "auto",
           "auto: DCMI (libdcmi.so) when it loads and answers, else npu-smi; or only one of them."),
    Option("command", Array(String()), ("npu-smi",),
           "npu-smi as an argv list (a path, or a stand-in such as npuagent-npu-sim with its arguments)."),
    Option("library", String(), "", 'Path of libdcmi.so; "" tries the usual paths.'),
    Option("details", Array(OneOf(*FORMS)), (),
           "Extra `npu-smi info -t <form>` calls per chip (each costs seconds on a busy host)."),
    Option("mapping", Boolean(), False, "Run `npu-smi info -m` for the logic id (device_id) of every chip."),
]


class NpuCollector:
    """The ``npu`` collector: DCMI, npu-smi, or DCMI falling back to npu-smi."""

    def __init__(self, ctx: Any) -> None:
        o = ctx.options
        self.ctx = ctx
        self.mode: str = o["mode"]
        self.command = tuple(o["command"])
        self.library: Optional[str] = o["library"] or None
        self.details = tuple(o["details"])
        self.mapping: bool = o["mapping"]
        if not self.command:
            raise ValueError("command must name npu-smi (an argv list of at least one item)")
        self.dcmi: Any = None  # opened at the first collection: a factory does no I/O
        self.source = ""
        self._faults = FaultTracker()
        self._said: Set[str] = set()

    def _read_dcmi(self) -> Optional[Snapshot]:
        from .dcmi import Dcmi, DcmiError, DcmiUnavailable

        try:
            if self.dcmi is None:
                self.dcmi = Dcmi(self.library, on_event=lambda event: self.ctx.emit([event]))
            return self.dcmi.read(self.ctx.remaining())
        except (DcmiUnavailable, DcmiError) as e:
            if self.mode == "dcmi":
                raise
            self._once(f"dcmi:{e}", "DCMI unusable (%s); reading npu-smi instead", e)
            return None

    def collect(self) -> List[Any]:
        from . import npusmi

        snap = self._read_dcmi() if self.mode in ("auto", "dcmi") else None
        self.source = "dcmi" if snap is not None else "npu-smi"
        if snap is None:
            snap = npusmi.read(self.ctx, self.command, forms=self.details, mapping=self.mapping)
        for warning in snap.warnings:
            self._once(f"warn:{warning}", "%s: %s", self.source, warning)
        return [*samples(snap, faults.level), *self._faults.events(snap, faults.level, faults.describe)]

    def _once(self, key: str, message: str, *args: Any) -> None:
        """Say a thing once per collector, not on every collection."""
        if key not in self._said:
            self._said.add(key)
            log.warning(message, *args)

    def close(self) -> None:
        if self.dcmi is not None:
            self.dcmi.close()
            self.dcmi = None


@hookimpl
def npuagent_collector_types() -> List[CollectorType]:
    from . import cannlog

    return [CollectorType(
        name="npu", factory=NpuCollector, options=OPTIONS, interval=30.0, timeout=20.0, metrics=METRICS,
        help="Every Ascend chip: health, temperature, power, utilizations, memory, frequency, ECC, faults and "
             "the processes holding NPU memory, through DCMI or npu-smi.",
    ), CollectorType(
        name="cann_log", factory=cannlog.CannLogCollector, options=cannlog.OPTIONS, interval=2.0, timeout=10.0,
        metrics=cannlog.METRICS,
        help="CANN plog and device logs and the journal of serving units: messages by level and module, HCCL and "
             "CANN errors by kind and code, and hccl_error / cann_error events for the rules.",
    )]
