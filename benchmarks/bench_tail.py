"""The CANN log tailer: its read speed against ``grep -c``, and the agent's CPU while following busy logs.

Read speed: about 1 GB (``--mb``) of plog lines in ``plog-<pid>_<created>.log`` files of 20 MB (CANN's cap)
under a ``debug/plog/`` root, eight processes' worth. The lines are the shapes of the shared fixtures
(HCCL, RUNTIME, GE, DRV, PROFILING, TDT headers at INFO, DEBUG, EVENT, WARNING) with varying numbers and
times (16 distinct 2 MB blocks, cycled, each file's pid put in); one record in 1000 is an ERROR record, some
of them multi-line (a TSCH hwts timeout with its ``<exception_print>`` rows). The files are read once to have
them in the page cache, then the same files are read by both:

* the baseline, ``LC_ALL=C grep -c ERROR`` over all of them (median of 3 runs): the speed a reader that only
  looks for a word gets from the page cache;
* the real path: the ``cann_log`` collector (``CannLogCollector.collect()``, ``start_at = "beginning"``, its
  sqlite state in a temp dir) called with a long deadline until its lag is 0: the Tailer reads, ``plog.scan``
  counts messages by level and module, every ERROR record is parsed and classified, the offsets and counters
  are committed. Its counters are checked against what was written (exit 1 when they differ).

Also shown, for scale: the Python floor of reading the same files (``os.pread`` of 1 MiB chunks and
``bytes.count(b"\\n")``). Target: the tailer at least half of grep's lines per second.

CPU while following: the real agent (``npuagent run``, only the ``cann_log`` collector, default interval,
/metrics on 127.0.0.1) follows 20 plog files; a writer process appends the same kind of lines to them at
10,000 lines/s in total for 30 s (``--seconds``, ``--rate``). Measured: the agent's CPU seconds
(utime + stime, all threads) from the writer's start until the agent has read every line, over the
writer's duration, as % of one core. Baseline in the same run: the same agent over ``--idle-seconds``
before the writer starts (the 20 files there, quiet); the writer's own CPU is shown for scale. The agent's
/metrics must count every line written (exit 1 otherwise). Target: < 5 % of one core.

``--profile`` runs the read-speed pass under cProfile and prints where the time goes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from typing import Any, Dict, List, Optional, Tuple

import _util
from _util import cpu_seconds, free_port, report

ASCEND = os.path.join(_util.ROOT, "plugins", "ascend")
if ASCEND not in sys.path:
    sys.path.insert(0, ASCEND)

MB = 1 << 20
FILE_BYTES = 20 * MB  # CANN starts a new plog file at 20 MB
BLOCK_BYTES = 2 * MB
DISTINCT_BLOCKS = 16
ERROR_EVERY = 1000  # one record in 1000 is an ERROR record
PLACEHOLDER = "@@pid@@"  # the pid in the lines of a block, replaced by the pid of the file it goes to

# -- the lines ----------------------------------------------------------------------------------------------
# (level, module, body): the body follows "[LEVEL] MODULE(pid,process):timestamp "; shapes from
# /work/shared/fixtures/plog. Fields: pid, tid, dev, n (a big number), a, b (hex), c (a count), line.
MESSAGES: List[Tuple[str, str, str]] = [
    ("INFO", "HCCL", "[hcom.cc:454][{pid}]Entry-HcomAllReduce:tag[HcomAllReduce_{n}_0], inputPtr[0x12c3{a:08x}], "
                     "outputPtr[0x12c3{b:08x}], count[{c}], dataType[float32], op[sum], group[hccl_world_group], "
                     "streamId[13], deviceLogicId[{dev}]"),
    ("INFO", "HCCL", "[hcom_ops_kernel_info_store.cc:178][{pid}]GenerateOpTag: graph[2] opType[HcomAllReduce], "
                     "nodeNameHash[{n}], group[hccl_world_group], generated op tag[HcomAllReduce_{n}_0]"),
    ("INFO", "HCCL", "[hccl_socket.cc:458] [{tid}][IRecv]except size [712 Byte], actual size [{c} Byte], "
                     "ret[128207]"),
    ("INFO", "HCCL", "[op_base.cc:339][{pid}][HCCL_TRACE]HcclGetRootInfo success, take time [{c}]us, "
                     "identifier[172.16.13.183%eth0_64000_0_{n}]"),
    ("INFO", "RUNTIME", "[runtime_keeper.cc:172] {tid} CreateRuntimeImpl: Open libruntime_v100.so success"),
    ("DEBUG", "RUNTIME", "[stream.cc:{line}]{tid} TaskLaunch: device_id={dev}, stream_id=17, task_id={c}, "
                         "task_type=3, flip_num=0"),
    ("INFO", "GE", "[op_tiling_manager.cc:109]{tid} ~FuncPerfScope:[GEPERFTRACE] The time cost of "
                   "OpTilingManager::LoadSo is [{c}] micro seconds."),
    ("INFO", "DRV", "[ascend][curpid: {pid}, {tid}][drv][devmm][_svm_mem_stats_show 154]DEV_MEM dev{dev} mem "
                    "stats(Bytes): module_name=GE, module_id=45 current_alloced_size={c}, alloced_peak_size={n}."),
    ("EVENT", "PROFILING", "[msprof_callback_impl.cpp:79] >>> (tid:{tid}) MsprofCtrlCallback called, type: 255"),
    ("INFO", "PROFILING", "[prof_atls_plugin.cpp:222] (tid:{tid}) Module[45] register callback of ctrl handle."),
    ("EVENT", "TDT", "[process_mode_manager.cpp:371][InitTsdClient][tid:{tid}] [TsdClient] deviceId[{dev}] begin "
                     "to init hdc client"),
    ("INFO", "TDT", "[package_worker_factory.cpp:40][RegisterPackageWorkerCreator][tid:{tid}] Register[4] package "
                    "worker create success"),
    ("WARNING", "GE", "[graph_var_manager.cc:{line}]{tid} SetMemoryMallocSize: graph memory {c} MB over the "
                      "recommended size, device_id={dev}"),
    ("INFO", "ATRACE", "[trace_attr.c:189](tid:{tid}) attr init success, timeout=0ms."),
]
#: ERROR records; a list of lines: the first is the header's body, the others continuation lines
ERRORS: List[Tuple[str, List[str]]] = [
    ("HCCL", ["[hccl_socket.cc:100] [{pid}][HcclSocket][Listen] socket type[1], listen on ip[192.168.20.160] "
              "and specific port[16666] fail. Please check the port status and whether the port is been using by "
              "other process."]),
    ("HCCL", ["[hccl_socket_manager.cc:778] [{tid}][Wait][LinkEstablish]wait socket establish timeout, role[1] "
              "rank[{dev}] timeout[120]"]),
    ("HCCL", ["[p2p_mgmt.cc:297][{pid}][Wait][P2PConnected]connected p2p timeout, timeout:130 s. local "
              "logicDevid:{dev}, remote physic id:2."]),
    ("RUNTIME", ["[npu_driver.cc:1100]{tid} DevMemAllocHugePageManaged:[INIT][DEFAULT][drv api] halMemAlloc "
                 "failed:size=2097152(Byte), type=2, moduleId=7, drvFlag=18374686479671772161, drvRetCode=6, "
                 "device_id={dev}!"]),
    ("RUNTIME", ["[engine.cc:1263]{tid} ReportExceptProc:Task exception! device_id={dev}, stream_id=17, "
                 "task_id={c}, type=13, retCode=0x91, [the model stream execute failed]."]),
    ("TSCH", ["11 (dieid:0,cpuid:0) hwts_plat.c:1931 int_process_hwts_timeout_exception: RTS_HWTS: hwts timeout "
              "exception bitmap=0x8000",
              "<exception_print>HWTS_PUBLIC_START",
              "<exception_print>HWS_REG_AICORE_STATUS=0x7fffdfff",
              "<exception_print>TIME:{date}, device_id={dev}, stream_id=16, task_id={c}, exception_code=0xb4060007",
              "<exception_print>HWTS_SLOT_START: slot_id=15",
              "<exception_print>HWS_REG_SQ_DB(sq_tail)=0x122",
              "<exception_print>HWTS_SLOT_END: slot_id=15",
              "<exception_print>notify wait timeout"]),
]


class Mix:
    """Makes records of the lines above and keeps count of what it made."""

    def __init__(self, pid: object, seed: int) -> None:
        self.pid = pid
        self.i = seed * 7919
        self.lines = self.headers = self.errors = self.error_lines = 0
        self.counts: Counter[str] = Counter()

    def records(self, n: int, stamp: str, micros: int) -> List[str]:
        """``n`` records, their times from ``stamp`` (``YYYY-MM-DD-hh:mm:ss``) plus ``micros`` onwards."""
        out = []
        for _ in range(n):
            i = self.i = self.i + 1
            pid = self.pid
            us = micros + i * 37 % 1000
            date = f"{stamp}.{us // 1000 % 1000:03d}.{us % 1000:03d}"
            micros += 53
            fields = {"pid": pid, "tid": 2_700_000 + i % 7, "dev": i % 8, "n": 6629421139219749105 + i * 131,
                      "a": i * 2654435761 % (1 << 32), "b": i * 40503 % (1 << 32), "c": i * 7 % 99991,
                      "line": 100 + i % 3000, "date": date}
            if i % ERROR_EVERY == 0:
                module, body = ERRORS[i // ERROR_EVERY % len(ERRORS)]
                level, rows = "ERROR", [b.format(**fields) for b in body]
                self.errors += 1
                self.error_lines += 1
            else:
                level, module, text = MESSAGES[i % len(MESSAGES)]
                rows = [text.format(**fields)]
            out.append(f"[{level}] {module}({pid},python3):{date} " + "\n".join(rows) + "\n")
            self.lines += len(rows)
            self.headers += 1
            self.counts[f"{level}|{module}"] += 1
        return out


def created_name(pid: int, t: float, k: int) -> str:
    """plog-<pid>_<YYYYmmddHHMMSSfff>.log"""
    return f"plog-{pid}_{time.strftime('%Y%m%d%H%M%S', time.localtime(t))}{k % 1000:03d}.log"


def dead_pids(n: int, start: int) -> List[int]:
    """``n`` pids no process has (so the tailer lets their finished files go, as it does for ended jobs)."""
    out, pid = [], start
    while len(out) < n:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            out.append(pid)
        except OSError:
            pass
        pid += 1
    return out


# -- 1. read speed --------------------------------------------------------------------------------------------


def generate(root: str, total: int) -> Tuple[List[str], Mix, int]:
    """About ``total`` bytes of plog files under ``root``/debug/plog; the files, what they hold, the bytes."""
    plog_dir = os.path.join(root, "debug", "plog")
    os.makedirs(plog_dir)
    pids = dead_pids(8, 3_000_000)  # eight processes (seven digits, as PLACEHOLDER is long)
    blocks: List[Tuple[bytes, Mix]] = []
    t0 = time.time() - 86400
    for k in range(DISTINCT_BLOCKS):
        mix = Mix(PLACEHOLDER, k)
        stamp = time.strftime("%Y-%m-%d-%H:%M", time.localtime(t0 + 60 * k))
        parts: List[str] = []
        size, second = 0, 0
        while size < BLOCK_BYTES:
            chunk = "".join(mix.records(500, f"{stamp}:{second % 60:02d}", 0))
            parts.append(chunk)
            size += len(chunk)
            second += 1
        blocks.append(("".join(parts).encode(), mix))
    total_mix = Mix(0, 0)
    paths: List[str] = []
    written, b, f = 0, 0, 0
    while written < total:
        pid = pids[f % len(pids)]
        assert len(str(pid)) == len(PLACEHOLDER)  # the blocks' sizes and counts stay what they were
        path = os.path.join(plog_dir, created_name(pid, t0 + f, f))
        paths.append(path)
        with open(path, "wb") as out:
            size = 0
            while size < FILE_BYTES and written < total:
                data, mix = blocks[b % len(blocks)]
                out.write(data.replace(PLACEHOLDER.encode(), str(pid).encode()))
                size += len(data)
                written += len(data)
                total_mix.lines += mix.lines
                total_mix.headers += mix.headers
                total_mix.errors += mix.errors
                total_mix.error_lines += mix.error_lines
                total_mix.counts.update(mix.counts)
                b += 1
        f += 1
    return paths, total_mix, written


def warm(paths: List[str]) -> None:
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.read(8 * MB):
                pass


def grep_count(paths: List[str]) -> Tuple[int, float, float]:
    """``LC_ALL=C grep -c ERROR`` over the files: matching lines, wall seconds, CPU seconds."""
    env = dict(os.environ, LC_ALL="C")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run(["grep", "-c", "-h", "ERROR", *paths], env=env, capture_output=True, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode not in (0, 1):
        raise RuntimeError(f"grep failed: {out.stderr.decode(errors='replace')}")
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return sum(int(n) for n in out.stdout.split()), wall, cpu


def python_floor(paths: List[str]) -> Tuple[int, float]:
    """Reading the files the way the tailer does (pread of 1 MiB), counting newlines: lines, wall seconds."""
    t0 = time.perf_counter()
    lines = 0
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            offset = 0
            while True:
                data = os.pread(fd, MB, offset)
                if not data:
                    break
                lines += data.count(b"\n")
                offset += len(data)
        finally:
            os.close(fd)
    return lines, time.perf_counter() - t0


def collector(root: str, state: str) -> Any:
    from npuagent_ascend import cannlog

    from npuagent.context import PluginContext
    from npuagent.options import validate_table

    values, errors = validate_table({"users": [], "roots": [root], "start_at": "beginning"}, cannlog.OPTIONS)
    if errors:
        raise RuntimeError(f"cann_log options: {errors}")
    # no interval and a long timeout: each collection may read for half an hour, as a backlog allows
    ctx = PluginContext("cann_log", "cann_log", values, interval=0.0, timeout=3600.0, state_dir=state)
    return cannlog.CannLogCollector(ctx)


def tail_all(c: Any) -> Tuple[List[Any], int, int]:
    """Collect until nothing is left to read: the last collection's samples, how many collections, how many
    events they returned."""
    from npuagent.model import Sample

    n = events = 0
    while True:
        n += 1
        out = c.collect()
        samples = [s for s in out if isinstance(s, Sample)]
        events += len(out) - len(samples)
        lag = sum(s.value for s in samples if s.name == "npuagent_cann_log_lag_bytes")
        if lag == 0:
            return samples, n, events
        if n > 10000:
            raise RuntimeError(f"the tailer does not catch up: {lag} bytes left")


def check_samples(samples: List[Any], mix: Mix) -> Tuple[List[str], float]:
    """What the collector counted against what was written: a list of differences, and how many events were
    dropped (``max_events`` per collection: by design, a backlog of thousands of errors is not thousands of
    events)."""
    got: Counter[str] = Counter()
    errors = 0.0
    problems: Dict[str, float] = {}
    for s in samples:
        if s.name == "cann_log_messages_total":
            got[f"{s.labels['level']}|{s.labels['module']}"] += int(s.value)
        elif s.name in ("hccl_errors_total", "cann_errors_total"):
            errors += s.value
        elif s.name == "npuagent_cann_log_problems_total" and s.value:
            problems[s.labels.get("reason", "")] = s.value
    bad = []
    if got != mix.counts:
        diff = {k: (got.get(k, 0), mix.counts.get(k, 0)) for k in set(got) | set(mix.counts)
                if got.get(k, 0) != mix.counts.get(k, 0)}
        bad.append(f"cann_log_messages_total (counted, written) differ: {diff}")
    if sum(got.values()) != mix.headers:
        bad.append(f"cann_log_messages_total sums to {sum(got.values())}, {mix.headers} messages written")
    if errors != mix.errors:
        bad.append(f"hccl_errors_total + cann_errors_total = {errors:.0f}, {mix.errors} error records written")
    dropped = problems.pop("events_dropped", 0.0)
    if problems:
        bad.append(f"npuagent_cann_log_problems_total by reason: {problems}")
    return bad, dropped


def bench_read(tmp: str, mb: int, profile: bool) -> List[str]:
    root = os.path.join(tmp, "log")
    t0 = time.perf_counter()
    paths, mix, size = generate(root, mb * MB)
    gen_s = time.perf_counter() - t0
    warm(paths)
    warm(paths)
    # files quiet for longer than block_wait, as a backlog is: their last records are taken at the first reading
    time.sleep(max(0.0, max(os.stat(p).st_mtime for p in paths) + 0.6 - time.time()))
    print(f"(generated {size / MB:.0f} MB in {len(paths)} files, {mix.lines} lines, {mix.errors} error records, "
          f"in {gen_s:.1f} s)", file=sys.stderr)

    runs = [grep_count(paths) for _ in range(3)]
    matched = runs[0][0]
    grep_s = statistics.median(r[1] for r in runs)
    grep_cpu = statistics.median(r[2] for r in runs)
    floor_lines, floor_s = python_floor(paths)

    c = collector(root, os.path.join(tmp, "state"))
    prof: Any = None
    if profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    try:
        c0, t0 = time.process_time(), time.perf_counter()
        samples, collections, events = tail_all(c)
        tail_s, tail_cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        if prof is not None:
            prof.disable()
        c.close()

    bad, dropped = check_samples(samples, mix)
    if matched != mix.error_lines:
        bad.append(f"grep counted {matched} ERROR lines, {mix.error_lines} written")
    if floor_lines != mix.lines:
        bad.append(f"{floor_lines} newlines read, {mix.lines} lines written")

    def row(reader: str, seconds: float, cpu: float, note: str) -> Dict[str, object]:
        return {"reader": reader, "seconds": f"{seconds:.2f}", "cpu_s": f"{cpu:.2f}",
                "lines_per_s": f"{mix.lines / seconds / 1e6:.2f}M", "MB_per_s": f"{size / MB / seconds:.0f}",
                "speed_vs_grep": f"{grep_s / seconds:.3f}x", "note": note}

    report(f"CANN log tailer: {size / MB:.0f} MB of plog lines ({mix.lines} lines, {mix.errors} ERROR records) "
           "from the page cache (baseline: LC_ALL=C grep -c ERROR on the same files)", [
               row("npuagent cann_log collector (Tailer + scan + classify + commit)", tail_s, tail_cpu,
                   f"{collections} collections, {events} events ({dropped:.0f} dropped); target >= 0.5x"),
               row("baseline: grep -c ERROR (median of 3)", grep_s, grep_cpu, f"{matched} lines matched"),
               row("floor: Python pread 1 MiB + count newlines", floor_s, floor_s, "no parsing at all"),
           ])
    sys.stdout.flush()
    if prof is not None:
        import pstats

        pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(20)
    return bad


# -- 2. CPU while following -----------------------------------------------------------------------------------

FILES = 20


def writer_main(args: List[str]) -> None:
    """The writer process: append lines to the files at ``rate`` lines/s in total for ``seconds``; prints what
    it wrote (and its own CPU) as JSON."""
    spec = json.loads(args[0])
    paths, pids, rate, seconds = spec["paths"], spec["pids"], spec["rate"], spec["seconds"]
    fds = [os.open(p, os.O_WRONLY | os.O_APPEND) for p in paths]
    mixes = [Mix(pid, 100 + k) for k, pid in enumerate(pids)]
    tick = 0.05
    t0 = time.monotonic()
    k = 0
    while True:
        elapsed = min(time.monotonic() - t0, seconds)
        due = int(rate * elapsed) - sum(m.lines for m in mixes)
        now = time.time()
        stamp = time.strftime("%Y-%m-%d-%H:%M:%S", time.localtime(now))
        micros = int(now % 1 * 1e6)
        out: List[List[str]] = [[] for _ in fds]
        while due > 0:
            m = mixes[k % len(mixes)]
            before = m.lines
            out[k % len(mixes)] += m.records(1, stamp, micros)
            due -= m.lines - before
            k += 1
        for fd, parts in zip(fds, out):
            if parts:
                os.write(fd, "".join(parts).encode())
        if elapsed >= seconds:
            break
        time.sleep(max(tick - (time.monotonic() - t0) % tick, 0.001))
    for fd in fds:
        os.close(fd)
    times = os.times()
    counts: Counter[str] = Counter()
    for m in mixes:
        counts.update(m.counts)
    print(json.dumps({"lines": sum(m.lines for m in mixes), "headers": sum(m.headers for m in mixes),
                      "errors": sum(m.errors for m in mixes), "counts": counts, "cpu": times.user + times.system,
                      "seconds": time.monotonic() - t0}))


def scrape(port: int) -> Dict[str, float]:
    """/metrics of the agent: the cann_log series, summed by metric name (and by level|module)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: Dict[str, float] = Counter()
    for line in text.splitlines():
        m = re.match(r'(cann_log_messages_total|hccl_errors_total|cann_errors_total|npuagent_cann_log_\w+)'
                     r'(\{[^}]*\})? (\S+)', line)
        if m is None:
            continue
        value = float(m.group(3))
        out[m.group(1)] += value
        if m.group(1) == "cann_log_messages_total":
            level = re.search(r'level="([^"]*)"', m.group(2) or "")
            module = re.search(r'module="([^"]*)"', m.group(2) or "")
            out[f"{level.group(1) if level else ''}|{module.group(1) if module else ''}"] += value
    return out


def wait_for(what: str, cond: Any, timeout: float, agent: subprocess.Popen) -> Any:
    end = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < end:
        if agent.poll() is not None:
            raise RuntimeError(f"the agent exited ({agent.returncode}) while waiting for {what}")
        with contextlib.suppress(OSError):
            last = cond()
            if last:
                return last
        time.sleep(0.25)
    raise RuntimeError(f"timed out waiting for {what} (last: {last})")


def npuagent_bin() -> str:
    here = os.path.join(os.path.dirname(sys.executable), "npuagent")
    return here if os.path.exists(here) else os.path.join(_util.ROOT, ".venv", "bin", "npuagent")


def bench_follow(tmp: str, rate: int, seconds: float, idle_seconds: float) -> List[str]:
    root = os.path.join(tmp, "follow")
    plog_dir = os.path.join(root, "debug", "plog")
    os.makedirs(plog_dir)
    pids = dead_pids(FILES, 3_100_000)
    paths = [os.path.join(plog_dir, created_name(pid, time.time(), k)) for k, pid in enumerate(pids)]
    first = Mix(0, 0)  # one record in each file before the agent starts: it is read too
    stamp = time.strftime("%Y-%m-%d-%H:%M:%S")
    for k, (p, pid) in enumerate(zip(paths, pids)):
        mix = Mix(pid, 99 + k)
        with open(p, "w") as f:
            f.write("".join(mix.records(1, stamp, 0)))
        first.headers += mix.headers
        first.errors += mix.errors
        first.counts.update(mix.counts)

    port = free_port()
    cfg = os.path.join(tmp, "npuagent.toml")
    with open(cfg, "w") as f:
        f.write(f'[agent]\nstate_dir = "{tmp}/state-agent"\nlog_level = "warning"\n'
                f'[http]\nlisten = "127.0.0.1:{port}"\n[control]\nenabled = false\n'
                '[plugins]\ndisabled = ["example"]\n'
                '[collectors.host]\nenabled = false\n[collectors.npu]\nenabled = false\n'
                f'[collectors.cann_log]\nusers = []\nroots = ["{root}"]\nstart_at = "beginning"\n')
    env = {k: v for k, v in os.environ.items() if k != "ASCEND_PROCESS_LOG_PATH"}
    check = subprocess.run([npuagent_bin(), "check", "-c", cfg], env=env, capture_output=True, text=True)
    if check.returncode != 0:
        raise RuntimeError(f"npuagent check: {check.stdout}{check.stderr}")

    agent_log = os.path.join(tmp, "agent.log")
    with open(agent_log, "w") as log:
        agent = subprocess.Popen([npuagent_bin(), "run", "-c", cfg], env=env, stdout=log, stderr=log)
    writer: Optional[subprocess.Popen] = None
    try:
        wait_for("the agent to follow the 20 files",
                 lambda: scrape(port).get("npuagent_cann_log_files") == FILES
                 and scrape(port).get("cann_log_messages_total") == first.headers, 30, agent)
        time.sleep(3.0)  # past its first collections

        c0, t0 = cpu_seconds(agent.pid), time.monotonic()
        time.sleep(idle_seconds)
        idle = (cpu_seconds(agent.pid) - c0) / (time.monotonic() - t0)

        spec = {"paths": paths, "pids": pids, "rate": rate, "seconds": seconds}
        c0 = cpu_seconds(agent.pid)
        writer = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--writer", json.dumps(spec)],
                                  stdout=subprocess.PIPE, text=True)
        out, _ = writer.communicate(timeout=seconds + 60)
        if writer.returncode != 0:
            raise RuntimeError(f"the writer failed ({writer.returncode})")
        wrote = json.loads(out)
        want = wrote["headers"] + first.headers

        def caught_up() -> Optional[Dict[str, float]]:
            m = scrape(port)
            return m if m.get("cann_log_messages_total") == want and m.get("npuagent_cann_log_lag_bytes") == 0 else None

        got = wait_for("the agent to count every line written", caught_up, 30, agent)
        busy_cpu = cpu_seconds(agent.pid) - c0
        busy = busy_cpu / wrote["seconds"]
    except BaseException:
        with open(agent_log) as f:
            print("bench_tail: the agent's log ends with:\n" + "".join(f.readlines()[-20:]), file=sys.stderr)
        raise
    finally:
        if writer is not None and writer.poll() is None:
            writer.kill()
            writer.wait()
        agent.terminate()
        try:
            agent.wait(timeout=15)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()

    bad = []
    counts = Counter(first.counts)
    counts.update(wrote["counts"])
    for key, n in counts.items():
        if got.get(key) != n:
            bad.append(f"agent: cann_log_messages_total{{{key}}} = {got.get(key)}, {n} written")
    errors = got.get("hccl_errors_total", 0) + got.get("cann_errors_total", 0)
    if errors != wrote["errors"] + first.errors:
        bad.append(f"agent: {errors:.0f} error records counted, {wrote['errors'] + first.errors} written")
    if got.get("npuagent_cann_log_problems_total"):
        bad.append(f"agent: npuagent_cann_log_problems_total = {got['npuagent_cann_log_problems_total']:.0f}")

    lines_s = wrote["lines"] / wrote["seconds"]
    report(f"npuagent following {FILES} plog files at {rate} lines/s for {seconds:.0f} s: CPU as % of one core "
           "(baseline: the same agent while the files are quiet)", [
               {"what": "agent, files written to", "cpu_percent": f"{busy * 100:.2f}",
                "ratio": f"{busy / idle:.1f}x" if idle else "-",
                "note": f"{wrote['lines']} lines ({lines_s:.0f}/s), {wrote['errors']} error records, all counted; "
                        "target < 5 %"},
               {"what": "baseline: agent, files quiet", "cpu_percent": f"{idle * 100:.2f}", "ratio": "1.0x",
                "note": f"over {idle_seconds:.0f} s"},
               {"what": "for scale: the writer", "cpu_percent": f"{wrote['cpu'] / wrote['seconds'] * 100:.2f}",
                "ratio": f"{wrote['cpu'] / wrote['seconds'] / idle:.1f}x" if idle else "-",
                "note": "formats and appends the lines"},
           ])
    sys.stdout.flush()
    return bad


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--writer":
        writer_main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=1024, help="MB of plog lines for the read-speed part")
    parser.add_argument("--rate", type=int, default=10000, help="lines/s the writer appends, in total")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the writer writes")
    parser.add_argument("--idle-seconds", type=float, default=10.0, help="the idle baseline's window")
    parser.add_argument("--profile", action="store_true", help="profile the read-speed pass with cProfile")
    parser.add_argument("--only", choices=("read", "follow"), help="run one of the two parts")
    args, _ = parser.parse_known_args()  # ./dev bench passes its own arguments (--json) to every benchmark

    # a SIGTERM cleans up too: 1 GB of temp files must not stay behind
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = tempfile.mkdtemp(prefix="bench_tail-")
    bad: List[str] = []
    try:
        if args.only in (None, "read"):
            bad += bench_read(tmp, args.mb, args.profile)
        if args.only in (None, "follow"):
            bad += bench_follow(tmp, args.rate, args.seconds, args.idle_seconds)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if bad:
        for b in bad:
            print(f"bench_tail: WRONG: {b}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
