"""Rotation under load, with the agent killed twice: no line lost, none counted twice.

Writer processes write ~50,000 lines a second in all, each line with a sequence number of its own, the way
CANN writes: one file per process until it is 1 MB (CANN: 20 MB), then a new one, the oldest deleted beyond 16
(CANN: ``ASCEND_HOST_LOG_FILE_NUM``, default 10), in the debug/run layout, the old flat one and a device log
directory; one writer keeps only one file (``ASCEND_HOST_LOG_FILE_NUM=1``: the old file is deleted the moment
the new one exists); one writes a file that is truncated, one a file that is renamed away. Writes are cut at
arbitrary bytes, so the reader sees half lines. Every fifth line is an ERROR record (every 25th a three-line
block), the others INFO lines of a module per writer.

The agent is the real one (``npuagent.agent.Agent`` on a real configuration, its loop and collector worker),
in a subprocess; only its ``_emit`` is wrapped, to write down what it was handed. It is SIGKILLed twice and
started again, the second time while the renamed file has just been renamed away.

What "lost" and "counted twice" mean, exactly:

* Each event handed over is written down with the generation of the state commit it belongs to (the
  collector hands events over, then commits offsets, cursor and counters in one transaction). After a
  SIGKILL the test reads the committed generation: events of a later generation died with the process
  (like everything the agent held in memory) and their lines must come again from the restarted agent.
  So, counting the events of committed generations: every ERROR record written appears exactly once.
* The committed counters must equal, per writer, the lines it wrote: ``cann_log_messages_total`` of its
  INFO module, and of ``ERROR``/``HCCL`` for the records, and ``hccl_errors_total`` for their kind.
* Lines a file holds when it is truncated, or deleted, before any reader has read them are gone for every
  reader. The test makes that impossible instead of guessing at it: the truncating writer truncates only once
  every line it wrote has been committed, and the one-file writer rotates (deleting its file) only while the
  agent has been up for two seconds (several polls: its descriptor is open), never within a second of a kill.
  The other writers keep 16 files (15 seconds of lines), far more than the agent is ever down, also on a
  machine busy with other work. The loss by
  truncation itself is tested apart (test_tail.py), where polls are controlled.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest
from npuagent_ascend.logstate import committed_generation

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[3]
ASCEND = REPO / "plugins" / "ascend"

WRITER = r'''
import json, os, random, sys, time
name, kind, where, rate, error_every = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5])
ctl = sys.argv[6]
keep = {"cann": 16, "single": 1}.get(kind, 0)
rnd = random.Random(name)
pid = os.getpid()
module = "W" + name
STAMP = "2025-07-23-03:49:57.177.194"
ROTATE = 1 << 20
def flag(n): return os.path.exists(os.path.join(ctl, n))
def new_file():
    global created
    created = time.time()
    if kind in ("cann", "single"):
        now = time.time()  # CANN's name: plog-<pid>_<YYYYmmddHHMMSSfff>.log (a file lasts far longer than 1 ms)
        ts = time.strftime("%Y%m%d%H%M%S", time.localtime(now)) + "%03d" % (int(now * 1000) % 1000)
        path = os.path.join(where, "%s-%d_%s.log" % (prefix, pid, ts))
    else:
        path = where
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    files.append(path)
    return fd
prefix = "device" if "/device-" in where else "plog"
def lines_of(seq):
    if seq % error_every == 0:
        text = ("[ERROR] HCCL(%d,python):%s [hccl_socket_manager.cc:778] [%d][Wait][LinkEstablish]"
                "wait socket establish timeout seq=%s:%d\n" % (pid, STAMP, pid, name, seq))
        if seq % (5 * error_every) == 0:
            text += "<exception_print>seq=%s:%d part=1\n<exception_print>seq=%s:%d part=2\n" % (name, seq, name, seq)
        return text
    return "[INFO] %s(%d,python):%s [x.cc:1] [%d]seq=%s:%d\n" % (module, pid, STAMP, pid, name, seq)
files = []
fd = new_file()
size = os.fstat(fd).st_size
seq, pending, t0 = 0, "", time.monotonic()
renamed = truncated = False
while not flag("stop"):
    due = int((time.monotonic() - t0) * rate) - seq
    out = []
    for _ in range(max(due, 0)):
        out.append(lines_of(seq))
        seq += 1
    pending += "".join(out)
    if pending:
        cut = len(pending) if rnd.random() < 0.5 else rnd.randrange(len(pending) + 1)  # half lines, sometimes
        os.write(fd, pending[:cut].encode())
        size += len(pending[:cut].encode())
        pending = pending[cut:]
    if kind in ("cann", "single") and size >= ROTATE and not pending:
        if kind == "single":  # ASCEND_HOST_LOG_FILE_NUM=1: only while the agent has been up a while
            up = os.path.join(ctl, "up")
            ok = os.path.exists(up) and time.time() - max(os.path.getmtime(up), created) >= 2.0
        else:
            ok = True
        if ok:
            old = fd
            fd, size = new_file(), 0
            os.close(old)
            while len(files) > keep:
                os.unlink(files.pop(0))
    if kind == "rename" and not renamed and flag("rename"):
        os.rename(where, where + ".1")  # out of the glob; the next lines still go to the renamed file
        if pending:  # the half line first, or the next line would be written into its middle
            os.write(fd, pending.encode())
            pending = ""
        for _ in range(200):
            os.write(fd, lines_of(seq).encode())
            seq += 1
        time.sleep(0.3)
        os.close(fd)
        fd = os.open(where, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        renamed = True
    if kind == "truncate" and not truncated and seq >= 5000 and not pending:
        with open(os.path.join(ctl, "paused"), "w") as f:
            f.write(str(seq))
        while not flag("truncate"):
            time.sleep(0.01)
        os.ftruncate(fd, 0)
        truncated = True
        t0 = time.monotonic() - seq / rate
    time.sleep(0.005)
if pending:
    os.write(fd, pending.encode())
with open(os.path.join(ctl, "done-" + name), "w") as f:
    json.dump({"lines": seq}, f)
'''

HARNESS = r'''
import json, os, sys
from npuagent.cli import load
from npuagent.agent import Agent
out = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

class Recording(Agent):
    """The real agent; what its collectors hand over is written down, with the commit it belongs to."""
    def _emit(self, events):
        collector = self.runners["cann_log"].collector
        gen = collector.state.generation + 1  # emitted now, committed by this collection's commit
        os.write(out, (json.dumps({"g": gen, "m": [e.message for e in events]}) + "\n").encode())
        super()._emit(events)

plugins, cfg = load(sys.argv[1])
agent = Recording(cfg, plugins, config_path=sys.argv[1])
agent.run(ready=lambda: print("ready", flush=True))
'''

# name, kind, where (under tmp), lines/s, one ERROR record every n lines
WRITERS = [
    ("0", "cann", "log/debug/plog", 11000, 5),
    ("1", "cann", "log/run/plog", 11000, 5),
    ("2", "cann", "log/plog", 11000, 5),  # the older flat layout
    ("3", "cann", "log/debug/device-3", 11000, 5),
    ("4", "single", "log/debug/plog", 4000, 5),
    ("5", "truncate", "extra/trunc.log", 1000, 1),
    ("6", "rename", "extra/app.log", 1000, 5),
]


class Agent:
    def __init__(self, tmp: Path, n: int) -> None:
        self.out = tmp / f"events-{n}.jsonl"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(ASCEND)]),
                   NPUAGENT_DISABLE_PLUGINS="example")
        with open(tmp / f"agent-{n}.log", "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-c", HARNESS, str(tmp / "npuagent.toml"),
                                          str(self.out)], stdout=subprocess.PIPE, stderr=err, env=env)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.strip() == b"ready", (tmp / f"agent-{n}.log").read_text()

    def kill(self, db: str) -> int:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        return committed_generation(db)

    def stop(self, db: str) -> int:
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(30) == 0
        return committed_generation(db)


def committed(out: Path, generation: int) -> List[str]:
    """The messages of the events handed over in commits up to ``generation`` (the others died with the process)."""
    msgs: List[str] = []
    if not out.exists():
        return msgs
    for line in out.read_text().split("\n"):
        if not line:
            continue
        try:
            batch = json.loads(line)
        except ValueError:
            continue  # a batch cut by the kill: its commit never happened either
        if batch["g"] <= generation:
            msgs.extend(batch["m"])
    return msgs


def seq_of(message: str) -> Tuple[str, int]:
    tail = message.split("\n")[0].rsplit("seq=", 1)[1]
    name, n = tail.split(":")
    return name, int(n)


def counters(db: str) -> Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]:
    import sqlite3

    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {(name, tuple(tuple(kv) for kv in json.loads(labels))): value
                for name, labels, value in conn.execute("SELECT name, labels, value FROM counters")}
    finally:
        conn.close()


def wait_for(done: Any, timeout: float, what: str, fail: bool = True) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done():
            return
        time.sleep(0.1)
    if fail:
        raise AssertionError(f"timed out waiting for {what}")


def test_no_line_lost_or_counted_twice_through_rotation_rename_truncation_and_kills(tmp_path: Path) -> None:
    ctl = tmp_path / "ctl"
    ctl.mkdir()
    for _name, _kind, where, _rate, _every in WRITERS:
        (tmp_path / (where if not where.endswith(".log") else os.path.dirname(where))).mkdir(parents=True,
                                                                                             exist_ok=True)
    db = str(tmp_path / "state" / "ascend" / "cann_log.db")
    (tmp_path / "npuagent.toml").write_text(f"""
[agent]
state_dir = {json.dumps(str(tmp_path / "state"))}
log_level = "warning"
[http]
enabled = false
[control]
enabled = false
[collectors.host]
enabled = false
[collectors.npu]
enabled = false
[collectors.cann_log]
interval = "250ms"
users = []
roots = [{json.dumps(str(tmp_path / "log"))}]
globs = [{json.dumps(str(tmp_path / "extra" / "*.log"))}]
dedup = "0s"
max_events = 1000000
max_open_files = 8
block_wait = "200ms"
idle_close = "30s"
""")
    runs: List[Tuple[Path, int]] = []
    agent = Agent(tmp_path, 0)  # first start: no state, start_at = "end": the writers start after it
    (ctl / "up").touch()
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, name, kind, str(tmp_path / where), str(rate),
                                 str(every), str(ctl)])
               for name, kind, where, rate, every in WRITERS]
    try:
        time.sleep(3.0)
        # kill 1, in full rotation; the one-file writer is held off its deletions a second before
        (ctl / "up").unlink()
        time.sleep(1.0)
        runs.append((agent.out, agent.kill(db)))
        (ctl / "rename").touch()  # renamed away while the agent is down: found again by inode
        time.sleep(0.5)
        agent = Agent(tmp_path, 1)
        (ctl / "up").touch()
        # truncation, once everything before it is committed
        wait_for(lambda: (ctl / "paused").exists(), 30, "the truncating writer")
        last = int((ctl / "paused").read_text()) - 1
        wait_for(lambda: ("5", last) in {seq_of(m) for o, g in [*runs, (agent.out, committed_generation(db))]
                                         for m in committed(o, g)}, 30, "the truncating writer's lines to be committed")
        (ctl / "truncate").touch()
        time.sleep(2.0)
        # kill 2
        (ctl / "up").unlink()
        time.sleep(1.0)
        runs.append((agent.out, agent.kill(db)))
        agent = Agent(tmp_path, 2)
        (ctl / "up").touch()
        time.sleep(2.5)
        (ctl / "stop").touch()
        for w in writers:
            assert w.wait(30) == 0
        written = {name: json.loads((ctl / f"done-{name}").read_text())["lines"] for name, *_ in WRITERS}
        every = {name: e for name, _k, _w, _r, e in WRITERS}
        expected = Counter((name, seq) for name, n in written.items() for seq in range(0, n, every[name]))

        def caught_up() -> bool:
            got = Counter(seq_of(m) for m in committed(agent.out, committed_generation(db)))
            return sum(got.values()) + sum(sum(Counter(seq_of(m) for m in committed(o, g)).values())
                                           for o, g in runs) >= sum(expected.values())

        wait_for(caught_up, 30, "the agent to read everything", fail=False)  # else: what is missing, below
        time.sleep(1.0)  # one more collection: nothing extra may come
        runs.append((agent.out, agent.stop(db)))
    finally:
        for p in [*writers, agent.proc]:
            if p.poll() is None:
                p.kill()
                p.wait()
    got: Counter[Tuple[str, int]] = Counter()
    blocks_ok = True
    for out, generation in runs:
        for m in committed(out, generation):
            name, seq = seq_of(m)
            got[(name, seq)] += 1
            if seq % (5 * every[name]) == 0:  # a three-line record: kept whole
                blocks_ok &= m.split("\n")[1:] == [f"<exception_print>seq={name}:{seq} part={p}" for p in (1, 2)]
    lost = expected - got
    twice = {k: n for k, n in got.items() if n > 1}
    extra = got - expected
    by_writer = Counter(name for name, _seq in lost)
    assert not lost and not twice and not extra, (f"{len(lost)} lost ({dict(by_writer)}), e.g. {sorted(lost)[:5]}; "
                                                   f"{len(twice)} twice, e.g. {sorted(twice)[:5]}; "
                                                   f"{len(extra)} unexpected")
    assert blocks_ok
    final = counters(db)
    for name, n in written.items():
        infos = n - len(range(0, n, every[name]))
        assert final.get(("cann_log_messages_total", (("level", "INFO"), ("module", f"W{name}"))), 0) == infos, name
    records = sum(expected.values())
    assert final[("cann_log_messages_total", (("level", "ERROR"), ("module", "HCCL")))] == records
    assert final[("hccl_errors_total", (("code", ""), ("kind", "connect_timeout")))] == records
