"""A real agent process killed with SIGKILL in each alert state and started again on the same sqlite
state: no second firing, no spurious resolution, and the timers resume where they were."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any, Dict, List

import pytest

from .conftest import HERE, ROOT

pytestmark = pytest.mark.slow

CONFIG = """
[agent]
state_dir = "{state}"
evaluation_interval = "100ms"
[http]
enabled = false
[plugins]
disabled = ["example"]
[collectors.host]
enabled = false
[collectors.value-file]
[[rules]]
name = "hot"
type = "threshold"
metric = "test_value"
above = 80
clear_below = 75
for = "3s"
clear_for = "3s"
summary = "value {{value}}"
"""


class Agent:
    def __init__(self, tmp: Any) -> None:
        self.tmp = tmp
        self.value = tmp / "value"
        self.log = tmp / "transitions.jsonl"
        self.config = tmp / "npuagent.toml"
        self.config.write_text(CONFIG.format(state=tmp / "state"))
        self.proc: Any = None

    def set(self, value: float) -> None:
        tmp = self.tmp / "value.tmp"
        tmp.write_text(str(value))
        os.replace(tmp, self.value)

    def start(self) -> None:
        env = {**os.environ, "NPUAGENT_PLUGINS": "value_file", "NPUAGENT_TEST_VALUE": str(self.value),
               "NPUAGENT_TEST_TRANSITIONS": str(self.log),
               "PYTHONPATH": os.pathsep.join([os.path.join(HERE, "helpers"), ROOT])}
        self.started = time.time()
        with open(self.tmp / "agent.log", "a") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "npuagent", "run", "-c", str(self.config)],
                                         stdout=subprocess.DEVNULL, stderr=log, env=env)

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def transitions(self) -> List[Dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def wait_for(self, to: str, count: int = 1, timeout: float = 20.0) -> Dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [t for t in self.transitions() if t["to"] == to]
            if len(found) >= count:
                return found[count - 1]
            assert self.proc.poll() is None, (self.tmp / "agent.log").read_text()
            time.sleep(0.05)
        raise AssertionError(f"no transition to {to}: {self.transitions()}")


@pytest.fixture
def agent(tmp_path: Any) -> Any:
    a = Agent(tmp_path)
    yield a
    if a.proc and a.proc.poll() is None:
        a.proc.kill()
        a.proc.wait()


def test_killed_while_pending_resumes_its_timer(agent: Agent) -> None:
    agent.set(90)
    agent.start()
    pending = agent.wait_for("pending")
    time.sleep(1.0)  # so that a timer resumed and a timer started afresh at the restart differ by a second
    agent.kill9()
    agent.start()
    firing = agent.wait_for("firing")
    # the timer resumed: it fired 3 s after it first became pending, sooner than a timer started afresh at
    # the restart could have
    assert firing["at"] - pending["at"] >= 3.0
    assert firing["at"] < agent.started + 3.0
    assert firing["pid"] != pending["pid"]
    assert [t["to"] for t in agent.transitions()] == ["pending", "firing"]  # no second pending


def test_killed_while_firing_neither_fires_again_nor_resolves(agent: Agent) -> None:
    agent.set(90)
    agent.start()
    agent.wait_for("firing")
    agent.kill9()
    agent.start()
    time.sleep(4)  # longer than for and clear_for: any spurious transition would have happened
    assert [t["to"] for t in agent.transitions()] == ["pending", "firing"]
    agent.set(70)
    resolving = agent.wait_for("resolving")
    inactive = agent.wait_for("inactive")
    assert inactive["at"] - resolving["at"] >= 3.0


def test_killed_while_resolving_resolves_once_on_its_timer(agent: Agent) -> None:
    agent.set(90)
    agent.start()
    agent.wait_for("firing")
    agent.set(70)
    resolving = agent.wait_for("resolving")
    time.sleep(1.0)
    agent.kill9()
    agent.start()
    inactive = agent.wait_for("inactive")
    assert inactive["at"] - resolving["at"] >= 3.0
    assert inactive["at"] < agent.started + 3.0
    time.sleep(1)
    assert [t["to"] for t in agent.transitions()] == ["pending", "firing", "resolving", "inactive"]
