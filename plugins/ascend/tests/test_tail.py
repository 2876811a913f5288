"""The file follower: CANN's create-and-delete rotation, renames, truncation, restarts, caps and bad input.

Each test drives :class:`npuagent_ascend.tail.Tailer` poll by poll on real files in ``tmp_path``, with a consumer
that takes whole plog records (as the collector's does) and remembers every line it was handed, so "lost" and
"read twice" are checked line by line.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, List, Optional

import pytest
from npuagent_ascend import plog
from npuagent_ascend.logstate import LogState
from npuagent_ascend.tail import Tailer, Tracked


def line(n: int, level: str = "INFO", pid: int = 100) -> str:
    return f"[{level}] HCCL({pid},python):2025-07-23-03:49:57.177.194 [x.cc:1] [1]line {n}\n"


class Reader:
    """A Tailer on a state file, and every record it has handed out, in order."""

    def __init__(self, tmp: Path, patterns: List[str], fresh_state: bool = False, **kw: Any) -> None:
        self.db = str(tmp / "state" / "cann_log.db")
        self.patterns = patterns
        self.kw = {"block_wait": 0.0, **kw}
        self.lines: List[str] = []
        self.finals: List[bool] = []
        self.open()

    def open(self) -> None:
        self.state = LogState(self.db)
        self.tailer = Tailer(self.patterns, self.state, **self.kw)

    def consume(self, t: Tracked, data: bytes, final: bool) -> int:
        taken, _counts, _records = plog.scan(data, final)
        self.lines.extend(x for x in data[:taken].decode("utf-8", "replace").split("\n") if x)
        self.finals.append(final)
        return taken

    def poll(self, deadline: float = 5.0) -> List[str]:
        before = len(self.lines)
        self.tailer.poll(self.consume, time.monotonic() + deadline)
        files, gone = self.tailer.changes()
        assert self.state.commit(files, gone)
        self.tailer.committed()
        return self.lines[before:]

    def restart(self) -> None:
        self.tailer.close()
        self.state.close()
        self.open()

    def close(self) -> None:
        self.tailer.close()
        self.state.close()


@pytest.fixture
def reader(tmp_path: Path) -> Callable[..., Reader]:
    made: List[Reader] = []

    def make(*patterns: str, **kw: Any) -> Reader:
        r = Reader(tmp_path, [str(tmp_path / p) for p in patterns], **kw)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def write(path: Path, text: str, mode: str = "a") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, mode) as f:
        f.write(text)


def numbers(lines: List[str]) -> List[int]:
    return [int(x.rsplit(" ", 1)[1]) for x in lines if "line " in x]


def test_at_the_first_start_existing_lines_are_skipped_and_new_files_read_from_their_start(
        tmp_path: Path, reader: Callable[..., Reader]) -> None:
    old = tmp_path / "log/debug/plog/plog-100_20250101000000000.log"
    write(old, line(1) + line(2) + "[INFO] HCCL(100,python):2025-07-23-03:49:57.177.194 [x.cc:1] partial")
    r = reader("log/*/plog/plog-*.log")
    assert r.poll() == []
    write(old, " end\n" + line(3))
    new = tmp_path / "log/debug/plog/plog-100_20250101000001000.log"
    write(new, line(4))
    # the line being written when the agent first started is not cut in half: it is skipped whole
    assert numbers(r.poll()) == [3, 4]


def test_start_at_beginning_reads_what_is_there(tmp_path: Path, reader: Callable[..., Reader]) -> None:
    write(tmp_path / "log/plog/plog-1_20250101000000000.log", line(1) + line(2))
    r = reader("log/plog/plog-*.log", start_at="beginning")
    assert numbers(r.poll()) == [1, 2]


def test_a_partial_line_is_never_taken(tmp_path: Path, reader: Callable[..., Reader]) -> None:
    path = tmp_path / "a.log"
    r = reader("*.log", start_at="beginning")
    write(path, line(1) + line(2)[:20])
    assert numbers(r.poll()) == [1]
    assert committed_offset(r) == len(line(1))
    write(path, line(2)[20:])
    assert numbers(r.poll()) == [2]


def test_a_record_is_taken_whole(tmp_path: Path, reader: Callable[..., Reader]) -> None:
    """A header whose continuation lines may still come is left for the next poll unless the file is quiet."""
    path = tmp_path / "device.log"
    r = reader("*.log", start_at="beginning", block_wait=3600.0)
    write(path, line(1) + line(2, "ERROR") + "<exception_print>first\n")
    assert numbers(r.poll()) == [1]
    write(path, "<exception_print>second\n" + line(3))
    got = r.poll()
    assert got[:3] == [line(2, "ERROR").strip(), "<exception_print>first", "<exception_print>second"]
    r.tailer.block_wait = 0.0  # the file has been quiet long enough: its last record is complete
    assert numbers(r.poll()) == [3]


def test_cann_rotation_a_deleted_file_is_finished_through_its_descriptor(
        tmp_path: Path, reader: Callable[..., Reader]) -> None:
    """ASCEND_HOST_LOG_FILE_NUM=1: the process starts a new file and deletes the old one at once."""
    d = tmp_path / "log/debug/plog"
    first = d / "plog-7_20250101000000000.log"
    r = reader("log/*/plog/plog-*.log", start_at="beginning")
    write(first, line(1, pid=7))
    assert numbers(r.poll()) == [1]
    write(first, line(2, pid=7) + line(3, pid=7))  # written after the last poll, never read
    second = d / "plog-7_20250101000010000.log"
    write(second, line(4, pid=7))
    first.unlink()
    assert sorted(numbers(r.poll())) == [2, 3, 4]
    assert len(r.tailer.files) == 1  # the deleted one is forgotten once read
    assert r.state.files().keys() == r.tailer.files.keys()
    assert r.tailer.problems["vanished_unread"] == 0


def test_a_file_created_and_deleted_between_two_polls_is_survived(tmp_path: Path,
                                                                   reader: Callable[..., Reader]) -> None:
    r = reader("*.log", start_at="beginning")
    r.poll()
    path = tmp_path / "short.log"
    write(path, line(1))
    real_stat = os.stat

    def stat_then_delete(p: Any, *a: Any, **k: Any) -> Any:
        st = real_stat(p, *a, **k)
        if str(p) == str(path):
            os.unlink(path)  # gone between the look and the open
        return st

    os.stat = stat_then_delete  # type: ignore[assignment]
    try:
        assert r.poll() == []
    finally:
        os.stat = real_stat  # type: ignore[assignment]
    assert r.poll() == []
    assert r.tailer.files == {}


def test_a_file_renamed_within_the_globs_keeps_its_place(tmp_path: Path, reader: Callable[..., Reader]) -> None:
    path = tmp_path / "a.log"
    r = reader("*.log", start_at="beginning")
    write(path, line(1))
    r.poll()
    path.rename(tmp_path / "b.log")
    write(tmp_path / "b.log", line(2))
    assert numbers(r.poll()) == [2]


def test_logrotate_create_the_renamed_file_is_read_to_its_end(tmp_path: Path,
                                                               reader: Callable[..., Reader]) -> None:
    path = tmp_path / "app.log"
    r = reader("app.log", start_at="beginning", idle_close=3600.0)
    with open(path, "a", buffering=1) as f:
        f.write(line(1))
        assert numbers(r.poll()) == [1]
        path.rename(tmp_path / "app.log.1")  # out of the glob
        f.write(line(2))  # the app writes on until it reopens
        write(path, line(3))
        assert sorted(numbers(r.poll())) == [2, 3]
        f.write(line(4))
        assert numbers(r.poll()) == [4]
    assert len(r.tailer.files) == 2


def test_truncation_reads_again_from_the_start(tmp_path: Path, reader: Callable[..., Reader]) -> None:
    path = tmp_path / "app.log"
    r = reader("app.log", start_at="beginning")
    write(path, line(1) + line(2))
    assert numbers(r.poll()) == [1, 2]
    write(path, line(3), mode="w")  # copytruncate, then a shorter file
    assert numbers(r.poll()) == [3]
    assert r.tailer.problems["truncated"] == 1


def test_truncation_and_regrowth_past_the_offset_is_seen_by_the_first_bytes(
        tmp_path: Path, reader: Callable[..., Reader]) -> None:
    path = tmp_path / "app.log"
    r = reader("app.log", start_at="beginning")
    write(path, line(1))
    assert numbers(r.poll()) == [1]
    write(path, line(2) + line(3) + line(4), mode="w")  # larger than before by the next look
    assert numbers(r.poll()) == [2, 3, 4]


def test_a_restart_neither_loses_nor_repeats(tmp_path: Path, reader: Callable[..., Reader]) -> None:
    d = tmp_path / "log/plog"
    kept, renamed, deleted = d / "plog-1_20250101000000000.log", d / "plog-2_20250101000000000.log", \
        d / "plog-3_20250101000000000.log"
    r = reader("log/plog/plog-*.log", start_at="beginning", idle_close=3600.0)
    write(kept, line(1))
    write(renamed, line(2, pid=2))
    write(deleted, line(3, pid=3))
    assert sorted(numbers(r.poll())) == [1, 2, 3]
    r.tailer.close()
    r.state.close()
    # while the agent is down
    write(kept, line(4) + line(5)[:10])
    write(renamed, line(6, pid=2))
    renamed.rename(d / "plog-2.log.old")  # out of the glob, found again by inode
    deleted.unlink()
    write(d / "plog-4_20250101000000000.log", line(7, pid=4))  # created while down: read from its start
    r.open()
    assert sorted(numbers(r.poll())) == [4, 6, 7]
    write(kept, line(5)[10:])
    assert numbers(r.poll()) == [5]
    assert sorted(numbers(r.lines)) == [1, 2, 3, 4, 5, 6, 7]


def test_a_reused_inode_is_a_new_file(tmp_path: Path, reader: Callable[..., Reader]) -> None:
    """Same (device, inode) as a saved position but other first bytes: read from the start."""
    path = tmp_path / "a.log"
    r = reader("a.log", start_at="beginning")
    write(path, line(1) + line(2))
    r.poll()
    r.tailer.close()
    r.state.close()
    with open(path, "r+") as f:  # rewritten in place while the agent is down, same inode, longer
        f.write(line(10) + line(11) + line(12))
    r.open()
    assert numbers(r.poll()) == [10, 11, 12]


def test_no_more_than_max_open_files_are_open(tmp_path: Path, reader: Callable[..., Reader]) -> None:
    r = reader("*.log", start_at="beginning", max_open=3)
    paths = [tmp_path / f"f{i}.log" for i in range(10)]
    opened = []
    real_read = r.tailer._read

    def counting(t: Tracked, consume: Any, deadline: float) -> bool:
        opened.append(r.tailer.open_files())
        return real_read(t, consume, deadline)

    r.tailer._read = counting  # type: ignore[method-assign]
    for round_ in range(3):
        for i, p in enumerate(paths):
            write(p, line(round_ * 100 + i))
        r.poll()
    assert sorted(numbers(r.lines)) == sorted(round_ * 100 + i for round_ in range(3) for i in range(10))
    assert max(opened) <= 3 and r.tailer.open_files() <= 3


def test_files_of_processes_that_are_gone_are_let_go(tmp_path: Path, reader: Callable[..., Reader]) -> None:
    d = tmp_path / "log/plog"
    dead = 2 ** 22 + 12345  # above any pid_max default: no such process
    mine = os.getpid()
    old = d / f"plog-{mine}_20250101000000000.log"
    new = d / f"plog-{mine}_20250101000010000.log"
    gone = d / f"plog-{dead}_20250101000000000.log"
    for p, pid in ((old, mine), (new, mine), (gone, dead)):
        write(p, line(1, pid=pid))
    os.utime(gone, (time.time() - 60, time.time() - 60))  # and unwritten for a minute
    r = reader("log/plog/plog-*.log", start_at="beginning")
    r.poll()
    open_now = {t.path for t in r.tailer.files.values() if t.fd is not None}
    assert open_now == {str(new)}  # the older file of a live process, and a dead process's file: closed
    assert len(r.tailer.files) == 3  # their positions are kept
    write(gone, line(2, pid=dead))  # grows after all: opened again
    assert numbers(r.poll()) == [2]
    assert str(gone) in {t.path for t in r.tailer.files.values() if t.fd is not None}  # written just now: kept


def test_an_over_long_line_is_cut_and_the_rest_dropped(tmp_path: Path, reader: Callable[..., Reader]) -> None:
    path = tmp_path / "a.log"
    r = reader("a.log", start_at="beginning", max_line=1024, chunk=4096)
    write(path, line(1) + "[ERROR] HCCL(1,x):2025-07-23-03:49:57.177.194 [x.cc:1] " + "x" * 100_000 + "\n" + line(2))
    got = r.poll()
    assert numbers(got) == [1, 2]
    assert len(got[1]) == 1024
    assert r.tailer.problems["line_too_long"] == 1


def test_binary_garbage_is_read_past(tmp_path: Path, reader: Callable[..., Reader]) -> None:
    import random

    rnd = random.Random(7)
    path = tmp_path / "a.log"
    r = reader("a.log", start_at="beginning")
    with open(path, "wb") as f:
        f.write(bytes(rnd.randrange(256) for _ in range(300_000)) + b"\n" + line(1).encode())
    r.poll()
    assert numbers(r.lines)[-1:] == [1]


def test_an_unreadable_file_is_counted_and_tried_again_later(tmp_path: Path, reader: Callable[..., Reader],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "a.log"
    write(path, line(1))
    r = reader("a.log", start_at="beginning")
    real_open = os.open

    def refuse(p: Any, flags: int, *a: Any) -> int:
        if str(p) == str(path):
            raise PermissionError(13, "Permission denied", str(p))
        return real_open(p, flags, *a)

    monkeypatch.setattr(os, "open", refuse)
    assert r.poll() == []
    assert r.tailer.problems["unreadable"] >= 1
    monkeypatch.setattr(os, "open", real_open)
    for t in r.tailer.files.values():
        t.retry_at = 0.0  # the minute of back-off has passed
    assert numbers(r.poll()) == [1]


def test_one_record_longer_than_a_read_is_cut_not_stuck(tmp_path: Path, reader: Callable[..., Reader]) -> None:
    path = tmp_path / "a.log"
    r = reader("a.log", start_at="beginning", max_line=256, chunk=1024, block_wait=3600.0)
    write(path, line(1, "ERROR") + "".join(f"<exception_print>{i:04d}\n" for i in range(500)) + line(2))
    r.poll()
    assert numbers(r.lines) == [1]  # line 2 is the last record: it may still grow
    assert sum(1 for x in r.lines if x.startswith("<exception_print>")) == 500
    r.tailer.block_wait = 0.0
    assert numbers(r.poll()) == [2]


def test_positions_survive_in_the_state(tmp_path: Path, reader: Callable[..., Reader]) -> None:
    path = tmp_path / "a.log"
    r = reader("a.log", start_at="beginning")
    write(path, line(1) + line(2))
    r.poll()
    saved = LogState(r.db)  # a second reader of the same file: read-only, sees the committed offset
    try:
        assert saved.read_only
        (only,) = saved.files().values()
        assert only.offset == path.stat().st_size and only.path == str(path)
    finally:
        saved.close()


def committed_offset(r: Reader) -> Optional[int]:
    files = r.state.files()
    return next(iter(files.values())).offset if files else None


def test_one_poll_reads_a_backlog_of_many_reads_to_its_end(tmp_path: Path, reader: Callable[..., Reader]) -> None:
    """Each full read leaves its last record for the next (it may have continuation lines there): the next read
    starts at that record, in the same poll, so a busy file is caught up within one collection."""
    r = reader("log/*/plog/plog-*.log", start_at="beginning", chunk=4096, max_line=1024)
    write(tmp_path / "log/debug/plog/plog-100_20250101000000000.log", "".join(line(n) for n in range(3000)))
    assert numbers(r.poll()) == list(range(3000))  # about 60 reads of 4 kB


def test_to_make_room_a_quiet_file_is_closed_before_one_still_written_to(
        tmp_path: Path, reader: Callable[..., Reader]) -> None:
    """Closed to make room, a file that gets more lines and is then deleted (CANN's rotation) would lose them."""
    r = reader("log/*/plog/plog-*.log", start_at="beginning", max_open=2)
    pid = os.getpid()
    busy = tmp_path / f"log/debug/plog/plog-{pid}_20250101000000000.log"
    write(busy, line(1) + line(2))
    got = numbers(r.poll())
    quiet = tmp_path / f"log/debug/plog/plog-{pid + 1}_20250101000000000.log"
    write(quiet, line(20))
    os.utime(quiet, (time.time() - 60, time.time() - 60))
    got += numbers(r.poll())  # both open now; the busy one has been idle longer, as far as polls can tell
    write(tmp_path / f"log/debug/plog/plog-{pid + 2}_20250101000000000.log", line(10))
    got += numbers(r.poll())  # room is made by closing the quiet file
    write(busy, line(3))
    os.unlink(busy)
    for _ in range(2):
        got += numbers(r.poll())
    assert sorted(got) == [1, 2, 3, 10, 20]


def test_an_inode_forgotten_and_taken_again_before_a_commit_keeps_its_new_position(tmp_path: Path) -> None:
    state = LogState(str(tmp_path / "s.db"))
    from npuagent_ascend.logstate import Saved

    old = Saved(1, 42, "/x/plog-1_20250101000000000.log", 100, 0, "", False)
    new = Saved(1, 42, "/x/plog-2_20250101000000000.log", 7, 0, "", False)
    assert state.commit([old])
    assert state.commit([new], [(1, 42)])  # the old file forgotten, its inode number already the new file's
    state.close()
    again = LogState(str(tmp_path / "s.db"))
    assert again.files() == {(1, 42): new}
    again.close()


def test_a_cold_file_is_looked_at_every_few_polls_and_read_when_it_grows(
        tmp_path: Path, reader: Callable[..., Reader], monkeypatch: pytest.MonkeyPatch) -> None:
    """Closed, read and idle for idle_close: the file is not stat()ed at every poll (hosts keep thousands of them),
    but once every COLD_EVERY polls, so lines written to it after all are read, a few polls late."""
    from npuagent_ascend import tail

    r = reader("log/*/plog/plog-*.log", start_at="beginning", idle_close=0.2)
    p = tmp_path / f"log/debug/plog/plog-{os.getpid()}_20250101000000000.log"
    write(p, line(1))
    assert numbers(r.poll()) == [1]
    time.sleep(0.3)
    r.poll()
    r.poll()  # idle past idle_close: closed, then cold
    assert [t.path for t in r.tailer.files.values()] == list(r.tailer._cold) == [str(p)]
    stats = []
    real_stat = os.stat
    monkeypatch.setattr(tail.os, "stat", lambda path, *a, **k: stats.append(path) or real_stat(path, *a, **k))
    write(p, line(2))
    got, polls = [], 0
    while not got and polls <= tail.COLD_EVERY:
        got = numbers(r.poll())
        polls += 1
    assert got == [2] and stats.count(str(p)) == 1  # looked at once, in one of the next COLD_EVERY polls
