"""From a threshold crossed on a device to the action starting: the agent's reaction time.

The real agent (collectors, store, rules, remediation) runs in-process on a real clock, with the ``npu``
collector reading the simulator (a stand-in npu-smi, a subprocess per collection, as npu-smi is) every
second. The ``demo`` scenario shows NPU 3 above 85 °C from second 8 of its clock; a rule ``above = 85``
has one action, which notes the time it starts. Each round starts the scenario's clock 6.3 to 7.3 s in
the past, so the crossing falls at a different phase of the collection interval every time.

Two figures per round:
* visible -> action: from the moment the simulator starts printing the hot value to the action starting.
  It includes waiting for the next collection, so its bound is one interval (the baseline, 1 s, measured
  as the actual spacing of collections in the same run) plus the agent's own work; target: within one
  interval plus 50 ms.
* collected -> action: from the end of the collection that returned the hot value to the action
  starting: the agent's own work (store, rule evaluation, remediation hand-off).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import threading
import time
from typing import Any, List

import _util
from _util import report

ASCEND = os.path.join(_util.ROOT, "plugins", "ascend")
sys.path[:0] = [ASCEND]

from npuagent import config as config_mod  # noqa: E402
from npuagent import hookimpl  # noqa: E402
from npuagent.agent import Agent  # noqa: E402
from npuagent.model import ActionResult, ActionType  # noqa: E402
from npuagent.plugins import Plugins  # noqa: E402
from npuagent.state import State  # noqa: E402

SCENARIO = os.path.join(ASCEND, "npuagent_ascend", "scenarios", "demo.toml")
HOT_FROM = 8.0  # the scenario's second from which NPU 3 is above 85 °C
ROUNDS = 8

CONFIG = """
[agent]
state_dir = "{state}"
log_level = "error"
[http]
enabled = false
[control]
enabled = false
[collectors.host]
enabled = false
[collectors.npu]
mode = "npu-smi"
interval = "1s"
timeout = "5s"
command = ["{python}", "-m", "npuagent_ascend.sim", "--scenario", "{scenario}"]

[[rules]]
name = "hot"
type = "threshold"
metric = "npu_temperature_celsius"
match = {{ npu_id = "3" }}
above = 85
actions = ["stopwatch"]

[actions.stopwatch]
type = "stopwatch"
"""


class Stopwatch:
    """An action type that only notes when it started, and a collector wrapper noting each collection's end."""

    def __init__(self) -> None:
        self.started: List[float] = []
        self.collections: List[tuple] = []  # (end time, hottest NPU 3 value)
        self.done = threading.Event()

    @hookimpl
    def npuagent_action_types(self) -> List[ActionType]:
        return [ActionType("stopwatch", lambda ctx: self)]

    def run(self, request: Any) -> ActionResult:
        self.started.append(time.time())
        self.done.set()
        return ActionResult("stopwatch", "success")

    def wrap(self, collector: Any) -> None:
        inner = collector.collect

        def collect() -> list:
            items = inner()
            hot = max((s.value for s in items if getattr(s, "name", "") == "npu_temperature_celsius"
                       and s.labels.get("npu_id") == "3"), default=None)
            self.collections.append((time.time(), hot))
            return items

        collector.collect = collect


def one_round(offset: float) -> tuple:
    where = tempfile.mkdtemp()
    with open(os.path.join(where, "npuagent.toml"), "w") as f:
        f.write(CONFIG.format(state=where, python=sys.executable, scenario=SCENARIO))
    watch = Stopwatch()
    src = config_mod.read_sources(os.path.join(where, "npuagent.toml"))
    plugins = Plugins()
    plugins.load(disabled=("example",))
    plugins.register(watch, "bench")
    cfg = config_mod.build(src, plugins)
    start = time.time() - offset
    os.environ["NPUAGENT_SIM_START"] = repr(start)
    os.environ["PYTHONPATH"] = os.pathsep.join([_util.ROOT, ASCEND])
    agent = Agent(cfg, plugins, state=State(os.path.join(where, "state.db")))
    watch.wrap(agent.runners["npu"].collector)
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    watch.done.wait(30)
    agent.stop()
    thread.join(10)
    acted = watch.started[0]
    collected = next(t for t, v in watch.collections if v is not None and v > 85)
    ends = [t for t, _v in watch.collections]
    spacing = statistics.median(b - a for a, b in zip(ends, ends[1:])) if len(ends) > 1 else float("nan")
    return acted - (start + HOT_FROM), acted - collected, spacing


def main() -> None:
    rows = []
    visible, collected, spacing = [], [], []
    for i in range(ROUNDS):
        v, c, s = one_round(6.3 + i / ROUNDS)
        visible.append(v)
        collected.append(c)
        spacing.append(s)
    interval = statistics.median(spacing)
    for name, xs in (("visible -> action", visible), ("collected -> action", collected)):
        rows.append({"measure": name, "rounds": len(xs), "min_ms": round(min(xs) * 1000, 1),
                     "median_ms": round(statistics.median(xs) * 1000, 1), "max_ms": round(max(xs) * 1000, 1),
                     "interval_ms": round(interval * 1000, 1), "max/interval": round(max(xs) / interval, 3)})
    report("threshold crossed -> action started, simulator at a 1 s interval (baseline: the interval)", rows)


if __name__ == "__main__":
    main()
