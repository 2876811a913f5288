"""Error codes, and the device, rank and process a log text names.

Five code spaces appear in CANN, HCCL and framework logs (shared reference, hccl-codes.md);
each is spelt so that a ``code`` label says which space it is from:

* CANN error-manager codes, six characters ``L M NNNN`` (``EI0006``, ``EZ9999``);
  ``NNNN`` 9000 and up are "inner errors" that only say which layer failed;
* ACL runtime and aclnn codes, six digits (``507011``, ``207001``, ``561000``): only
  ``1000xx``-``1099xx``, ``16100x``, ``20xxxx``, ``36100x``, ``50xxxx`` and ``56xxxx``, and
  only where a line says it is a code (``error code is``, ``ret[``, ``ErrCode=``...), so
  an address or a count is never taken for one;
* HCCL results (``HcclResult``), spelt by name (``HCCL_E_TIMEOUT``): from
  ``errNo[0x0000000005SSRRRR]`` (module 5, low 16 bits), ``hcclRet -> N``,
  ``HCCL function error: ... error code is N``, and ``ret[N]`` in HCCL's own lines;
* torch_npu's ``ERRsscCC`` (``ERR02200``);
* device fault and exception codes, eight hex digits (``A8028802``), as the driver
  prints them in exception and event reports.

:func:`primary` picks the one code a label carries: the most specific that is there.
"""

from __future__ import annotations

import re
from typing import Dict, List, Optional, Sequence, Tuple

#: HcclResult values (hccl_types.h of hicann/hcomm)
HCCL_RESULTS = {
    1: "HCCL_E_PARA", 2: "HCCL_E_PTR", 3: "HCCL_E_MEMORY", 4: "HCCL_E_INTERNAL", 5: "HCCL_E_NOT_SUPPORT",
    6: "HCCL_E_NOT_FOUND", 7: "HCCL_E_UNAVAIL", 8: "HCCL_E_SYSCALL", 9: "HCCL_E_TIMEOUT",
    10: "HCCL_E_OPEN_FILE_FAILURE", 11: "HCCL_E_TCP_CONNECT", 12: "HCCL_E_ROCE_CONNECT", 13: "HCCL_E_TCP_TRANSFER",
    14: "HCCL_E_ROCE_TRANSFER", 15: "HCCL_E_RUNTIME", 16: "HCCL_E_DRV", 17: "HCCL_E_PROFILING", 18: "HCCL_E_CCE",
    19: "HCCL_E_NETWORK", 20: "HCCL_E_AGAIN", 21: "HCCL_E_REMOTE", 22: "HCCL_E_SUSPENDING",
    23: "HCCL_E_OPRETRY_FAIL", 24: "HCCL_E_OOM", 1041: "HCCL_E_IN_STATUS",
}

CANN_CODE = re.compile(r"(?<![A-Za-z0-9_])([EWI][0-9A-Z]\d{4})(?![A-Za-z0-9_])")
TORCH_CODE = re.compile(r"(?<![A-Za-z0-9])(ERR\d{5})(?!\d)")
_DIGITS = re.compile(r"\d{6,}")
# what a line says just before an ACL code (searched in the 24 characters before a six-digit number)
_ACL_BEFORE = re.compile(
    r"(?:error code is|ErrCode=|errorCode ?= ?|error code ?= ?|\bret\[|retcode: ?|retcode=|runtime result = "
    r"|failed: |\bret: |\bret=|\bret = |result = |errcode: ?)\s?$"
)
_ACL_RANGE = re.compile(r"10\d{4}|16100\d|20\d{4}|36100\d|50\d{4}|56\d{4}")
_HCCL_HEX = re.compile(r"(?:errNo|return)\[0x([0-9a-fA-F]{1,16})\]")
_HCCL_DEC = re.compile(r"return\[(\d{8,10})\]")
_HCCL_CHAIN = re.compile(r"(?:hcclRet|\bret) -> (\d+)")
_HCCL_API = re.compile(r"(?:HCCL function error|OPS function error: Hccl\w*)[^\n]*?error code is (\d+)")
_HCCL_FAIL = re.compile(r"Hccl\w+ fail, error:(\d+)|\breturn\[(\d{1,4})\]")
_HCCL_RET = re.compile(r"\bret\[(\d{1,4})\]")
_FAULT = re.compile(
    r"(?:exception code \[|exception_code=|excep_id: |Event id=|event_id[=:]\s*\[?)0x([0-9a-fA-F]{8})(?![0-9a-fA-F])"
)
_HEALTH_CODES = re.compile(r"Error Code\s*:\s*((?:[0-9A-F]{8}\s*)+)")

Gated = Sequence[Tuple[str, re.Pattern]]


def _gated(*pairs: Tuple[str, str], flags: int = 0) -> List[Tuple[str, re.Pattern]]:
    """(literal, regex) pairs: the regex is tried only where the literal is in the text."""
    return [(literal, re.compile(pattern, flags)) for literal, pattern in pairs]


#: a device as the logs name it, most specific first (a logical id before any other spelling)
_DEVICE = _gated(
    ("deviceLogicId", r"deviceLogicId[\[:=]\s*(\d+)"), ("logicDevId[", r"logicDevId\[(\d+)\]"),
    (", Device:", r"\(PID:\d+, Device:(\d+)"), ("device_id", r"\bdevice_id[=:]\s*(\d+)"),
    ("device_id = ", r"\bdevice_id = (\d+)"), ("device_id-", r"\bdevice_id-(\d+)"),
    ("deviceId", r"\bdeviceId[=\[](\d+)"), ("devId", r"\bdevId[=:]\s*(\d+)"), ("devid", r"\bdevid[(:]\s*(\d+)"),
    ("[devid ", r"\[devid (\d+)\]"), ("Device[", r"\bDevice\[(\d+)\]"), ("device[", r"\bdevice\[(\d+)\]"),
    ("(device=", r"\(device=(\d+);"), ("set device=", r"\bset device=(\d+)"), ("Device ", r"\bDevice (\d+)\b"),
    (" device ", r"\b(?:set|open|reset) device (\d+)"), ("device is ", r"\bdevice is (\d+)\b"),
    ("(NPU ", r"\(NPU (\d+);"), (" dev", r"\bdev(\d+) (?:mem|Mem)"),
)
#: the rank of the process that logs (HCCL's ``rank[N]`` is its own user rank; a peer's is dst_rank or remote)
_RANK = _gated(
    ("RankID:", r"RankID:(\d+)"), ("[Rank ", r"\[Rank (\d+)\]"), ("rankId[", r"\brankId\[(\d+)\]"),
    ("localRank:", r"\blocalRank:(\d+)"), ("aicpu rank:", r"\baicpu rank:(\d+)"),
    ("rank [", r"(?:^|\])rank \[[^\]/\n]+/(\d+)\]:"), ("rank[", r"(?<![\w/])rank\[(\d+)\]"),
    ("rank=", r"\brank=(\d+)\b"), ("rank:", r"\brank:(\d+)\b"), flags=re.M,
)
_REMOTE_RANK = _gated(
    ("remote rank:", r"remote rank:\s*\[(\d+)\]"), ("remoteRank:", r"\bremoteRank:(\d+)"),
    ("dst_rank[", r"\bdst_rank\[(\d+)\]"), ("status[LOST]", r"rank \[[^\]\n]+\]: rank \[[^\]/\n]+/(\d+)\] status"),
)
_PID = _gated(("[PID: ", r"\[PID: (\d+)\]"), ("(PID:", r"\(PID:(\d+)"), ("pid=", r"\bpid=(\d+)\)"))
_PHY = re.compile(r"device\(chipId:(\d+), dieId:\d+\)")


def _hccl_name(value: int) -> Optional[str]:
    if value == 0:
        return None
    return HCCL_RESULTS.get(value, f"HCCL_E_{value}")


def cann_codes(text: str) -> List[str]:
    """CANN error-manager codes in order of appearance, each once."""
    return list(dict.fromkeys(CANN_CODE.findall(text)))


def acl_codes(text: str) -> List[str]:
    out = []
    for m in _DIGITS.finditer(text):
        code, start = m.group(), m.start()
        if (len(code) == 6 and _ACL_RANGE.fullmatch(code) and text[start - 1:start] not in (".", "x")
                and _ACL_BEFORE.search(text, max(0, start - 24), start)):
            out.append(code)
    return list(dict.fromkeys(out))


def hccl_results(text: str, hccl_line: bool = False) -> List[str]:
    """HCCL results a text reports, by name; ``hccl_line``: the text is HCCL's own (``ret[N]`` is then one)."""
    out: List[str] = []
    if "errNo[" in text or "return[" in text:
        for m in _HCCL_HEX.finditer(text):
            v = int(m.group(1), 16)
            if (v >> 24) & 0xFF in (0, 5):
                out.append(_hccl_name(v & 0xFFFF) or "")
        for m in _HCCL_DEC.finditer(text):
            v = int(m.group(1))
            if (v >> 24) & 0xFF == 5:
                out.append(_hccl_name(v & 0xFFFF) or "")
    if " -> " in text:
        out.extend(_hccl_name(int(v)) or "" for v in _HCCL_CHAIN.findall(text))
    if "function error" in text:
        out.extend(_hccl_name(int(v)) or "" for v in _HCCL_API.findall(text))
    if "fail, error:" in text or "return[" in text:
        for a, b in _HCCL_FAIL.findall(text):
            out.append(_hccl_name(int(a or b)) or "")
    if hccl_line and "ret[" in text:
        out.extend(_hccl_name(int(v)) or "" for v in _HCCL_RET.findall(text))
    return [c for c in dict.fromkeys(out) if c]


def fault_codes(text: str) -> List[str]:
    out = [c.upper() for c in _FAULT.findall(text)] if "0x" in text else []
    if "Error Code" in text:
        for group in _HEALTH_CODES.findall(text):
            out.extend(group.split())
    return list(dict.fromkeys(out))


def all_codes(text: str, hccl_line: bool = False) -> Dict[str, List[str]]:
    """Every code of ``text`` by space: ``cann``, ``acl``, ``hccl``, ``torch``, ``fault``."""
    return {"cann": cann_codes(text), "acl": acl_codes(text), "hccl": hccl_results(text, hccl_line),
            "torch": list(dict.fromkeys(TORCH_CODE.findall(text))) if "ERR" in text else [],
            "fault": fault_codes(text)}


def is_inner(code: str) -> bool:
    """``EZ9999`` and its kind: "an inner error of this layer", not what went wrong."""
    return len(code) == 6 and code[2:].isdigit() and int(code[2:]) >= 9000


def primary(codes: Dict[str, List[str]]) -> str:
    """The code a label carries: a specific CANN code, else an ACL code, an HCCL result, an inner CANN
    code, a torch_npu code, a device fault code; "" when there is none."""
    specific = [c for c in codes["cann"] if not is_inner(c)]
    for group in (specific, codes["acl"], codes["hccl"], codes["cann"], codes["torch"], codes["fault"]):
        if group:
            return group[0]
    return ""


def first(patterns: Gated, text: str) -> Optional[str]:
    """The first group of the first (literal, regex) pair whose literal is in the text and whose regex matches."""
    for literal, pattern in patterns:
        if literal in text:
            m = pattern.search(text)
            if m is not None:
                return m.group(1)
    return None


def device_id(text: str) -> Optional[str]:
    """The device a text names (as the process numbers it: the logical id when ASCEND_RT_VISIBLE_DEVICES
    is not set)."""
    return first(_DEVICE, text)


def rank(text: str) -> Optional[str]:
    return first(_RANK, text)


def remote_rank(text: str) -> Optional[str]:
    return first(_REMOTE_RANK, text)


def pid(text: str) -> Optional[str]:
    return first(_PID, text)


def phy_id(text: str) -> Optional[str]:
    """The physical chip a runtime device-error sentence names (``device(chipId:5, dieId:0)``)."""
    m = _PHY.search(text) if "chipId:" in text else None
    return m.group(1) if m else None
