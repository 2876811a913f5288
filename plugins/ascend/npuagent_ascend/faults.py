"""Ascend device fault codes: which fault level each code is, and what to do about each level.

The driver reports a device fault as an 8-hex-digit event id (``80E01801``): in ``npu-smi
info -t health -i N -c C`` as ``Error Code``, and in DCMI fault events. The number says
nothing to the operator on call; the fault *level* does, because each level has one
recommended handling, from "nothing to do" to "take the chip out of service". Huawei's
own Kubernetes device plugin (MindCluster) keys its self-healing on exactly this table,
so npuagent labels ``npu_fault_active`` and ``device_fault`` events with the same level
names, and rules written against them mean what a MindCluster operator expects.

The table ships as ``data/fault_codes.json`` and is built, reproducibly, by
:func:`build_table` from two reference files kept beside the design notes:

* ``faultCode.json``: the code lists, copied unchanged from Ascend/mind-cluster
  ``component/ascend-device-plugin/build/faultCode.json`` (Apache-2.0);
* ``hccl-codes.md`` §5.3: the meaning of each level and the vendor's handling, the
  severity order, and what the vendor does with a code it does not know.

Our own handling text (what an operator of an inference host does, :data:`HANDLING`) comes
from ``remediation.md`` and lives here, next to the code that uses it. The test suite
rebuilds the table from the references and compares it with the shipped file, so the
file's provenance is checked, not just claimed.

Two decisions, both taken from Huawei's tooling rather than invented:

* **A code listed under two levels** (``A2301001`` is in both RestartBusinessCodes and
  SeparateNPUCodes) gets the more severe one: ``GetFaultTypeByCode`` in the device
  plugin's ``fault_code.go`` tests the lists from SeparateNPU down and stops at the first hit.
* **An unknown code** (in no list) is :data:`DEFAULT_LEVEL`, ``SeparateNPU``:
  ``getFaultTypeBySeverity`` in the same file returns SeparateNPU for a code it has no
  severity for, and only downgrades to NotHandleFault when a DCMI subscription reports
  the fault's severity as Hint or Minor. npu-smi never reports a severity, so an unknown
  code is treated as the worst case: a chip with a fault nobody has classified is not a
  chip to keep scheduling work onto.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any, Dict, List, Mapping, Tuple, Union

__all__ = [
    "DEFAULT_LEVEL",
    "HANDLING",
    "LEVELS",
    "build_table",
    "describe",
    "dump_table",
    "handling",
    "level",
    "load_table",
    "spell",
]

#: What npuagent recommends per level, for a host that serves inference. The vendor's words
#: (for a Kubernetes scheduler) are in the table too, as ``vendor_handling``; these say what
#: a person or a local rule does on the machine itself. Sources: hccl-codes.md §5.3 (the
#: vendor's level semantics) and remediation.md §4 (heat) and §5 (device reset).
HANDLING: Dict[str, str] = {
    "NotHandleFault": (
        "no action: the fault does not affect service; it is recorded for the history of the chip"),
    "SubHealthFault": (
        "degraded: keep serving, but put no new long-running work on the chip; check cooling and links "
        "(a SoC/DDR high-temperature warning is one of these) and drain the chip at a quiet moment"),
    "RestartRequest": (
        "retry the failed request (inference) or re-run the step; if the fault lasts more than 60 s, "
        "take the chip out of scheduling and move its work elsewhere"),
    "RestartBusiness": (
        "restart the service that runs on the chip, not the chip; a second HBM multi-bit ECC (80E01801) "
        "within 24 h is escalated by the vendor to ManuallySeparateNPU"),
    "FreeRestartNPU": (
        "reset the chip once it is idle: drain the service, wait until no process holds the chip, "
        "npu-smi set -t reset -i <npu> -c <chip> -m 1, wait at least 20 s, check health, restart the service"),
    "RestartNPU": (
        "reset the chip now: stop the processes on it, npu-smi set -t reset -i <npu> -c <chip> -m 1, "
        "wait at least 20 s and poll health until OK (give up after 150 s), restart the service; "
        "if it recurs 2-3 times in 24 h, isolate the chip instead of resetting it again"),
    "PreSeparateNPU": (
        "no impact yet: pre-isolate the chip (put no new work on it), let running work finish, "
        "then have the chip serviced"),
    "SeparateNPU": (
        "unrecoverable: take the chip out of service (stop its work and move it elsewhere), do not reset "
        "it again, and open a hardware ticket"),
    "ManuallySeparateNPU": (
        "isolated until an operator clears it (repeated faults): investigate, RMA if needed, "
        "before the chip takes work again"),
}

#: Where each part of the shipped table comes from, written into the table itself.
SOURCES = {
    "codes": ("faultCode.json: Ascend/mind-cluster component/ascend-device-plugin/build/faultCode.json "
              "(HEAD 22bb3d987bc0208c3eb7395e222b661276133c58, Apache-2.0), copied unchanged: one list per "
              "level, codes as the driver reports them (hex without 0x)"),
    "levels": ("hccl-codes.md 5.3, from mind-cluster docs/en/scheduling/usage/resumable_training/"
               "03_configuring_fault_detection_levels.md: impact and vendor handling per level"),
    "severity_order": ("hccl-codes.md 5.3, from mind-cluster component/ascend-device-plugin/pkg/common/"
                       "fault_code.go getMostSeriousFaultType; a code in several lists takes the most severe "
                       "(GetFaultTypeByCode tests SeparateNPU first)"),
    "default_level": ("hccl-codes.md 5.3 note on unknown codes; fault_code.go getFaultTypeBySeverity returns "
                      "SeparateNPU for a code without a known severity (npu-smi reports none)"),
    "handling": ("npuagent: npuagent_ascend/faults.py HANDLING, from remediation.md (sections 4 and 5) and the "
                 "vendor handling above"),
}

_LEVEL_RE = re.compile(r"^[A-Z][A-Za-z]+$")


def _section(md: str, heading: str) -> str:
    """The text of the markdown section whose heading starts with ``heading``, up to the next heading."""
    lines = md.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("#") and line.lstrip("#").strip().startswith(heading):
            out = []
            for rest in lines[i + 1:]:
                if rest.startswith("#"):
                    break
                out.append(rest)
            return "\n".join(out)
    raise ValueError(f"hccl-codes.md: no section {heading!r}")


def _parse_levels(md: str) -> Tuple[Dict[str, Dict[str, str]], List[str], str, str]:
    """Levels (impact, vendor handling), severity order and the unknown-code rule from §5.3."""
    text = _section(md, "5.3")
    levels: Dict[str, Dict[str, str]] = {}
    for line in text.splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 4 or not _LEVEL_RE.match(cells[0]) or cells[0] == "Level":
            continue  # the header, the |---| rule, and node-level rows like "(node level) ..."
        name, impact, rescheduling, graceful = cells[:4]
        levels[name] = {"impact": impact, "vendor_handling": rescheduling,
                        "vendor_graceful": graceful if graceful and graceful != "same" else rescheduling}
    flat = " ".join(text.split())
    m = re.search(r"Severity order[^:]*:\s*([A-Za-z >]+?)\.", flat)
    if not m:
        raise ValueError("hccl-codes.md 5.3: no severity order")
    order = [name.strip() for name in m.group(1).split(">") if name.strip() not in ("", "Normal")]
    m = re.search(r"(Unknown codes \(not in faultCode\.json\):.*?\(doc note[^)]*\)\.?)", flat)
    if not m:
        raise ValueError("hccl-codes.md 5.3: no rule for unknown codes")
    rule = m.group(1)
    m = re.search(r"anything else → (\w+)", rule)
    if not m:
        raise ValueError("hccl-codes.md 5.3: the unknown-code rule names no level")
    return levels, order, rule, m.group(1)


def build_table(reference_json: Union[str, Mapping[str, Any]], hccl_md: str) -> Dict[str, Any]:
    """The fault table, from faultCode.json (its text or its parsed object) and hccl-codes.md.

    Deterministic: the same two inputs give the same table, so ``data/fault_codes.json``
    can be checked against its sources. The code lists are kept as faultCode.json has
    them (order, spelling, even a duplicate), so a diff against a newer upstream file
    shows exactly what Huawei changed.

    :raises ValueError: when a list in faultCode.json names a level that hccl-codes.md
        does not describe, or a level lacks handling text: a table with a level that
        nobody can act on is not shipped.
    """
    ref = json.loads(reference_json) if isinstance(reference_json, str) else dict(reference_json)
    described, order, rule, default = _parse_levels(hccl_md)
    unknown = [name for name in order if name not in described]
    if unknown:
        raise ValueError(f"hccl-codes.md: severity order names undescribed levels {unknown}")
    levels: Dict[str, Dict[str, Any]] = {}
    for name in order:  # most severe first: the order in which a code's level is decided
        array = f"{name}Codes" if f"{name}Codes" in ref else None
        if name not in HANDLING:
            raise ValueError(f"no handling text for level {name}")
        levels[name] = {
            "severity": len(order) - order.index(name),
            **described[name],
            "handling": HANDLING[name],
            "codes_from": f"faultCode.json {array}" if array else "none: reached only by escalation",
            "codes": list(ref[array]) if array else [],
        }
    for array in ref:
        name = array[:-len("Codes")] if array.endswith("Codes") else array
        if name not in levels:
            raise ValueError(f"faultCode.json: list {array} is not a level that hccl-codes.md describes")
    if default not in levels:
        raise ValueError(f"hccl-codes.md: unknown codes default to {default}, which is not a level")
    seen: Dict[int, List[str]] = {}
    for name, entry in levels.items():
        for spelling in entry["codes"]:
            holders = seen.setdefault(int(spelling, 16), [])
            if name not in holders:
                holders.append(name)
    conflicts = {_spell_in(code, levels): {"listed_under": names, "level": names[0]}
                 for code, names in sorted(seen.items()) if len(names) > 1}
    return {
        "about": ("Ascend device fault code -> fault level, and what each level calls for. Generated by "
                  "npuagent_ascend.faults.build_table from faultCode.json and hccl-codes.md; do not edit by "
                  "hand, rebuild it. A code listed under several levels takes the most severe; a code in no "
                  "list takes default_level."),
        "sources": dict(SOURCES),
        "unknown_codes_rule": rule,
        "default_level": default,
        "severity_order": order,
        "conflicts": conflicts,
        "levels": levels,
    }


def _spell_in(code: int, levels: Mapping[str, Mapping[str, Any]]) -> str:
    """A code as the table spells it (``020001002`` keeps its leading zero), else 8 upper-case hex digits."""
    for entry in levels.values():
        for spelling in entry["codes"]:
            if int(spelling, 16) == code:
                return spelling.upper()
    return f"{code:08X}"


def dump_table(table: Mapping[str, Any]) -> str:
    """The table as ``data/fault_codes.json`` holds it: stable key order, one code list per line."""
    text = json.dumps(table, indent=2, ensure_ascii=False)
    # one line per code list, instead of one line per code: 800 codes stay readable
    text = re.sub(r'"codes": \[\s*([^\]]*?)\s*\]',
                  lambda m: '"codes": [' + ", ".join(s.strip() for s in m.group(1).split(",") if s.strip()) + "]",
                  text)
    return text + "\n"


@functools.cache
def load_table() -> Dict[str, Any]:
    """The packaged table, read once (importlib.resources, so it works from a wheel or a zip too)."""
    from importlib import resources

    text = resources.files(__package__).joinpath("data/fault_codes.json").read_text(encoding="utf-8")
    return json.loads(text)


@functools.cache
def _index() -> Tuple[Dict[int, str], Dict[int, str]]:
    """code -> level (most severe listing wins) and code -> its spelling in the table."""
    table = load_table()
    levels: Dict[int, str] = {}
    spellings: Dict[int, str] = {}
    for name in table["severity_order"]:  # most severe first, so the first listing wins
        for spelling in table["levels"][name]["codes"]:
            code = int(spelling, 16)
            levels.setdefault(code, name)
            spellings.setdefault(code, spelling.upper())
    return levels, spellings


#: Every level, most severe first (the shipped table's ``severity_order``; a test keeps them equal, and
#: a constant lets a rule or a plugin name the levels without reading the file).
LEVELS: Tuple[str, ...] = ("ManuallySeparateNPU", "SeparateNPU", "PreSeparateNPU", "RestartNPU", "FreeRestartNPU",
                           "RestartBusiness", "RestartRequest", "SubHealthFault", "NotHandleFault")
#: The level of a code that no list holds (see the module's notes; the table's ``default_level``).
DEFAULT_LEVEL = "SeparateNPU"


def level(code: int) -> str:
    """The fault level of a device fault code (``0x80E01801`` -> ``RestartBusiness``).

    A code in no list is :data:`DEFAULT_LEVEL` (SeparateNPU), as Huawei's device plugin
    treats a fault it cannot classify.
    """
    return _index()[0].get(int(code), load_table()["default_level"])


def handling(level_name: str) -> str:
    """What to do about a fault of this level on an inference host.

    :raises KeyError: for a name that is not a level (the message lists the levels).
    """
    levels = load_table()["levels"]
    if level_name not in levels:
        raise KeyError(f"{level_name!r} is not a fault level; levels: {', '.join(levels)}")
    return levels[level_name]["handling"]


def spell(code: int) -> str:
    """``0x`` and the code as the table spells it, else as 8 upper-case hex digits."""
    return "0x" + _index()[1].get(int(code), f"{int(code):08X}")


def describe(code: int) -> str:
    """One line for a log, an event or a notification: ``0x80E01801: RestartBusiness: <handling>``."""
    name = level(code)
    return f"{spell(code)}: {name}: {handling(name)}"
