"""The log parser and classifier against every real excerpt in ``<repo>/../shared/fixtures/plog``.

Each excerpt is read the way it reaches the agent: a plog or device log file (every line a plog header, or
a device scheduler's ``<exception_print>`` dump) through the plog record reader and the hot-path scanner,
anything else (a job's stderr as the journal keeps it, kernel and bbox logs, tool output) through the
free-text block assembler. Every expected value was read off the excerpt by hand: the kind from the phrase
or code named in the comment, the code by the priority :func:`npuagent_ascend.codes.primary` documents,
labels where the text names them. The fixtures are read in place, never copied or edited.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest
from npuagent_ascend import plog, textlog
from npuagent_ascend.classify import CANN_KINDS, HCCL_KINDS, classify

REPO = Path(__file__).resolve().parents[3]
FIXTURES = REPO.parent / "shared" / "fixtures" / "plog"

pytestmark = pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"no plog excerpts at {FIXTURES}")

H, C = "hccl", "cann"
Expected = Tuple[str, int, List[Tuple[str, str, str, Dict[str, str]]]]

# file -> (how it is read, how many records, [(family, kind, code, labels)] of the records that are errors, in order)
# labels: device_id, rank, remote_rank, phy_id, pid (process is checked apart, below)
EXPECTED: Dict[str, Expected] = {
    # "error code is 507001" after "NPU function error": an ACL code; no rule names 507001 (TS internal error)
    "acl-507001-copy-d2d-expandable-1.txt": ("text", 1, [(C, "other", "507001", {})]),
    # the vLLM-prefixed traceback lines carry no code; the RuntimeError line does: 507011, model stream failed
    "acl-507011-stream-sync-timeout-1.txt": ("text", 2, [(C, "stream_failed", "507011", {"pid": "17096"})]),
    # one torch_npu exception block: 507035 + ERR00100 + "The vector core execution is abnormal."; Device:1
    "acl-507035-vector-core-1.txt": ("text", 1, [(C, "vector_error", "507035", {"device_id": "1", "pid": "1066924"})]),
    # "[c10d] The client socket has timed out after 1800000ms while trying to connect"
    "c10d-store-socket-timeout-910b-1.txt": ("text", 1, [(H, "store_error", "", {"pid": "904548"})]),
    # JSON-escaped inside an HTTP 500 body: unescaped into one block: 507033, ERR00100, E30006 (specific, first)
    "e30006-opp-verify-setdevice-json-escaped-1.txt": (
        "text", 1, [(C, "device_open_failed", "E30006", {"device_id": "0", "pid": "356"})]),
    # "Heartbeats are missing on the device" (E39009 is NNNN >= 9000, an inner code: the ACL code 507033 leads)
    "e39009-device-heartbeat-missing-1.txt": (
        "text", 1, [(C, "device_heartbeat_lost", "507033", {"device_id": "2", "pid": "728900"})]),
    # "TsdOpen failed. devId=1", 507033; EE1001 is the specific CANN code
    "ee1001-tsdopen-setdevice-1.txt": (
        "text", 1, [(C, "device_open_failed", "EE1001", {"device_id": "1", "pid": "2917193"})]),
    # "HCCL function error: hcclCommInitRootInfoConfig(...), error code is 15" = HCCL_E_RUNTIME; EE9999 is inner
    "ee9999-commInitRootInfoConfig-15-1.txt": (
        "text", 1, [(H, "init_failed", "HCCL_E_RUNTIME", {"device_id": "0", "rank": "1", "pid": "540989"})]),
    # "build op model failed, result = 500001"; "Aborted (core dumped)" after a blank line is a block of its own
    "eh9999-init-env-1.txt": ("text", 2, [(C, "other", "500001", {})]),
    # 507048 "The execution of the internal task times out" (where an HCCL execution timeout surfaces); RankID:8
    "ei0002-507048-sync-device-timeout-3.txt": (
        "text", 1, [(H, "notify_wait_timeout", "507048", {"device_id": "0", "rank": "8", "pid": "13075"})]),
    # EI0002, "rankSize[8], rankId[6]"
    "ei0002-notify-wait-timeout-1.txt": (
        "text", 1, [(H, "notify_wait_timeout", "EI0002", {"rank": "6", "pid": "198748"})]),
    # the same block's tail: "hccl fftsplus task timeout ... device(chipId:5, dieId:0)"; the Solution text's
    # "grep -rn 'error cqe'" is advice, not a CQE error
    "ei0002-notify-wait-timeout-2.txt": ("text", 1, [(H, "notify_wait_timeout", "", {"phy_id": "5"})]),
    "ei0006-socket-timeout-1.txt": ("text", 1, [(H, "connect_timeout", "EI0006", {})]),
    # "Failed to allocate resource[qp] with info [aicpu rank:15,...,deviceLogicId:3", first dst_rank[1]
    "ei0007-qp-alloc-exhausted-1.txt": (
        "text", 1, [(H, "qp_exhausted", "EI0007", {"device_id": "3", "rank": "15", "remote_rank": "1",
                                                   "pid": "9288"})]),
    "ei0009-transport-init-1.txt": (
        "text", 1, [(H, "transport_init", "EI0009", {"rank": "1", "remote_rank": "0", "pid": "2225827"})]),
    # EI0015: no rank reached the root within the connect timeout; Device:3, RankID:3
    "ei0015-rootinfo-detect-unconnected-ranks-1.txt": (
        "text", 1, [(H, "connect_timeout", "EI0015", {"device_id": "3", "rank": "3", "pid": "237"})]),
    # "hccl fftsplus task timeout ... timeout:30min(default)", device(chipId:3); EI9999 the only code
    "ei9999-fftsplus-timeout-2.txt": ("text", 1, [(H, "notify_wait_timeout", "EI9999", {"phy_id": "3"})]),
    "ej0001-hccp-init-fail-1.txt": (
        "text", 1, [(H, "hccp_init", "EJ0001", {"device_id": "3", "rank": "3", "pid": "927000"})]),
    "ej0002-network-port-down-1.txt": ("text", 1, [(H, "link_down", "EJ0002", {"pid": "38079"})]),
    # "The IP address and port have been bound already"; [rank0]:, Device:0
    "ej0003-port-bound-1.txt": (
        "text", 1, [(H, "port_bound", "EJ0003", {"device_id": "0", "rank": "0", "pid": "159"})]),
    # "Device[1] lost heartbeat", 507010
    "el0001-heartbeat-lost-1.txt": (
        "text", 1, [(C, "device_heartbeat_lost", "EL0001", {"device_id": "1", "pid": "389"})]),
    # block 1: "fftsplus aicore error" (Device:9, chipId:4); block 2 ([rank9]: watchdog line) has no code;
    # block 3: ERR02005 "DIST internal error", a DIST (distributed) code: the HCCL family
    "el0003-fftsplus-aicore-watchdog-err02005-1.txt": (
        "text", 3, [(C, "aicore_error", "EL0003", {"device_id": "9", "phy_id": "4", "pid": "758"}),
                    (H, "other", "ERR02005", {"device_id": "9", "pid": "758"})]),
    "el0004-memory-alloc-fail-1.txt": (
        "text", 1, [(C, "device_oom", "EL0004", {"device_id": "2", "pid": "1613532"})]),
    # [rank7]: "error code is 207001" (its own block: another writer prefix), then the EL0004 block
    "el0004-memory-alloc-fail-2.txt": (
        "text", 2, [(C, "device_oom", "207001", {"rank": "7"}),
                    (C, "device_oom", "EL0004", {"device_id": "7", "pid": "316198"})]),
    "ez9999-aicore-error-2.txt": ("text", 1, [(C, "aicore_error", "507015", {"phy_id": "0", "pid": "110830"})]),
    "ez9999-aivec-error-1.txt": ("text", 1, [(C, "vector_error", "507035", {"phy_id": "2", "pid": "2012974"})]),
    # exception codes [0xB4060007] (TS) and [0xA8028802] (driver multi ECC); "appeared multi ecc err"
    "fixture-bbox-multi-ecc-1.txt": (
        "text", 5, [(C, "other", "B4060007", {}), (C, "ecc", "A8028802", {}), (C, "ecc", "A8028802", {}),
                    (C, "ecc", "", {"device_id": "2"})]),
    # HCCL on the device's AI CPU; "type:SDMA, localRank:1, remoteRank:2"
    "fixture-device-aicpu-hccl-sdma-exception-1.txt": (
        "plog", 4, [(H, "other", "", {"device_id": "1", "pid": "3496"}), (H, "other", "", {"pid": "3496"}),
                    (H, "sdma_error", "", {"rank": "1", "remote_rank": "2", "pid": "3496"}),
                    (H, "other", "", {"pid": "3496"})]),
    "fixture-device-os-tdt-event-1.txt": ("plog", 5, []),
    # the first record's <exception_print> dump ends "notify wait timeout", exception_code=0xb4060007, device_id=0
    "fixture-device-tsch-hwts-timeout-1.txt": (
        "plog", 6, [(H, "notify_wait_timeout", "B4060007", {"device_id": "0"}), (C, "task_timeout", "", {}),
                    (C, "other", "", {}), (C, "other", "", {}), (C, "task_timeout", "", {}),
                    (C, "task_timeout", "", {})]),
    "fixture-hccl-heartbeat-cqe12-1.txt": ("plog", 2, [(H, "cqe_error", "", {"pid": "12337"})]),
    # INFO "rank [172.16.0.159/2]: rank [172.16.0.57/5] status[LOST]": this rank 2, the lost one 5
    "fixture-hccl-info-event-lines-1.txt": (
        "plog", 12, [(H, "heartbeat_lost", "", {"rank": "2", "remote_rank": "5", "pid": "989"}),
                     (H, "heartbeat_lost", "", {"rank": "2", "remote_rank": "2", "pid": "989"}),
                     (H, "cqe_error", "", {"pid": "148"})]),
    # LINK_ERROR_INFO, its rows (device[0] in the first), the reasons line, errNo 0x05000004 = HCCL_E_INTERNAL
    "fixture-hccl-link-error-info-1.txt": (
        "plog", 8, [(H, "connect_timeout", "", {"pid": "26251"}), (H, "other", "", {"device_id": "0", "pid": "26251"}),
                    (H, "other", "", {"pid": "26251"}), (H, "other", "", {"pid": "26251"}),
                    (H, "other", "", {"pid": "26251"}), (H, "other", "", {"pid": "26251"}),
                    (H, "connect_timeout", "", {"pid": "26251"}), (H, "other", "HCCL_E_INTERNAL", {"pid": "26251"})]),
    "fixture-hccl-link-error-info-2.txt": (
        "plog", 8, [(H, "connect_timeout", "", {"pid": "59420"}), (H, "other", "", {"device_id": "0", "pid": "59420"}),
                    (H, "other", "", {"pid": "59420"}), (H, "other", "", {"pid": "59420"}),
                    (H, "other", "", {"pid": "59420"}), (H, "other", "", {"pid": "59420"}),
                    (H, "connect_timeout", "", {"pid": "59420"}), (H, "other", "", {"pid": "59420"})]),
    # "connected p2p timeout, timeout:130 s"; errNo[0x...0010] and [0x...05010010] = 16 HCCL_E_DRV
    "fixture-hccl-p2p-timeout-1.txt": (
        "plog", 5, [(H, "connect_timeout", "", {"pid": "42"}), (H, "other", "HCCL_E_DRV", {"pid": "42"}),
                    (H, "other", "HCCL_E_DRV", {"pid": "42"})]),
    # errNo[0x0000000005010006] = 6 HCCL_E_NOT_FOUND
    "fixture-hccl-socket-alloc-transport-fail-1.txt": (
        "plog", 5, [(H, "connect_timeout", "", {"pid": "72"}), (H, "transport_init", "", {"pid": "72"}),
                    (H, "other", "HCCL_E_NOT_FOUND", {"pid": "72"})]),
    "fixture-hccl-taskexception-notify-wait-1.txt": (
        "plog", 4, [(H, "other", "", {"pid": "69395"}), (H, "notify_wait_timeout", "", {"pid": "69395"}),
                    (H, "other", "", {"pid": "69395"}), (H, "other", "", {"rank": "0", "pid": "69395"})]),
    # hcclRet -> 9 = HCCL_E_TIMEOUT, -> 4 = HCCL_E_INTERNAL, errNo 0x05000013 = HCCL_E_NETWORK (firewall hint)
    "fixture-hccl-topo-exchange-socket-timeout-1.txt": (
        "plog", 15, [(H, "connect_timeout", "", {"pid": "148"}), (H, "other", "", {"pid": "148"}),
                     (H, "other", "", {"pid": "148"}), (H, "other", "HCCL_E_TIMEOUT", {"pid": "148"}),
                     (H, "other", "", {"pid": "148"}), (H, "other", "HCCL_E_TIMEOUT", {"pid": "148"}),
                     (H, "connect_timeout", "HCCL_E_NETWORK", {"pid": "148"}),
                     (H, "other", "HCCL_E_TIMEOUT", {"pid": "148"}), (H, "other", "HCCL_E_TIMEOUT", {"pid": "148"}),
                     (H, "other", "HCCL_E_INTERNAL", {"pid": "148"}), (H, "other", "HCCL_E_INTERNAL", {"pid": "148"}),
                     (H, "other", "HCCL_E_INTERNAL", {"pid": "148"}), (H, "other", "HCCL_E_INTERNAL", {"pid": "148"}),
                     (H, "init_failed", "HCCL_E_INTERNAL", {"pid": "148"}),
                     (H, "init_failed", "HCCL_E_INTERNAL", {"rank": "0", "pid": "148"})]),
    # hccn_tool's history: the two LINK DOWN lines, [devid 0]
    "fixture-hccn-link-stat-linkdown-1.txt": (
        "text", 8, [(H, "link_down", "", {"device_id": "0"}), (H, "link_down", "", {"device_id": "0"})]),
    "fixture-host-kernel-heartbeat-lost-1.txt": (
        "text", 1, [(C, "device_heartbeat_lost", "", {"device_id": "1"})]),
    # "adda heart beat lost error"; Error Code : A4025021 8C03A000 8C084E00
    "fixture-npu-smi-health-alarm-heartbeat-1.txt": ("text", 1, [(C, "device_heartbeat_lost", "A4025021", {})]),
    "fixture-plog-drv-devmm-halmemalloc-1.txt": (
        "plog", 6, [(C, "device_oom", "", {"device_id": "0", "pid": "10972"})]),
    "fixture-run-plog-init-1.txt": ("plog", 4, []),
    "fixture-slog-host-kernel-pcie-1.txt": ("text", 2, []),
    # errNo[0x...05000002] = HCCL_E_PTR; MindIE's "HcclCommInitRootInfo fail, error:2, rank:1"
    "hccl-commInitRootInfo-fail-1.txt": (
        "text", 8, [(H, "init_failed", "HCCL_E_PTR", {"pid": "36035"}),
                    (H, "init_failed", "HCCL_E_PTR", {"rank": "1"})]),
    "hccl-commInitRootInfoConfig-errcode1-1.txt": (
        "text", 2, [(H, "init_failed", "HCCL_E_PARA", {"device_id": "1", "rank": "1", "pid": "7226"})]),
    # author-wrapped lines: "hccl fftsplus task timeout" and "stuck notify num:1" (its [FUNC:] line joins it)
    "hccl-fftsplus-task-timeout-1.txt": (
        "text", 3, [(H, "notify_wait_timeout", "", {}), (H, "notify_wait_timeout", "", {})]),
    "hccl-hccp-plog-listen-fail-2.txt": (
        "plog", 16, [(H, "port_bound", "", {"pid": "60570"})]
        + [(H, "other", "HCCL_E_UNAVAIL", {"pid": "60570"})] * 4
        + [(H, "init_failed", "HCCL_E_UNAVAIL", {"pid": "60570"})] * 2
        + [(H, "other", "", {"pid": "60570"})] * 3  # HCCP's own lines: ret(-22) is no HCCL result
        + [(H, "other", "HCCL_E_TCP_CONNECT", {"pid": "60570"})] * 3
        + [(H, "other", "HCCL_E_UNAVAIL", {"device_id": "0", "rank": "4", "pid": "60570"}),
           (H, "other", "", {"device_id": "0", "pid": "60570"}),
           (H, "init_failed", "HCCL_E_UNAVAIL", {"pid": "60570"})]),
    "hccl-plog-connection-failure-reasons-1.txt": (
        "plog", 6, [(H, "connect_timeout", "", {"pid": "38011"})] + [(H, "other", "", {"pid": "38011"})] * 5),
    "hccl-plog-rank-info-detect-no-connection-1.txt": (
        "plog", 7, [(H, "other", "", {"pid": "747049"}), (H, "other", "", {"pid": "747049"}),
                    (H, "connect_timeout", "", {"pid": "747049"}), (H, "other", "", {"pid": "747049"}),
                    (H, "connect_timeout", "", {"pid": "747049"}), (H, "connect_timeout", "", {"pid": "747049"}),
                    (H, "other", "", {"pid": "747049"})]),
    # listen failure first (port 16666 in use), hcclRet -> 19 = HCCL_E_NETWORK, then the socket timeout, ret[9]
    "hccl-plog-socket-listen-fail-1.txt": (
        "plog", 7, [(H, "port_bound", "", {"pid": "2717288"}), (H, "other", "HCCL_E_NETWORK", {"pid": "2717288"}),
                    (H, "other", "HCCL_E_NETWORK", {"pid": "2717288"}),
                    (H, "connect_timeout", "", {"rank": "12", "pid": "2717288"}),
                    (H, "connect_timeout", "HCCL_E_TIMEOUT", {"pid": "2717288"}),
                    (H, "connect_timeout", "HCCL_E_TIMEOUT", {"pid": "2717288"}),
                    (H, "connect_timeout", "", {"pid": "2717288"})]),
    "hccl-store-recv-fail-1.txt": ("text", 1, [(H, "store_error", "", {"pid": "53843"})]),
    # two watchdog lines and the terminate block whose what() repeats it; lines 2 and 3 carry no error sign
    "hccl-watchdog-timeout-1.txt": ("text", 5, [(H, "watchdog_timeout", "", {"rank": "1"})] * 3),
    # "acl set device 0 failed, errorCode = 507033"; the reset's 507007 is a context release error, no rule
    "host-dmesg-ascend-devmm-1.txt": (
        "text", 13, [(C, "device_open_failed", "507033", {"device_id": "0"}),
                     (C, "other", "507007", {"device_id": "0"})]),
    # ret[107001] "invalid device, set device=8"; EE1001 is the specific code
    "ms-doc-ee1001-invalid-device-1.txt": ("text", 1, [(C, "invalid_device", "EE1001", {"device_id": "8"})]),
    "ms-doc-ee9999-halmemalloc-oom-1.txt": (
        "text", 2, [(C, "device_oom", "207001", {"device_id": "6", "pid": "170414"}),
                    (C, "device_oom", "EE9999", {"device_id": "6", "pid": "170414"})]),
    # every RUNTIME line of the burst, and MindSpore's; "model execute task failed" and the "report error"
    # lines name no failure a rule knows
    "ms-doc-ee9999-task-execute-failed-runtime-plog-1.txt": (
        "text", 16, [(C, "stream_failed", "", {"device_id": "0", "pid": "160186"}),
                     (C, "stream_failed", "", {"device_id": "0", "pid": "160186"}),
                     (C, "stream_failed", "", {"pid": "160186"}),
                     (C, "other", "", {"device_id": "0", "pid": "160186"}),
                     (C, "stream_failed", "507011", {"pid": "160186"}),
                     (C, "stream_failed", "507011", {"pid": "160186"}),
                     (C, "stream_failed", "", {"pid": "160186"}),
                     (C, "other", "EE9999", {"pid": "160186"}),
                     (C, "stream_failed", "", {"device_id": "0", "pid": "160186"}),
                     (C, "other", "", {"pid": "160186"}),
                     (C, "stream_failed", "507011", {"pid": "160186"}),
                     (C, "other", "EE8888", {"pid": "160186"}),
                     (C, "stream_failed", "", {"pid": "160186"}),
                     (C, "stream_failed", "507011", {"pid": "160186"}),
                     (C, "stream_failed", "507011", {"device_id": "0", "pid": "160186"}),
                     (C, "stream_failed", "EE9999", {"device_id": "0", "pid": "160186"})]),
    # "Heartbeat Lost Occurred" inside EI0002: the peer is gone (more specific than the notify wait it caused)
    "ms-doc-ei0002-notify-wait-heartbeat-lost-4.txt": (
        "text", 5, [(C, "other", "", {"device_id": "1", "pid": "162844"}),
                    (H, "heartbeat_lost", "EI0002", {"device_id": "1", "remote_rank": "0", "pid": "162844"})]),
    "ms-doc-ei0004-ranktable-invalid-1.txt": ("text", 2, [(H, "ranktable_invalid", "EI0004", {})]),
    "ms-doc-ei0005-args-inconsistent-1.txt": ("text", 3, [(H, "args_inconsistent", "EI0005", {})]),
    # the Python traceback, its RuntimeError and the "- Ascend Error Message:" frame are one block
    "ms-doc-ei0006-socket-timeout-3.txt": ("text", 4, [(H, "connect_timeout", "EI0006", {})]),
    "ms-doc-ek0001-profiling-path-1.txt": (
        "text", 2, [(C, "other", "EK0001", {"pid": "138694"}), (C, "other", "", {"pid": "138694"})]),
    "ms-doc-ez9999-aicore-add-1.txt": (
        "text", 8, [(C, "stream_failed", "507011", {"pid": "118114"}),
                    (C, "stream_failed", "507011", {"device_id": "0", "pid": "118114"}),
                    (C, "other", "", {"pid": "118114"}), (C, "other", "", {"pid": "118114"}),
                    (C, "aicore_error", "EZ9999", {"device_id": "0", "pid": "118114"})]),
    "ms-doc-hbm-free-less-than-half-1.txt": ("text", 2, [(C, "device_oom", "", {"device_id": "0"})]),
    "ms-doc-hccl-trace-destroy-1.txt": ("plog", 1, []),
    # "Device status failure, ret=118554641" (an inner code), then "hdc connect down, devid(0)"
    "ms-doc-runtime-drv-hdc-connect-down-1.txt": (
        "plog", 2, [(C, "device_lost", "", {"pid": "17381"}),
                    (C, "device_lost", "", {"device_id": "0", "pid": "17381"})]),
    "npu-oom-1.txt": ("text", 1, [(C, "device_oom", "", {"device_id": "0"})]),
    # the first line is quoted ("> [ERROR] GE(...") in the issue: text; GE's ErrorNo 1343225860 is in no code space
    "plog-event-ge-profiling-tdt-1.txt": ("text", 6, [(C, "other", "", {"pid": "946748"})]),
    # "set ASCEND_RT_VISIBLE_DEVICES:[4] error, input data rang[0-2)"
    "plog-mindie-runtime-visible-devices-1.txt": ("plog", 5, [(C, "invalid_device", "", {"pid": "42"})]),
    # torch_npu says "This error log can be ignored."
    "torch-npu-memory-pool-benign-1.txt": ("text", 1, []),
}


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def records(name: str) -> List[plog.Record]:
    mode = EXPECTED[name][0]
    text = fixture(name)
    return plog.records_of(text) if mode == "plog" else textlog.records_of_text(text)


def test_every_excerpt_has_expectations() -> None:
    assert sorted(p.name for p in FIXTURES.glob("*.txt")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_findings(name: str) -> None:
    _mode, count, expected = EXPECTED[name]
    recs = records(name)
    assert len(recs) == count
    got = []
    for rec in recs:
        f = classify(rec)
        if f is not None:
            assert f.kind in (HCCL_KINDS if f.family == "hccl" else CANN_KINDS) or f.kind == "other"
            got.append((f.family, f.kind, f.code, {k: v for k, v in f.labels.items() if k != "process"}))
    assert got == expected


@pytest.mark.parametrize("name", sorted(n for n, e in EXPECTED.items() if e[0] == "plog"))
def test_the_hot_path_agrees_with_the_record_reader(name: str) -> None:
    """scan() (one regex pass per chunk) counts the same messages and hands out the same error records."""
    text = fixture(name)
    data = (text if text.endswith("\n") else text + "\n").encode()
    taken, counts, raw = plog.scan(data, final=True)
    assert taken == len(data)
    recs = plog.records_of(text)
    assert counts == Counter(f"{r.level}] {r.module}".encode() for r in recs)
    wanted = [r for r in recs if r.level == "ERROR" or "status[LOST]" in r.text]
    assert sorted(plog.parse_record(b.decode()).text for b in raw) == sorted(r.text for r in wanted)


def at(text: str) -> float:
    """The epoch seconds of a CANN time, computed apart from the parser (local time)."""
    date, clock = text[:10], text[11:]
    y, mo, d = map(int, date.split("-"))
    h, mi, rest = clock.split(":")
    s, ms, us = rest.split(".")
    return time.mktime((y, mo, d, int(h), int(mi), int(s), 0, 0, -1)) + int(ms) / 1e3 + int(us) / 1e6


# file -> [(record index, fields)] read off the header lines
HEADERS: Dict[str, List[Tuple[int, Dict[str, Any]]]] = {
    "fixture-hccl-heartbeat-cqe12-1.txt": [
        (0, dict(level="TRACE", module="HCCL", pid=12337, process="python", time_text="2023-07-04-21:46:57.092.002",
                 file="hcom.cc", line=194, extra={"rank": "76"},
                 message="hcom init by file success,take time [248118]us, rankTablePath[/home/ma-user/rank_table/"
                         "jobstart_hccl.json], rankNum[128], rank[76],server[192.168.102.141], device[4]")),
        (1, dict(level="ERROR", module="HCCL", pid=12337, process="python", time_text="2023-07-04-22:15:59.773.698",
                 file="heartbeat.cc", line=551,
                 message="[Heartbeat]cqe err status[12], time:[2023-07-04 22:15:59.099518], ip:[192.1.95.102]")),
    ],
    "hccl-plog-socket-listen-fail-1.txt": [  # the newer HCCL format: " [tid]" after the source
        (3, dict(level="ERROR", module="HCCL", pid=2717288, process="python3", time_text="2025-07-23-03:49:57.177.194",
                 file="hccl_socket_manager.cc", line=778,
                 message="[Wait][LinkEstablish]wait socket establish timeout, role[1] rank[12] timeout[120]")),
    ],
    "hccl-hccp-plog-listen-fail-2.txt": [  # an empty process name (CANN 9.x); HCCP's "tid:N,func : message"
        (0, dict(level="ERROR", module="HCCL", pid=60570, process="", time_text="2025-12-04-14:46:07.911.312",
                 file="hccl_socket.cc", line=106)),
        (7, dict(level="ERROR", module="HCCP", pid=60570, process="", time_text="2025-12-04-14:46:07.911.347",
                 file="rs_socket.c", line=2930, message="rs_peer_get_ifnum : param error, g_rs_cb is NULL")),
    ],
    "fixture-device-tsch-hwts-timeout-1.txt": [  # device scheduler: pid -1, "null", "<seq> (dieid..) file.c:line"
        (0, dict(level="ERROR", module="TSCH", pid=None, process="null", time_text="2023-06-10-13:16:11.401.438",
                 file="hwts_plat.c", line=1931, lines=16,
                 message="int_process_hwts_timeout_exception: RTS_HWTS: hwts timeout exception bitmap=0x8000")),
    ],
    "fixture-device-aicpu-hccl-sdma-exception-1.txt": [
        (2, dict(level="ERROR", module="HCCL", pid=3496, process="aicpu_scheduler",
                 time_text="2025-08-06-22:39:11.764.416", file="aicpu_communicator.cc", line=3750)),
    ],
    "fixture-device-os-tdt-event-1.txt": [
        (4, dict(level="EVENT", module="TDT", pid=4717, process="tsdaemon", time_text="2023-10-31-16:41:39.406.087",
                 file="tsdaemon.cpp", line=1811,
                 message="[RunSpecialProcess][tid:4717] [TsdEVENT] Event id=0x8c17a005.")),
    ],
    "ms-doc-runtime-drv-hdc-connect-down-1.txt": [  # RUNTIME's bare tid; DRV's [func line] as the source
        (0, dict(level="ERROR", module="RUNTIME", pid=17381, process="python", file="engine.cc", line=1044,
                 message="ReportStatusFailProc:Device status failure, ret=118554641,start exception CallBack.")),
        (1, dict(level="ERROR", module="DRV", pid=17381, process="python", time_text="2022-12-01-03:02:29.391.021",
                 file="share_log_read", line=552,
                 message="hdc connect down, devid(0) fid(0) tsid(0) hdc connect down, devid(0) fid(0) tsid(0)")),
    ],
    "plog-mindie-runtime-visible-devices-1.txt": [
        (2, dict(level="INFO", module="RUNTIME", pid=42, process="mindie_llm_backend_connector",
                 file="runtime_keeper.cc", line=172, message="CreateRuntimeImpl: Open libruntime_v100.so success")),
        (4, dict(level="INFO", module="TDT", file="package_worker_factory.cpp", line=40)),
    ],
    "fixture-hccl-info-event-lines-1.txt": [  # a line without a source (hand-assembled in the fixture)
        (10, dict(level="INFO", module="HCCL", pid=1017, file="", line=None,
                  message="ReportTimeoutProc: report timeout")),
        (6, dict(level="EVENT", module="HCCL", pid=55, file="externalinput.cc", line=491,
                 message="environmental variable HCCL_CONNECT_TIMEOUT is set, timeOut[120]")),
    ],
    "fixture-run-plog-init-1.txt": [
        (0, dict(level="INFO", module="ATRACE", pid=1382, process="python3.8", time_text="2025-08-05-19:46:01.413.984",
                 file="trace_attr.c", line=189, message="attr init success, timeout=0ms.")),
    ],
    "ms-doc-hccl-trace-destroy-1.txt": [
        (0, dict(level="TRACE", module="HCCL", pid=160186, file="hcom.cc", line=336, extra={"rank": "0"},
                 message="hcom destroy complete,take time [86560]us, rankNum[8], rank[0]")),
    ],
    # free text: the block's fields come from its CANN, torch_npu and launcher lines
    "ei0002-notify-wait-timeout-1.txt": [
        (0, dict(fmt="text", level="", pid=198748, time_text="2025-03-26-13:49:01.670.614", lines=2)),
    ],
    "acl-507011-stream-sync-timeout-1.txt": [  # vLLM's "ERROR 03-25 06:14:02 [multiproc_executor.py:880]"
        (1, dict(fmt="text", level="ERROR", file="multiproc_executor.py", line=880,
                 extra={"pid": "17096", "process": "Worker_DP0_TP5_EP5"})),
    ],
    "ms-doc-ee9999-halmemalloc-oom-1.txt": [  # MindSpore's own look-alike lines (pid,thread,name)
        (0, dict(fmt="mindspore", level="EXCEPTION", module="DEVICE", pid=170414, process="python",
                 time_text="2021-09-13-15:29:07.465.388", file="mindspore/ccsrc/runtime/device/ascend/"
                 "ascend_memory_manager.cc", line=62)),
        (1, dict(fmt="mindspore", level="ERROR", lines=7, message="Ascend error occurred, error message:")),
    ],
    "e30006-opp-verify-setdevice-json-escaped-1.txt": [  # the block was JSON-escaped in one line
        (0, dict(fmt="text", pid=356, time_text="2025-11-19-11:14:58", lines=10)),
    ],
}


@pytest.mark.parametrize("name", sorted(HEADERS))
def test_parsed_fields(name: str) -> None:
    recs = records(name)
    for index, fields in HEADERS[name]:
        rec = recs[index]
        for field, want in fields.items():
            assert getattr(rec, field) == want, (index, field)
        if rec.time_text and len(rec.time_text) == 26:
            assert rec.timestamp == pytest.approx(at(rec.time_text), abs=1e-6)


def test_a_record_keeps_its_continuation_lines() -> None:
    rec = records("fixture-device-tsch-hwts-timeout-1.txt")[0]
    assert rec.text.split("\n")[1] == "<exception_print>HWTS_PUBLIC_START"
    assert rec.text.endswith("<exception_print>notify wait timeout")
