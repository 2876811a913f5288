"""The storm, through the whole stack: an hour of simulated time in which a device's temperature flaps across
its threshold every minute and every restart of the serving unit fails.

The agent is the real one (collector runner, store, rule engine, remediation) on a simulated clock; the signal
comes from a scripted collector, the rule is a threshold rule with hysteresis but no ``for``, the restart is the
built-in ``systemd`` action against a stand-in systemctl whose restarts fail, and the person is paged through
the built-in ``notify`` action (no URL: the message goes to the log and the audit). What must hold: the restart
runs no more often than its cooldown and budget allow, the host-wide breaker opens, and the person is paged
once, not for each of the thirty episodes.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, List

import pytest

from npuagent import config
from npuagent.agent import Agent
from npuagent.model import Sample
from npuagent.state import State
from npuagent.systemd import Notifier

from .conftest import HERE, FakeClock, TestPlugin, make_plugins

STEP = 5.0


def test_an_hour_of_flapping_and_failing_restarts_stays_within_budgets_escalates_once_and_opens_the_breaker(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    start = clock.time()

    def temperature(ctx: Any) -> List[Sample]:
        hot = int((clock.time() - start) // 60) % 2 == 0  # 90 °C for a minute, 70 °C for a minute, ...
        return [Sample("signal_value", {"device_id": "3"}, 90.0 if hot else 70.0)]

    state = tmp_path / "systemctl.json"
    state.write_text(json.dumps({"units": {"llm-3.service": {"ActiveState": "active", "SubState": "running",
                                                             "Result": "success", "fail_restart": True}},
                                 "calls": []}))
    monkeypatch.setenv("SYSTEMCTL_STATE", str(state))
    systemctl = tmp_path / "systemctl"
    systemctl.write_text(f"#!/bin/sh\nexec {sys.executable} {os.path.join(HERE, 'helpers', 'systemctl.py')} \"$@\"\n")
    systemctl.chmod(0o755)
    (tmp_path / "npuagent.toml").write_text(f"""
[agent]
state_dir = {json.dumps(str(tmp_path / "state"))}
breaker = {{ max = 3, within = "1h" }}
[control]
enabled = false
[collectors.signal]
interval = "{STEP:g}s"

[[rules]]
name = "npu-hot"
type = "threshold"
metric = "signal_value"
above = 80
clear_below = 75
severity = "critical"
summary = "NPU {{device_id}} at {{value:.0f}} °C"
actions = ["restart-llm"]

[actions.restart-llm]
type = "systemd"
unit = "llm-{{device_id}}.service"
systemctl = {json.dumps(str(systemctl))}
wait = "1s"
cooldown = "5m"
budget = {{ max = 2, within = "30m" }}
escalate = "oncall"

[actions.oncall]
type = "notify"
urls = []
cooldown = "1h"
""")
    plugins = make_plugins(TestPlugin(signal=temperature), builtins=True)
    cfg = config.build(config.read_sources(str(tmp_path / "npuagent.toml"), strict=False), plugins)
    agent = Agent(cfg, plugins, clock=clock, notifier=Notifier(clock.monotonic),
                  state=State(str(tmp_path / "state.db")))
    assert agent.remediation is not None and agent.engine is not None
    try:
        while clock.time() - start < 3600:
            agent.step()  # starts the collection that is due
            deadline = time.monotonic() + 10
            while agent._done.qsize() < sum(r.busy for r in agent.runners.values()):
                assert time.monotonic() < deadline, "the collector did not answer"
                time.sleep(0.001)
            agent.step()  # takes it in, evaluates, hands transitions to remediation
            agent.remediation.wait()
            clock.advance(STEP)
        attempts = agent.state.attempts()
    finally:
        agent.shutdown()
    restarts = [a for a in attempts if a["action"] == "restart-llm" and a["kind"] == "run"]
    ran = [a for a in restarts if a["outcome"] != "skipped"]
    # two within the first 30 minutes (the budget), a third after, then the breaker (3 an hour) holds the rest
    assert [a["outcome"] for a in ran] == ["failure"] * 3, ran
    assert ran[2]["at"] - ran[0]["at"] >= 1800
    assert all(b["at"] - a["at"] >= 300 for a, b in zip(ran, ran[1:]))  # the cooldown between them
    assert all(a["target"] == "llm-3.service" for a in ran)
    refusals = [a["output"] for a in restarts if a["outcome"] == "skipped"]
    assert any("host-wide breaker" in r for r in refusals), refusals
    assert any("in its cooldown" in r for r in refusals) and any("budget is spent" in r for r in refusals)
    pages = [a for a in attempts if a["action"] == "oncall" and a["outcome"] != "skipped"]
    assert len(pages) == 1, pages  # escalated once; its own cooldown holds back the other episodes
    calls = json.loads(state.read_text())["calls"]
    assert [c for c in calls if c[0] == "restart"] == [["restart", "llm-3.service"]] * 3
    episodes = sum(1 for a in attempts if a["action"] == "restart-llm" and a["kind"] == "run")
    assert episodes == 30  # every firing was judged: 30 episodes in the hour
