"""What a log record says went wrong: its kind, its code, and where.

Each record that is an error (a plog ERROR record, a framework's CRITICAL/EXCEPTION line, a
HCCL heartbeat report, or a block of free text that carries an error code or matches a
rule) becomes one :class:`Finding`. The rules below are tried in order on the record's
whole text and its codes; the first that matches names the ``kind``. Rules are phrases, not
regular expressions, wherever a phrase will do: a flood of error lines (a broken job logs
thousands a second) must cost microseconds each. Their phrases come
from the shared fixtures and reference notes (MindCluster's fault-diagnosis keywords, the
HCCL and CANN troubleshooting guides); each rule says which.

Kinds are grouped in two families, which become the event kinds ``hccl_error`` and
``cann_error`` and the counters ``hccl_errors_total`` and ``cann_errors_total``:

* ``hccl``: collective communication and its set-up: ``connect_timeout`` (links not
  established in time: EI0006, EI0015, socket, topo-exchange and P2P timeouts,
  LINK_ERROR_INFO), ``notify_wait_timeout`` (a collective not finished in time: EI0002,
  Notify Wait task exceptions, fftsplus task timeouts, ACL 507048), ``heartbeat_lost``
  (a peer rank's heartbeat), ``cqe_error`` (RDMA error completions, retransmissions
  exceeded), ``link_down`` (EJ0002, a port down), ``qp_exhausted`` (RDMA queue pairs),
  ``port_bound`` (EJ0003, EI0019/20, listen failures), ``transport_init`` (EI0009),
  ``sdma_error``, ``hccp_init`` (EJ0001), ``ranktable_invalid``, ``args_inconsistent``,
  ``watchdog_timeout`` (torch_npu's HCCL watchdog), ``store_error`` (the c10d store that
  hands out the HCCL root info), ``init_failed``; and ``other``.
* ``cann``: the device and the runtime: ``ecc``, ``device_heartbeat_lost``, ``device_lost``
  (the host-device channel down), ``device_oom`` (memory allocation failure: EL0004,
  207001, halMemAlloc, "NPU out of memory"), ``aicore_timeout``, ``aicore_error``,
  ``vector_timeout``, ``vector_error``, ``aicpu_error``, ``task_timeout``,
  ``device_open_failed``, ``invalid_device``, ``stream_failed``; and ``other``.

A peer's lost heartbeat (``heartbeat_lost``) and the device's own (``device_heartbeat_lost``)
are kept apart: the first says another rank died, the second that this chip needs a reset.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, FrozenSet, List, Optional, Sequence, Tuple, Union

from . import codes as codes_mod
from .plog import ERROR_LEVELS, Record

HCCL_KINDS = frozenset((
    "port_bound", "qp_exhausted", "cqe_error", "heartbeat_lost", "link_down", "connect_timeout",
    "notify_wait_timeout", "watchdog_timeout", "transport_init", "sdma_error", "hccp_init", "ranktable_invalid",
    "args_inconsistent", "store_error", "init_failed",
))
CANN_KINDS = frozenset((
    "ecc", "device_heartbeat_lost", "device_lost", "device_oom", "aicore_timeout", "aicore_error", "vector_timeout",
    "vector_error", "aicpu_error", "task_timeout", "device_open_failed", "invalid_device", "stream_failed",
))

#: Lines that say they are harmless (torch_npu 2.7 logs its cache retry at ERROR).
BENIGN = re.compile(r"This error log can be ignored|you can ignore the above error")


Phrase = Union[str, Tuple[str, str]]


class Rule:
    """A kind and what names it: phrases (a literal, or a literal that must be there before a regex is tried:
    a substring test costs nanoseconds, a regex search a microsecond, and errors can come by the thousand)
    and codes."""

    __slots__ = ("codes", "guarded", "kind", "literals")

    def __init__(self, kind: str, phrases: Sequence[Phrase] = (), codes: Sequence[str] = ()) -> None:
        self.kind = kind
        self.literals = tuple(p for p in phrases if isinstance(p, str))
        self.guarded = tuple((p[0], re.compile(p[1])) for p in phrases if not isinstance(p, str))
        self.codes = frozenset(codes)

    def matches(self, text: str, codes: FrozenSet[str]) -> bool:
        if self.codes and not self.codes.isdisjoint(codes):
            return True
        for literal in self.literals:
            if literal in text:
                return True
        return any(trigger in text and rx.search(text) for trigger, rx in self.guarded)


#: first match wins: the specific before the general.
RULES = [
    # HCCL_013 / EI0019-20: the port is taken; a listen failure comes before the timeouts it causes
    Rule("port_bound", ("Bind_IP_Port", "Bind_Failed", "been bound already", "listen start fail",
                        "Address already in use", ("[HcclSocket][Listen]", r"\[HcclSocket\]\[Listen\][^\n]*\bfail"),
                        ("bind fail", r"\bbind fail")), ("EJ0003", "EI0019", "EI0020")),
    # HCCL_023, EI0007 with resource[qp]
    Rule("qp_exhausted", ("resource[qp]", "ra qp create fail")),
    # HCCL_029: RDMA retransmissions exceeded (CQE status 12), EI0013
    Rule("cqe_error", ("cqe err status", "cqe error status", "ROCE_CQE"), ("EI0013",)),
    # a peer rank lost: HCCL's heartbeat report, EI0002's "Heartbeat Lost Occurred"
    Rule("heartbeat_lost", ("status[LOST]", "Heartbeat Lost Occurred")),
    Rule("link_down", ("network port is down", "LINK DOWN", "HCCS LINK ERROR", ("link down", r"\blink down\b"),
                       ("port down", r"\bport down\b")), ("EJ0002", "507056")),
    # HCCL_004/005/016/017, EI0006, EI0015
    Rule("connect_timeout", ("Getting socket times out", "socket establish timeout", "get socket timeout",
                             "connected p2p timeout", "Wait links establish completed failed",
                             "LinksEstablishCompleted] is failed", "LINK_ERROR_INFO", "no rank connection success",
                             "server get socket fail", "Wait timeout for sockets recv",
                             "Communication_Error_Get_Socket", "get qp status timeout",
                             ("connection failure between this device",
                              r"connection failure between this device and (?:the )?target device")),
         ("EI0006", "EI0015")),
    # HCCL_027, Runtime_021, EI0002; the device scheduler's dump ends "notify wait timeout"
    Rule("notify_wait_timeout", ("taskType[Notify Wait]", "notify wait timeout", "Notify wait execute failed",
                                 "Notify register times out", "fftsplus task timeout", "stuck notify"),
         ("EI0002", "507048")),
    Rule("watchdog_timeout", ("Watchdog caught collective operation timeout",)),
    Rule("transport_init", ("Transport init error", "Create Dest error", "Alloc transports failed"), ("EI0009",)),
    Rule("sdma_error", ("taskType[Memcpy]", "taskType[Reduce Inline]", ("type:SDMA", r"type:SDMA\b"),
                        ("sdma error", r"\bsdma error")), ("EI0012",)),
    Rule("hccp_init", ("initialize the HCCP process", "HCCP_Process_Initialization"), ("EJ0001",)),
    Rule("ranktable_invalid", ("ranktable is invalid",), ("EI0004", "EI0014", "EI0017")),
    Rule("args_inconsistent", ("inconsistent between ranks", "[RankConsistentImpl]"), ("EI0005",)),
    Rule("store_error", ("c10d key-value store", "TCPStore", ("[c10d]", r"\[c10d\][^\n]*timed out"))),
    # the device
    Rule("ecc", ("multi ecc", "MULTI BIT ECC", "UCE ERROR", "SUSPECT MEM ERROR", ("ECC", r"\bECC\b")),
         ("507053", "507054", "507055", "A8028802", "80E01801")),
    Rule("device_heartbeat_lost", ("lost heartbeat", "Heartbeat lost", "heartbeat lost", "heart beat lost",
                                   "Heartbeats are missing"), ("E39009", "507010")),
    Rule("device_lost", ("hdc connect down", "Device status failure", "no valid device", "Device not found")),
    # Runtime_054, EL0004, EI0011, 207001
    Rule("device_oom", ("Memory_Allocation_Failure", "out of memory", "halMemAlloc failed",
                        "Malloc device memory failed", "Failed to allocate memory", "Failed to apply for memory",
                        "less than half of total memory"),
         ("EL0004", "EI0011", "207001", "207005", "207018")),
    Rule("aicore_timeout", ("aicore timeout", "AICORE_TIMEOUT", "AI Core timeout", "AICore timeout"), ("507014",)),
    # Runtime_032
    Rule("aicore_error", ("aicore error", "Aicore kernel execute failed", "AI Core exception", "AICore exception"),
         ("507015",)),
    Rule("vector_timeout", ("aivec timeout", "vector core timeout"), ("507034",)),
    Rule("vector_error", ("aivec error", "vector core exception", "vector core execution is abnormal"), ("507035",)),
    # Runtime_033
    Rule("aicpu_error", ("Aicpu kernel execute failed", "aicpu exception"), ("507017", "507018")),
    Rule("task_timeout", ("hwts timeout", "sync stream timeout", "stream sync timeout", "event wait timeout"),
         ("507046", "507047", "107019", "107020")),
    Rule("invalid_device", ("invalid device",
                            ("ASCEND_RT_VISIBLE_DEVICES", r"ASCEND_RT_VISIBLE_DEVICES[^\n]*error")), ("107001",)),
    Rule("device_open_failed", ("Failed to start the device", "TsdOpen failed",
                                ("open device", r"open device \d+ failed"),
                                ("set device", r"(?<!re)set device \d+ failed"),
                                ("rtSetDevice execut", r"rtSetDevice execut\w* failed")), ("507033",)),
    Rule("stream_failed", ("model stream execute failed", "Task execute failed", "Stream Synchronize failed"),
         ("507011",)),
    Rule("init_failed", ("hccl initialize failed", "hcclComm init error", "setup topo detect error",
                         ("HcclCommInitRootInfo", r"HcclCommInitRootInfo\w* fail"),
                         ("HCCL function error", r"HCCL function error: \w*(?:Init|RootInfo)"))),
]

#: every phrase of every rule, in rule order: (rule index, literal, regex or None); and each code's first rule
_CHECKS = [(i, literal, None) for i, r in enumerate(RULES) for literal in r.literals]
_CHECKS += [(i, trigger, rx) for i, r in enumerate(RULES) for trigger, rx in r.guarded]
_CHECKS.sort(key=lambda c: c[0])
_CODE_RULE: Dict[str, int] = {}
for _i, _r in enumerate(RULES):
    for _code in _r.codes:
        _CODE_RULE.setdefault(_code, _i)


def first_rule(text: str, codes: FrozenSet[str]) -> str:
    """The kind of the first rule that matches (by its codes or its phrases), or ""."""
    best = min((_CODE_RULE[c] for c in codes if c in _CODE_RULE), default=len(RULES))
    for i, literal, rx in _CHECKS:
        if i >= best:
            break
        if literal in text and (rx is None or rx.search(text)):
            best = i
            break
    return RULES[best].kind if best < len(RULES) else ""


#: Signs that a block of free text is an error even without a rule (it still needs a code to count).
_TEXT_ERROR = re.compile(r"\bERROR\b|\[ERROR\]|Error\b|error\b|\bfailed\b|\bfail\b|Exception\b|abnormal")
_HCCL_TEXT = re.compile(r"HCCL function error|OPS function error: Hccl|\[HCCL\]|\bHCCL\(|hccl api failed")


@dataclass
class Finding:
    """A record that is an error: its family (``hccl`` or ``cann``), kind and code, and where it happened."""

    family: str
    kind: str
    code: str
    record: Record
    codes: Dict[str, List[str]] = field(default_factory=dict)
    #: device_id, rank, remote_rank, phy_id, pid, process, where the text names them
    labels: Dict[str, str] = field(default_factory=dict)

    @property
    def event_kind(self) -> str:
        return f"{self.family}_error"


def classify(rec: Record) -> Optional[Finding]:
    """The finding of one record, or None when it is not an error (an INFO line, a harmless one)."""
    text = rec.text
    if BENIGN.search(text):
        return None
    # a plog ERROR record is an error by itself; free text (and a launcher's "ERROR" prefix) needs a code
    error_level = rec.level in ERROR_LEVELS and rec.fmt != "text"
    if rec.level and rec.level not in ERROR_LEVELS and "status[LOST]" not in text:
        return None
    hccl_line = rec.module in ("HCCL", "HCCP")
    found = codes_mod.all_codes(text, hccl_line)
    flat = frozenset(c for group in found.values() for c in group)
    kind = first_rule(text, flat)
    if not kind:
        if not error_level and not (found["fault"] or (flat and _TEXT_ERROR.search(text))):
            return None
        kind = "other"
    if kind in HCCL_KINDS:
        family = "hccl"
    elif kind in CANN_KINDS:
        family = "cann"
    else:
        hccl = (hccl_line or found["hccl"] or any(c[:2] in ("EI", "EJ") for c in found["cann"])
                or any(c.startswith("ERR02") for c in found["torch"]) or _HCCL_TEXT.search(text))
        family = "hccl" if hccl else "cann"
    return Finding(family, kind, codes_mod.primary(found), rec, found, _where(rec))


def _where(rec: Record) -> Dict[str, str]:
    """The labels a record's text gives: device_id, rank, remote_rank, phy_id, pid, process."""
    text = rec.text
    out: Dict[str, str] = {}
    for name, value in (("device_id", rec.extra.get("device_id") or codes_mod.device_id(text)),
                        ("rank", rec.extra.get("rank") or codes_mod.rank(text)),
                        ("remote_rank", codes_mod.remote_rank(text)), ("phy_id", codes_mod.phy_id(text))):
        if value is not None:
            out[name] = value
    pid = rec.pid if rec.pid is not None else rec.extra.get("pid") or codes_mod.pid(text)
    if pid is not None:
        out["pid"] = str(pid)
    process = rec.process or rec.extra.get("process", "")
    if process and process != "null":  # the device scheduler's TSCH(-1,null)
        out["process"] = process
    return out
