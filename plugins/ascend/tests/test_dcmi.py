"""The DCMI binding (npuagent_ascend.dcmi), run for real against a scripted libdcmi.so.

The double (``dcmi_double/libdcmi.c``) is compiled with gcc once per session, in two
builds: the full one, and an "older driver" without dcmi_subscribe_fault_event and some
readings. Each test loads its own copy of the file, so the library's once-per-process
state (dcmi_init, the fault subscription) starts fresh for each test, exactly as it
would in a new agent process.
"""

from __future__ import annotations

import ctypes
import threading
import time
from typing import Any, Callable, Dict, List, Tuple

import pytest
from libdcmi_double import OMITTED, Double
from npuagent_ascend import dcmi, errors, faults
from npuagent_ascend.dcmi import Dcmi, DcmiError, DcmiStalled, DcmiUnavailable
from npuagent_ascend.model import METRICS, MIB, Chip, Snapshot, samples

from npuagent.model import Event

#: struct sizes on LP64 as shared/reference/dcmi.md gives them (the others are checked against gcc only)
DOCUMENTED_SIZES = {
    "dcmi_chip_info": 100,
    "dcmi_pcie_info_all": 64,
    "dcmi_ecc_info": 36,
    "dcmi_hbm_info": 32,
    "dcmi_get_memory_info_stru": 112,
    "dcmi_memory_info_stru": 16,
}

#: three cards whose ids are not 0..n-1 (1792 has two chips and an MCU), with logic ids out of order
SCRIPT = """
cards = 1792, 5, 9
card.1792.chips = 2
card.1792.mcu = 1
dcmi_version = 24.1.rc2
driver_version = 24.1.rc2.b030

default.temperature = 40
default.power = 900
default.health = 0
default.util.13 = 50
default.util.2 = 40
default.util.12 = 30
default.util.3 = 5
default.util.10 = 20
default.util.6 = 8
default.util.1 = 3
default.freq.7 = 1800
# size MB, freq, used MB, temp, bandwidth %
default.hbm = 65536, 1600, 3400, 38, 7
# 910B: DCMI reports no DDR (0 MB)
default.mem = 0, 0, 0, 0, 0, 0, 0
default.ecc.2 = 1, 0, 0, 2, 1, 4, 0, 0, 0
default.network = 0
default.pcie = 0x19e5, 0x200, 0xd802, 0x100, 0, 0xc1, 0, 0

chip.1792.0.logic = 7
chip.1792.1.logic = 3
chip.1792.1.pcie = 0x19e5, 0x200, 0xd802, 0x100, 0, 0x82, 0, 0
chip.5.0.logic = 12
chip.5.0.temperature = 45
chip.5.0.power = 1624
chip.5.0.health = 2
chip.5.0.errors = 0x80E01801, 0x80C98000
chip.5.0.util.13 = 87
chip.5.0.hbm = 65536, 1600, 40960, 41, 66
chip.5.0.pcie = 0x19e5, 0x200, 0xd802, 0x100, 0, 0x1, 0, 0
chip.5.0.network = 3

# a 310P-like chip: DDR and no HBM, no RoCE, no overall utilization
chip.9.0.logic = 0
chip.9.0.name = 310P3
chip.9.0.hbm = -
chip.9.0.util.13 = -
chip.9.0.util.10 = -
chip.9.0.network = -
chip.9.0.ecc.2 = -
chip.9.0.ecc.0 = 1, 3, 1, 9, 2, 0, 0, 0, 0
# size MB, available MB, freq, hugepagesize KB, hugepages total, hugepages free, util %
chip.9.0.mem = 21534, 20000, 3200, 2048, 100, 60, 7
chip.9.0.pcie = 0x19e5, 0x200, 0xd500, 0x100, 0, 0x3b, 0, 0
"""


@pytest.fixture
def double(make_double: Callable[..., Double]) -> Callable[..., Double]:
    """``double(script=SCRIPT, variant="full")``"""
    return lambda script=SCRIPT, variant="full": make_double(script, variant)


# ---------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------


def by_ids(snap: Snapshot) -> Dict[Tuple[int, int], Chip]:
    return {(c.npu_id, c.chip_id): c for c in snap.chips}


def wait_for(predicate: Callable[[], bool], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


# ---------------------------------------------------------------------------------------------
# layouts and signatures
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(dcmi.STRUCTS))
def test_struct_sizes_match_the_header_and_the_reference(name: str, double: Callable[..., Double]) -> None:
    d = double()
    size = ctypes.sizeof(dcmi.STRUCTS[name])
    assert size == d.c.dcmi_double_sizeof(name.encode())
    if name in DOCUMENTED_SIZES:
        assert size == DOCUMENTED_SIZES[name]


@pytest.mark.parametrize(("struct", "field"), [
    ("dcmi_chip_info", "aicore_cnt"), ("dcmi_pcie_info_all", "bdf_funcid"),
    ("dcmi_ecc_info", "double_bit_next_isolated_pages_cnt"), ("dcmi_hbm_info", "freq"),
    ("dcmi_hbm_info", "memory_usage"), ("dcmi_hbm_info", "temp"), ("dcmi_hbm_info", "bandwith_util_rate"),
    ("dcmi_get_memory_info_stru", "freq"), ("dcmi_get_memory_info_stru", "hugepagesize"),
    ("dcmi_get_memory_info_stru", "hugepages_free"), ("dcmi_get_memory_info_stru", "utiliza"),
    ("dcmi_get_memory_info_stru", "reserve"), ("dcmi_memory_info_stru", "utiliza"),
    ("dcmi_event_filter", "event_id"), ("dcmi_event_filter", "severity"), ("dcmi_event_filter", "resv"),
    ("dcmi_dms_fault_event", "deviceid"), ("dcmi_dms_fault_event", "severity"),
    ("dcmi_dms_fault_event", "assertion"), ("dcmi_dms_fault_event", "alarm_raised_time"),
    ("dcmi_dms_fault_event", "event_name"), ("dcmi_dms_fault_event", "additional_info"),
    ("dcmi_dms_fault_event", "os_id"), ("dcmi_event", "event_t"),
])
def test_field_offsets_match_the_compiler(struct: str, field: str, double: Callable[..., Double]) -> None:
    d = double()
    assert getattr(dcmi.STRUCTS[struct], field).offset == d.c.dcmi_double_offsetof(struct.encode(), field.encode())


def test_every_function_is_bound_with_its_signature(double: Callable[..., Double], opened: Any) -> None:
    d = double()
    reader = opened(d.path)
    lib = reader._lib
    assert lib.missing == set()
    for name, argtypes in dcmi.SIGNATURES.items():
        fn = lib.functions[name]
        assert list(fn.argtypes) == list(argtypes), name
        assert fn.restype is ctypes.c_int, name


def test_every_bound_function_is_called_by_one_build_or_the_other(
        double: Callable[..., Double], opened: Any) -> None:
    full, old = double(), double(SCRIPT + "\nchip.1792.0.mem_v1 = 0, 0, 0\n", "old")
    opened(full.path).read(5)
    opened(old.path).read(5)
    never = [name for name in dcmi.SIGNATURES if full.calls(name) + old.calls(name) == 0]
    assert never == []


# ---------------------------------------------------------------------------------------------
# readings
# ---------------------------------------------------------------------------------------------


def test_reads_every_chip_in_base_units(double: Callable[..., Double], opened: Any) -> None:
    d = double()
    reader = opened(d.path)
    snap = reader.read(5)
    assert snap.warnings == []
    # card ids as dcmi_get_card_list gives them, the MCU of card 1792 left out
    assert [(c.npu_id, c.chip_id) for c in snap.chips] == [(1792, 0), (1792, 1), (5, 0), (9, 0)]
    assert [c.device_id for c in snap.chips] == [7, 3, 12, 0]
    assert snap.tool_version == "24.1.rc2"
    assert snap.driver_version == "24.1.rc2.b030"
    assert reader.topology[(5, 0)] == dcmi.ChipIds(5, 0, 12, 12)
    chips = by_ids(snap)

    busy = chips[(5, 0)]
    assert busy.name == "910B3"
    assert busy.bus_id == "0000:01:00.0"
    assert busy.temperature_celsius == 45.0
    assert busy.power_watts == pytest.approx(162.4)  # 1624 x 0.1 W
    assert busy.health == "Alarm"
    assert busy.fault_codes == [0x80E01801, 0x80C98000]
    assert busy.utilization_percent == 87.0
    assert busy.aicore_utilization_percent == 40.0
    assert busy.vector_utilization_percent == 30.0
    assert busy.aicpu_utilization_percent == 5.0
    assert busy.hbm_bandwidth_utilization_percent == 20.0  # type 10, not the hbm_info field
    assert busy.aicore_frequency_mhz == 1800.0
    assert busy.hbm_total_bytes == 65536 * MIB
    assert busy.hbm_used_bytes == 40960 * MIB
    assert busy.ddr_total_bytes is None and busy.ddr_used_bytes is None  # 0 MB: a 910B has no DDR
    assert busy.ecc_errors == {"hbm_single_bit": 0.0, "hbm_double_bit": 0.0,
                               "hbm_single_bit_aggregate": 2.0, "hbm_double_bit_aggregate": 1.0}
    assert busy.network_health == "UNREACH"
    npusmi = pytest.importorskip("npuagent_ascend.npusmi")
    assert set(busy.ecc_errors) <= set(npusmi.ECC_KINDS)  # the kinds the npu-smi parser gives

    idle = chips[(1792, 1)]
    assert idle.bus_id == "0000:82:00.0"
    assert idle.health == "OK"
    assert idle.fault_codes == []
    assert idle.power_watts == 90.0
    assert idle.hbm_used_bytes == 3400 * MIB
    assert idle.network_health == "OK"

    ddr = chips[(9, 0)]
    assert ddr.name == "310P3"
    assert ddr.bus_id == "0000:3B:00.0"
    assert ddr.hbm_total_bytes is None and ddr.hbm_used_bytes is None
    assert ddr.ddr_total_bytes == 21534 * MIB
    assert ddr.ddr_used_bytes == (21534 - 20000) * MIB
    assert ddr.hugepages_total == 100.0
    assert ddr.hugepages_used == 40.0
    assert ddr.utilization_percent is None
    assert ddr.hbm_bandwidth_utilization_percent is None
    assert ddr.network_health is None
    assert ddr.ecc_errors == {"ddr_single_bit": 3.0, "ddr_double_bit": 1.0,
                              "ddr_single_bit_aggregate": 9.0, "ddr_double_bit_aggregate": 2.0}
    # what the chips refused is recorded once, by reading
    assert {"dcmi_get_device_hbm_info", "dcmi_get_device_utilization_rate(13)",
            "dcmi_get_device_network_health", "dcmi_get_device_utilization_rate(10)"} <= reader.unsupported
    assert d.overlaps() == 0


def test_a_refused_reading_is_not_asked_again(double: Callable[..., Double], opened: Any) -> None:
    d = double()
    reader = opened(d.path)
    reader.read(5)
    first = {name: d.calls(name) for name in ("dcmi_get_device_hbm_info", "dcmi_get_device_memory_info_v3",
                                              "dcmi_get_device_network_health", "dcmi_get_device_chip_info",
                                              "dcmi_get_device_logic_id", "dcmi_get_device_temperature")}
    reader.read(5)
    again = {name: d.calls(name) - n for name, n in first.items()}
    assert again == {
        "dcmi_get_device_hbm_info": 3,            # chip 9's -8255 is remembered
        "dcmi_get_device_memory_info_v3": 1,      # the 910B chips' 0 MB DDR is remembered
        "dcmi_get_device_network_health": 3,
        "dcmi_get_device_chip_info": 0,           # names, bus ids and ids are read once
        "dcmi_get_device_logic_id": 0,
        "dcmi_get_device_temperature": 4,
    }


def test_invalid_values_are_dropped(double: Callable[..., Double], opened: Any) -> None:
    d = double(SCRIPT + "\nchip.5.0.temperature = -300\nchip.5.0.util.2 = 250\nchip.5.0.health = 0xffffffff\n")
    chip = by_ids(opened(d.path).read(5))[(5, 0)]
    assert chip.temperature_celsius is None
    assert chip.aicore_utilization_percent is None
    assert chip.health == "UNKNOWN"


def test_card_without_device_id_in_card_uses_the_count_and_leaves_the_mcu_out(
        double: Callable[..., Double], opened: Any) -> None:
    d = double(variant="old")
    snap = opened(d.path).read(5)
    assert [(c.npu_id, c.chip_id) for c in snap.chips] == [(1792, 0), (1792, 1), (5, 0), (9, 0)]
    assert d.calls("dcmi_get_device_type") == 3 + 1 + 1  # card 1792 counts its MCU


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------


def test_init_failing_with_8005_is_an_error_with_its_meaning_and_is_retried(
        double: Callable[..., Double], opened: Any) -> None:
    d = double(SCRIPT + "\nfail.dcmi_init = -8005\n")
    reader = opened(d.path)
    with pytest.raises(DcmiError) as e:
        reader.read(5)
    assert e.value.code == -8005
    assert "dcmi_init" in str(e.value)
    assert "-8005 DCMI_ERR_CODE_INNER_ERR" in str(e.value)
    assert errors.describe(-8005) in str(e.value)
    d.script(SCRIPT)  # the device is free again: the next read initialises
    assert len(reader.read(5).chips) == 4
    assert d.calls("dcmi_init") == 2


def test_init_failing_with_8020_says_the_device_is_occupied(double: Callable[..., Double], opened: Any) -> None:
    d = double(SCRIPT + "\nfail.dcmi_init = -8020\n")
    with pytest.raises(DcmiError, match="DCMI_ERR_CODE_RESOURCE_OCCUPIED") as e:
        opened(d.path).read(5)
    assert e.value.code == -8020
    assert "another container or process holds the device" in str(e.value)


def test_no_card_listed_is_an_error(double: Callable[..., Double], opened: Any) -> None:
    d = double(SCRIPT + "\nfail.dcmi_get_card_list = -8020\n")
    with pytest.raises(DcmiError, match=r"dcmi_get_card_list failed \(-8020"):
        opened(d.path).read(5)
    d2 = double("cards =\n")
    with pytest.raises(DcmiError, match="no NPU card"):
        opened(d2.path).read(5)


def test_init_runs_once_per_process(double: Callable[..., Double], opened: Any) -> None:
    d = double()
    first = opened(d.path)
    first.read(5)
    first.close()
    second = opened(d.path)  # as a collector made anew by a reload
    second.read(5)
    second.read(5)
    assert d.calls("dcmi_init") == 1


def test_one_chip_failing_with_8012_is_a_warning_and_the_rest_is_read(
        double: Callable[..., Double], opened: Any) -> None:
    d = double(SCRIPT + "\nfail.dcmi_get_device_temperature.5.0 = -8012\n"
                        "fail.dcmi_get_device_power_info.5.0 = -8012\n"
                        "fail.dcmi_get_device_health.9.0 = -8020\n")
    snap = opened(d.path).read(5)
    assert snap.warnings == [
        "npu 5 chip 0: dcmi_get_device_temperature, dcmi_get_device_power_info failed "
        f"(-8012 DCMI_ERR_CODE_NOT_REDAY): {errors.describe(-8012)}",
        f"npu 9 chip 0: dcmi_get_device_health failed (-8020 DCMI_ERR_CODE_RESOURCE_OCCUPIED): "
        f"{errors.describe(-8020)}",
    ]
    chips = by_ids(snap)
    assert chips[(5, 0)].temperature_celsius is None and chips[(5, 0)].power_watts is None
    assert chips[(5, 0)].utilization_percent == 87.0  # its other readings
    assert chips[(9, 0)].health is None and chips[(9, 0)].temperature_celsius == 40.0
    assert all(chips[k].temperature_celsius == 40.0 for k in ((1792, 0), (1792, 1)))


def test_a_card_that_cannot_list_its_chips_keeps_the_ones_it_had(
        double: Callable[..., Double], opened: Any) -> None:
    dropped = SCRIPT + ("\nfail.dcmi_get_device_id_in_card.1792 = -8012\n"
                        "fail.dcmi_get_device_num_in_card.1792 = -8012\n")
    d = double()
    reader = opened(d.path)
    reader.read(5)
    d.script(dropped)
    d.reload()
    snap = reader.read(5)
    assert [(c.npu_id, c.chip_id) for c in snap.chips] == [(1792, 0), (1792, 1), (5, 0), (9, 0)]
    assert snap.warnings[0] == ("npu 1792: dcmi_get_device_id_in_card, dcmi_get_device_num_in_card failed "
                                f"(-8012 DCMI_ERR_CODE_NOT_REDAY): {errors.describe(-8012)}")
    fresh = double(dropped)  # a reader that never saw the card cannot invent its chips
    assert [(c.npu_id, c.chip_id) for c in opened(fresh.path).read(5).chips] == [(5, 0), (9, 0)]


def test_unavailable_when_nothing_loads(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setattr(dcmi, "LIBRARY_PATHS", (str(tmp_path / "nowhere" / "libdcmi.so"),))
    monkeypatch.setattr(dcmi.ctypes.util, "find_library", lambda name: None)
    monkeypatch.setenv("LD_LIBRARY_PATH", str(tmp_path))
    garbage = tmp_path / "libdcmi-garbage.so"
    garbage.write_text("not a library")
    with pytest.raises(DcmiUnavailable) as e:
        Dcmi(str(garbage))
    assert str(garbage) in e.value.reason
    assert "nowhere/libdcmi.so: no such file" in e.value.reason
    assert "LD_LIBRARY_PATH" in e.value.reason


def test_the_configured_path_comes_first(double: Callable[..., Double], opened: Any,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    d, other = double(), double()
    monkeypatch.setattr(dcmi, "LIBRARY_PATHS", (other.path,))
    assert opened(d.path).library_path == d.path
    assert opened(None).library_path == other.path


# ---------------------------------------------------------------------------------------------
# an older driver: missing symbols are unsupported, not errors
# ---------------------------------------------------------------------------------------------


def test_missing_symbols_are_unsupported_not_errors(double: Callable[..., Double], opened: Any) -> None:
    d = double(SCRIPT + "\nchip.1792.0.mem_v1 = 16384, 3200, 25\n", "old")
    got: List[Event] = []
    reader = opened(d.path, on_event=got.append)
    assert set(OMITTED) <= reader.unsupported
    snap = reader.read(5)
    assert snap.warnings == []
    assert snap.driver_version == "" and snap.tool_version == "24.1.rc2"
    chips = by_ids(snap)
    assert all(c.hbm_total_bytes is None and c.network_health is None for c in snap.chips)
    assert chips[(5, 0)].temperature_celsius == 45.0
    # DDR from the V1 query where v3 is missing
    assert chips[(1792, 0)].ddr_total_bytes == 16384 * MIB
    assert chips[(1792, 0)].ddr_used_bytes == 16384 * MIB * 0.25
    # no HBM known: the DDR ECC counters
    assert chips[(9, 0)].ecc_errors["ddr_single_bit_aggregate"] == 9.0
    time.sleep(0.3)
    assert got == [] and reader.drain_events() == []
    assert d.overlaps() == 0


# ---------------------------------------------------------------------------------------------
# stalls: one worker, no pile-up
# ---------------------------------------------------------------------------------------------


def test_a_blocked_call_is_named_and_further_reads_are_refused_until_it_returns(
        double: Callable[..., Double], opened: Any) -> None:
    d = double(SCRIPT + "\nblock.dcmi_get_device_temperature = 1500\n")
    reader = opened(d.path)
    t0 = time.monotonic()
    with pytest.raises(DcmiStalled) as e:
        reader.read(timeout=0.5)
    assert 0.45 <= time.monotonic() - t0 < 1.2
    assert e.value.function == "dcmi_get_device_temperature"
    assert "dcmi_get_device_temperature has not returned" in str(e.value)
    assert isinstance(e.value, DcmiError)  # so "auto" reads npu-smi meanwhile

    t1 = time.monotonic()
    with pytest.raises(DcmiStalled) as again:
        reader.read(timeout=5)
    assert time.monotonic() - t1 < 0.1  # refused at once, nothing queued behind the stuck call
    assert again.value.function == "dcmi_get_device_temperature"

    # another reader of the same library (a reloaded collector) does not call in parallel either
    other = opened(d.path)
    with pytest.raises(DcmiStalled, match="dcmi_get_device_temperature"):
        other.read(timeout=0.2)

    assert wait_for(lambda: reader._job is None or reader._job.done.is_set(), 5)
    snap = reader.read(timeout=5)  # the call returned: reads work again
    assert len(snap.chips) == 4 and snap.warnings == []
    assert d.calls("dcmi_get_device_temperature") >= 4
    assert d.overlaps() == 0


def test_reads_from_many_threads_never_overlap_in_the_library(double: Callable[..., Double], opened: Any) -> None:
    d = double()
    readers = [opened(d.path), opened(d.path)]
    failures: List[BaseException] = []

    def loop(r: Dcmi) -> None:
        for _ in range(20):
            try:
                r.read(5)
            except BaseException as e:  # pragma: no cover - reported below
                failures.append(e)

    threads = [threading.Thread(target=loop, args=(r,)) for r in readers for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert d.overlaps() == 0


def test_close_stops_the_worker(double: Callable[..., Double]) -> None:
    d = double()
    reader = Dcmi(d.path)
    reader.read(5)
    reader.close()
    assert not reader._thread.is_alive()
    with pytest.raises(DcmiError, match="closed"):
        reader.read(5)


# ---------------------------------------------------------------------------------------------
# fault events from the driver's own thread
# ---------------------------------------------------------------------------------------------

EVENTS = """
event.1.code = 0x80E01801
event.1.card = 5
event.1.chip = 0
event.1.severity = 2
event.1.assertion = 1
event.1.name = HBM multi-bit ECC error
event.1.delay_ms = 100
event.2.code = 0x80E01801
event.2.card = 5
event.2.chip = 0
event.2.severity = 2
event.2.assertion = 0
event.2.delay_ms = 150
"""


def test_a_fault_event_arrives_at_once_with_the_chip_labels(double: Callable[..., Double], opened: Any) -> None:
    d = double(SCRIPT + EVENTS)
    got: List[Tuple[Event, str]] = []
    arrived = threading.Event()

    def on_event(event: Event) -> None:
        got.append((event, threading.current_thread().name))
        if len(got) == 2:
            arrived.set()

    reader = opened(d.path, on_event=on_event)
    reader.read(5)  # initialises and subscribes
    assert arrived.wait(5)
    (raised, thread), (recovered, _) = got
    assert thread not in (threading.main_thread().name, "npuagent-dcmi")  # the double's pthread
    assert raised.kind == "device_fault"
    assert raised.labels == {"npu_id": "5", "chip_id": "0", "device_id": "12", "code": "0x80e01801",
                             "level": faults.level(0x80E01801), "severity": "major", "assertion": "raised"}
    assert raised.message == f"{faults.describe(0x80E01801)}; HBM multi-bit ECC error"
    assert raised.timestamp is not None
    assert recovered.kind == "device_fault_recovered"
    assert recovered.labels["assertion"] == "recovered"
    assert reader.drain_events() == [raised, recovered]
    assert reader.drain_events() == []

    card, dev, flt = ctypes.c_int(), ctypes.c_int(), dcmi.DcmiEventFilter()
    d.c.dcmi_double_last_subscription.argtypes = [ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int),
                                                  ctypes.POINTER(dcmi.DcmiEventFilter)]
    assert d.c.dcmi_double_last_subscription(ctypes.byref(card), ctypes.byref(dev), ctypes.byref(flt)) == 0
    assert (card.value, dev.value, flt.filter_flag) == (-1, -1, 0)  # every chip, every event


def test_the_subscription_is_made_once_and_serves_every_open_reader(
        double: Callable[..., Double], opened: Any) -> None:
    d = double(SCRIPT + EVENTS.replace("delay_ms = 100", "delay_ms = 400").replace("delay_ms = 150", "delay_ms = 450"))
    old = opened(d.path)
    old.read(5)
    old.close()  # a reload: the old collector goes, a new one comes
    new_events: List[Event] = []
    new = opened(d.path, on_event=new_events.append)
    new.read(5)
    assert d.calls("dcmi_subscribe_fault_event") == 1
    assert wait_for(lambda: len(new_events) == 2)
    assert old.drain_events() == []  # closed: not delivered to


def test_a_failing_on_event_does_not_lose_the_event(double: Callable[..., Double], opened: Any) -> None:
    d = double(SCRIPT + EVENTS)

    def broken(event: Event) -> None:
        raise RuntimeError("the agent is not listening")

    reader = opened(d.path, on_event=broken)
    reader.read(5)
    assert wait_for(lambda: len(reader._events) == 2)
    assert [e.kind for e in reader.drain_events()] == ["device_fault", "device_fault_recovered"]


def test_a_failing_subscription_is_a_warning(double: Callable[..., Double], opened: Any) -> None:
    d = double(SCRIPT + "\nfail.dcmi_subscribe_fault_event = -8005\n")
    reader = opened(d.path)
    snap = reader.read(5)
    assert snap.warnings == [f"dcmi_subscribe_fault_event failed (-8005 DCMI_ERR_CODE_INNER_ERR): "
                             f"{errors.describe(-8005)} (fault events arrive at the next reading instead)"]
    d2 = double(SCRIPT + "\nfail.dcmi_subscribe_fault_event = -8255\n")
    reader2 = opened(d2.path)
    assert reader2.read(5).warnings == []
    assert "dcmi_subscribe_fault_event" in reader2.unsupported


# ---------------------------------------------------------------------------------------------
# the same device state gives the same samples as a hand-written snapshot (as npu-smi would)
# ---------------------------------------------------------------------------------------------


def expected_snapshot() -> Snapshot:
    """SCRIPT's machine as an npu-smi reading of it would describe it, in base units."""
    common = dict(name="910B3", health="OK", power_watts=90.0, temperature_celsius=40.0, utilization_percent=50.0,
                  aicore_utilization_percent=40.0, vector_utilization_percent=30.0, aicpu_utilization_percent=5.0,
                  hbm_bandwidth_utilization_percent=20.0, aicore_frequency_mhz=1800.0,
                  hbm_used_bytes=3400.0 * MIB, hbm_total_bytes=65536.0 * MIB, network_health="OK",
                  ecc_errors={"hbm_single_bit": 0.0, "hbm_double_bit": 0.0, "hbm_single_bit_aggregate": 2.0,
                              "hbm_double_bit_aggregate": 1.0})
    busy = {**common, "health": "Alarm", "power_watts": 162.4, "temperature_celsius": 45.0,
            "utilization_percent": 87.0, "hbm_used_bytes": 40960.0 * MIB, "network_health": "UNREACH",
            "fault_codes": [0x80E01801, 0x80C98000]}
    ddr = {**common, "name": "310P3", "utilization_percent": None, "hbm_bandwidth_utilization_percent": None,
           "hbm_used_bytes": None, "hbm_total_bytes": None, "network_health": None,
           "ddr_total_bytes": 21534.0 * MIB, "ddr_used_bytes": 1534.0 * MIB, "hugepages_total": 100.0,
           "hugepages_used": 40.0,
           "ecc_errors": {"ddr_single_bit": 3.0, "ddr_double_bit": 1.0, "ddr_single_bit_aggregate": 9.0,
                          "ddr_double_bit_aggregate": 2.0}}
    return Snapshot(
        chips=[Chip(1792, 0, 7, bus_id="0000:C1:00.0", **common), Chip(1792, 1, 3, bus_id="0000:82:00.0", **common),
               Chip(5, 0, 12, bus_id="0000:01:00.0", **busy), Chip(9, 0, 0, bus_id="0000:3B:00.0", **ddr)],
        tool_version="24.1.rc2", driver_version="24.1.rc2.b030")


def flat(snap: Snapshot) -> List[Tuple[str, Tuple[Tuple[str, str], ...], float]]:
    return sorted((s.name, tuple(sorted(s.labels.items())), round(s.value, 6)) for s in samples(snap))


def test_dcmi_gives_the_samples_of_the_same_state(double: Callable[..., Double], opened: Any) -> None:
    d = double()
    got = opened(d.path).read(5)
    assert flat(got) == flat(expected_snapshot())
    specs = {m.name: m for m in METRICS}
    for s in samples(got):
        assert tuple(s.labels) == tuple(specs[s.name].labels), s.name


def test_every_chip_metric_is_there_for_a_910b_chip(double: Callable[..., Double], opened: Any) -> None:
    d = double()
    names = {s.name for s in samples(opened(d.path).read(5)) if s.labels.get("npu_id") == "5"}
    not_from_dcmi = {"npu_power_limit_watts", "npu_ddr_used_bytes", "npu_ddr_total_bytes", "npu_hugepages_used",
                     "npu_hugepages_total", "npu_process_memory_bytes"}
    assert names == {m.name for m in METRICS} - not_from_dcmi
