"""The ``cann_log`` collector as the agent runs it: options, counters, events, restarts, and bad input.

The collector is made by its factory from validated options and a :class:`PluginContext` whose emitter stands
for the agent's (events handed over at once); log roots are directories in ``tmp_path`` in both CANN layouts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest
from npuagent_ascend import cannlog
from npuagent_ascend.logstate import LogState

from npuagent.context import PluginContext
from npuagent.model import Event, Sample
from npuagent.options import validate_table

REPO = Path(__file__).resolve().parents[3]
FIXTURES = REPO.parent / "shared" / "fixtures" / "plog"
STAMP = "2025-07-23-03:49:57.177.194"


class Run:
    """One collector on a state directory: what it returned and emitted."""

    def __init__(self, tmp: Path, **options: Any) -> None:
        table = {"users": [], "roots": [str(tmp / "log")], "block_wait": "0s", **options}
        values, errors = validate_table(table, cannlog.OPTIONS)
        assert not errors, errors
        self.events: List[Event] = []
        self.ctx = PluginContext("cann_log", "cann_log", values, interval=1.0, timeout=10.0,
                                 state_dir=str(tmp / "state"))
        self.ctx.emitter = self.events.extend
        self.collector = cannlog.CannLogCollector(self.ctx)
        self.samples: List[Sample] = []

    def collect(self) -> List[Event]:
        before = len(self.events)
        self.samples = [s for s in self.collector.collect() if isinstance(s, Sample)]
        return self.events[before:]

    def value(self, name: str, **labels: str) -> Optional[float]:
        for s in self.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
        return None

    def close(self) -> None:
        self.collector.close()


@pytest.fixture
def run(tmp_path: Path) -> Any:
    made: List[Run] = []

    def make(**options: Any) -> Run:
        r = Run(tmp_path, **options)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def plog_line(level: str, module: str, message: str, pid: int = 100, source: str = "x.cc:1") -> str:
    return f"[{level}] {module}({pid},python):{STAMP} [{source}] [{pid}]{message}\n"


def append(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(text)


def test_options_and_metrics_are_declared() -> None:
    from npuagent_ascend import npuagent_collector_types

    (kind,) = [t for t in npuagent_collector_types() if t.name == "cann_log"]
    assert (kind.interval, kind.timeout, kind.enabled_by_default) == (2.0, 10.0, True)
    names = {m.name for m in kind.metrics}
    assert {"cann_log_messages_total", "hccl_errors_total", "cann_errors_total"} <= names
    values, errors = validate_table({}, cannlog.OPTIONS)
    assert not errors and values["users"] == ("root",) and values["start_at"] == "end" and values["dedup"] == 1.0
    _values, errors = validate_table({"start_at": "middle", "dedup": 5}, cannlog.OPTIONS)
    assert len(errors) == 2


def test_roots_cover_the_users_homes_the_agents_own_variable_and_extra_roots(tmp_path: Path) -> None:
    import pwd

    home = pwd.getpwnam("root").pw_dir
    got = cannlog.roots(["root", "no-such-user-here"], [str(tmp_path / "jobs" / "*" / "log")],
                        env={"ASCEND_PROCESS_LOG_PATH": "/data/ascend-logs/"})
    assert got == [f"{home}/ascend/log", "/data/ascend-logs", str(tmp_path / "jobs" / "*" / "log")]
    assert cannlog.patterns(["/r"], ["/x/*.log"]) == [
        "/r/*/plog/plog-*.log", "/r/*/device-*/device-*.log", "/r/plog/plog-*.log", "/r/device-*/device-*.log",
        "/x/*.log"]


def test_both_layouts_counted_classified_and_sent_as_events(tmp_path: Path, run: Any) -> None:
    r = run(start_at="beginning")
    append(tmp_path / "log/debug/plog/plog-100_20250101000000000.log",
           plog_line("INFO", "HCCL", "Entry-HcclCommInitRootInfo:ranks[8], rank[3], deviceLogicId[3]")
           + plog_line("ERROR", "HCCL", "[Wait][LinkEstablish]wait socket establish timeout, role[1] rank[3] "
                                        "timeout[120]", source="hccl_socket_manager.cc:778"))
    append(tmp_path / "log/run/plog/plog-100_20250101000000001.log", plog_line("INFO", "GE", "fine"))
    append(tmp_path / "log/debug/device-5/device-100_20250101000000000.log",
           plog_line("ERROR", "RUNTIME", "halMemAlloc failed:size=2097152(Byte), drvRetCode=6"))
    append(tmp_path / "log/plog/plog-200_20250101000000000.log",  # the older flat layout
           plog_line("ERROR", "HCCL", "[Heartbeat]cqe err status[12]", pid=200))
    events = r.collect()
    assert r.value("cann_log_messages_total", level="INFO", module="HCCL") == 1
    assert r.value("cann_log_messages_total", level="INFO", module="GE") == 1
    assert r.value("cann_log_messages_total", level="ERROR", module="HCCL") == 2
    assert r.value("hccl_errors_total", kind="connect_timeout", code="") == 1
    assert r.value("hccl_errors_total", kind="cqe_error", code="") == 1
    assert r.value("cann_errors_total", kind="device_oom", code="") == 1
    by_kind = {e.labels["kind"]: e for e in events}
    assert sorted(by_kind) == ["connect_timeout", "cqe_error", "device_oom"]
    timeout = by_kind["connect_timeout"]
    assert timeout.kind == "hccl_error" and timeout.timestamp is None
    assert {k: timeout.labels[k] for k in ("rank", "pid", "process", "module")} == {
        "rank": "3", "pid": "100", "process": "python", "module": "HCCL"}
    assert timeout.labels["file"].endswith("debug/plog/plog-100_20250101000000000.log")
    assert "wait socket establish timeout" in timeout.message
    oom = by_kind["device_oom"]
    assert oom.kind == "cann_error" and oom.labels["device_id"] == "5"  # from the device-5 directory
    assert r.value("npuagent_cann_log_files") == 4
    assert r.value("npuagent_cann_log_events_total", event="hccl_error", kind="connect_timeout") == 1


def test_a_burst_is_one_event_with_the_code_and_device_its_records_name(tmp_path: Path, run: Any) -> None:
    """The real listen-failure excerpt: the port_bound line, then the timeout and its LINK_ERROR_INFO rows."""
    r = run(start_at="beginning")
    append(tmp_path / "log/debug/plog/plog-2717288_20250723034757000.log",
           (FIXTURES / "hccl-plog-socket-listen-fail-1.txt").read_text()
           + plog_line("ERROR", "HCCL", "  |  comm error, device[6] num[1]", pid=2717288))
    events = r.collect()
    assert [(e.labels["kind"], e.labels["code"], e.labels.get("device_id")) for e in events] == [
        ("port_bound", "", "6"), ("connect_timeout", "HCCL_E_TIMEOUT", "6")]
    assert events[1].message.endswith("(and 3 more records like it)")
    assert r.value("hccl_errors_total", kind="connect_timeout", code="") == 2
    assert r.value("hccl_errors_total", kind="connect_timeout", code="HCCL_E_TIMEOUT") == 2
    assert r.value("hccl_errors_total", kind="other", code="HCCL_E_NETWORK") == 2


def test_dedup_zero_makes_every_record_an_event_and_max_events_caps_them(tmp_path: Path, run: Any) -> None:
    r = run(start_at="beginning", dedup="0s", max_events=3)
    append(tmp_path / "log/plog/plog-1_20250101000000000.log",
           "".join(plog_line("ERROR", "HCCL", f"connected p2p timeout, timeout:130 s. {i}", pid=1) for i in range(5)))
    assert len(r.collect()) == 3
    assert r.value("npuagent_cann_log_problems_total", reason="events_dropped") == 2
    assert r.value("hccl_errors_total", kind="connect_timeout", code="") == 5


def test_a_restart_goes_on_where_it_stopped_with_its_counters(tmp_path: Path, run: Any) -> None:
    path = tmp_path / "log/debug/plog/plog-1_20250101000000000.log"
    first = run(start_at="beginning")
    append(path, plog_line("ERROR", "HCCL", "topo exchange server get socket timeout! timeout[120 s]", pid=1))
    assert len(first.collect()) == 1
    first.close()
    append(path, plog_line("INFO", "HCCL", "after", pid=1) + plog_line("ERROR", "HCCL", "[Heartbeat]cqe err "
                                                                                         "status[12]", pid=1))
    second = run(start_at="beginning")
    events = second.collect()
    assert [e.labels["kind"] for e in events] == ["cqe_error"]  # not the timeout again
    assert second.value("cann_log_messages_total", level="ERROR", module="HCCL") == 2  # restored, then one more
    assert second.value("cann_log_messages_total", level="INFO", module="HCCL") == 1
    assert second.value("hccl_errors_total", kind="connect_timeout", code="") == 1


def test_a_second_process_on_the_same_state_writes_nothing(tmp_path: Path, run: Any) -> None:
    """`npuagent once` beside the running agent: it reads the agent's positions and never moves them."""
    path = tmp_path / "log/plog/plog-1_20250101000000000.log"
    agent = run(start_at="beginning")
    append(path, plog_line("INFO", "GE", "one", pid=1))
    agent.collect()
    append(path, plog_line("INFO", "GE", "two", pid=1))
    once = run(start_at="beginning")
    once.collect()
    assert once.collector.state.read_only
    assert once.value("cann_log_messages_total", level="INFO", module="GE") == 2
    once.close()
    agent.collect()
    assert agent.value("cann_log_messages_total", level="INFO", module="GE") == 2


def test_bad_input_is_counted_never_raised(tmp_path: Path, run: Any) -> None:
    r = run(start_at="beginning", max_line_length=1024)
    d = tmp_path / "log/plog"
    append(d / "plog-1_20250101000000000.log", "x" * 10_000 + "\n" + plog_line("ERROR", "HCCL", "[Heartbeat]cqe err "
           "status[12] " + "y" * 10_000, pid=1))
    with open(d / "plog-2_20250101000000000.log", "wb") as f:
        f.write(bytes(range(256)) * 400 + b"\n[ERROR] HCCL(2,\xff\xfe):" + STAMP.encode() + b" [a.cc:1] \xc3(garbage\n")
    (d / "plog-3_20250101000000000.log").mkdir()  # a directory where a file was expected
    os.symlink(d / "nowhere", d / "plog-4_20250101000000000.log")  # a dangling link
    events = r.collect()
    assert [e.labels["kind"] for e in events] == ["cqe_error"]
    assert r.value("npuagent_cann_log_problems_total", reason="line_too_long") == 1
    assert r.value("cann_log_messages_total", level="ERROR", module="HCCL") == 2  # the garbage one is a header too


def test_label_sets_are_capped(tmp_path: Path, run: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cannlog, "MAX_LABEL_SETS", 3)
    r = run(start_at="beginning")
    append(tmp_path / "log/plog/plog-1_20250101000000000.log",
           "".join(plog_line("INFO", f"M{i}", "x", pid=1) for i in range(5)))
    r.collect()
    modules = {s.labels["module"] for s in r.samples if s.name == "cann_log_messages_total"}
    assert modules == {"M0", "M1", "M2", "other"}
    assert r.value("cann_log_messages_total", module="other") == 2


def test_a_state_directory_that_cannot_be_written_is_survived(tmp_path: Path) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a file, not a directory")
    r = Run(tmp_path, start_at="beginning")
    append(tmp_path / "log/plog/plog-1_20250101000000000.log", plog_line("INFO", "GE", "x", pid=1))
    r.collect()
    assert r.value("cann_log_messages_total", module="GE") == 1
    r.close()


def test_the_collector_returns_events_when_there_is_no_emitter(tmp_path: Path) -> None:
    r = Run(tmp_path, start_at="beginning")
    r.ctx.emitter = None
    append(tmp_path / "log/plog/plog-1_20250101000000000.log",
           plog_line("ERROR", "HCCL", "[Heartbeat]cqe err status[12]", pid=1))
    got = r.collector.collect()
    assert [e.labels["kind"] for e in got if isinstance(e, Event)] == ["cqe_error"]
    r.close()


def test_close_during_a_collection_stops_at_its_end(tmp_path: Path) -> None:
    r = Run(tmp_path)
    r.collect()
    with r.collector._busy:  # a collection in flight on the worker
        r.collector.close()
        assert r.collector.state is not None and r.collector.state._db is not None
    assert r.collector.collect() == []  # closed: nothing more, and the collection in flight shut it down
    r.collector._shutdown()


def test_the_shipped_rule_fires_on_what_the_collector_emits(tmp_path: Path, run: Any) -> None:
    """etc/npuagent.toml's hccl-connect-timeout, through `npuagent rules test`, on the real excerpt's events."""
    r = run(start_at="beginning")
    append(tmp_path / "log/debug/plog/plog-2717288_20250723034757000.log",
           (FIXTURES / "hccl-plog-socket-listen-fail-1.txt").read_text()
           + plog_line("ERROR", "HCCL", "  |  comm error, device[0] num[1]", pid=2717288))
    events = [e for e in r.collect() if e.kind == "hccl_error"]
    timeout = next(e for e in events if e.labels["kind"] == "connect_timeout")
    test = tmp_path / "rules-test.toml"
    test.write_text(f"""
rule_files = [{json.dumps(str(REPO / "etc" / "npuagent.toml"))}]
evaluation_interval = "15s"
[[tests]]
name = "connect timeout from the collector"
""" + "".join(f"""
[[tests.input_events]]
kind = "{e.kind}"
labels = {{ {", ".join(f'{k} = {json.dumps(v)}' for k, v in e.labels.items())} }}
at = "1m"
""" for e in events) + f"""
[[tests.alert_rule_test]]
eval_time = "1m"
rule = "hccl-connect-timeout"
[[tests.alert_rule_test.exp_alerts]]
labels = {{ device_id = "0", kind = "connect_timeout" }}
[[tests.alert_rule_test]]
eval_time = "{16 if timeout.labels.get("device_id") else 0}m"
rule = "hccl-connect-timeout"
""")
    done = subprocess.run([sys.executable, "-m", "npuagent", "rules", "test", str(test)], capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, NPUAGENT_DISABLE_PLUGINS="example"))
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_state_commits_offsets_and_counters_together(tmp_path: Path, run: Any) -> None:
    r = run(start_at="beginning")
    append(tmp_path / "log/plog/plog-1_20250101000000000.log", plog_line("INFO", "GE", "x", pid=1))
    r.collect()
    saved = LogState(str(tmp_path / "state" / "cann_log.db"))
    try:
        counters: Dict[Any, float] = saved.counters()
        assert counters[("cann_log_messages_total", (("level", "INFO"), ("module", "GE")))] == 1
        assert saved.generation >= 1
        (f,) = saved.files().values()
        assert f.offset == os.path.getsize(tmp_path / "log/plog/plog-1_20250101000000000.log")
    finally:
        saved.close()


def test_a_record_still_being_written_is_not_taken_until_it_is_complete(tmp_path: Path, run: Any) -> None:
    r = run(start_at="beginning", block_wait="1h")
    path = tmp_path / "log/debug/device-0/device-9_20250101000000000.log"
    append(path, plog_line("ERROR", "TSCH", "hwts timeout exception bitmap=0x8000", pid=9)
           + "<exception_print>HWTS_PUBLIC_START\n")
    assert r.collect() == []
    append(path, "<exception_print>notify wait timeout\n" + plog_line("INFO", "TSCH", "next", pid=9))
    (event,) = r.collect()
    assert event.labels["kind"] == "notify_wait_timeout" and event.message.endswith("notify wait timeout")
    time.sleep(0.01)
