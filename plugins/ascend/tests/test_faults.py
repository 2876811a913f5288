"""The fault-code table: levels from Huawei's faultCode.json, handling per level, and its provenance."""

from __future__ import annotations

import json
import os
import re

import pytest
from npuagent_ascend import faults
from npuagent_ascend.model import Chip, FaultTracker, Snapshot, samples

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGE = os.path.join(os.path.dirname(HERE), "npuagent_ascend")
SHARED = os.path.normpath(os.path.join(HERE, "..", "..", "..", "..", "shared", "reference"))
REFERENCE_JSON = os.path.join(SHARED, "faultCode.json")
HCCL_MD = os.path.join(SHARED, "hccl-codes.md")

needs_references = pytest.mark.skipif(
    not (os.path.exists(REFERENCE_JSON) and os.path.exists(HCCL_MD)),
    reason="the shared reference files (../shared/reference) are not beside this checkout")


def read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


# codes and levels as hccl-codes.md 5.2 and remediation.md 4 name them
@pytest.mark.parametrize(("code", "level"), [
    (0x80E01801, "RestartBusiness"),      # HBM multi-bit ECC
    (0x8C204E00, "RestartBusiness"),      # tsdaemon heartbeat
    (0x80C98008, "RestartRequest"),
    (0x80C9800A, "RestartRequest"),       # AIC timeout
    (0x8C084E00, "FreeRestartNPU"),       # ADDA heartbeat
    (0x8C03A000, "RestartNPU"),           # ProcMgr heartbeat
    (0x40F84E00, "RestartNPU"),           # inter-board heartbeat
    (0x80E18005, "RestartNPU"),           # HBMC parity
    (0x80E18402, "SeparateNPU"),          # HBM ECC isolated rows reach 64
    (0x80E0020B, "SeparateNPU"),          # HBM fatal high temperature
    (0x8118043C, "PreSeparateNPU"),
    (0x80E20207, "SubHealthFault"),       # SoC non-fatal high temperature
    (0x80DE0207, "SubHealthFault"),       # DDR non-fatal high temperature
    (0x80E00209, "NotHandleFault"),       # HBM > 95 °C alarm
    (0x81078603, "NotHandleFault"),       # RoCE port up -> down
    (0x020001002, "SeparateNPU"),         # a 9-digit UB code, leading zero
    (0x200001002, "NotHandleFault"),      # not the same code as the one above
])
def test_known_codes_map_to_their_levels(code: int, level: str) -> None:
    assert faults.level(code) == level


def test_a_code_under_two_levels_takes_the_more_severe() -> None:
    # A2301001 is in RestartBusinessCodes and SeparateNPUCodes; fault_code.go tests SeparateNPU first
    assert faults.level(0xA2301001) == "SeparateNPU"
    assert faults.load_table()["conflicts"]["A2301001"] == {
        "listed_under": ["SeparateNPU", "RestartBusiness"], "level": "SeparateNPU"}


@pytest.mark.parametrize("code", [0x12345678, 0, 0xFFFFFFFF, 0x80E01802])
def test_an_unknown_code_gets_the_documented_default(code: int) -> None:
    assert faults.level(code) == "SeparateNPU" == faults.DEFAULT_LEVEL == faults.load_table()["default_level"]


def test_the_default_and_the_levels_are_those_of_the_table() -> None:
    table = faults.load_table()
    assert faults.LEVELS == tuple(table["severity_order"]) == tuple(table["levels"])
    assert "anything else → SeparateNPU" in table["unknown_codes_rule"]


@pytest.mark.parametrize("level", faults.LEVELS)
def test_each_level_has_handling_text(level: str) -> None:
    text = faults.handling(level)
    assert len(text) > 20
    entry = faults.load_table()["levels"][level]
    assert entry["handling"] == text and entry["impact"] and entry["vendor_handling"]


def test_a_level_that_does_not_exist_is_refused_by_name() -> None:
    with pytest.raises(KeyError, match="'Reboot' is not a fault level; levels: ManuallySeparateNPU"):
        faults.handling("Reboot")


def test_severity_orders_the_levels() -> None:
    levels = faults.load_table()["levels"]
    ranks = [levels[name]["severity"] for name in faults.LEVELS]
    assert ranks == sorted(ranks, reverse=True)
    assert levels["SeparateNPU"]["severity"] > levels["RestartNPU"]["severity"] > levels["NotHandleFault"]["severity"]


def test_describe() -> None:
    assert faults.describe(0x80E01801) == f"0x80E01801: RestartBusiness: {faults.handling('RestartBusiness')}"
    assert faults.describe(0x1).startswith("0x00000001: SeparateNPU: unrecoverable")
    assert faults.describe(0x020001002).startswith("0x020001002: SeparateNPU: ")  # the table's spelling


@needs_references
def test_every_code_of_the_reference_has_its_lists_level() -> None:
    ref = json.loads(read(REFERENCE_JSON))
    order = list(faults.LEVELS)
    listed = {}
    for array, codes in ref.items():
        for code in codes:
            listed.setdefault(int(code, 16), []).append(array[:-len("Codes")])
    assert len(listed) > 700
    for code, levels in listed.items():
        assert faults.level(code) == min(levels, key=order.index), hex(code)


@needs_references
def test_the_shipped_table_is_what_build_table_makes_of_the_references() -> None:
    built = faults.build_table(read(REFERENCE_JSON), read(HCCL_MD))
    shipped_text = read(os.path.join(PACKAGE, "data", "fault_codes.json"))
    assert json.loads(shipped_text) == built
    assert shipped_text == faults.dump_table(built), "rebuild data/fault_codes.json with faults.dump_table"
    # the lists are Huawei's, unchanged
    ref = json.loads(read(REFERENCE_JSON))
    for array, codes in ref.items():
        assert built["levels"][array[:-len("Codes")]]["codes"] == codes
        assert built["levels"][array[:-len("Codes")]]["codes_from"] == f"faultCode.json {array}"
    assert "mind-cluster" in built["sources"]["codes"] and "remediation.md" in built["sources"]["handling"]


@needs_references
def test_build_table_refuses_what_it_cannot_explain() -> None:
    md = read(HCCL_MD)
    with pytest.raises(ValueError, match="list RebootCodes is not a level"):
        faults.build_table({"RebootCodes": ["80E01801"]}, md)
    with pytest.raises(ValueError, match="no severity order"):
        faults.build_table(read(REFERENCE_JSON), md.replace("Severity order", "Order"))
    with pytest.raises(ValueError, match="no section"):
        faults.build_table(read(REFERENCE_JSON), "# nothing here\n")


def test_the_lookups_are_what_the_collector_takes() -> None:
    snap = Snapshot(chips=[Chip(npu_id=0, chip_id=0, device_id=0, fault_codes=[0x80E01801, 0x12345678])])
    active = {(s.labels["code"], s.labels["level"]) for s in samples(snap, faults.level)
              if s.name == "npu_fault_active"}
    assert active == {("0x80e01801", "RestartBusiness"), ("0x12345678", "SeparateNPU")}
    events = FaultTracker().events(snap, faults.level, faults.describe)
    assert [e.labels["level"] for e in events] == ["SeparateNPU", "RestartBusiness"]
    assert re.match(r"0x12345678: SeparateNPU: ", events[0].message)
