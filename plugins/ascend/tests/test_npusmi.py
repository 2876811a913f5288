"""The npu-smi parser against every real capture in ``<repo>/../shared/fixtures/npu-smi``.

Every expected value below was read by hand off the fixture text, not off the parser's output.
Every capture of a command the collector runs (``info``, ``info -m``, ``info -t <form>`` for the
forms of :data:`npusmi.FORMS`) goes through the real subprocess path: a stand-in ``npu-smi`` script
in ``tmp_path`` prints the capture (``-m`` and ``-t`` ones with a table of the same chip family),
and :func:`npusmi.read` runs it through ``PluginContext.run``. The captures of commands the
collector never runs (:data:`NEVER_RUN`) are parsed directly. The fixtures are never copied or edited.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import pytest
from npuagent_ascend import npusmi
from npuagent_ascend.model import Chip, Process, Snapshot, samples

from npuagent.commands import CommandNotFound
from npuagent.context import PluginContext

REPO = Path(__file__).resolve().parents[3]
FIXTURES = REPO.parent / "shared" / "fixtures" / "npu-smi"
MIB = 1024 * 1024  # npu-smi's "MB"

pytestmark = pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"no npu-smi captures at {FIXTURES}")


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


# ---------------------------------------------------------------------------------------------------
# expected values, by hand from the captures

Pair = Optional[Tuple[float, float]]


class C(NamedTuple):
    """One chip as the table prints it; memory pairs in MiB (used, total), None where the chip has none."""

    npu: int
    chip: int
    device: Optional[int]
    name: str
    bus: str
    health: str
    power: Optional[float]
    temp: float
    aicore: float
    hugepages: Pair
    ddr: Pair
    hbm: Pair


class Info(NamedTuple):
    tool: str
    driver: str
    chips: List[C]
    processes: List[Tuple[int, int, int, str, int]]  # npu, chip, pid, name, MiB
    warnings: Sequence[str] = ()  # regexes, one per expected warning


def _910b(name: str, total: int, rows: Sequence[Tuple[str, float, int, int, int]]) -> List[C]:
    """8 single-chip 910B NPUs: (bus, power, temp, aicore, hbm used); DDR is the forced 0 / 0."""
    return [C(n, 0, None, name, bus, "OK", power, temp, aicore, (0, 0), None, (hbm, total))
            for n, (bus, power, temp, aicore, hbm) in enumerate(rows)]


def _910a(name: str, hugepages: Tuple[int, int], rows: Sequence[Tuple[str, str, float, int, int, int]]) -> List[C]:
    """8 single-chip 910A NPUs: (bus, health, power, temp, ddr used, ddr total); HBM 0 / 32768."""
    return [C(n, 0, None, name, bus, health, power, temp, 0, hugepages, (used, total), (0, 32768))
            for n, (bus, health, power, temp, used, total) in enumerate(rows)]


A3_PROCESSES = [(0, 0, pid, "", 141) for pid in (935440, 936673, 930242, 934451, 931572, 941045, 942487, 929673)] + [
    (0, 1, 929405, "", 58780), (1, 0, 929673, "", 58540), (1, 1, 930242, "", 58780),
    (2, 0, 930907, "", 58560), (2, 1, 931572, "", 58779), (3, 0, 932555, "", 58558), (3, 1, 933405, "", 58782),
    (4, 0, 934451, "", 58520), (4, 1, 935440, "", 58780), (5, 0, 936673, "", 58500), (5, 1, 937869, "", 58764),
    (6, 0, 939246, "", 58540), (6, 1, 941045, "", 58782), (7, 0, 942487, "", 58560), (7, 1, 944268, "", 58782)]

A3_DIES = [  # (npu, die, phy-id's bus, power of die 0, temp, aicore, hbm used)
    (0, 0, "0000:9D:00.0", 211.3, 43, 7, 61609), (0, 1, "0000:9F:00.0", None, 44, 7, 61625),
    (1, 0, "0000:99:00.0", 210.6, 45, 7, 61616), (1, 1, "0000:9B:00.0", None, 45, 7, 61619),
    (2, 0, "0000:95:00.0", 205.7, 44, 7, 61633), (2, 1, "0000:97:00.0", None, 44, 7, 61623),
    (3, 0, "0000:91:00.0", 209.9, 43, 7, 61625), (3, 1, "0000:93:00.0", None, 44, 7, 61628),
    (4, 0, "0000:8D:00.0", 219.9, 43, 8, 61602), (4, 1, "0000:8F:00.0", None, 45, 7, 61618),
    (5, 0, "0000:89:00.0", 214.0, 47, 7, 61578), (5, 1, "0000:8B:00.0", None, 45, 7, 61603),
    (6, 0, "0000:85:00.0", 201.9, 43, 6, 61614), (6, 1, "0000:87:00.0", None, 43, 7, 61623),
    (7, 0, "0000:81:00.0", 205.5, 44, 7, 61627), (7, 1, "0000:83:00.0", None, 43, 7, 61631),
]

HLT_PIDS = {0: (37656, 37664, 37640, 37648), 1: (37665, 37641, 37649, 37657), 2: (37658, 37650, 37666, 37642),
            3: (37643, 37651, 37659, 37667), 4: (37668, 37644, 37652, 37660), 5: (37653, 37661, 37669, 37645),
            6: (37646, 37654, 37662, 37670), 7: (37671, 37647, 37655, 37663)}

INFO: Dict[str, Info] = {
    "910ProB-info-1.txt": Info("24.1.0", "24.1.0", [
        C(n, 0, None, "910ProB", bus, "OK", power, temp, 0, (0, 0), ddr, (hbm, 32768))
        for n, (bus, power, temp, ddr, hbm) in enumerate([
            ("0000:C1:00.0", 78.0, 38, (2387, 13553), 18), ("0000:81:00.0", 75.8, 38, (1840, 15665), 8),
            ("0000:41:00.0", 78.2, 39, (2512, 15665), 5), ("0000:01:00.0", 76.5, 39, (1645, 15567), 4),
            ("0000:C2:00.0", 78.8, 38, (1520, 13553), 10), ("0000:82:00.0", 77.0, 38, (2639, 15665), 14),
            ("0000:42:00.0", 83.0, 40, (2143, 15665), 3), ("0000:02:00.0", 77.3, 38, (2088, 15567), 2)])], []),
    "910B2C-info-1.txt": Info("23.0.2.1", "23.0.2.1", [
        C(0, 0, None, "910B2C", "0000:5A:00.0", "OK", 88.6, 51, 0, (0, 0), None, (20701, 65536)),
        C(1, 0, None, "910B2C", "0000:19:00.0", "OK", 99.6, 50, 0, (0, 0), None, (20687, 65536)),
    ], [(0, 0, 124528, "python3.8", 17400)]),
    "910B3-info-1.txt": Info("23.0.7", "23.0.7", _910b("910B3", 65536, [
        ("0000:C1:00.0", 98.3, 43, 0, 59985), ("0000:C2:00.0", 96.6, 44, 0, 59985),
        ("0000:81:00.0", 96.3, 43, 0, 59988), ("0000:82:00.0", 101.8, 46, 0, 59990),
        ("0000:01:00.0", 91.3, 45, 0, 3353), ("0000:02:00.0", 96.4, 47, 0, 3353),
        ("0000:41:00.0", 97.5, 47, 0, 3352), ("0000:42:00.0", 92.1, 49, 0, 3350)]),
        [(0, 0, 49943, "", 56681), (1, 0, 49944, "", 56681), (2, 0, 49945, "", 56681), (3, 0, 49946, "", 56681)]),
    "910B3-info-2.txt": Info("25.2.0", "25.2.0", _910b("910B3", 65536, [
        ("0000:C1:00.0", 94.8, 36, 0, 3407), ("0000:C2:00.0", 90.5, 34, 0, 3398),
        ("0000:81:00.0", 90.6, 33, 0, 3400), ("0000:82:00.0", 98.8, 35, 0, 3400),
        ("0000:01:00.0", 139.7, 45, 25, 21784), ("0000:02:00.0", 95.8, 37, 0, 3400),
        ("0000:41:00.0", 97.8, 38, 0, 3401), ("0000:42:00.0", 90.8, 39, 0, 3413)]),
        [(4, 0, 1601114, "python", 18429)]),
    "910B4-info-1.txt": Info("25.2.0", "25.2.0", _910b("910B4", 32768, [
        ("0000:C1:00.0", 84.7, 38, 0, 2894), ("0000:01:00.0", 88.9, 39, 0, 2653),
        ("0000:C2:00.0", 85.3, 38, 0, 2836), ("0000:02:00.0", 88.7, 40, 0, 2842),
        ("0000:81:00.0", 86.0, 39, 0, 2653), ("0000:41:00.0", 90.0, 40, 0, 2836),
        ("0000:82:00.0", 88.6, 39, 0, 2659), ("0000:42:00.0", 84.9, 40, 0, 2659)]),
        [(0, 0, 472206, "python3.9", 113)]),
    "910B4-info-26-1.txt": Info("26.0.rc1", "26.0.rc1", [
        C(0, 0, None, "910B4", "0000:C1:00.0", "OK", 82.6, 32, 0, (0, 0), None, (2871, 32768))], []),
    "910A3-info-1.txt": Info("25.2.0", "25.2.0", [
        C(npu, die, None, "Ascend910", bus, "OK", power, temp, aicore, (0, 0), None, (hbm, 65536))
        for npu, die, bus, power, temp, aicore, hbm in A3_DIES], A3_PROCESSES),
    "910A-info-1.txt": Info("24.1.RC2", "24.1.RC2", _910a("xxx", (1232, 1232), [
        ("0000:C1:00.0", "OK", 70.5, 42, 4252, 15137), ("0000:81:00.0", "OK", 71.2, 36, 4666, 15137),
        ("0000:41:00.0", "OK", 69.0, 35, 4317, 15137), ("0000:01:00.0", "Warning", 206.9, 39, 3616, 15039),
        ("0000:C2:00.0", "OK", 70.2, 39, 3708, 15137), ("0000:82:00.0", "OK", 64.9, 37, 4346, 15137),
        ("0000:42:00.0", "OK", 69.4, 40, 4261, 15137), ("0000:02:00.0", "Warning", 203.2, 42, 4521, 15039)]),
        [(npu, 0, pid, "hlt_host_devmm_", 686) for npu in range(8) for pid in HLT_PIDS[npu]]),
    "910A-info-2.txt": Info("22.0.3.1", "22.0.3.1", _910a("910A", (15, 15), [
        ("0000:61:00.0", "OK", 67.2, 43, 1867, 15077), ("0000:DB:00.0", "OK", 63.3, 38, 1867, 15077),
        ("0000:B2:00.0", "OK", 64.8, 34, 1868, 15077), ("0000:3E:00.0", "OK", 191.7, 42, 1866, 15077),
        ("0000:60:00.0", "OK", 66.4, 44, 1867, 15077), ("0000:DA:00.0", "OK", 62.7, 33, 1865, 15077),
        ("0000:B1:00.0", "OK", 64.5, 35, 1865, 15077), ("0000:3D:00.0", "OK", 191.4, 40, 1866, 15077)]), []),
    "910A-info-3.txt": Info("21.0.2", "21.0.2", [  # no Hugepages column; NPU ids 1 and 4
        C(1, 0, None, "910A", "0000:3B:00.0", "OK", 64.3, 56, 0, None, (1809, 15079), (0, 32768)),
        C(4, 0, None, "910A", "0000:86:00.0", "OK", 65.6, 58, 0, None, (1809, 15079), (0, 32768))], []),
    "310-info-1.txt": Info("20.2.0", "20.2.0", [  # one NPU id, four chips, each with its own bus and logic id
        C(215, chip, chip, "310", bus, "OK", 12.8, temp, 0, None, (2703, 8192), None)
        for chip, bus, temp in ((0, "0000:DA:00.0", 56), (1, "0000:DC:00.0", 57), (2, "0000:DD:00.0", 57),
                                (3, "0000:DB:00.0", 55))], []),
    "310B-info-1.txt": Info("25.2.0", "25.2.0", [
        C(0, 0, 0, "xxx", "", "OK", 10.4, 66, 0, (15, 15), (957, 10810), None)], []),
    "310B-info-2.txt": Info("24.1.rc3", "24.1.rc3", [
        C(0, 0, 0, "310B", "", "OK", 7.6, 42, 0, (15, 1304), (1003, 10810), None)], []),
    "310P3-info-1.txt": Info("25.3.rc1", "25.3.rc1", [
        C(6, 0, 0, "310P3", "0000:84:00.0", "OK", None, 50, 0, (0, 0), (1839, 21525), None)], []),
    "310P3-info-2.txt": Info("23.0.0", "23.0.0", [
        C(24, 0, 0, "310P3", "0000:04:00.0", "OK", None, 29, 0, (0, 0), (1832, 21527), None)], []),
    "310P3-info-3.txt": Info("25.5.1", "25.5.1", [
        C(4, 0, 0, "310P3", "0000:81:00.0", "OK", None, 37, 0, (0, 0), (1848, 21525), None),
        C(5, 0, 1, "310P3", "0000:85:00.0", "OK", None, 40, 0, (0, 0), (1849, 21525), None)], []),
    "310P3-duo-info-1.txt": Info("24.1.rc2", "24.1.rc2", [  # two chips on NPU 1792, one shared bus id
        C(1792, 0, 0, "310P3", "0000:07:00.0", "OK", None, 36, 0, (0, 0), (1821, 44280), None),
        C(1792, 1, 1, "310P3", "0000:07:00.0", "OK", None, 36, 0, (0, 0), (1041, 43693), None)], []),
    "310P3-vnpu-container-partial-1.txt": Info("", "", [  # log lines first, no header (elided), quota as total
        C(32768, 0, 0, "310P3", "0000:81:00.0", "OK", None, 38, 0, (0, 0), (0, 8192), None)], [],
        [r"^line 5: no header row"]),
}

MAPPING = {
    "910B3-info_m-1.txt": {(0, 0): 0, (1, 0): 1},
    "910A-info_m-1.txt": {(n, 0): n for n in range(8)},
    "910-info_m-1.txt": {(n, 0): n for n in range(8)},
    "310P-info_m-1.txt": {(1, 0): 0, (1, 1): 1, (2, 0): 2, (2, 1): 3, (4, 0): 4, (4, 1): 5, (5, 0): 6, (5, 1): 7},
    "310-info_m-1.txt": {(215, n): n for n in range(4)},
}


class KV(NamedTuple):
    kind: str
    raw: Dict[str, str]  # some keys as the fixture spells them, with their values, as parse_kv returns them
    chips: List[Dict[str, object]]  # per chip block, in order: chip fields after apply_kv (memory in MiB)
    mcu: Optional[Dict[str, str]] = None  # the MCU block, where there is one


KVS: Dict[str, KV] = {
    "910B-usages-1.txt": KV("usages", {"HBM Capacity(MB)": "65536", "NPU Utilization(%)": "0", "Chip ID": "0"}, [
        {"hbm": (3277, 65536), "ddr": None, "hugepages": (0, 0), "aicore_utilization_percent": 0.0,
         "vector_utilization_percent": 0.0, "aicpu_utilization_percent": 0.0,
         "hbm_bandwidth_utilization_percent": 0.0, "utilization_percent": 0.0}]),
    "910-usages-1.txt": KV("usages", {"DDR Capacity(MB)": "15171", "Ctrlcpu Usage Rate(%)": "9"}, [
        {"hbm": (0, 32768), "ddr": (455, 15171), "hugepages": (0, 0), "aicore_utilization_percent": 0.0,
         "vector_utilization_percent": None, "aicpu_utilization_percent": 0.0,
         "hbm_bandwidth_utilization_percent": 0.0, "utilization_percent": None}]),
    "910-usages-2.txt": KV("usages", {"DDR Capacity(MB)": "13553", "DDR Usage Rate(%)": "6"}, [
        {"hbm": (0, 32768), "ddr": (813, 13553), "aicore_utilization_percent": 0.0,
         "vector_utilization_percent": None}]),
    "310P-usages-1.txt": KV("usages", {"NPU ID": "1", "Chip Count": "2", "DVPP VDEC Usage Rate(%)": "0"}, [
        {"ddr": (1328, 44280), "hbm": None, "hugepages": (0, 0), "aicore_utilization_percent": 0.0,
         "vector_utilization_percent": 0.0, "aicpu_utilization_percent": 0.0},
        {"ddr": (1311, 43693), "hbm": None, "hugepages": (0, 0), "vector_utilization_percent": 0.0}]),
    "310B-usages-1.txt": KV("usages", {"Memory Capacity(MB)": "10810", "Memory Bandwidth Usage Rate(%)": "1"}, [
        {"ddr": (4973, 10810), "hugepages": (13, 1304), "aicore_utilization_percent": 0.0,
         "aicpu_utilization_percent": 9.0}]),
    "910-common-1.txt": KV("common", {"Aicore Freq(MHZ)": "1000", "Aicore Count": "32"}, [
        {"temperature_celsius": 46.0, "power_watts": 69.0, "aicore_utilization_percent": 0.0,
         "aicore_frequency_mhz": 1000.0}],
        {"Chip Name": "mcu", "Temperature(C)": "48", "NPU Real-time Power(W)": "45.2"}),
    "910B1-common-1.txt": KV("common", {"NPU ID": "1", "Aicore Freq(MHZ)": "1800", "Aicore curFreq(MHZ)": "800"}, [
        {"temperature_celsius": 46.0, "power_watts": 93.4, "aicore_frequency_mhz": 800.0}],
        {"Chip Name": "mcu", "Temperature(C)": "38"}),
    "310P-common-1.txt": KV("common", {"Aicore Freq(MHZ)": "1080"}, [
        {"temperature_celsius": 60.0, "power_watts": None, "aicore_frequency_mhz": 960.0},
        {"temperature_celsius": 59.0, "power_watts": None, "aicore_frequency_mhz": 960.0}],
        {"Chip Name": "mcu", "Temperature(C)": "48", "NPU Real-time Power(W)": "45.2"}),
    "910B-temp-1.txt": KV("temp", {"NPU Temperature (C)": "39"}, [{"temperature_celsius": 39.0}],
                          {"LM75A_TE (C)": "36", "LM75B_TE (C)": "36", "Chip Name": "MCU"}),
    "910B-power-1.txt": KV("power", {"NPU Real-time Power(W)": "103.5"}, [{"power_watts": 103.5}]),
    "310B-power_c-1.txt": KV("power", {"NPU Real-time Power(W)": "9.1"}, [{"power_watts": 9.1}]),
    "910-health-1.txt": KV("health", {"Health Status": "OK", "Error Code": "NA", "Error Information": "NA"}, [
        {"health": "OK", "fault_codes": []}]),
    "910-ecc-1.txt": KV("ecc", {"NPU ID": "1", "HBM Double Bit Isolated Pages Count": "0"}, [
        {"ecc_errors": {kind: 0.0 for kind in npusmi.ECC_KINDS}}]),
    "910B3-memory-1.txt": KV("memory", {"HBM Clock Speed(MHz)": "1600", "HBM Manufacturer ID": "0x56"}, [
        {"hbm": (None, 65536), "ddr": None}]),
    "910-board-1.txt": KV("board", {"PCI Device ID": "0xD801", "Firmware Version": "7.1.0.7.220",
                                    "PCIe Bus Info": "0000:61:00.0", "PCI Vendor ID": "0x19e5"}, [
        {"bus_id": "0000:61:00.0", "name": ""}]),
    "910-board_c-1.txt": KV("board", {"Chip Type": "Ascend", "Chip Version": "V1",
                                      "VDie ID": "42C711D4 20B03704 4A10C8D4 14CC040A D2102003"}, [
        {"bus_id": "0000:61:00.0", "name": "xxx"}]),
    "910B-board-1.txt": KV("board", {"Product Name": "IT21HMDC_Bin5", "Model": "NA", "Serial Number": "1025C9048791",
                                     "PCI Vendor ID": "0x19E5", "PCI Device ID": "0xD802"}, [
        {"bus_id": "0000:C1:00.0"}]),
}

ERRORS = {
    "error-8005-container-1.txt": (-8005, "npu-smi: dcmi module initialize failed (-8005 DCMI_ERR_CODE_INNER_ERR): "),
    "error-8020-container-1.txt": (-8020, "npu-smi: dcmi module initialize failed "
                                          "(-8020 DCMI_ERR_CODE_RESOURCE_OCCUPIED): "),
}

# the other forms each have their own test below
OTHER = {"910B-info_l-1.txt", "910B3-proc_mem-1.txt", "910B1-topo-1.txt", "310B-watch-1.txt",
         "910B1-info_help-1.txt"}

#: captures of npu-smi commands the collector never runs, so there is no subprocess path to send them
#: through: they are parsed directly (parse_list / parse_proc_mem / parse_topo / parse_watch and
#: apply_kv's "board" kind are there for them, but :func:`npusmi.read` calls none of them).
#: test_the_collector_runs_none_of_the_never_run_commands keeps this true.
NEVER_RUN = {
    "910-board-1.txt": ("info", "-t", "board"),
    "910-board_c-1.txt": ("info", "-t", "board"),
    "910B-board-1.txt": ("info", "-t", "board"),
    "910B-info_l-1.txt": ("info", "-l"),
    "910B3-proc_mem-1.txt": ("info", "-t", "proc-mem"),
    "910B1-topo-1.txt": ("info", "-t", "topo"),
    "310B-watch-1.txt": ("info", "watch"),
    "910B1-info_help-1.txt": ("info", "-h"),
}


def test_every_fixture_has_expected_values():
    """A new capture in the shared directory must come with its hand-checked values here."""
    present = {p.name for p in FIXTURES.iterdir() if p.is_file() and p.name != "INDEX.md"}
    covered = set(INFO) | set(MAPPING) | set(KVS) | set(ERRORS) | OTHER
    assert present - covered == set(), "fixtures without expected values"
    assert covered - present == set(), "expected values for fixtures that do not exist"


# ---------------------------------------------------------------------------------------------------
# the stand-in npu-smi

STAND_IN = '''#!{python}
"""A stand-in npu-smi: prints real captures, as the real tool would print them."""
import sys, time
routes = {routes!r}
args = sys.argv[1:]
with open({log!r}, "a") as log:
    log.write(" ".join(args) + "\\n")
if args == ["info"]:
    key = "info"
elif args[:2] == ["info", "-m"]:
    key = "-m"
elif args[:2] == ["info", "-t"] and len(args) > 2:
    key = args[2]
else:
    key = None
time.sleep({sleeps!r}.get(key, 0))
failures = {failures!r}
if " ".join(args) in failures:
    print(failures[" ".join(args)])
    sys.exit(1)
if key not in routes:
    print("This device does not support querying %s info." % (key or " ".join(args)))
    sys.exit(0)
sys.stdout.buffer.write(open(routes[key], "rb").read())
sys.exit({exit_codes!r}.get(key, 0))
'''


class StandIn(NamedTuple):
    path: Path
    log: Path

    def calls(self) -> List[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


def stand_in(tmp_path: Path, info: str, mapping: Optional[str] = None, forms: Optional[Dict[str, str]] = None,
             exit_codes: Optional[Dict[str, int]] = None, sleeps: Optional[Dict[str, float]] = None,
             failures: Optional[Dict[str, str]] = None) -> StandIn:
    """An executable that answers ``info`` / ``info -m`` / ``info -t <form>`` with the named captures.

    ``failures`` maps a whole command line (``"info -t power -i 0"``) to an error it prints, exiting 1.
    """
    routes = {"info": str(FIXTURES / info)}
    if mapping:
        routes["-m"] = str(FIXTURES / mapping)
    for form, name in (forms or {}).items():
        routes[form] = str(FIXTURES / name)
    path, log = tmp_path / "npu-smi", tmp_path / "calls.log"
    path.write_text(STAND_IN.format(python=sys.executable, routes=routes, log=str(log),
                                    exit_codes=exit_codes or {}, sleeps=sleeps or {}, failures=failures or {}))
    path.chmod(0o755)
    return StandIn(path, log)


def context(timeout: float = 20.0) -> PluginContext:
    return PluginContext(name="npu", type="npu", options={}, timeout=timeout)


def read(s: StandIn, **kwargs: object) -> Snapshot:
    return npusmi.read(context(), command=[str(s.path)], **kwargs)


def parsed(monkeypatch: pytest.MonkeyPatch, function: str) -> List[object]:
    """What ``npusmi.<function>`` returns while :func:`read` runs: the collector's own reading of the stand-in.

    For the values of a capture that no chip field shows (a key the collector does not use, a
    mapping row of an NPU the table lacks), so they too are checked as the subprocess printed them.
    """
    real, seen = getattr(npusmi, function), []

    def spy(*args: object, **kwargs: object) -> object:
        seen.append(real(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(npusmi, function, spy)
    return seen


# ---------------------------------------------------------------------------------------------------
# assertions


def pair(used: Optional[float], total: Optional[float], unit: float = 1.0) -> Pair:
    if used is None and total is None:
        return None
    return (None if used is None else used / unit, None if total is None else total / unit)


def assert_chip(chip: Chip, e: C) -> None:
    where = f"NPU {e.npu} chip {e.chip}"
    assert (chip.npu_id, chip.chip_id, chip.device_id) == (e.npu, e.chip, e.device), where
    assert (chip.name, chip.bus_id, chip.health) == (e.name, e.bus, e.health), where
    assert (chip.power_watts, chip.temperature_celsius, chip.aicore_utilization_percent) == (
        e.power, e.temp, e.aicore), where
    assert pair(chip.hugepages_used, chip.hugepages_total) == e.hugepages, where
    assert pair(chip.ddr_used_bytes, chip.ddr_total_bytes, MIB) == e.ddr, where
    assert pair(chip.hbm_used_bytes, chip.hbm_total_bytes, MIB) == e.hbm, where
    if e.ddr is not None:  # bytes, exactly: npu-smi's MB are MiB
        assert chip.ddr_total_bytes == e.ddr[1] * 1048576


def assert_warnings(warnings: Sequence[str], patterns: Sequence[str]) -> None:
    assert len(warnings) == len(patterns), warnings
    for warning, pattern in zip(warnings, patterns):
        assert re.search(pattern, warning), (pattern, warning)


def assert_info(snap: Snapshot, e: Info) -> None:
    assert (snap.tool_version, snap.driver_version) == (e.tool, e.driver)
    assert len(snap.chips) == len(e.chips)
    for chip, expected in zip(snap.chips, e.chips):
        assert_chip(chip, expected)
    got = [(p.npu_id, p.chip_id, p.pid, p.name, p.memory_bytes / MIB) for p in snap.processes]
    assert got == [tuple(p) for p in e.processes]
    assert all(p.memory_bytes == int(p.memory_bytes) for p in snap.processes)
    assert_warnings(snap.warnings, e.warnings)


# ---------------------------------------------------------------------------------------------------
# npu-smi info, through the real subprocess path


@pytest.mark.parametrize("name", sorted(INFO))
def test_info_fixture_through_npu_smi(tmp_path, name):
    s = stand_in(tmp_path, name)
    snap = read(s)
    assert s.calls() == ["info"]
    assert_info(snap, INFO[name])


@pytest.mark.parametrize("name", sorted(INFO))
def test_info_fixture_parsed_directly_gives_the_same(name):
    assert_info(npusmi.parse_info(fixture(name)), INFO[name])
    assert npusmi.detect_error(fixture(name), 0) is None


def test_910b_with_mapping_and_forms(tmp_path):
    """910B3 table + its ``-m`` (NPU 0 and 1 only) + the 910B ``-t`` captures; health is not supported here."""
    s = stand_in(tmp_path, "910B3-info-1.txt", mapping="910B3-info_m-1.txt", forms={
        "usages": "910B-usages-1.txt", "temp": "910B-temp-1.txt", "power": "910B-power-1.txt",
        "memory": "910B3-memory-1.txt"})
    snap = read(s, mapping=True, forms=("usages", "temp", "power", "memory", "health"))
    assert [c.device_id for c in snap.chips] == [0, 1, None, None, None, None, None, None]
    for chip in snap.chips:
        assert chip.temperature_celsius == 39.0  # -t temp, asked after the table
        assert chip.power_watts == 103.5  # -t power
        assert chip.utilization_percent == 0.0 and chip.vector_utilization_percent == 0.0
        assert chip.hbm_total_bytes == 65536 * MIB and chip.ddr_total_bytes is None
    # the table's exact MiB stay; the integer usage rate (5 %) does not replace them
    assert snap.chips[0].hbm_used_bytes == 59985 * MIB
    assert [(p.npu_id, p.device_id) for p in snap.processes] == [(0, 0), (1, 1), (2, None), (3, None)]
    calls = s.calls()
    assert calls[:2] == ["info", "info -m"]
    assert calls.count("info -t usages -i 5") == 1 and "info -t memory -i 7 -c 0" in calls
    assert [c for c in calls if "health" in c] == ["info -t health -i 0 -c 0"]  # not asked again
    assert_warnings(snap.warnings, [
        r"^npu-smi info -m: no logic id for NPU/chip 2/0, 3/0, 4/0, 5/0, 6/0, 7/0$",
        r"^npu-smi info -t health -i 0 -c 0: This device does not support querying health info\.$"])


def test_910_a1_with_mapping_and_forms(tmp_path):
    """910ProB (A1) table + the A1 ``-m`` and ``-t`` captures (910-usages-2 is a 13553 MB DDR chip, as NPU 0)."""
    s = stand_in(tmp_path, "910ProB-info-1.txt", mapping="910-info_m-1.txt", forms={
        "usages": "910-usages-2.txt", "common": "910-common-1.txt", "health": "910-health-1.txt",
        "ecc": "910-ecc-1.txt"})
    snap = read(s, mapping=True, forms=("usages", "common", "health", "ecc"))
    assert [c.device_id for c in snap.chips] == list(range(8))
    chip = snap.chips[0]
    assert (chip.ddr_used_bytes, chip.ddr_total_bytes) == (2387 * MIB, 13553 * MIB)
    assert (chip.hbm_used_bytes, chip.hbm_total_bytes) == (18 * MIB, 32768 * MIB)
    assert (chip.temperature_celsius, chip.power_watts, chip.aicore_frequency_mhz) == (46.0, 69.0, 1000.0)
    assert chip.health == "OK" and chip.fault_codes == []
    assert chip.ecc_errors == {kind: 0.0 for kind in npusmi.ECC_KINDS}
    assert chip.hbm_bandwidth_utilization_percent == 0.0 and chip.vector_utilization_percent is None
    assert snap.warnings == []
    assert "info -t health -i 3 -c 0" in s.calls() and "info -t ecc -i 3" in s.calls()


def test_310p_duo_forms_route_chip_blocks_and_card_power(tmp_path):
    s = stand_in(tmp_path, "310P3-duo-info-1.txt", forms={"usages": "310P-usages-1.txt",
                                                           "common": "310P-common-1.txt"})
    snap = read(s, forms=("usages", "common"))
    chip0, chip1 = snap.chips
    # one call per NPU, its two chip blocks told apart by Chip ID
    assert s.calls() == ["info", "info -t usages -i 1792", "info -t common -i 1792"]
    assert (chip0.ddr_used_bytes, chip0.ddr_total_bytes) == (1821 * MIB, 44280 * MIB)
    assert (chip1.ddr_used_bytes, chip1.ddr_total_bytes) == (1041 * MIB, 43693 * MIB)
    assert (chip0.temperature_celsius, chip1.temperature_celsius) == (60.0, 59.0)
    assert chip0.aicore_frequency_mhz == chip1.aicore_frequency_mhz == 960.0
    assert chip0.vector_utilization_percent == 0.0 and chip1.aicpu_utilization_percent == 0.0
    # the table prints power NA per chip; the MCU's card power goes on chip 0 only
    assert (chip0.power_watts, chip1.power_watts) == (45.2, None)
    assert snap.warnings == []


def test_310b_forms_without_chip_id(tmp_path):
    """310B ``-c`` captures (no Chip ID line) apply to the NPU's only chip."""
    s = stand_in(tmp_path, "310B-info-2.txt", forms={"usages": "310B-usages-1.txt", "power": "310B-power_c-1.txt"})
    (chip,) = read(s, forms=("usages", "power")).chips
    assert chip.power_watts == 9.1 and chip.aicpu_utilization_percent == 9.0
    assert (chip.hugepages_used, chip.hugepages_total) == (15, 1304)  # the table's exact count stays
    assert (chip.ddr_used_bytes, chip.ddr_total_bytes) == (1003 * MIB, 10810 * MIB)


@pytest.mark.parametrize(("info", "mapping", "devices"), [
    ("910A-info-1.txt", "910A-info_m-1.txt", list(range(8))),
    ("910A-info-2.txt", "910A-info_m-1.txt", list(range(8))),
    ("310-info-1.txt", "310-info_m-1.txt", [0, 1, 2, 3]),
])
def test_mapping_sets_device_ids(tmp_path, info, mapping, devices):
    snap = read(stand_in(tmp_path, info, mapping=mapping), mapping=True)
    assert [c.device_id for c in snap.chips] == devices
    assert all(p.device_id == p.npu_id for p in snap.processes)
    assert snap.warnings == []


def test_910_a1_usages_through_npu_smi(tmp_path, monkeypatch):
    """910-usages-1 (A1, DDR 15171 MB, no Aivector key) as the ``-t usages`` answer on the 21.0.2 910A table.

    That table has no Hugepages column and no AI CPU or bandwidth figure: those come from the
    capture alone. ``DDR Capacity(MB)`` is the total, but the table's exact used MiB (1809) stay:
    the capture's integer 3 % (455 of 15171, as the direct test reads it) is only for a table
    without them. (The capture is of another A1 host, whose DDR is 15171 where this table says 15079.)
    """
    name = "910-usages-1.txt"
    seen = parsed(monkeypatch, "parse_kv_blocks")
    s = stand_in(tmp_path, "910A-info-3.txt", forms={"usages": name})
    snap = read(s, forms=("usages",))
    assert s.calls() == ["info", "info -t usages -i 1", "info -t usages -i 4"]
    assert len(seen) == len(snap.chips) == 2
    for blocks, chip in zip(seen, snap.chips):
        (block,) = assert_kv_blocks(blocks, KVS[name])
        assert block["Chip ID"] == "0"
        assert_chip_fields(chip, {**KVS[name].chips[0], "ddr": (1809, 15171)})
    assert snap.warnings == []


def test_910b1_common_through_npu_smi(tmp_path, monkeypatch):
    """910B1-common-1 (captured as ``-t common -i 1``) as every NPU's ``-t common`` answer on a 23.0 910B table.

    Its chip block replaces the table's temperature and power (46, 93.4) and gives the current AI
    core frequency (curFreq 800, not the rated 1800). Its HBM Usage Rate (4 %) does not replace the
    table's exact HBM MiB. The MCU block (a temperature only) is no chip's and gives no card power.
    """
    name = "910B1-common-1.txt"
    seen = parsed(monkeypatch, "parse_kv_blocks")
    s = stand_in(tmp_path, "910B3-info-1.txt", forms={"common": name})
    snap = read(s, forms=("common",))
    assert s.calls() == ["info"] + [f"info -t common -i {n}" for n in range(8)]
    assert len(seen) == len(snap.chips) == 8
    for blocks, chip, table in zip(seen, snap.chips, INFO["910B3-info-1.txt"].chips):
        (block,) = assert_kv_blocks(blocks, KVS[name])
        assert block["Chip ID"] == "0"
        assert_chip_fields(chip, KVS[name].chips[0])
        assert chip.aicore_utilization_percent == 0.0 and chip.power_limit_watts is None
        assert pair(chip.hbm_used_bytes, chip.hbm_total_bytes, MIB) == table.hbm
    assert snap.warnings == []


def test_310p_mapping_through_npu_smi(tmp_path, monkeypatch):
    """310P-info_m-1 (four Duo cards, NPUs 1, 2, 4, 5) as the ``info -m`` answer on the 310P3 table of NPUs 4 and 5.

    The collector reads every chip row of it (the Mcu rows are no chips) and gives each chip of the
    table its logic id: 4 for NPU 4 chip 0 and 6 for NPU 5 chip 0, where the table, of another
    host, printed Device 0 and 1. The rows of NPUs 1 and 2 have no chip to go to.
    """
    name = "310P-info_m-1.txt"
    seen = parsed(monkeypatch, "parse_mapping")
    s = stand_in(tmp_path, "310P3-info-3.txt", mapping=name)
    snap = read(s, mapping=True)
    assert s.calls() == ["info", "info -m"]
    assert seen == [MAPPING[name]]
    assert [(c.npu_id, c.chip_id, c.device_id) for c in snap.chips] == [(4, 0, 4), (5, 0, 6)]
    assert snap.warnings == []


def test_the_collector_runs_none_of_the_never_run_commands(tmp_path):
    """Everything the collector can be told to read, on a one-NPU table: no command of :data:`NEVER_RUN`.

    Should the collector ever run one, its captures belong in a through-npu-smi test as well.
    """
    assert set(NEVER_RUN) >= OTHER and all(KVS[n].kind == "board" for n in set(NEVER_RUN) - OTHER)
    s = stand_in(tmp_path, "910B4-info-26-1.txt")
    read(s, mapping=True, forms=npusmi.FORMS)
    calls = [tuple(c.split()) for c in s.calls()]
    assert calls == [("info",), ("info", "-m")] + [
        ("info", "-t", form, "-i", "0", *(("-c", "0") if form in npusmi.PER_CHIP_FORMS else ()))
        for form in npusmi.FORMS]
    assert not [c for c in calls for never in NEVER_RUN.values() if c[:len(never)] == never]


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_error_fixture_is_one_clear_error(tmp_path, name):
    code, prefix = ERRORS[name]
    expected = prefix + npusmi.errors.describe(code)
    assert npusmi.detect_error(fixture(name), 255) == expected
    assert npusmi.detect_error(fixture(name), 0) == expected  # the text alone says it
    with pytest.raises(npusmi.NpuSmiError) as raised:
        read(stand_in(tmp_path, name, exit_codes={"info": 255}))
    assert str(raised.value) == expected and raised.value.code == code
    snap = npusmi.parse_info(fixture(name))
    assert snap.chips == [] and snap.warnings == [f"line 2: {fixture(name).splitlines()[1]}"]


def test_error_messages_say_the_cause():
    assert "driver or firmware was upgraded without a reboot" in npusmi.detect_error(
        fixture("error-8005-container-1.txt"), 1)
    assert "another container or process holds the device" in npusmi.detect_error(
        fixture("error-8020-container-1.txt"), 1)
    assert npusmi.detect_error("npu get board type failed. ret is -8012\n", 1) == (
        "npu-smi: npu get board type failed (-8012 DCMI_ERR_CODE_NOT_REDAY): " + npusmi.errors.describe(-8012))
    variant = "DrvMngGetConsoleLogLevel failed. (ret=4)\n" + fixture("error-8020-container-1.txt").splitlines()[1]
    assert npusmi.detect_error(variant, 1) == npusmi.detect_error(fixture("error-8020-container-1.txt"), 1)
    assert npusmi.detect_error("Command or option is not found.\n", 1) == (
        "npu-smi exited with status 1: Command or option is not found.")
    assert npusmi.detect_error("", 0) == "npu-smi printed no table (no output)"


def test_nonzero_exit_with_a_table_is_an_error(tmp_path):
    with pytest.raises(npusmi.NpuSmiError, match=r"^npu-smi exited with status 3: \+-"):
        read(stand_in(tmp_path, "910B4-info-1.txt", exit_codes={"info": 3}))


def test_missing_program():
    with pytest.raises(CommandNotFound):
        npusmi.read(context(), command=["/nonexistent/npu-smi"])


def test_details_stop_at_the_deadline_and_keep_the_table(tmp_path):
    s = stand_in(tmp_path, "910B4-info-1.txt", forms={"usages": "910B-usages-1.txt"}, sleeps={"usages": 30})
    ctx = context(timeout=1.5)
    ctx.deadline = time.monotonic() + 1.5
    started = time.monotonic()
    snap = npusmi.read(ctx, command=[str(s.path)], forms=("usages", "temp"))
    assert time.monotonic() - started < 10
    assert len(snap.chips) == 8 and snap.chips[0].hbm_used_bytes == 2894 * MIB
    assert_warnings(snap.warnings, [r"^npu-smi info -t usages -i 0: killed at the collection's deadline"])
    assert s.calls() == ["info", "info -t usages -i 0"]


def test_a_form_failing_on_one_npu_is_still_asked_of_the_others(tmp_path):
    s = stand_in(tmp_path, "910B4-info-1.txt", forms={"power": "910B-power-1.txt"}, failures={
        "info -t power -i 2": "dcmi model initialized failed, because the device is used. ret is -8020"})
    snap = read(s, forms=("power",))
    assert [c.power_watts for c in snap.chips] == [103.5, 103.5, 85.3, 103.5, 103.5, 103.5, 103.5, 103.5]
    assert len(s.calls()) == 9
    assert_warnings(snap.warnings, [r"^npu-smi info -t power -i 2: npu-smi: dcmi module initialize failed "
                                    r"\(-8020 DCMI_ERR_CODE_RESOURCE_OCCUPIED\): the device is occupied"])


def test_unknown_form_is_a_warning(tmp_path):
    snap = read(stand_in(tmp_path, "910B4-info-26-1.txt"), forms=("sensors",))
    assert_warnings(snap.warnings, [r"^npu-smi info -t sensors: not a form this collector reads"])


# ---------------------------------------------------------------------------------------------------
# info -m and -t key/value forms, parsed directly


@pytest.mark.parametrize("name", sorted(MAPPING))
def test_mapping_fixture(name):
    assert npusmi.parse_mapping(fixture(name)) == MAPPING[name]


def test_mapping_keeps_dash_as_none_and_a3_columns():
    text = ("\tNPU ID   Chip ID   Chip Logic ID   Chip Phy-ID   Chip Name\n"
            "\t0        0         0               0             Ascend 910_93\n"
            "\t0        1         1               1             Ascend 910_93\n"
            "\t0        2         -               -             Mcu\n"
            "\t0        3         -               -             3559\n")
    assert npusmi.parse_mapping(text) == {(0, 0): 0, (0, 1): 1, (0, 3): None}
    assert npusmi.parse_mapping("\t0   0   -   3559\n") == {(0, 0): None}
    assert npusmi.parse_mapping("There is no NPU card on this server.\n") == {}


def _chip_blocks(blocks: List[Dict[str, str]]) -> Tuple[List[Dict[str, str]], List[Dict[str, str]]]:
    chips, mcus = [], []
    for block in blocks:
        if set(block) <= {"NPU ID", "Chip Count"}:
            continue
        (mcus if "Chip Name" in block and "Chip ID" not in block else chips).append(block)
    return chips, mcus


def assert_kv_blocks(blocks: List[Dict[str, str]], e: KV) -> List[Dict[str, str]]:
    """The keys of ``e.raw`` and ``e.mcu`` as the capture spells them; return the chip blocks."""
    kv: Dict[str, str] = {}
    for block in blocks:
        for key, value in block.items():
            kv.setdefault(key, value)
    for key, value in e.raw.items():
        assert kv[key] == value, key
    chips, mcus = _chip_blocks(blocks)
    assert len(chips) == len(e.chips)
    assert len(mcus) == (1 if e.mcu else 0)
    if e.mcu:
        for key, value in e.mcu.items():
            assert mcus[0][key] == value
    return chips


def assert_chip_fields(chip: Chip, expected: Dict[str, object]) -> None:
    """Chip fields as :data:`KVS` writes them: ``hbm`` / ``ddr`` as MiB pairs, ``hugepages`` as a pair."""
    for attr, value in expected.items():
        if attr in ("hbm", "ddr"):
            assert pair(getattr(chip, f"{attr}_used_bytes"), getattr(chip, f"{attr}_total_bytes"), MIB) == value
        elif attr == "hugepages":
            assert (chip.hugepages_used, chip.hugepages_total) == value
        else:
            assert getattr(chip, attr) == value, attr


@pytest.mark.parametrize("name", sorted(KVS))
def test_kv_fixture(name):
    e = KVS[name]
    kv = npusmi.parse_kv(fixture(name))
    for key, value in e.raw.items():
        assert kv[key] == value, key
    chips = assert_kv_blocks(npusmi.parse_kv_blocks(fixture(name)), e)
    for index, (block, expected) in enumerate(zip(chips, e.chips)):
        if "Chip ID" in block:
            assert block["Chip ID"] == str(index)
        chip = Chip(npu_id=0, chip_id=index)
        assert npusmi.apply_kv(chip, e.kind, block) == []
        assert_chip_fields(chip, expected)


def test_kv_keys_match_without_case_or_spacing():
    chip = Chip(0, 0)
    assert npusmi.apply_kv(chip, "temp", {"npu temperature(c)": "41"}) == []
    assert npusmi.apply_kv(chip, "common", {"AICORE CURFREQ (MHz)": "1650", "Rated Power Dissipation(W)": "12"}) == []
    assert (chip.temperature_celsius, chip.aicore_frequency_mhz, chip.power_limit_watts) == (41.0, 1650.0, 12.0)


def test_kv_health_error_codes_are_ints():
    chip = Chip(0, 0)
    assert npusmi.apply_kv(chip, "health", {"Health Status": "Alarm", "Error Code": "0x80E18401 0x80E3A202",
                                            "Error Information": "..."}) == []
    assert chip.health == "Alarm" and chip.fault_codes == [0x80E18401, 0x80E3A202]
    assert npusmi.apply_kv(chip, "health", {"Health Status": "OK", "Error Code": "NA"}) == []
    assert chip.fault_codes == []


def test_kv_bad_values_are_reported_not_raised():
    chip = Chip(0, 0)
    problems = npusmi.apply_kv(chip, "usages", {"Aicore Usage Rate(%)": "busy", "HBM Capacity(MB)": "x"})
    assert problems == ["-t usages: Aicore Usage Rate(%) is 'busy', not a number",
                        "-t usages: HBM Capacity(MB) is 'x', not a number"]
    assert npusmi.apply_kv(chip, "nonsense", {}) == ["unknown -t form 'nonsense'"]


def test_kv_values_keep_their_colons():
    kv = npusmi.parse_kv("\tPCIe Bus Info                  : 0000:C1:00.0\n"
                         "\tMemory Bandwidth Usage Rate(%) : 1\n")
    assert kv == {"PCIe Bus Info": "0000:C1:00.0", "Memory Bandwidth Usage Rate(%)": "1"}


# ---------------------------------------------------------------------------------------------------
# the other forms


def test_list_fixture():
    assert npusmi.parse_list(fixture("910B-info_l-1.txt")) == {n: 1 for n in range(8)}


def test_proc_mem_fixture():
    assert npusmi.parse_proc_mem(fixture("910B3-proc_mem-1.txt"), 3, 0) == [
        Process(npu_id=3, chip_id=0, pid=207795, name="VLLMEngineCor", memory_bytes=55436 * MIB)]
    assert npusmi.parse_proc_mem("No process in device.\n", 3, 0) == []


def test_topo_fixture():
    topo = npusmi.parse_topo(fixture("910B1-topo-1.txt"))
    npus = [f"NPU{n}" for n in range(8)]
    assert list(topo) == npus
    for row in npus:
        assert [topo[row][col] for col in npus] == ["X" if col == row else "HCCS" for col in npus]
    assert [topo[row]["CPU Affinity"] for row in npus] == [
        "144-167", "0-23", "144-167", "0-23", "96-119", "48-71", "96-119", "48-71"]


def test_watch_fixture():
    rows = npusmi.parse_watch(fixture("310B-watch-1.txt"))
    assert len(rows) == 12
    assert list(rows[0]) == ["NpuID(Idx)", "ChipId(Idx)", "Pwr(W)", "Temp(C)", "AI Core(%)", "AI Cpu(%)",
                             "Ctrl Cpu(%)", "Memory(%)", "Memory BW(%)"]
    assert list(rows[0].values()) == [0, 0, 8.7, 55, 0, 2, 64, 71, 7]
    assert list(rows[-1].values()) == [0, 0, 8.7, 55, 23, 3, 62, 71, 6]  # the row the author cut short
    assert [r["AI Core(%)"] for r in rows] == [0, 25, 0, 0, 0, 0, 0, 0, 24, 0, 0, 23]
    assert [r["Pwr(W)"] for r in rows] == [8.7, 8.7, 8.8, 8.7, 8.7, 8.8, 8.8, 8.7, 8.7, 8.7, 8.7, 8.7]


def test_help_fixture_lists_every_form_read_and_is_no_table():
    text = fixture("910B1-info_help-1.txt")
    listed = text[text.index("type:") + len("type:"): text.index("Options:")]
    types = {t.strip(" .") for t in listed.replace("\n", ",").split(",") if t.strip(" .")}
    assert set(npusmi.FORMS) <= types and {"board", "proc-mem", "topo"} <= types
    assert len(types) == 45
    assert npusmi.detect_error(text, 0) == (
        "npu-smi printed no table: Usage: npu-smi info <watch|proc|-h|-m|-l|-t type> [Options...]")
    assert npusmi.parse_info(text) == Snapshot()


# ---------------------------------------------------------------------------------------------------
# garbled and truncated input: partial results, warnings naming the line, never an exception


def test_truncated_and_garbled_table():
    lines = fixture("910B3-info-1.txt").splitlines()
    text = "\n".join([
        *lines[:8],  # header + NPU 0
        "| 1     910B3               | OK            | 9x.6        44                0    / 0             |",  # line 9
        "| 0                         | 0000:C2:00.0  | 0           0    / 0          59985/ 655",  # 10: cut
        *lines[11:17],  # NPU 2 and 3: lines 11-16
        "| garbage here |",  # 17
        "| 4     910B3               | OK            | 91.3        4",  # 18: cut, its chip row is gone
    ])
    snap = npusmi.parse_info(text)
    assert [(c.npu_id, c.chip_id) for c in snap.chips] == [(0, 0), (1, 0), (2, 0), (3, 0), (4, 0)]
    npu1, npu4 = snap.chips[1], snap.chips[4]
    assert npu1.power_watts is None and npu1.temperature_celsius == 44 and npu1.bus_id == "0000:C2:00.0"
    assert npu1.hbm_total_bytes is None  # "59985/ 655" was cut: no value is better than a wrong one
    assert npu4.power_watts == 91.3 and npu4.temperature_celsius is None
    assert snap.chips[3].hbm_used_bytes == 59990 * MIB
    assert_warnings(snap.warnings, [
        r"^line 9: Power\(W\): unreadable value '9x\.6'$",
        r"^line 10: truncated row, its last value left out: ",
        r"^line 17: unrecognised row: \| garbage here \|$",
        r"^line 18: truncated row, its last value left out: ",
        r"^line 18: NPU row without its chip row; chip id 0 assumed$",
    ])


def test_unknown_layout_gives_warnings_not_a_crash():
    text = ("+------+\n| npu-smi 26.9.0   Version: 26.9.0 |\n"
            "| NPU ID | Name      | Health | Power(W) |\n"
            "| 0      | Ascend950 | OK     | 300.1    |\n")
    snap = npusmi.parse_info(text)
    assert snap.tool_version == "26.9.0" and snap.chips == []
    assert_warnings(snap.warnings, [r"^line 4: unrecognised row: \| 0 ", r"^line 2: a table without a single chip"])


def test_driver_warning_line():
    text = fixture("910B4-info-26-1.txt") + (
        "[WARNING]The driver package may not be completely installed, which may cause function abnormal. "
        "Please reinstall it.\n")
    snap = npusmi.parse_info(text)
    assert len(snap.chips) == 1
    assert snap.warnings == ["line 14: [WARNING]The driver package may not be completely installed, which may "
                             "cause function abnormal. Please reinstall it."]


def test_process_row_of_the_26_layout_with_container_pid():
    lines = fixture("910B4-info-26-1.txt").splitlines()
    row = "| 0       0                 | 4242          | python3            | 1024                  | 17 |"
    snap = npusmi.parse_info("\n".join([*lines[:-1], row]))
    assert [(p.pid, p.name, p.memory_bytes) for p in snap.processes] == [(4242, "python3", 1024 * MIB)]
    assert snap.warnings == []


def test_a_parser_bug_costs_one_line(monkeypatch):
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(npusmi, "_fill", broken)
    snap = npusmi.parse_info(fixture("910B4-info-26-1.txt"))
    assert snap.tool_version == "26.0.rc1"
    assert [(c.npu_id, c.chip_id, c.name, c.health, c.bus_id) for c in snap.chips] == [
        (0, 0, "910B4", "OK", "0000:C1:00.0")]  # what was read before the failure is kept
    assert_warnings(snap.warnings, [r"^line 7: could not be read \(RuntimeError: boom\): \| 0 ",
                                    r"^line 8: could not be read \(RuntimeError: boom\): \| 0 "])


@pytest.mark.parametrize("name", ["910A3-info-1.txt", "310P3-duo-info-1.txt", "910A-info-3.txt"])
def test_any_cut_of_a_table_parses(name):
    text = fixture(name)
    for end in range(0, len(text), 7):
        snap = npusmi.parse_info(text[:end])
        assert all(c.npu_id >= 0 and c.chip_id >= 0 for c in snap.chips)


@pytest.mark.parametrize("text", ["", "\n\n", "|", "||||", "+", "| 0 |", "| 0 x | OK |", "| 0 | NA |",
                                  "\x00\xff garbage", "| \u00b2 x | OK |", "| 0 \u00b2 | 0000:01:00.0 | 1 |",
                                  "| 1 a | OK | 1 / 2 / 3 / |", "| 99999999999999999999 b | OK |"])
def test_nonsense_never_raises(text):
    npusmi.parse_info(text)
    npusmi.parse_mapping(text)
    npusmi.parse_kv(text)
    npusmi.parse_watch(text)
    npusmi.parse_topo(text)
    assert isinstance(npusmi.detect_error(text, 0), (str, type(None)))


# ---------------------------------------------------------------------------------------------------
# the metrics that come out (model.samples)


def _by_name(snap: Snapshot) -> Dict[str, List[object]]:
    out: Dict[str, List[object]] = {}
    for sample in samples(snap):
        out.setdefault(sample.name, []).append(sample)
    return out


def test_samples_of_a_910b_table(tmp_path):
    snap = read(stand_in(tmp_path, "910B3-info-2.txt"))
    metrics = _by_name(snap)
    assert set(metrics) == {
        "npu_info", "npu_health", "npu_temperature_celsius", "npu_power_watts", "npu_aicore_utilization_percent",
        "npu_utilization_percent", "npu_memory_used_bytes", "npu_memory_total_bytes", "npu_hbm_used_bytes",
        "npu_hbm_total_bytes", "npu_process_memory_bytes"}  # huge pages "0 / 0" of a DDR the 910B lacks: none
    info = metrics["npu_info"][4]
    assert dict(info.labels) == {"npu_id": "4", "chip_id": "0", "device_id": "", "name": "910B3",
                                 "bus_id": "0000:01:00.0", "npu_smi_version": "25.2.0", "driver_version": "25.2.0"}
    used = {s.labels["npu_id"]: s.value for s in metrics["npu_memory_used_bytes"]}
    assert used["4"] == 21784 * MIB  # HBM is the 910B's memory
    assert {s.labels["npu_id"]: s.value for s in metrics["npu_power_watts"]}["4"] == 139.7
    (process,) = metrics["npu_process_memory_bytes"]
    assert dict(process.labels) == {"npu_id": "4", "chip_id": "0", "device_id": "", "pid": "1601114",
                                    "process": "python"}
    assert process.value == 18429 * MIB
    assert all(dict(s.labels) == {"npu_id": str(n), "chip_id": "0", "device_id": "", "health": "OK"} and s.value == 0
               for n, s in enumerate(metrics["npu_health"]))


def test_samples_of_a_310p_table(tmp_path):
    snap = read(stand_in(tmp_path, "310P3-duo-info-1.txt"))
    metrics = _by_name(snap)
    assert set(metrics) == {
        "npu_info", "npu_health", "npu_temperature_celsius", "npu_aicore_utilization_percent",
        "npu_utilization_percent", "npu_memory_used_bytes", "npu_memory_total_bytes", "npu_ddr_used_bytes",
        "npu_ddr_total_bytes", "npu_hugepages_used", "npu_hugepages_total"}  # power is NA: no series
    assert [dict(s.labels) for s in metrics["npu_memory_total_bytes"]] == [
        {"npu_id": "1792", "chip_id": "0", "device_id": "0"}, {"npu_id": "1792", "chip_id": "1", "device_id": "1"}]
    assert [s.value for s in metrics["npu_memory_total_bytes"]] == [44280 * MIB, 43693 * MIB]
    assert [s.labels["bus_id"] for s in metrics["npu_info"]] == ["0000:07:00.0", "0000:07:00.0"]
