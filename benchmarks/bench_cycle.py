"""CPU time of one full loop cycle with the host collector, against the bare psutil reads it is built on.

A cycle: the loop starts the collection, the worker reads the host through psutil and builds the samples,
the loop ingests them into the store. Measured as process CPU time (all threads) over many cycles.
Target: <= 3 ms per cycle, what monit spends per 1 s cycle here. When monit is installed, its own CPU per
cycle is measured in the same run too (monit polling the system every second for 20 s).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import threading
import time

import _util  # noqa: F401  (puts the repo on sys.path)
import psutil
from _util import cpu_seconds, report

from npuagent import config
from npuagent.agent import Agent
from npuagent.plugins import Plugins
from npuagent.systemd import Notifier

CYCLES = 300


class Clock:
    def __init__(self) -> None:
        self.t, self.m = time.time(), 1000.0

    def time(self) -> float:
        return self.t

    def monotonic(self) -> float:
        return self.m

    def wait(self, event: threading.Event, timeout: float) -> bool:
        return False


def agent_cycle_cpu() -> tuple:
    d = tempfile.mkdtemp()
    with open(os.path.join(d, "npuagent.toml"), "w") as f:
        f.write('[collectors.host]\ninterval = "1s"\n[plugins]\ndisabled = ["example"]\n')
    plugins = Plugins()
    plugins.load(disabled=["example"], strict=False)
    cfg = config.build(config.read_sources(os.path.join(d, "npuagent.toml"), strict=False), plugins)
    clock = Clock()
    agent = Agent(cfg, plugins, clock=clock, notifier=Notifier(clock.monotonic))
    runner = agent.runners["host"]

    def cycle() -> None:
        agent.step()
        while agent._done.empty():
            time.sleep(0)
        agent.step()
        clock.t += 1.0
        clock.m += 1.0

    for _ in range(20):
        cycle()
    t0 = time.process_time()
    for _ in range(CYCLES):
        cycle()
    per = (time.process_time() - t0) / CYCLES
    return per, runner.health.samples


def psutil_reads_cpu() -> float:
    def reads() -> None:
        psutil.cpu_times(percpu=True)
        os.getloadavg()
        psutil.virtual_memory()
        psutil.swap_memory()
        for p in psutil.disk_partitions(all=False):
            with contextlib.suppress(OSError):
                os.statvfs(p.mountpoint)
        psutil.disk_io_counters(perdisk=True)
        psutil.net_io_counters(pernic=True)

    for _ in range(20):
        reads()
    t0 = time.process_time()
    for _ in range(CYCLES):
        reads()
    return (time.process_time() - t0) / CYCLES


def monit_cycle_cpu(seconds: float = 20.0) -> float:
    """CPU per 1 s cycle of monit checking the system (cpu, memory, load, the root filesystem)."""
    d = tempfile.mkdtemp()
    rc = os.path.join(d, "monitrc")
    with open(rc, "w") as f:
        f.write(f"set daemon 1\nset idfile {d}/id\nset statefile {d}/state\nset pidfile {d}/pid\n"
                "check system localhost\n  if loadavg (1min) > 100 then alert\n  if memory usage > 99% then alert\n"
                "  if cpu usage > 99% then alert\n"
                "check filesystem root with path /\n  if space usage > 99% then alert\n")
    os.chmod(rc, 0o600)
    proc = subprocess.Popen(["monit", "-I", "-c", rc], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(2)
        start = cpu_seconds(proc.pid)
        time.sleep(seconds)
        return (cpu_seconds(proc.pid) - start) / seconds
    finally:
        proc.terminate()
        proc.wait()


def main() -> None:
    ours, samples = agent_cycle_cpu()
    base = psutil_reads_cpu()
    rows = [
        {"what": "npuagent cycle (host collector + loop + store)", "cpu_ms": f"{ours * 1e3:.3f}",
         "ratio": f"{ours / base:.2f}x", "note": f"{samples} samples per cycle; target <= 3 ms"},
        {"what": "baseline: the bare psutil reads", "cpu_ms": f"{base * 1e3:.3f}", "ratio": "1.00x", "note": ""},
    ]
    if shutil.which("monit"):
        monit = monit_cycle_cpu()
        rows.append({"what": "baseline: monit, per 1 s cycle", "cpu_ms": f"{monit * 1e3:.3f}",
                     "ratio": f"{monit / base:.2f}x", "note": f"npuagent/monit = {ours / monit:.2f}x"
                     if monit else "monit used no measurable CPU"})
    report("CPU time of one full cycle", rows)


if __name__ == "__main__":
    main()
