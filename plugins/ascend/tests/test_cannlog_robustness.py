"""The cann_log collector against input and timing that its happy path never sees: lines that look like headers
and are not, numbers too long for int(), a pid no process can have, close() racing a collection, a reload while
the old collector still reads, a file made between a look for files and the commit, and journal blocks read back
long after they were written."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, List, Tuple

from npuagent_ascend import cannlog, plog
from npuagent_ascend.logstate import LogState
from npuagent_ascend.tail import Tailer

from npuagent.context import PluginContext
from npuagent.model import Event, Sample
from npuagent.options import validate_table

STAMP = "2025-07-23-03:49:57.177.194"


def make(tmp: Path, **options: Any) -> Tuple[cannlog.CannLogCollector, List[Event]]:
    table = {"users": [], "roots": [str(tmp / "log")], "block_wait": "0s", "start_at": "beginning", **options}
    values, errors = validate_table(table, cannlog.OPTIONS)
    assert not errors, errors
    events: List[Event] = []
    ctx = PluginContext("cann_log", "cann_log", values, interval=1.0, timeout=10.0, state_dir=str(tmp / "state"))
    ctx.emitter = events.extend
    return cannlog.CannLogCollector(ctx), events


def append(p: Path, text: str) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "a") as f:
        f.write(text)


def counted(c: cannlog.CannLogCollector, name: str) -> float:
    return sum(v for (n, _labels), v in c.counters.items() if n == name)


def test_an_error_line_that_is_not_a_plog_header_is_a_record_but_no_module(tmp_path: Path) -> None:
    c, _ = make(tmp_path)
    info = f"[INFO] GE(1,python):{STAMP} [a.cc:1] step\n"
    lines = "".join(f"[ERROR] 2025-04-29-18:46:{s:02d} (PID:1, Device:1, RankID:-1) ERR00100 PTA call acl api failed\n"
                    + info for s in range(5)) + "[ERROR] RecentErrMsg: EZ9999 inner error\n" + info
    append(tmp_path / "log/plog/plog-1_20250101000000000.log", lines)
    out = c.collect()
    c.close()
    modules = {s.labels["module"] for s in out if isinstance(s, Sample) and s.name == "cann_log_messages_total"}
    assert modules == {"GE"}
    assert counted(c, "cann_errors_total") == 6  # still read as error records


def test_a_record_that_cannot_be_read_is_counted_once_and_passed(tmp_path: Path) -> None:
    """int() refuses a number of 5000 digits: the record is counted as bad_record, its lines once, and the
    collector goes on to the next line instead of reading the same chunk again and again."""
    c, events = make(tmp_path)
    p = tmp_path / "log/plog/plog-1_20250101000000000.log"
    append(p, f"[INFO] GE(1,python):{STAMP} [a.cc:1] ok\n"
              f"[ERROR] HCCL({'9' * 5000},python):{STAMP} [a.cc:{'9' * 5000}] [1]call trace: hcclRet -> {'9' * 5000}\n")
    for _ in range(3):
        c.collect()
    append(p, f"[ERROR] HCCL(1,python):{STAMP} [a.cc:1] [1]wait socket establish timeout\n")
    out = c.collect()
    c.close()
    assert c.counters[("cann_log_messages_total", (("level", "INFO"), ("module", "GE")))] == 1.0
    assert [s.value for s in out if s.name == "npuagent_cann_log_problems_total"
            and s.labels == {"reason": "bad_record"}] == [1.0]
    assert [e.labels["kind"] for e in events] == ["connect_timeout"]


def test_a_file_named_with_a_pid_no_process_can_have_is_followed(tmp_path: Path) -> None:
    c, _ = make(tmp_path)
    p = tmp_path / "log/plog/plog-99999999999_20250101000000000.log"
    append(p, f"[INFO] GE(1,python):{STAMP} [a.cc:1] x\n")
    for _ in range(2):
        c.collect()
    append(p, f"[INFO] GE(1,python):{STAMP} [a.cc:1] y\n")
    c.collect()
    c.close()
    assert counted(c, "cann_log_messages_total") == 2


def test_close_while_a_collection_ends_still_shuts_down(tmp_path: Path) -> None:
    c, _ = make(tmp_path, units=["x.service"], journalctl=["sh", "-c", "exec sleep 1000"])
    c.collect()
    real = c._busy

    class Racy:
        """The loop thread's close() comes right before the collection lets go of its lock."""

        def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
            return real.acquire(blocking, timeout)

        def release(self) -> None:
            if not c._closed:
                c._closed = True  # close() sets it, then finds the collection busy: it cannot shut down itself
            real.release()

    c._busy = Racy()  # type: ignore[assignment]
    c.collect()
    assert c.journal is not None and c.state is not None
    assert c.journal.proc is None or c.journal.proc.poll() is not None  # journalctl ended
    assert c.state._db is None  # the state file closed, its lock freed


def test_a_reload_while_the_old_collector_reads_leaves_the_new_one_able_to_commit(tmp_path: Path) -> None:
    import threading

    old, _ = make(tmp_path)
    old.collect()
    new, _ = make(tmp_path)
    with old._busy:  # the old collector is still in its last collection when the reload closes it
        closing = threading.Thread(target=old.close)
        closing.start()
        time.sleep(0.2)
        assert closing.is_alive()  # close() waits for the collection
    closing.join(5)
    append(tmp_path / "log/plog/plog-1_20250101000000000.log", f"[INFO] GE(1,python):{STAMP} [a.cc:1] x\n")
    new.collect()
    assert new.state is not None and not new.state.read_only
    new.close()


def test_a_file_made_between_the_look_for_files_and_the_commit_is_read_after_a_restart(tmp_path: Path) -> None:
    db = str(tmp_path / "s.db")
    pattern = [str(tmp_path / "log/plog/plog-*.log")]
    (tmp_path / "log/plog").mkdir(parents=True)
    got: List[bytes] = []

    def consume(t: Any, data: bytes, final: bool) -> int:
        n, _, _ = plog.scan(data, final)
        got.append(data[:n])
        return n

    def commit(state: LogState, tailer: Tailer) -> None:
        files, gone = tailer.changes()
        assert state.commit(files, gone, meta={"files_scanned": tailer.scanned})
        tailer.committed()

    state = LogState(db)
    tailer = Tailer(pattern, state, block_wait=0.0)
    tailer.poll(consume, time.monotonic() + 5)
    commit(state, tailer)
    tailer.poll(consume, time.monotonic() + 5)  # the look for files is over...
    time.sleep(1.1)
    append(tmp_path / "log/plog/plog-2_20250101000000000.log",  # ...a short-lived process writes its file...
           f"[ERROR] HCCL(2,python):{STAMP} [a.cc:1] [1]wait socket establish timeout\n")
    time.sleep(0.05)
    commit(state, tailer)  # ...and the commit comes after it; then the agent stops
    tailer.close()
    state.close()
    state = LogState(db)
    tailer = Tailer(pattern, state, block_wait=0.0)
    tailer.poll(consume, time.monotonic() + 5)
    tailer.close()
    state.close()
    assert b"wait socket establish timeout" in b"".join(got)


EI0006 = ["EI0006: [PID: 1292363] 2025-04-08-18:07:20.444.436 Getting socket times out. Reason: Remote Rank did "
          "not send the data in time.",
          "        Solution: 1. Check the rank service processes with other errors or no errors in the cluster.",
          "        TraceBack (most recent call last):",
          "        [HCCL] wait socket establish timeout[FUNC:Wait][FILE:hccl.cc][LINE:1]"]


class FakeJournal:
    """journalctl's queue as the collector sees it: batches of entries, and empty between them."""

    running, exits, bad_entries = True, 0, 0

    def __init__(self) -> None:
        self.batches: List[List[dict]] = []

    def drain(self, deadline: float) -> List[dict]:
        return self.batches.pop(0) if self.batches else []

    def idle(self) -> bool:
        return True

    def close(self) -> None:
        pass


def test_a_journal_block_read_back_after_a_restart_is_kept_whole(tmp_path: Path) -> None:
    """Entries read back are an hour old; a moment with nothing queued must not end a block half read."""
    c, _ = make(tmp_path, units=["llm.service"], block_wait="300ms")
    c.collect()
    fake = FakeJournal()
    c.journal = fake  # type: ignore[assignment]
    old = int((time.time() - 3600) * 1e6)
    entries = [{"__CURSOR": f"c{i}", "__REALTIME_TIMESTAMP": str(old + i), "_SYSTEMD_UNIT": "llm.service",
                "_PID": "7", "_COMM": "vllm", "MESSAGE": m} for i, m in enumerate(EI0006)]
    fake.batches = [entries[:2], entries[2:]]
    for _ in range(3):
        c.collect()
    assert counted(c, "hccl_errors_total") == 0  # the block is still open: its writer spoke a moment ago
    time.sleep(0.4)
    c.collect()
    c.close()
    assert counted(c, "hccl_errors_total") == 1
