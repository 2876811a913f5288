"""``npuagent-npu-sim``: a stand-in ``npu-smi`` that plays a scenario, for demos and tests without an NPU.

A rule that should fire when an NPU overheats is only trusted once it has seen one, and
nobody overheats a production NPU to find out. The simulator prints what ``npu-smi``
prints, byte for byte in the real layouts (the same borders, header rows, column widths
and version row as the captures in the shared fixtures), with values that follow a
scenario over time. The collector runs it exactly as it runs npu-smi::

    [collectors.npu]
    mode = "npu-smi"
    command = ["npuagent-npu-sim", "--scenario", "/usr/share/npuagent/scenarios/overheat.toml"]

and then calls ``<command> info``, ``<command> info -m`` and ``<command> info -t usages -i 0 -c 0``.

Commands, as npu-smi has them::

    npuagent-npu-sim --scenario FILE [--start EPOCH] info                 the summary table
    npuagent-npu-sim --scenario FILE info -m                              chip mapping (logic ids)
    npuagent-npu-sim --scenario FILE info -l                              NPU list
    npuagent-npu-sim --scenario FILE info -t TYPE -i NPU [-c CHIP]        TYPE: usages, common, power,
                                                                          temp, health, memory, ecc
    npuagent-npu-sim --scenario FILE -v | -h | info -h

Anything else gets npu-smi's own answer to a bad command line ("Command or option is
not found.", "Error parameter of -t", "Invalid card id.") and exit status 1; a scenario
file that is missing or wrong gets ``file:line: key: message`` on stderr and status 2.

**Time.** A scenario's values are a function of the seconds elapsed since a start time:
``--start EPOCH``, else the environment variable ``NPUAGENT_SIM_START``, else the
scenario file's own mtime (so ``touch overheat.toml`` restarts a demo).
``NPUAGENT_SIM_TIME`` (epoch seconds) replaces "now", which is how the tests step through
a scenario without waiting for it. Value number ``floor(elapsed / step)`` is shown; before
the start the first one, after the end the last one holds.

**Scenario files** (TOML; see the commented examples in ``scenarios/``)::

    layout = "910B"            # "910B" (98 columns, npu-smi 23.0 - 25.5) or "310P" (106 columns)
    devices = 8                # chips; the index is the logic id (device_id) and the [devices.N] key
    step = "15s"               # the spacing of every value series
    # optional: name = "910B3", version = "25.2.0", driver_version = "25.2.0",
    #           chips_per_npu = 2 (310P Duo), npu_ids = [4, 5] (npu-smi's NPU numbers)

    temperature = "45"         # any metric at the top level is every device's default
    [devices.3]
    temperature = "45+2x20 85x20 70"    # promtool's notation, as in `npuagent rules test`
    health = [{at = "5m", value = "Alarm"}, {at = "8m", value = "OK"}]
    fault_codes = [{at = "5m", codes = ["80E01801"]}, {at = "8m", codes = []}]

    [[processes]]
    device = 0
    pid = 1234
    name = "python3"
    memory = "_x3 1024+100x50"          # MiB; `_` or `stale`: the process is not there

    hang = true                # or hang_after = "2m": npu-smi hangs (it does, in real life)

Metrics (numbers, promtool notation; the last value holds): ``temperature`` (°C),
``power`` (W; the 310P table prints NA as npu-smi 23.x and later do, and the value is the
card's power in ``-t common``), ``aicore``, ``utilization`` (default: aicore), ``vector``,
``aicpu``, ``ctrlcpu``, ``hbm_bandwidth`` (%), ``aicore_freq``, ``aicore_cur_freq`` (MHz),
``hbm_used``, ``hbm_total`` (MiB; on a 310P the DDR "Memory-Usage" column), ``ecc_single``,
``ecc_double``, ``mcu_temperature``. ``hbm_used`` left out is the chip's idle usage
(``hbm_idle``) plus the memory of its processes, so a leaking process shows on its chip.
``health`` is a word (OK, Warning, Alarm, Critical, UNKNOWN), a series of words with the
same stepping (``"OKx20 Warningx4 Alarm"`` or a list), or a list of ``{at, value}``;
``fault_codes`` a list of codes or a list of ``{at, codes}``. ``bus_id`` is per device.
"""

from __future__ import annotations

import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python < 3.11 only
    import tomli as tomllib

from npuagent.options import OptionError, close_matches, parse_duration
from npuagent.tomllines import key_lines, line_of

__all__ = ["LAYOUTS", "Scenario", "ScenarioError", "load_scenario", "main", "render", "state_at"]

TOOL = "npu-smi"
HEALTH_WORDS = ("OK", "Warning", "Alarm", "Critical", "UNKNOWN")


# -- the layouts -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """One npu-smi table layout: its fixed lines and format strings, as the driver source prints them.

    The format strings are those that ``reference/npu-smi-format.md`` quotes from
    ``npu_info_print.c``; the fixed lines are copied from real captures of the same
    layout (see :data:`LAYOUTS` for which).
    """

    name: str
    width: int
    version_row: str
    columns: str  # +----+----+----+
    header_1: str
    header_2: str
    equals: str  # +====+====+====+
    chip_separator: str  # between the chips of one NPU (310P Duo)
    process_header: str
    row_a: str
    row_b: str
    bus: str  # the Bus-Id cell's format, domain:bus:device.function
    process_row: str
    chip_name: str
    version: str
    hbm_total: int
    hbm_idle: int
    power: str  # the table's power cell: "%.1f" or the literal it prints instead
    aicore_freq: int
    aicore_count: Optional[int]
    bus_ids: Tuple[str, ...]
    has_hbm: bool

    @property
    def top(self) -> str:
        return "+" + "-" * (self.width - 2) + "+"

    def no_process(self, npu_id: int) -> str:
        return f"| No running processes found in NPU {npu_id:<7d}".ljust(self.width - 1) + "|"


#: 910B (and 910B1..4, 910ProB): 98 columns, npu-smi 23.0.x - 25.5.1 (910B3-info-1/2, 910B4-info-1).
#: 310P (and 310P3, 310P Duo): 106 columns, npu-smi 23.0.0 - 25.5.1 (310P3-info-1/2/3, 310P3-duo-info-1).
LAYOUTS: Dict[str, Layout] = {
    "910B": Layout(
        name="910B",
        width=98,
        version_row="| {tool} {version:<24} Version: {driver:<52} |",
        columns="+---------------------------+---------------+----------------------------------------------------+",
        header_1="| NPU   Name                | Health        | Power(W)    Temp(C)           Hugepages-Usage(page)|",
        header_2="| Chip                      | Bus-Id        | AICore(%)   Memory-Usage(MB)  HBM-Usage(MB)        |",
        equals="+===========================+===============+====================================================+",
        chip_separator="+" + "-" * 96 + "+",
        process_header=("| NPU     Chip              | Process id    | Process name             "
                        "| Process memory(MB)      |"),
        # "| %-5d %-20s| %-13s | %-11.1f %-17d %-5lu/ %-13lu |"
        row_a="| {npu:<5d} {name:<20}| {health:<13} | {power:<11} {temp:<17d} {huge_used:<5d}/ {huge_total:<13d} |",
        # "| %-26d| " + "%04X:%02X:%02X.%-2X | %-11u %-5d/ %-10llu %-5d/ %-13llu |"
        row_b=("| {chip:<26d}| {bus} | {aicore:<11d} {ddr_used:<5d}/ {ddr_total:<10d} {hbm_used:<5d}/ "
               "{hbm_total:<13d} |"),
        bus="{0:04X}:{1:02X}:{2:02X}.{3:<2X}",
        # "| %-7d %-18d| %-13d | %-24s | %-23lu |"
        process_row="| {npu:<7d} {chip:<18d}| {pid:<13d} | {name:<24} | {memory:<23d} |",
        chip_name="910B3",
        version="25.2.0",
        hbm_total=65536,
        hbm_idle=3400,
        power="{:.1f}",
        aicore_freq=1800,
        aicore_count=20,
        bus_ids=("0000:C1:00.0", "0000:C2:00.0", "0000:81:00.0", "0000:82:00.0",
                 "0000:01:00.0", "0000:02:00.0", "0000:41:00.0", "0000:42:00.0"),
        has_hbm=True,
    ),
    "310P": Layout(
        name="310P",
        width=106,
        version_row="| {tool} {version:<40} Version: {driver:<44} |",
        columns=("+-------------------------------+-----------------+"
                 "------------------------------------------------------+"),
        header_1=("| NPU     Name                  | Health          | Power(W)     Temp(C)  "
                  "         Hugepages-Usage(page) |"),
        header_2=("| Chip    Device                | Bus-Id          | AICore(%)    Memory-Usage(MB)"
                  "                        |"),
        equals=("+===============================+=================+"
                "======================================================+"),
        chip_separator=("+-------------------------------+-----------------+"
                        "------------------------------------------------------+"),
        process_header=("| NPU     Chip                  | Process id      | Process name             "
                        "| Process memory(MB)        |"),
        # "| %-7d %-22s| %-15s | %-12s %-17d %-6lu/ %-13lu |" with the literal NA for power
        row_a="| {npu:<7d} {name:<22}| {health:<15} | {power:<12} {temp:<17d} {huge_used:<6d}/ {huge_total:<13d} |",
        # "| %-7d %-22d| %04X:%02X:%02X.%-4X | %-12u %-5d/ %-32llu |"
        row_b="| {chip:<7d} {device:<22d}| {bus} | {aicore:<12d} {hbm_used:<5d}/ {hbm_total:<32d} |",
        bus="{0:04X}:{1:02X}:{2:02X}.{3:<4X}",
        # "| %-7d %-22d| %-15d | %-24s | %-25lu |"
        process_row="| {npu:<7d} {chip:<22d}| {pid:<15d} | {name:<24} | {memory:<25d} |",
        chip_name="310P3",
        version="25.5.1",
        hbm_total=21527,
        hbm_idle=1840,
        power="NA",
        aicore_freq=1080,
        aicore_count=None,
        bus_ids=("0000:04:00.0", "0000:81:00.0", "0000:85:00.0", "0000:07:00.0",
                 "0000:84:00.0", "0000:88:00.0", "0000:8C:00.0", "0000:90:00.0"),
        has_hbm=False,
    ),
}


# -- scenarios ---------------------------------------------------------------------------------------------


class ScenarioError(Exception):
    """A scenario file that cannot be played: says where (``file:line: key: message``)."""

    def __init__(self, file: str, line: int, key: str, message: str) -> None:
        self.file, self.line, self.key, self.message = file, line, key, message
        where = f"{file}:{line}: " if line else f"{file}: "
        super().__init__(f"{where}{key + ': ' if key else ''}{message}")


#: Metric keys, their defaults (a function of the layout) and whether the value is printed as an integer.
#: A default of None means "computed" (utilization follows aicore, hbm_used follows the processes).
METRICS: Dict[str, Any] = {
    "temperature": lambda lay: 40.0,
    "power": lambda lay: 90.0 if lay.has_hbm else 45.0,
    "aicore": lambda lay: 0.0,
    "utilization": None,
    "vector": lambda lay: 0.0,
    "aicpu": lambda lay: 0.0,
    "ctrlcpu": lambda lay: 5.0,
    "hbm_bandwidth": lambda lay: 0.0,
    "aicore_freq": lambda lay: float(lay.aicore_freq),
    "aicore_cur_freq": None,
    "hbm_used": None,
    "hbm_total": lambda lay: float(lay.hbm_total),
    "hbm_idle": lambda lay: float(lay.hbm_idle),
    "ecc_single": lambda lay: 0.0,
    "ecc_double": lambda lay: 0.0,
    "mcu_temperature": lambda lay: 38.0,
}
DEVICE_KEYS = (*METRICS, "health", "fault_codes", "bus_id")
TOP_KEYS = ("layout", "devices", "step", "name", "version", "driver_version", "chips_per_npu", "npu_ids",
            "hang", "hang_after", "processes", *DEVICE_KEYS)
PROCESS_KEYS = ("device", "pid", "name", "memory")


@dataclass
class Timeline:
    """A value that changes at given times (``[{at = "5m", value = "Alarm"}]``) or at every step."""

    stepped: List[Any] = field(default_factory=list)
    at: List[Tuple[float, Any]] = field(default_factory=list)
    initial: Any = None

    def value(self, elapsed: float, index: int) -> Any:
        if self.stepped:
            return self.stepped[min(index, len(self.stepped) - 1)]
        current = self.initial
        for when, value in self.at:
            if when <= elapsed:
                current = value
        return current


@dataclass
class Device:
    """One chip of a scenario: where npu-smi shows it and the series of each of its metrics."""

    index: int
    npu_id: int
    chip_id: int
    bus: Tuple[int, int, int, int]
    series: Dict[str, Optional[List[float]]]
    health: Timeline
    faults: Timeline


@dataclass
class ScenarioProcess:
    device: int
    pid: int
    name: str
    memory: List[Optional[float]]  # None: not running at that step


@dataclass
class Scenario:
    path: str
    layout: Layout
    step: float
    devices: List[Device]
    processes: List[ScenarioProcess]
    chips_per_npu: int
    npu_ids: List[int]
    name: str
    version: str
    driver_version: str
    hang: bool = False
    hang_after: Optional[float] = None


class _Reader:
    """Checks one scenario document and says where every mistake is."""

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.lines = key_lines(text)

    def fail(self, where: Tuple[Any, ...], message: str) -> ScenarioError:
        key = ""
        for part in where:
            key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
        return ScenarioError(self.path, line_of(self.lines, where), key, message)

    def unknown(self, table: Mapping[str, Any], allowed: Sequence[str], where: Tuple[Any, ...]) -> None:
        for key in table:
            if key not in allowed:
                raise self.fail((*where, key), f"unknown key{close_matches(key, allowed)}; known keys: "
                                               + ", ".join(allowed))

    def duration(self, value: Any, where: Tuple[Any, ...]) -> float:
        try:
            return parse_duration(value)
        except OptionError as e:
            raise self.fail(where, str(e)) from None

    def integer(self, value: Any, where: Tuple[Any, ...], minimum: int = 0) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(where, f"expected an integer of at least {minimum}, got {value!r}")
        return value

    def series(self, value: Any, where: Tuple[Any, ...], gaps: bool = False) -> List[Optional[float]]:
        """promtool's values notation, through the same parser as ``npuagent rules test``."""
        from npuagent.rulestest import STALE, NotationError, parse_values

        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = repr(value)
        try:
            values = parse_values(value)
        except NotationError as e:
            raise self.fail(where, str(e)) from None
        out: List[Optional[float]] = []
        for v in values:
            if v is None or v is STALE:
                if not gaps:
                    raise self.fail(where, "a device metric has a value at every step: `_` and `stale` are "
                                           "only for processes (use a number)")
                out.append(None)
            elif math.isnan(v) or math.isinf(v):
                raise self.fail(where, f"{v} cannot be printed by npu-smi: use a finite number")
            else:
                out.append(v)
        return out

    def health(self, value: Any, where: Tuple[Any, ...]) -> Timeline:
        words = {w.lower(): w for w in HEALTH_WORDS}

        def word(text: Any, at: Tuple[Any, ...]) -> str:
            if not isinstance(text, str) or text.lower() not in words:
                raise self.fail(at, f"expected a health word ({', '.join(HEALTH_WORDS)}), got {text!r}")
            return words[text.lower()]

        if isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            items = value.split() if isinstance(value, str) else value
            stepped: List[str] = []
            for i, item in enumerate(items):
                at = where if isinstance(value, str) else (*where, i)
                m = re.fullmatch(r"(\w+?)(?:x(\d+))?", item.strip())
                if not m:
                    raise self.fail(at, f'expected a health word or word x n ("Alarmx4"), got {item!r}')
                stepped.extend([word(m.group(1), at)] * (1 + int(m.group(2) or 0)))
            if not stepped:
                raise self.fail(where, "no health values")
            return Timeline(stepped=stepped)
        if isinstance(value, list):
            return Timeline(at=self.changes(value, where, "value", lambda v, at: word(v, at)), initial="OK")
        raise self.fail(where, 'expected a health word, a series of them ("OKx20 Alarm") or a list of '
                               '{at = "5m", value = "Alarm"}')

    def changes(self, value: List[Any], where: Tuple[Any, ...], key: str, convert: Any) -> List[Tuple[float, Any]]:
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise self.fail((*where, i), f'expected a table such as {{at = "5m", {key} = ...}}')
            self.unknown(item, ("at", key), (*where, i))
            if "at" not in item or key not in item:
                raise self.fail((*where, i), f'needs both "at" and "{key}"')
            when = self.duration(item["at"], (*where, i, "at"))
            out.append((when, convert(item[key], (*where, i, key))))
        if [w for w, _ in out] != sorted(w for w, _ in out):
            raise self.fail(where, '"at" times must be in order')
        return out

    def codes(self, value: Any, where: Tuple[Any, ...]) -> List[int]:
        if not isinstance(value, list):
            raise self.fail(where, 'expected a list of fault codes such as ["80E01801"]')
        out = []
        for i, code in enumerate(value):
            try:
                if isinstance(code, bool) or not isinstance(code, (int, str)):
                    raise ValueError
                text = code.strip() if isinstance(code, str) else ""
                number = code if isinstance(code, int) else int(text[2:] if text.lower().startswith("0x") else text,
                                                                16)
            except ValueError:
                raise self.fail((*where, i), f"expected a fault code in hex (80E01801), got {code!r}") from None
            if not 0 <= number < 1 << 36:
                raise self.fail((*where, i), f"fault code {code!r} out of range")
            out.append(number)
        return out

    def faults(self, value: Any, where: Tuple[Any, ...]) -> Timeline:
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            return Timeline(at=self.changes(value, where, "codes", self.codes), initial=[])
        return Timeline(initial=self.codes(value, where))

    def bus(self, value: Any, where: Tuple[Any, ...]) -> Tuple[int, int, int, int]:
        m = re.fullmatch(r"([0-9A-Fa-f]{4}):([0-9A-Fa-f]{2}):([0-9A-Fa-f]{2})\.([0-9A-Fa-f])", str(value))
        if not isinstance(value, str) or not m:
            raise self.fail(where, f'expected a PCIe address such as "0000:C1:00.0", got {value!r}')
        return (int(m.group(1), 16), int(m.group(2), 16), int(m.group(3), 16), int(m.group(4), 16))


def load_scenario(path: str) -> Scenario:
    """Read and check a scenario file.

    :raises ScenarioError: naming the file, the line and the key of the first problem.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ScenarioError(path, 0, "", f"cannot read the scenario: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ScenarioError(path, raw[:e.start].count(b"\n") + 1, "", "not valid UTF-8") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column \d+\)", str(e))
        line = int(m.group(1)) if m else (getattr(e, "lineno", 0) or 1)
        message = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(e))
        lines = text.splitlines()
        if 0 < line <= len(lines) and lines[line - 1].strip().startswith("[devices."):
            message += " (with [devices.N] tables, the number of chips is written `count = N` under [devices])"
        raise ScenarioError(path, line, "", f"TOML syntax error: {message}") from None
    r = _Reader(path, text)
    r.unknown(doc, TOP_KEYS, ())
    layout_name = doc.get("layout", "910B")
    if layout_name not in LAYOUTS:
        raise r.fail(("layout",), f"expected one of {', '.join(map(repr, LAYOUTS))}, got {layout_name!r}")
    layout = LAYOUTS[layout_name]
    if "devices" not in doc:
        raise r.fail((), 'missing key "devices" (how many chips: devices = 8, or count = 8 under [devices])')
    # `devices = 8` alone, or `[devices]` with `count = 8` and `[devices.3]` tables (TOML cannot have both
    # a value and tables under one key)
    per_device: Dict[str, Any] = {}
    if isinstance(doc["devices"], dict):
        per_device = {k: v for k, v in doc["devices"].items() if k != "count"}
        if "count" not in doc["devices"]:
            raise r.fail(("devices",), "missing key \"count\" (how many chips: count = 8)")
        count = r.integer(doc["devices"]["count"], ("devices", "count"), minimum=1)
    else:
        count = r.integer(doc["devices"], ("devices",), minimum=1)
    step = r.duration(doc.get("step", "15s"), ("step",))
    if step <= 0:
        raise r.fail(("step",), "the step must be longer than zero")
    chips = r.integer(doc.get("chips_per_npu", 1), ("chips_per_npu",), minimum=1)
    if layout.has_hbm and chips != 1:
        raise r.fail(("chips_per_npu",), "the 910B layout has one chip per NPU")
    if count % chips:
        raise r.fail(("devices",), f"{count} chips do not fill NPUs of {chips} chips")
    npus = count // chips
    npu_ids = doc.get("npu_ids", list(range(npus)))
    if not isinstance(npu_ids, list) or len(npu_ids) != npus:
        raise r.fail(("npu_ids",), f"expected a list of {npus} NPU numbers")
    for i, n in enumerate(npu_ids):
        r.integer(n, ("npu_ids", i))
    if len(set(npu_ids)) != len(npu_ids):
        raise r.fail(("npu_ids",), "NPU numbers must differ")
    for key in ("name", "version", "driver_version"):
        if key in doc and (not isinstance(doc[key], str) or not doc[key] or " " in doc[key]):
            raise r.fail((key,), f"expected a word, got {doc[key]!r}")
    version = doc.get("version", layout.version)
    hang = doc.get("hang", False)
    if not isinstance(hang, bool):
        raise r.fail(("hang",), f"expected true or false, got {hang!r}")
    hang_after = r.duration(doc["hang_after"], ("hang_after",)) if "hang_after" in doc else None
    for key in per_device:
        if not re.fullmatch(r"\d+", key) or int(key) >= count:
            raise r.fail(("devices", key), f"expected a device index from 0 to {count - 1} ([devices.3])")
        if not isinstance(per_device[key], dict):
            raise r.fail(("devices", key), "expected a table of metrics")
        r.unknown(per_device[key], DEVICE_KEYS, ("devices", key))
    devices = []
    for index in range(count):
        own = per_device.get(str(index), {})

        def pick(key: str, own: Mapping[str, Any] = own, index: int = index) -> Tuple[Any, Tuple[Any, ...]]:
            if key in own:
                return own[key], ("devices", str(index), key)
            return doc.get(key), (key,)

        series: Dict[str, Optional[List[float]]] = {}
        for key, default in METRICS.items():
            value, where = pick(key)
            if value is not None:
                series[key] = r.series(value, where)  # type: ignore[assignment]
            else:
                series[key] = None if default is None else [default(layout)]
        health, where = pick("health")
        faults, fwhere = pick("fault_codes")
        bus, bwhere = pick("bus_id")
        npu_index, chip_id = divmod(index, chips)
        if bus is None:
            default_bus = layout.bus_ids[npu_index] if npu_index < len(layout.bus_ids) else \
                f"0000:{0x10 + npu_index:02X}:00.0"
            bus_t = r.bus(default_bus, ("bus_id",))
        else:
            bus_t = r.bus(bus, bwhere)
        devices.append(Device(
            index=index, npu_id=npu_ids[npu_index], chip_id=chip_id, bus=bus_t, series=series,
            health=r.health(health, where) if health is not None else Timeline(initial="OK"),
            faults=r.faults(faults, fwhere) if faults is not None else Timeline(initial=[]),
        ))
    processes = []
    raw_procs = doc.get("processes", [])
    if not isinstance(raw_procs, list) or not all(isinstance(p, dict) for p in raw_procs):
        raise r.fail(("processes",), "expected [[processes]] tables")
    for i, p in enumerate(raw_procs):
        where = ("processes", i)
        r.unknown(p, PROCESS_KEYS, where)
        for key in ("device", "pid", "memory"):
            if key not in p:
                raise r.fail(where, f'missing key "{key}"')
        device = r.integer(p["device"], (*where, "device"))
        if device >= count:
            raise r.fail((*where, "device"), f"no device {device}: the scenario has devices 0 to {count - 1}")
        name = p.get("name", "")
        if not isinstance(name, str):
            raise r.fail((*where, "name"), f"expected a string, got {name!r}")
        processes.append(ScenarioProcess(device=device, pid=r.integer(p["pid"], (*where, "pid"), minimum=1),
                                         name=name, memory=r.series(p["memory"], (*where, "memory"), gaps=True)))
    return Scenario(path=path, layout=layout, step=step, devices=devices, processes=processes,
                    chips_per_npu=chips, npu_ids=list(npu_ids), name=doc.get("name", layout.chip_name),
                    version=version, driver_version=doc.get("driver_version", version),
                    hang=hang, hang_after=hang_after)


# -- the state at a time -----------------------------------------------------------------------------------


@dataclass
class ChipState:
    """What npu-smi would report for one chip at one moment (numbers as npu-smi prints them)."""

    index: int
    npu_id: int
    chip_id: int
    bus: Tuple[int, int, int, int]
    health: str
    fault_codes: List[int]
    temperature: int
    power: float
    aicore: int
    utilization: int
    vector: int
    aicpu: int
    ctrlcpu: int
    hbm_bandwidth: int
    aicore_freq: int
    aicore_cur_freq: int
    hbm_used: int
    hbm_total: int
    ecc_single: int
    ecc_double: int
    mcu_temperature: int


@dataclass
class ProcessState:
    npu_id: int
    chip_id: int
    device: int
    pid: int
    name: str
    memory: int


@dataclass
class State:
    chips: List[ChipState]
    processes: List[ProcessState]


def _at(values: List[Any], index: int) -> Any:
    return values[min(index, len(values) - 1)]


def state_at(scenario: Scenario, elapsed: float) -> State:
    """Every chip and process as the scenario has them ``elapsed`` seconds after its start."""
    index = max(0, math.floor(elapsed / scenario.step))
    by_device: Dict[int, List[ProcessState]] = {}
    for p in scenario.processes:
        memory = _at(p.memory, index)
        if memory is None:
            continue
        d = scenario.devices[p.device]
        # the kernel's comm is 15 characters, and npu-smi shows no more (hlt_host_devmm_, VLLMWorker_PP)
        by_device.setdefault(p.device, []).append(ProcessState(
            npu_id=d.npu_id, chip_id=d.chip_id, device=p.device, pid=p.pid, name=p.name[:15],
            memory=max(0, round(memory))))
    chips = []
    for d in scenario.devices:
        s = d.series

        def num(key: str, s: Dict[str, Optional[List[float]]] = s) -> float:
            return float(_at(s[key], index))  # type: ignore[arg-type]

        total = max(0, round(num("hbm_total")))
        if s["hbm_used"] is not None:
            used = round(num("hbm_used"))
        else:
            used = round(num("hbm_idle")) + sum(p.memory for p in by_device.get(d.index, []))
        aicore = round(num("aicore"))
        freq = round(num("aicore_freq"))
        chips.append(ChipState(
            index=d.index, npu_id=d.npu_id, chip_id=d.chip_id, bus=d.bus,
            health=d.health.value(elapsed, index), fault_codes=list(d.faults.value(elapsed, index)),
            temperature=round(num("temperature")), power=round(num("power"), 1),
            aicore=aicore,
            utilization=round(num("utilization")) if s["utilization"] is not None else aicore,
            vector=round(num("vector")), aicpu=round(num("aicpu")), ctrlcpu=round(num("ctrlcpu")),
            hbm_bandwidth=round(num("hbm_bandwidth")), aicore_freq=freq,
            aicore_cur_freq=round(num("aicore_cur_freq")) if s["aicore_cur_freq"] is not None else freq,
            hbm_used=min(max(0, used), total), hbm_total=total,
            ecc_single=round(num("ecc_single")), ecc_double=round(num("ecc_double")),
            mcu_temperature=round(num("mcu_temperature")),
        ))
    processes = [p for d in scenario.devices for p in by_device.get(d.index, [])]
    return State(chips=chips, processes=processes)


# -- rendering ---------------------------------------------------------------------------------------------


def _npus(scenario: Scenario, state: State) -> List[Tuple[int, List[ChipState]]]:
    out: List[Tuple[int, List[ChipState]]] = []
    for chip in state.chips:
        if not out or out[-1][0] != chip.npu_id:
            out.append((chip.npu_id, []))
        out[-1][1].append(chip)
    return out


def render_table(scenario: Scenario, state: State) -> str:
    """``npu-smi info``: the summary table and the process table."""
    lay = scenario.layout
    lines = [lay.top, lay.version_row.format(tool=TOOL, version=scenario.version, driver=scenario.driver_version),
             lay.columns, lay.header_1, lay.header_2, lay.equals]
    npus = _npus(scenario, state)
    for _npu, chips in npus:
        for i, c in enumerate(chips):
            if i:
                lines.append(lay.chip_separator)
            power = lay.power.format(c.power) if "{" in lay.power else lay.power
            lines.append(lay.row_a.format(npu=c.npu_id, name=scenario.name, health=c.health, power=power,
                                          temp=c.temperature, huge_used=0, huge_total=0))
            lines.append(lay.row_b.format(chip=c.chip_id, device=c.index, bus=lay.bus.format(*c.bus),
                                          aicore=c.aicore, ddr_used=0, ddr_total=0, hbm_used=c.hbm_used,
                                          hbm_total=c.hbm_total))
        lines.append(lay.equals)
    lines += [lay.columns, lay.process_header, lay.equals]
    for npu, _chips in npus:
        rows = [p for p in state.processes if p.npu_id == npu]
        for p in rows:
            lines.append(lay.process_row.format(npu=p.npu_id, chip=p.chip_id, pid=p.pid, name=p.name,
                                                memory=p.memory))
        if not rows:
            lines.append(lay.no_process(npu))
        lines.append(lay.equals)
    return "\n".join(lines) + "\n"


def render_mapping(scenario: Scenario, state: State) -> str:
    """``npu-smi info -m``: ``"\\t%-30s %-30s %-30s %-30s"``, the MCU last in each NPU (logic id ``-``)."""
    lines = ["\t{:<30} {:<30} {:<30} {:<30}".format("NPU ID", "Chip ID", "Chip Logic ID", "Chip Name")]
    for npu, chips in _npus(scenario, state):
        for c in chips:
            lines.append(f"\t{npu:<30d} {c.chip_id:<30d} {c.index:<30d} Ascend {scenario.name}")
        lines.append("\t{:<30d} {:<30d} {:<30} {:<30}".format(npu, len(chips), "-", "Mcu"))
    return "\n".join(lines) + "\n"


def render_list(scenario: Scenario, state: State) -> str:
    """``npu-smi info -l``: the NPUs and their chip counts (310 family: with product name and serial)."""
    out = [_kv("Total Count", len(scenario.npu_ids)), ""]
    for npu, chips in _npus(scenario, state):
        out.append(_kv("NPU ID", npu))
        if not scenario.layout.has_hbm:
            out.append(_kv("Product Name", "Atlas 300I Duo" if len(chips) > 1 else "Atlas 300I Pro"))
            out.append(_kv("Serial Number", "NA"))
        out += [_kv("Chip Count", len(chips)), ""]
    return "\n".join(out) + "\n"


def _kv(key: str, value: Any, width: int = 30) -> str:
    """npu-smi's key/value line: ``"\\t%-30s : %s"`` (``-t ecc`` uses 40)."""
    return f"\t{key:<{width}} : {value}"


def _chip_lines(scenario: Scenario, form: str, c: ChipState) -> List[Tuple[str, Any]]:
    """The lines of one chip in a ``-t`` form, without its Chip ID line."""
    hbm = scenario.layout.has_hbm
    rate = c.hbm_used * 100 // c.hbm_total if c.hbm_total else 0
    if form == "usages":
        if hbm:
            return [("DDR Capacity(MB)", 0), ("DDR Usage Rate(%)", 0), ("DDR Hugepages Total(page)", 0),
                    ("DDR Hugepages Usage Rate(%)", 0), ("HBM Capacity(MB)", c.hbm_total),
                    ("HBM Usage Rate(%)", rate), ("Aicore Usage Rate(%)", c.aicore),
                    ("Aivector Usage Rate(%)", c.vector), ("Aicpu Usage Rate(%)", c.aicpu),
                    ("Ctrlcpu Usage Rate(%)", c.ctrlcpu), ("DDR Bandwidth Usage Rate(%)", 0),
                    ("HBM Bandwidth Usage Rate(%)", c.hbm_bandwidth), ("NPU Utilization(%)", c.utilization),
                    ("Aicube Usage Rate(%)", c.aicore)]
        return [("DDR Capacity(MB)", c.hbm_total), ("DDR Usage Rate(%)", rate), ("DDR Hugepages Total(page)", 0),
                ("DDR Hugepages Usage Rate(%)", 0), ("Aicore Usage Rate(%)", c.aicore),
                ("Aicpu Usage Rate(%)", c.aicpu), ("Ctrlcpu Usage Rate(%)", c.ctrlcpu),
                ("Vectorcore Usage Rate(%)", c.vector), ("DDR Bandwidth Usage Rate(%)", c.hbm_bandwidth),
                ("DVPP VDEC Usage Rate(%)", 0), ("DVPP VPC Usage Rate(%)", 0), ("DVPP VENC Usage Rate(%)", 0),
                ("DVPP JPEGE Usage Rate(%)", 0), ("DVPP JPEGD Usage Rate(%)", 0)]
    if form == "common":
        lines: List[Tuple[str, Any]] = [("Memory Usage Rate(%)", 0 if hbm else rate)]
        if hbm:
            lines.append(("HBM Usage Rate(%)", rate))
        lines += [("Aicore Usage Rate(%)", c.aicore), ("Aicore Freq(MHZ)", c.aicore_freq),
                  ("Aicore curFreq(MHZ)", c.aicore_cur_freq)]
        if scenario.layout.aicore_count is not None:
            lines.append(("Aicore Count", scenario.layout.aicore_count))
        lines.append(("Temperature(C)", c.temperature))
        if hbm:
            lines.append(("NPU Real-time Power(W)", f"{c.power:.1f}"))
        return lines
    if form == "power":
        return [("NPU Real-time Power(W)", f"{c.power:.1f}")]
    if form == "temp":
        return [("NPU Temperature (C)" if hbm else "Temperature (C)", c.temperature)]
    if form == "memory":
        if hbm:
            return [("DDR Capacity(MB)", 0), ("DDR Clock Speed(MHz)", 0), ("HBM Capacity(MB)", c.hbm_total),
                    ("HBM Clock Speed(MHz)", 1600), ("HBM Temperature(C)", c.temperature),
                    ("HBM Manufacturer ID", "0x56")]
        return [("Total DDR Capacity(MB)", c.hbm_total), ("DDR Capacity(MB)", c.hbm_total),
                ("DDR Clock Speed(MHz)", 3200)]
    if form == "ecc":
        if hbm:
            # the keys and order of the 910 capture (910-ecc-1.txt)
            return [("DDR Single Bit Error Count", 0), ("DDR Double Bit Error Count", 0),
                    ("DDR Single Bit Aggregate Total Err Cnt", 0), ("DDR Double Bit Aggregate Total Err Cnt", 0),
                    ("DDR Single Bit Isolated Pages Count", 0), ("DDR Double Bit Isolated Pages Count", 0),
                    ("HBM Single Bit Error Count", c.ecc_single), ("HBM Double Bit Error Count", c.ecc_double),
                    ("HBM Single Bit Aggregate Total Err Cnt", c.ecc_single),
                    ("HBM Double Bit Aggregate Total Err Cnt", c.ecc_double),
                    ("HBM Single Bit Isolated Pages Count", 0), ("HBM Double Bit Isolated Pages Count", 0)]
        return [("DDR Single Bit Error Count", c.ecc_single), ("DDR Double Bit Error Count", c.ecc_double),
                ("DDR Single Bit Aggregate Total Err Cnt", c.ecc_single),
                ("DDR Double Bit Aggregate Total Err Cnt", c.ecc_double),
                ("DDR Single Bit Isolated Pages Count", 0), ("DDR Double Bit Isolated Pages Count", 0),
                ("DDR Single Bit Next-Isolated Pages Count", 0), ("DDR Double Bit Next-Isolated Pages Count", 0)]
    raise AssertionError(form)


#: The -t forms the simulator plays; the others of npu-smi's list are answered "does not support".
FORMS = ("usages", "common", "power", "temp", "health", "memory", "ecc")
#: Every -t type of the pre-A5 npu-smi (its -h text); anything else is "Error parameter of -t".
KNOWN_TYPES = (
    "board", "flash", "memory", "usages", "sensors", "temp", "power", "volt", "mac-addr", "common", "health",
    "product", "ecc", "ip", "sys-time", "i2c_check", "work-mode", "ecc-enable", "p2p-enable", "ssh-enable",
    "license", "customized-info", "device-share", "nve-level", "aicpu-config", "pcie-err", "mcu-monitor",
    "err-count", "boot-area", "vnpu-mode", "info-vnpu", "vnpu-svm", "cpu-num-cfg", "first-power-on-date",
    "proc-mem", "phyid-remap", "vnpu-cfg-recover", "key-manage", "template-info", "pkcs-enable", "p2p-mem-cfg",
    "pwm-mode", "pwm-duty-ratio", "boot-select", "topo",
)


def render_detail(scenario: Scenario, state: State, form: str, npu: int, chip: Optional[int]) -> str:
    """``npu-smi info -t <form> -i <npu> [-c <chip>]`` in the key/value layout.

    Without ``-c``: ``NPU ID`` and ``Chip Count``, then one block per chip separated by
    blank lines, with ``Chip ID`` last (first in ``common`` and ``health``), then the MCU
    block where the real tool prints one. With ``-c``: the chip's lines alone.
    """
    chips = [c for c in state.chips if c.npu_id == npu]
    hbm = scenario.layout.has_hbm
    width = 40 if form == "ecc" else 30
    if form == "health" and chip is not None:
        c = chips[chip]
        out = [_kv("Health Status", c.health)]
        if not c.fault_codes:
            return "\n".join(out + [_kv("Error Code", "NA"), _kv("Error Information", "NA")]) + "\n"
        # print_diagnosis_info: " %04X" per code; the information line per code, each after the first
        # as "\n\t%-30s : %s" (so a blank line comes between them). Without Huawei's error strings
        # (dcmi_get_device_errorcode_string answering NOT_SUPPORT), the tool prints the code in decimal.
        text = "\n".join(out) + "\n" + f"\t{'Error Code':<30} :" + "".join(f" {code:04X}" for code in
                                                                           c.fault_codes) + "\n"
        for i, code in enumerate(c.fault_codes):
            text += f"\t{'Error Information':<30} : {code}\n" if i == 0 else f"\n\t{' ':<30} : {code}\n"
        return text
    if chip is not None:
        c = chips[chip]
        return "\n".join(_kv(k, v, width) for k, v in _chip_lines(scenario, form, c)) + "\n"
    out = [_kv("NPU ID", npu, width), _kv("Chip Count", len(chips), width)]
    for c in chips:
        out.append("")
        if form == "health":
            out += [_kv("Chip ID", c.chip_id), _kv("Health", c.health)]
        elif form == "common":
            out += [_kv("Chip ID", c.chip_id)] + [_kv(k, v) for k, v in _chip_lines(scenario, form, c)]
        else:
            out += [_kv(k, v, width) for k, v in _chip_lines(scenario, form, c)] + [_kv("Chip ID", c.chip_id, width)]
    mcu = chips[0] if chips else None
    if mcu is not None:
        if form == "common":
            out += ["", _kv("Chip Name", "mcu"), _kv("Temperature(C)", mcu.mcu_temperature)]
            if not hbm:
                out.append(_kv("NPU Real-time Power(W)", f"{mcu.power:.1f}"))
        elif form == "temp" and hbm:
            out += ["", _kv("LM75A_TE (C)", mcu.mcu_temperature - 2), _kv("LM75B_TE (C)", mcu.mcu_temperature - 2),
                    _kv("Chip Name", "MCU")]
        elif form == "health":
            out += ["", _kv("Health", "OK"), _kv("Chip Name", "MCU")]
    return "\n".join(out) + "\n"


def render(scenario: Scenario, elapsed: float, args: Sequence[str]) -> Tuple[str, int]:
    """The output and exit status of ``npu-smi <args>`` at ``elapsed`` seconds into the scenario."""
    state = state_at(scenario, elapsed)
    if not args or args[0] in ("-h", "--help"):
        return TOP_HELP, 0 if args else 1
    if args[0] == "-v":
        return f"{TOOL} version: {scenario.version}\n", 0
    if args[0] != "info":
        return "Command or option is not found.\n" + TOP_HELP, 1
    rest = list(args[1:])
    if not rest:
        return render_table(scenario, state), 0
    if rest in (["-h"], ["--help"]):
        return INFO_HELP, 0
    if rest == ["-m"]:
        return render_mapping(scenario, state), 0
    if rest == ["-l"]:
        return render_list(scenario, state), 0
    options: Dict[str, str] = {}
    i = 0
    while i < len(rest):
        opt = rest[i]
        if opt not in ("-t", "-i", "-c", "-p") or opt in options:
            return "Command or option is not found.\n" + INFO_HELP, 1
        if i + 1 >= len(rest):
            if opt == "-i":
                return "Invalid card id.\n", 1
            if opt == "-c":
                return "Invalid chip id.\n", 1
            return f"Error parameter of {opt}\n" + INFO_HELP, 1
        options[opt] = rest[i + 1]
        i += 2
    form = options.get("-t")
    if form is None or form not in KNOWN_TYPES:
        return "Error parameter of -t\n" + INFO_HELP, 1
    if "-i" not in options:
        return "Invalid card id.\n", 1
    try:
        npu = int(options["-i"])
    except ValueError:
        return "Invalid card id.\n", 1
    if npu not in scenario.npu_ids:
        return "Invalid card id.\n", 1
    chip: Optional[int] = None
    if "-c" in options:
        try:
            chip = int(options["-c"])
        except ValueError:
            return "Invalid chip id.\n", 1
        if not 0 <= chip < scenario.chips_per_npu:
            return "Invalid chip id.\n", 1
    if form not in FORMS or (form == "power" and not scenario.layout.has_hbm):
        # the 310P reports no per-chip power (the table prints NA); its card power is in -t common
        return f"This device does not support querying {form} info.\n", 1
    return render_detail(scenario, state, form, npu, chip), 0


TOP_HELP = """\
Usage: npu-smi <Command|-h|-v> [Options...]

npu-smi Command:
\t-h            This command's help information
\t--help        This command's help information
\t-v            Show npu-smi version information
\tinfo          Show hardware details
\tset           Modify device configuration properties
\tclear         Clear device information
\tupgrade       Upgrade MCU firmware
"""

#: npu-smi info -h, as 910B1-info_help-1.txt captured it (npu-smi 23.0.rc2).
INFO_HELP = """\
Usage: npu-smi info <watch|proc|-h|-m|-l|-t type> [Options...]

Commands:
       watch          Show all device's status in scrolling format
       proc           Show device's matrix process status in scrolling format
       -h, --help     Show this help text and exit
       -m             Show all device's mapping information
       -l             Show all device's topology information
       -t type        Show information for type
                      type: board, flash, memory, usages, sensors, temp, power, volt, mac-addr,
                            common, health, product, ecc, ip, sys-time, i2c_check, work-mode,
                            ecc-enable, p2p-enable, ssh-enable, license, customized-info,
                            device-share, nve-level, aicpu-config, pcie-err, mcu-monitor,
                            err-count, boot-area, vnpu-mode, info-vnpu, vnpu-svm, cpu-num-cfg,
                            first-power-on-date, proc-mem, phyid-remap, vnpu-cfg-recover, key-manage,
                            template-info, pkcs-enable, p2p-mem-cfg, pwm-mode, pwm-duty-ratio,
                            boot-select, topo.

Options:
       -i %d          Card ID
       -c %d          Chip ID
       -p %d          Chip Physical ID
"""

SIM_USAGE = """\
usage: npuagent-npu-sim --scenario FILE [--start EPOCH] <npu-smi arguments>

A stand-in npu-smi that prints real-format output from a scenario file.
  --scenario FILE   the scenario (TOML); see the scenarios shipped in npuagent_ascend/scenarios/
  --start EPOCH     when the scenario started (default: $NPUAGENT_SIM_START, else the file's mtime)
  $NPUAGENT_SIM_TIME replaces "now" (epoch seconds), to look at any moment of a scenario
"""


def _epoch(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{what}: expected epoch seconds, got {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{what}: expected epoch seconds, got {text!r}")
    return value


def _hang() -> None:
    """Do what a wedged npu-smi does (HAMi libvnpu mismatch, a hung driver call): nothing, forever."""
    sys.stdout.flush()
    while True:
        time.sleep(3600)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The console script. Exit status: npu-smi's (0, or 1 for a bad command line); 2 for a bad scenario."""
    args = list(sys.argv[1:] if argv is None else argv)
    path: Optional[str] = None
    start: Optional[str] = None
    while args and args[0].startswith("--") and args[0] not in ("--help",):
        opt = args.pop(0)
        name, eq, value = opt.partition("=")
        if name not in ("--scenario", "--start"):
            sys.stderr.write(f"npuagent-npu-sim: unknown option {opt}\n{SIM_USAGE}")
            return 2
        if not eq:
            if not args:
                sys.stderr.write(f"npuagent-npu-sim: {name} needs a value\n{SIM_USAGE}")
                return 2
            value = args.pop(0)
        if name == "--scenario":
            path = value
        else:
            start = value
    if path is None:
        sys.stderr.write(f"npuagent-npu-sim: --scenario FILE is required\n{SIM_USAGE}")
        return 2
    try:
        scenario = load_scenario(path)
    except ScenarioError as e:
        sys.stderr.write(f"npuagent-npu-sim: {e}\n")
        return 2
    try:
        if start is not None:
            t0 = _epoch(start, "--start")
        elif os.environ.get("NPUAGENT_SIM_START"):
            t0 = _epoch(os.environ["NPUAGENT_SIM_START"], "NPUAGENT_SIM_START")
        else:
            t0 = os.stat(path).st_mtime
        now = _epoch(os.environ["NPUAGENT_SIM_TIME"], "NPUAGENT_SIM_TIME") if os.environ.get(
            "NPUAGENT_SIM_TIME") else time.time()
    except (ValueError, OSError) as e:
        sys.stderr.write(f"npuagent-npu-sim: {e}\n")
        return 2
    elapsed = now - t0
    if scenario.hang or (scenario.hang_after is not None and elapsed >= scenario.hang_after):
        _hang()
    text, status = render(scenario, elapsed, args)
    sys.stdout.write(text)
    sys.stdout.flush()
    return status


if __name__ == "__main__":  # pragma: no cover - `python -m npuagent_ascend.sim`
    sys.exit(main())
