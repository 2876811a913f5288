"""Following the journal of serving units, through a stand-in ``journalctl`` on PATH.

The stand-in prints, as ``journalctl -f -o json`` does, one JSON object per line from a file of entries the
test appends to, and follows it; it honours ``-u``, ``--after-cursor``, ``-n 0|all`` and ``--since @T``,
and records its arguments. An inference service's stderr reaches the journal one line per entry, so an
"Ascend Error Message" block arrives as several entries that must become one event.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import pytest
from npuagent_ascend import cannlog

from npuagent.context import PluginContext
from npuagent.model import Event, Sample
from npuagent.options import validate_table

STAND_IN = r'''
import json, os, sys, time
args = sys.argv[1:]
with open(os.environ["JOURNAL_ARGS"], "a") as f:
    f.write(json.dumps(args) + "\n")
units, cursor, since, lines, follow = set(), None, None, "10", False
i = 0
while i < len(args):
    a = args[i]
    if a == "-u": units.add(args[i + 1]); i += 1
    elif a == "--after-cursor": cursor = args[i + 1]; i += 1
    elif a == "--since": since = float(args[i + 1].lstrip("@")); i += 1
    elif a == "-n": lines = args[i + 1]; i += 1
    elif a == "-f": follow = True
    elif a in ("-o",): i += 1
    i += 1
if os.environ.get("JOURNAL_FAIL"):
    sys.stderr.write("Failed to add match: " + os.environ["JOURNAL_FAIL"] + "\n")
    sys.exit(1)
path = os.environ["JOURNAL_FILE"]
def entries():
    with open(path) as f:
        return [line for line in f.read().split("\n") if line]
seen = entries()
start = 0
if cursor is not None:
    cursors = [json.loads(e).get("__CURSOR") if e.startswith("{") else None for e in seen]
    if cursor not in cursors:  # as journalctl says of a cursor whose journal files are gone
        sys.stderr.write("Failed to seek to cursor: Invalid argument\n")
        sys.exit(1)
    start = cursors.index(cursor) + 1
elif since is not None:
    start = next((n for n, e in enumerate(seen) if not e.startswith("{")
                  or int(json.loads(e)["__REALTIME_TIMESTAMP"]) >= since * 1e6), len(seen))
elif lines == "0":
    start = len(seen)
pos = start
with open(os.environ["JOURNAL_ARGS"] + ".ready", "a") as f:
    f.write("ready\n")  # positioned: what is written from now on will be shown
while True:
    seen = entries()
    for e in seen[pos:]:
        if e.startswith("{") and json.loads(e).get("_SYSTEMD_UNIT") not in units:
            continue
        sys.stdout.write(e + "\n")
    sys.stdout.flush()
    pos = len(seen)
    if not follow:
        break
    time.sleep(0.05)
'''

EI0006 = ["EI0006: [PID: 1292363] 2025-04-08-18:07:20.444.436 Getting socket times out. Reason: Remote Rank did "
          "not send the data in time.",
          "        Solution: 1. Check the rank service processes with other errors or no errors in the cluster.",
          "        TraceBack (most recent call last):",
          "        [HCCL] wait socket establish timeout[FUNC:Wait][FILE:hccl.cc][LINE:1]"]


class Journal:
    """The stand-in's entry file; ``add`` appends entries of the unit ``llm.service``."""

    def __init__(self, tmp: Path) -> None:
        self.path = tmp / "journal.jsonl"
        self.path.write_text("")
        self.args = tmp / "journal-args.jsonl"
        self.n = 0

    def add(self, *messages: Any, unit: str = "llm.service", pid: int = 4242, raw: str = "") -> None:
        with open(self.path, "a") as f:
            if raw:
                f.write(raw + "\n")
            for m in messages:
                self.n += 1
                f.write(json.dumps({"__CURSOR": f"s=1;i={self.n}", "__REALTIME_TIMESTAMP": str(int(time.time() * 1e6)),
                                    "_SYSTEMD_UNIT": unit, "_PID": str(pid), "_COMM": "vllm", "MESSAGE": m,
                                    "PRIORITY": "3"}) + "\n")

    def ready(self) -> int:
        """How many times the stand-in has started and found its place."""
        marker = Path(str(self.args) + ".ready")
        return len(marker.read_text().split()) if marker.exists() else 0

    def argv(self) -> List[List[str]]:
        return [json.loads(x) for x in self.args.read_text().split("\n") if x] if self.args.exists() else []


@pytest.fixture
def journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Journal:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "journalctl"
    script.write_text(f"#!{sys.executable}\n{STAND_IN}")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    j = Journal(tmp_path)
    monkeypatch.setenv("JOURNAL_FILE", str(j.path))
    monkeypatch.setenv("JOURNAL_ARGS", str(j.args))
    return j


class Run:
    def __init__(self, tmp: Path, **options: Any) -> None:
        table = {"users": [], "roots": [], "units": ["llm.service"], "block_wait": "200ms", **options}
        values, errors = validate_table(table, cannlog.OPTIONS)
        assert not errors, errors
        self.events: List[Event] = []
        ctx = PluginContext("cann_log", "cann_log", values, interval=1.0, timeout=10.0, state_dir=str(tmp / "state"))
        ctx.emitter = self.events.extend
        self.collector = cannlog.CannLogCollector(ctx)
        self.samples: List[Sample] = []

    def collect(self) -> None:
        self.samples = [s for s in self.collector.collect() if isinstance(s, Sample)]

    def until(self, done: Callable[[], bool], timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.collect()
            if done():
                return
            time.sleep(0.05)
        raise AssertionError(f"not done in {timeout}s: events {self.events}")

    def value(self, name: str, **labels: str) -> Any:
        for s in self.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
        return None


@pytest.fixture
def run(tmp_path: Path) -> Any:
    made: List[Run] = []

    def make(**options: Any) -> Run:
        r = Run(tmp_path, **options)
        made.append(r)
        return r

    yield make
    for r in made:
        r.collector.close()


def test_an_error_block_over_several_entries_is_one_event(journal: Journal, run: Any) -> None:
    r = run()
    r.until(lambda: journal.ready() == 1)
    journal.add("INFO 04-08 18:07:19 [worker.py:1] serving", *EI0006,
                "[ERROR] HCCL(1292363,python):2025-04-08-18:07:20.444.500 [hccl.cc:1] [1]plog line on stdout")
    r.until(lambda: len(r.events) == 1 and r.value("cann_log_messages_total", level="ERROR") == 1)
    (event,) = r.events
    assert event.kind == "hccl_error"
    labels: Dict[str, str] = dict(event.labels)
    assert {k: labels[k] for k in ("kind", "code", "pid", "unit")} == {
        "kind": "connect_timeout", "code": "EI0006", "pid": "1292363", "unit": "llm.service"}
    assert event.message.split("\n") == EI0006
    argv = journal.argv()[0]
    assert argv[:6] == ["-f", "-o", "json", "--no-pager", "-u", "llm.service"]
    assert argv[-2:] == ["-n", "0"]  # the very first start: only what comes from now on


def test_a_restart_goes_on_from_the_cursor_with_the_block_it_had_open(journal: Journal, run: Any,
                                                                      tmp_path: Path) -> None:
    first = run(block_wait="1h")  # nothing is taken as complete while its writer may go on
    first.until(lambda: journal.ready() == 1)
    journal.add(*EI0006[:2])
    first.until(lambda: first.collector._cursor == "s=1;i=2")
    first.collector.close()
    assert first.events == []
    journal.add(*EI0006[2:], pid=4242)  # the rest of the block, written while the agent is down
    journal.add("RuntimeError: NPU out of memory. Tried to allocate 22.00 MiB (NPU 3; 60.97 GiB total capacity)",
                pid=4343)
    second = run()
    second.until(lambda: len(second.events) == 2)
    kinds = sorted((e.labels["kind"], e.labels.get("device_id", "")) for e in second.events)
    assert kinds == [("connect_timeout", ""), ("device_oom", "3")]
    block = next(e for e in second.events if e.labels["kind"] == "connect_timeout")
    assert block.message.split("\n") == EI0006  # one block, cut by the restart and put together again
    assert journal.argv()[-1][-2:] == ["--after-cursor", "s=1;i=2"]
    time.sleep(0.5)
    second.collect()
    assert len(second.events) == 2  # and nothing twice


def test_entries_written_before_any_was_seen_are_not_lost_after_a_restart(journal: Journal, run: Any) -> None:
    first = run()
    first.until(lambda: journal.ready() == 1)
    first.collector.close()
    time.sleep(1.1)  # --since has a resolution of a second
    journal.add("RuntimeError: ... NPU function error: AclrtSynchronizeStreamWithTimeout, error code is 507035")
    second = run()
    second.until(lambda: len(second.events) == 1)
    assert second.events[0].labels["kind"] == "vector_error"
    assert journal.argv()[-1][-2] == "--since"


def test_a_journalctl_that_fails_is_counted_and_the_files_go_on(journal: Journal, run: Any, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOURNAL_FAIL", "no-such.service")
    r = run(roots=[str(tmp_path / "log")])
    plog = tmp_path / "log" / "plog" / "plog-1_20250101000000000.log"
    plog.parent.mkdir(parents=True)
    r.until(lambda: (r.value("npuagent_cann_log_problems_total", reason="journal_exit") or 0) >= 1)
    assert r.value("npuagent_cann_log_journal_up") == 0
    plog.write_text("[ERROR] HCCL(1,python):2025-07-23-03:49:57.177.194 [a.cc:1] [1]cqe err status[12]\n")
    r.until(lambda: len(r.events) == 1)


def test_a_missing_journalctl_does_not_stop_the_collector(tmp_path: Path, run: Any) -> None:
    r = run(journalctl=[str(tmp_path / "no-journalctl")])
    r.collect()
    assert r.value("npuagent_cann_log_journal_up") == 0
    assert r.value("npuagent_cann_log_problems_total", reason="journal_exit") == 1


def test_bad_entries_are_counted(journal: Journal, run: Any) -> None:
    r = run()
    r.until(lambda: journal.ready() == 1)
    journal.add(raw="this is not json")
    journal.add(raw='{"_SYSTEMD_UNIT": "llm.service", "MESSAGE": "no cursor"}')
    journal.add("EJ0002: [PID: 38079] 2025-07-15-12:45:31.202.787 The network port is down.")
    r.until(lambda: len(r.events) == 1)
    assert r.value("npuagent_cann_log_problems_total", reason="journal_bad_entry") == 2
    assert r.events[0].labels["kind"] == "link_down"


def test_lines_of_two_writers_do_not_mix(journal: Journal, run: Any) -> None:
    r = run()
    r.until(lambda: journal.ready() == 1)
    journal.add(EI0006[0], pid=1)
    journal.add("EL0004: [PID: 2] 2025-09-28-07:22:29.827.496 Failed to allocate memory.", pid=2)
    journal.add(*EI0006[1:], pid=1)
    r.until(lambda: len(r.events) == 2)
    by_kind = {e.labels["kind"]: e for e in r.events}
    assert by_kind["connect_timeout"].message.split("\n") == EI0006
    assert by_kind["device_oom"].labels["pid"] == "2"


def test_the_queue_of_entries_is_bounded_in_bytes_and_close_frees_a_waiting_reader(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A service printing long lines while the collector is slow: the reader waits (and journalctl with it)
    instead of holding them all in memory; a reader waiting for room ends when the journal is closed."""
    from npuagent_ascend import journal

    monkeypatch.setattr(journal, "QUEUE_BYTES", 200_000)
    printer = ("import json, sys\n"
               "for i in range(400):\n"
               "    print(json.dumps({'__CURSOR': 'c%d' % i, 'MESSAGE': 'x' * 10000}), flush=True)\n"
               "import time; time.sleep(60)\n")
    j = journal.Journal(["llm.service"], [sys.executable, "-c", printer, "--"])
    assert j.start(None, None, "beginning")
    deadline = time.monotonic() + 10
    while j._queued_bytes < 190_000 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    assert 190_000 <= j._queued_bytes <= 200_000 + 10_100  # full, and no fuller
    got = []
    deadline = time.monotonic() + 20
    while len(got) < 100 and time.monotonic() < deadline:
        got += j.drain(time.monotonic() + 0.5)
    assert [e["__CURSOR"] for e in got[:100]] == [f"c{i}" for i in range(100)]  # nothing lost while waiting
    reader = j._threads[0]
    j.close()
    reader.join(3)
    assert not reader.is_alive()


def test_a_saved_cursor_journald_no_longer_has_is_given_up_for_the_time(journal: Journal, run: Any,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from npuagent_ascend import journal as journal_mod

    monkeypatch.setattr(journal_mod, "RETRY_BASE", 0.05)
    first = run()
    first.until(lambda: journal.ready() == 1)
    journal.add("first")
    first.until(lambda: first.collector._cursor == "s=1;i=1")
    first.collector.close()
    journal.path.write_text("")  # journald vacuumed its files while the agent was down
    journal.add("RuntimeError: ... NPU function error: AclrtSynchronizeStreamWithTimeout, error code is 507035")
    second = run()
    second.until(lambda: len(second.events) == 1)
    assert second.events[0].labels["kind"] == "vector_error"
    starts = [a[a.index("-f"):] for a in journal.argv()[1:]]
    assert [a[-2] for a in starts] == ["--after-cursor"] * 3 + ["--since"]
