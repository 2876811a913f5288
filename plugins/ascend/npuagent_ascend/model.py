"""What one reading of the devices is, whichever source it came from, and the samples it becomes.

The npu-smi parser and the DCMI binding both fill a :class:`Snapshot`; :func:`samples`
alone turns it into metrics. So the two sources give the same names and labels for
the same device state, and a rule written against one works against the other.

Units: npu-smi prints MB that are MiB, DCMI reports MB (MiB too) and power in 0.1 W;
everything here is already in base units (bytes, watts, percent, MHz).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from npuagent.model import Event, MetricSpec, Sample

MIB = 1024 * 1024

#: npu_health's value for each health text (the text is in the `health` label too).
HEALTH = {"OK": 0, "Warning": 1, "Alarm": 2, "Critical": 3}
#: npu-smi's UNKNOWN, or a code no table knows: worse than OK, but not a known level.
HEALTH_UNKNOWN = 4

CHIP = ("npu_id", "chip_id", "device_id")


@dataclass
class Chip:
    """One chip (a die of an A3, one of the two chips of a 310P Duo card) as npu-smi numbers it."""

    npu_id: int
    chip_id: int
    #: the logical id ASCEND_RT_VISIBLE_DEVICES uses, where known
    device_id: Optional[int] = None
    name: str = ""
    bus_id: str = ""
    health: Optional[str] = None
    power_watts: Optional[float] = None
    power_limit_watts: Optional[float] = None
    temperature_celsius: Optional[float] = None
    #: overall NPU utilization where the driver reports it
    utilization_percent: Optional[float] = None
    aicore_utilization_percent: Optional[float] = None
    vector_utilization_percent: Optional[float] = None
    aicpu_utilization_percent: Optional[float] = None
    hbm_bandwidth_utilization_percent: Optional[float] = None
    aicore_frequency_mhz: Optional[float] = None
    hbm_used_bytes: Optional[float] = None
    hbm_total_bytes: Optional[float] = None
    ddr_used_bytes: Optional[float] = None
    ddr_total_bytes: Optional[float] = None
    hugepages_used: Optional[float] = None
    hugepages_total: Optional[float] = None
    #: ECC error counts by kind ("single_bit", "double_bit", ...)
    ecc_errors: Dict[str, float] = field(default_factory=dict)
    #: fault codes present now (hex-able ints), from npu-smi health or DCMI
    fault_codes: List[int] = field(default_factory=list)
    network_health: Optional[str] = None

    def labels(self) -> Dict[str, str]:
        return {"npu_id": str(self.npu_id), "chip_id": str(self.chip_id),
                "device_id": "" if self.device_id is None else str(self.device_id)}


@dataclass
class Process:
    """A process holding NPU memory on a chip (the npu-smi process table)."""

    npu_id: int
    chip_id: int
    pid: int
    name: str
    memory_bytes: float
    device_id: Optional[int] = None


@dataclass
class Snapshot:
    chips: List[Chip] = field(default_factory=list)
    processes: List[Process] = field(default_factory=list)
    tool_version: str = ""
    driver_version: str = ""
    #: lines that could not be understood: reported, never fatal
    warnings: List[str] = field(default_factory=list)


METRICS = [
    MetricSpec("npu_info", "gauge", "The chip, with value 1: name, bus id, npu-smi and driver versions.",
               (*CHIP, "name", "bus_id", "npu_smi_version", "driver_version")),
    MetricSpec("npu_health", "gauge", "Health: 0 OK, 1 Warning, 2 Alarm, 3 Critical, 4 unknown (text in `health`).",
               (*CHIP, "health")),
    MetricSpec("npu_temperature_celsius", "gauge", "Chip temperature.", CHIP),
    MetricSpec("npu_power_watts", "gauge", "Power draw.", CHIP),
    MetricSpec("npu_power_limit_watts", "gauge", "Rated power limit of the chip, where the driver says it.", CHIP),
    MetricSpec("npu_utilization_percent", "gauge",
               "Overall NPU utilization where the driver reports it, else AI core utilization.", CHIP),
    MetricSpec("npu_aicore_utilization_percent", "gauge", "AI core utilization.", CHIP),
    MetricSpec("npu_vector_utilization_percent", "gauge", "Vector core utilization.", CHIP),
    MetricSpec("npu_aicpu_utilization_percent", "gauge", "AI CPU utilization.", CHIP),
    MetricSpec("npu_hbm_bandwidth_utilization_percent", "gauge", "HBM bandwidth utilization.", CHIP),
    MetricSpec("npu_aicore_frequency_mhz", "gauge", "AI core frequency.", CHIP),
    MetricSpec("npu_memory_used_bytes", "gauge", "Main memory in use: HBM where the chip has it, else DDR.", CHIP),
    MetricSpec("npu_memory_total_bytes", "gauge", "Main memory size: HBM where the chip has it, else DDR.", CHIP),
    MetricSpec("npu_hbm_used_bytes", "gauge", "HBM in use.", CHIP),
    MetricSpec("npu_hbm_total_bytes", "gauge", "HBM size.", CHIP),
    MetricSpec("npu_ddr_used_bytes", "gauge", "DDR in use.", CHIP),
    MetricSpec("npu_ddr_total_bytes", "gauge", "DDR size.", CHIP),
    MetricSpec("npu_hugepages_used", "gauge", "Huge pages in use.", CHIP),
    MetricSpec("npu_hugepages_total", "gauge", "Huge pages available.", CHIP),
    MetricSpec("npu_ecc_errors_total", "counter", "ECC errors by kind.", (*CHIP, "type")),
    MetricSpec("npu_fault_active", "gauge", "1 for each fault code present now, with its level.",
               (*CHIP, "code", "level")),
    MetricSpec("npu_network_health", "gauge", "Network (RoCE) health: 0 OK, else the level (text in `health`).",
               (*CHIP, "health")),
    MetricSpec("npu_process_memory_bytes", "gauge", "NPU memory held by a process on a chip.",
               (*CHIP, "pid", "process")),
]

_GAUGES = (
    ("npu_temperature_celsius", "temperature_celsius"),
    ("npu_power_watts", "power_watts"),
    ("npu_power_limit_watts", "power_limit_watts"),
    ("npu_aicore_utilization_percent", "aicore_utilization_percent"),
    ("npu_vector_utilization_percent", "vector_utilization_percent"),
    ("npu_aicpu_utilization_percent", "aicpu_utilization_percent"),
    ("npu_hbm_bandwidth_utilization_percent", "hbm_bandwidth_utilization_percent"),
    ("npu_aicore_frequency_mhz", "aicore_frequency_mhz"),
    ("npu_hbm_used_bytes", "hbm_used_bytes"),
    ("npu_hbm_total_bytes", "hbm_total_bytes"),
    ("npu_ddr_used_bytes", "ddr_used_bytes"),
    ("npu_ddr_total_bytes", "ddr_total_bytes"),
)
#: huge pages are DDR's: a 910B's table says "0 / 0" of a DDR it does not have, DCMI says nothing
_HUGEPAGES = (
    ("npu_hugepages_used", "hugepages_used"),
    ("npu_hugepages_total", "hugepages_total"),
)


def health_value(text: Optional[str]) -> int:
    return HEALTH.get(text or "", HEALTH_UNKNOWN)


def samples(snap: Snapshot, fault_level: Optional[callable] = None) -> List[Sample]:
    """Every metric of a snapshot. ``fault_level(code) -> level name`` labels fault codes."""
    out: List[Sample] = []
    device_of = {(c.npu_id, c.chip_id): c.device_id for c in snap.chips}
    for c in snap.chips:
        labels = c.labels()
        out.append(Sample("npu_info", {**labels, "name": c.name, "bus_id": c.bus_id,
                                       "npu_smi_version": snap.tool_version, "driver_version": snap.driver_version},
                          1.0))
        if c.health is not None:
            out.append(Sample("npu_health", {**labels, "health": c.health}, float(health_value(c.health))))
        for metric, attr in _GAUGES + (_HUGEPAGES if c.ddr_total_bytes else ()):
            value = getattr(c, attr)
            if value is not None:
                out.append(Sample(metric, labels, float(value)))
        overall = c.utilization_percent if c.utilization_percent is not None else c.aicore_utilization_percent
        if overall is not None:
            out.append(Sample("npu_utilization_percent", labels, float(overall)))
        used, total = ((c.hbm_used_bytes, c.hbm_total_bytes) if c.hbm_total_bytes
                       else (c.ddr_used_bytes, c.ddr_total_bytes))
        if used is not None:
            out.append(Sample("npu_memory_used_bytes", labels, float(used)))
        if total is not None:
            out.append(Sample("npu_memory_total_bytes", labels, float(total)))
        for kind, count in sorted(c.ecc_errors.items()):
            out.append(Sample("npu_ecc_errors_total", {**labels, "type": kind}, float(count)))
        for code in c.fault_codes:
            level = fault_level(code) if fault_level else "unknown"
            out.append(Sample("npu_fault_active", {**labels, "code": f"{code:#x}", "level": level}, 1.0))
        if c.network_health is not None:
            out.append(Sample("npu_network_health", {**labels, "health": c.network_health},
                              float(health_value(c.network_health))))
    for p in snap.processes:
        device = p.device_id if p.device_id is not None else device_of.get((p.npu_id, p.chip_id))
        out.append(Sample("npu_process_memory_bytes",
                          {"npu_id": str(p.npu_id), "chip_id": str(p.chip_id),
                           "device_id": "" if device is None else str(device), "pid": str(p.pid),
                           "process": p.name}, float(p.memory_bytes)))
    return out


class FaultTracker:
    """Turns the fault codes present at each reading into Events when they appear.

    A fault that stays is one event and a gauge (``npu_fault_active``) for as long as
    it lasts; one that clears and comes back is a new event.
    """

    def __init__(self) -> None:
        self._present: Dict[tuple, set] = {}

    def events(self, snap: Snapshot, fault_level: Optional[callable] = None,
               describe: Optional[callable] = None) -> List[Event]:
        out = []
        seen = {}
        for c in snap.chips:
            key = (c.npu_id, c.chip_id)
            now = set(c.fault_codes)
            seen[key] = now
            for code in sorted(now - self._present.get(key, set())):
                level = fault_level(code) if fault_level else "unknown"
                out.append(Event("device_fault", {**c.labels(), "code": f"{code:#x}", "level": level},
                                 describe(code) if describe else f"fault code {code:#x}"))
        self._present = seen
        return out
