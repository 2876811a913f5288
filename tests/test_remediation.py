"""Remediation: guards, escalation, verify, revert, dry-run, the audit log and the breaker, with a real
state database and scripted actions on a simulated clock."""

from __future__ import annotations

import threading
from typing import Any, Dict, List, Optional

import pytest

from npuagent.context import PluginContext
from npuagent.model import ActionRequest, ActionResult, AlertTransition
from npuagent.options import validate_table
from npuagent.remediation import ACTION_COMMON, Bound, Remediation
from npuagent.state import State


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def time(self) -> float:
        return self.t


class Heal:
    """A healing action: succeeds or fails as scripted, records its calls, can be reverted."""

    def __init__(self, fail: bool = False, gate: Optional[threading.Event] = None) -> None:
        self.fail = fail
        self.gate = gate
        self.calls: List[ActionRequest] = []
        self.reverts: List[ActionRequest] = []

    def run(self, request: ActionRequest) -> ActionResult:
        if self.gate is not None:
            self.gate.wait(10)
        self.calls.append(request)
        if request.dry_run:
            return ActionResult("heal", "dry-run", "would heal")
        return ActionResult("heal", "failure" if self.fail else "success", "healed" if not self.fail else "no")

    def revert(self, request: ActionRequest) -> ActionResult:
        self.reverts.append(request)
        return ActionResult("heal", "success", "undone")

    def target(self, request: ActionRequest) -> str:
        return "device" + request.labels.get("device_id", "?")


class Page:
    """A telling action: one call per evaluation with all its alerts."""

    def __init__(self) -> None:
        self.groups: List[List[ActionRequest]] = []

    def run_group(self, requests: List[ActionRequest]) -> List[ActionResult]:
        self.groups.append(list(requests))
        return [ActionResult("page", "success", "queued") for _ in requests]


def bound(name: str, impl: Any, disruptive: bool = False, **options: Any) -> Bound:
    values, errors = validate_table({"name": name, "type": "t", **options}, ACTION_COMMON)
    assert not errors, errors
    return Bound(name, "t", values, impl, PluginContext(name, "t", values), disruptive)


class Rule:
    def __init__(self, *actions: str) -> None:
        self.options = {"actions": list(actions)}


def transition(previous: str, state: str, at: float, device: str = "0", rule: str = "hot",
               silenced: bool = False) -> AlertTransition:
    return AlertTransition(rule, {"device_id": device}, previous, state, at, 91.0, "critical",
                           {"summary": f"NPU {device} hot"}, silenced)


@pytest.fixture
def world(tmp_path: Any) -> Any:
    class World:
        def __init__(self) -> None:
            self.clock = Clock()
            self.state = State(str(tmp_path / "state.db"))
            self.results: List[ActionResult] = []

        def make(self, actions: Dict[str, Bound], **kw: Any) -> Remediation:
            self.r = Remediation(actions, self.state, observe=self.results.append, clock=self.clock, **kw)
            return self.r

        def fire(self, rules: Dict[str, Rule], device: str = "0", silenced: bool = False) -> None:
            self.r.handle([transition("pending", "firing", self.clock.t, device, silenced=silenced)], rules)
            self.r.wait()

        def resolve(self, rules: Dict[str, Rule], device: str = "0") -> None:
            self.r.handle([transition("firing", "inactive", self.clock.t, device)], rules)
            self.r.wait()

        def tick(self, rules: Dict[str, Rule], seconds: float) -> None:
            self.clock.t += seconds
            self.r.tick(self.clock.t, rules)
            self.r.wait()

        def audit(self) -> List[tuple]:
            return [(a["action"], a["kind"], a["outcome"]) for a in self.state.attempts()]

    w = World()
    yield w
    if getattr(w, "r", None) is not None:
        w.r.close()


def test_firing_runs_the_first_healing_step_and_tells_once_for_all_alerts(world: Any) -> None:
    heal, page = Heal(), Page()
    r = world.make({"heal": bound("heal", heal), "page": bound("page", page)})
    rules = {"hot": Rule("heal", "page")}
    r.handle([transition("pending", "firing", world.clock.t, "0"), transition("pending", "firing", world.clock.t, "1")],
             rules)
    r.wait()
    assert [c.labels["device_id"] for c in heal.calls] == ["0", "1"]
    assert len(page.groups) == 1 and [q.labels["device_id"] for q in page.groups[0]] == ["0", "1"]
    assert page.groups[0][0].next_step == ("running heal now; nothing more: the agent has no further remedy for this "
                                           "alert")
    assert sorted(world.audit()) == [("heal", "run", "success")] * 2 + [("page", "run", "success")]
    assert r.counts[("heal", "success")] == 2
    assert {res.action for res in world.results} == {"heal", "page"}  # observers told of every outcome


def test_a_failing_step_escalates_and_the_message_tells_what_was_done(world: Any) -> None:
    first, second, page = Heal(fail=True), Heal(), Page()
    world.make({"free": bound("free", first), "restart": bound("restart", second), "page": bound("page", page)})
    rules = {"hot": Rule("free", "restart", "page")}
    world.fire(rules)
    assert len(first.calls) == 1 and len(second.calls) == 1
    world.resolve(rules)
    resolved = page.groups[-1][0]
    assert resolved.state == "resolved"
    assert [(h.action, h.outcome) for h in resolved.history] == [("heal", "failure"), ("heal", "success")]
    assert second.reverts and second.reverts[0].labels == {"device_id": "0"}  # undone on resolve
    assert not first.reverts  # it failed: nothing to undo


def test_verify_escalates_an_ineffective_step(world: Any) -> None:
    cheap, strong = Heal(), Heal()
    r = world.make({"cheap": bound("cheap", cheap, verify="2m"), "strong": bound("strong", strong)})
    rules = {"hot": Rule("cheap", "strong")}
    world.fire(rules)
    world.tick(rules, 60)
    assert not strong.calls
    world.tick(rules, 61)  # still firing 2 m after it ran: ineffective
    assert len(strong.calls) == 1
    world.tick(rules, 600)
    assert len(strong.calls) == 1  # no verify on the last step: it is not run again
    del r


def test_cooldown_and_budget_hold_across_episodes_and_restarts(world: Any, tmp_path: Any) -> None:
    heal, page = Heal(), Page()
    actions = {"heal": bound("heal", heal, cooldown="10m", budget={"max": 2, "within": "1h"}),
               "page": bound("page", page)}
    world.make(actions)
    rules = {"hot": Rule("heal", "page2")}
    world.fire(rules)
    world.resolve(rules)
    world.clock.t += 60
    world.fire(rules)  # inside the cooldown: refused, recorded as skipped
    assert len(heal.calls) == 1
    assert world.audit()[-1] == ("heal", "run", "skipped")
    assert "in its cooldown" in world.state.attempts()[-1]["output"]
    world.resolve(rules)
    # a restarted agent has the same memory: a new Remediation on the same database
    world.r.close()
    world.make(actions)
    world.clock.t += 660
    world.fire(rules)
    assert len(heal.calls) == 2
    world.resolve(rules)
    world.clock.t += 660
    world.fire(rules)  # the third run within the hour: the budget is spent
    assert len(heal.calls) == 2
    assert "its budget is spent (2 within 3600s)" in world.state.attempts()[-1]["output"]


def test_a_spent_budget_moves_the_ladder_to_its_next_step(world: Any) -> None:
    free, restart, page = Heal(), Heal(), Page()
    world.make({"free": bound("free", free, budget={"max": 1, "within": "1h"}), "restart": bound("restart", restart),
                "page": bound("page", page)})
    rules = {"hot": Rule("free", "restart", "page")}
    world.fire(rules)
    assert (len(free.calls), len(restart.calls)) == (1, 0)
    world.resolve(rules)
    world.clock.t += 600
    world.fire(rules)  # free's budget is spent: refused, and the next step runs
    assert (len(free.calls), len(restart.calls)) == (1, 1)
    assert [a for a in world.audit() if a[0] != "page"][-2:] == [("free", "run", "skipped"),
                                                                  ("restart", "run", "success")]
    told = page.groups[-1][0]
    assert [(h.action, h.outcome) for h in told.history] == [("free", "skipped")]
    assert told.next_step == "running restart now; nothing more: the agent has no further remedy for this alert"


def test_runs_of_one_action_on_several_targets_each_have_their_own_deadline(world: Any) -> None:
    """The action's context is shared by its runs; the deadline a run sees is the one its own attempt set."""
    started, go = threading.Event(), threading.Event()
    seen: Dict[str, Any] = {}

    class Slow:
        ctx: Any = None

        def run(self, request: ActionRequest) -> ActionResult:
            import time

            device = request.labels["device_id"]
            begun = time.monotonic()
            if device == "0":
                started.set()
                go.wait(10)  # device 1's attempt starts meanwhile
            else:
                go.set()
            end = time.monotonic()
            seen[device] = (self.ctx.remaining(), 30.0 - (end - begun))
            return ActionResult("slow", "success")

        def target(self, request: ActionRequest) -> str:
            return request.labels["device_id"]

    slow = Slow()
    b = bound("slow", slow, timeout="30s")
    slow.ctx = b.ctx
    r = world.make({"slow": b})
    rules = {"hot": Rule("slow")}
    r.handle([transition("pending", "firing", world.clock.t, "0")], rules)
    assert started.wait(10)
    r.handle([transition("pending", "firing", world.clock.t, "1")], rules)
    r.wait()
    for device in "01":
        remaining, at_most = seen[device]
        assert remaining <= at_most, (device, remaining, at_most)  # set no later than its run began


def test_one_action_per_target_at_a_time(world: Any) -> None:
    gate = threading.Event()
    heal = Heal(gate=gate)
    r = world.make({"heal": bound("heal", heal)})
    rules = {"hot": Rule("heal"), "warm": Rule("heal")}
    r.handle([transition("pending", "firing", world.clock.t, "0", rule="hot")], rules)
    r.handle([transition("pending", "firing", world.clock.t, "0", rule="warm")], rules)  # same device: busy
    gate.set()
    r.wait()
    assert len(heal.calls) == 1
    world.tick(rules, 1)  # the target is free again: the waiting step runs now
    assert [c.rule for c in heal.calls] == ["hot", "warm"]


def test_the_breaker_opens_after_too_many_disruptive_actions_and_stays_open(world: Any) -> None:
    restart, page = Heal(), Page()
    actions = {"restart": bound("restart", restart, disruptive=True, escalate="page"), "page": bound("page", page)}
    world.make(actions, breaker={"max": 2, "within": 3600.0})
    rules = {"hot": Rule("restart")}
    for device in "012":
        world.fire(rules, device)
    assert len(restart.calls) == 2
    assert world.state.breaker() is not None
    assert len(page.groups) == 1 and page.groups[0][0].labels == {"device_id": "2"}  # escalated to a person
    world.clock.t += 7200  # the window has passed, but an open breaker stays open
    world.fire(rules, "3")
    assert len(restart.calls) == 2
    assert world.state.reset_breaker()
    world.fire(rules, "4")
    assert len(restart.calls) == 3


def test_dry_run_and_silences(world: Any) -> None:
    heal = Heal()
    r = world.make({"heal": bound("heal", heal)}, dry_run=True)
    rules = {"hot": Rule("heal")}
    world.fire(rules, silenced=True)
    assert heal.calls == []  # a silenced alert triggers nothing
    world.fire(rules)
    assert heal.calls[0].dry_run and world.audit() == [("heal", "run", "dry-run")]
    assert world.state.attempts()[0]["dry_run"] == 1
    world.resolve(rules)
    assert heal.reverts == []  # nothing was changed, so nothing is undone
    del r


def test_ttl_reverts_while_the_alert_still_fires(world: Any) -> None:
    throttle = Heal()
    world.make({"throttle": bound("throttle", throttle, ttl="10m")})
    rules = {"hot": Rule("throttle")}
    world.fire(rules)
    world.tick(rules, 300)
    assert throttle.reverts == []
    world.tick(rules, 301)
    assert len(throttle.reverts) == 1
    world.resolve(rules)
    assert len(throttle.reverts) == 1  # not twice


def test_an_action_that_raises_is_a_failure_in_the_audit(world: Any) -> None:
    class Broken:
        def run(self, request: ActionRequest) -> ActionResult:
            raise RuntimeError("systemctl exploded")

    world.make({"b": bound("b", Broken())})
    world.fire({"hot": Rule("b")})
    row = world.state.attempts()[0]
    assert (row["outcome"], row["output"]) == ("failure", "RuntimeError: systemctl exploded")
    assert row["finished"] is not None and row["duration"] >= 0


def test_storm_an_hour_of_flapping_with_a_failing_restart_stays_within_the_budgets(world: Any) -> None:
    restart, page = Heal(fail=True), Page()
    actions = {"restart": bound("restart", restart, disruptive=True, cooldown="5m",
                                budget={"max": 3, "within": "1h"}, escalate="page"),
               "page": bound("page", page, cooldown="1h")}
    world.make(actions, breaker={"max": 3, "within": 3600.0})
    rules = {"hot": Rule("restart")}
    for minute in range(0, 60, 2):  # fires and resolves every two minutes for an hour
        world.clock.t = 1_700_000_000.0 + minute * 60
        world.fire(rules)
        world.clock.t += 60
        world.resolve(rules)
    runs = [a for a in world.state.attempts(action="restart") if a["outcome"] != "skipped"]
    assert len(runs) <= 3  # the budget, the cooldown and the breaker all hold
    assert len(runs) == 3 and all(a["outcome"] == "failure" for a in runs)
    assert world.state.breaker() is not None
    # the restart failed and escalated to a person once: the page's own cooldown holds back the other 29
    assert len(page.groups) == 1 and page.groups[0][0].history[-1].outcome == "failure"
    assert sum(1 for a in world.state.attempts(action="page") if a["outcome"] == "skipped") == 29


def test_history_and_breaker_commands_read_the_state(world: Any, tmp_path: Any, capsys: pytest.CaptureFixture) -> None:
    from npuagent import cli

    heal = Heal(fail=True)
    world.make({"heal": bound("heal", heal)})
    world.fire({"hot": Rule("heal")})
    world.state.audit_intent(world.clock.t, "hot", {"device_id": "9"}, "heal", "device9", "run", True, False)
    world.state.open_breaker(world.clock.t, "3 disruptive actions within 3600s")
    config = tmp_path / "npuagent.toml"
    config.write_text(f'[agent]\nstate_dir = "{tmp_path}"\n')
    assert cli.main(["history", "-c", str(config)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["WHEN", "RULE", "LABELS"]
    assert "failure" in out[1] and "interrupted" in out[2]  # an intent without outcome: the agent died
    assert cli.main(["history", "-c", str(config), "--json", "--rule", "hot"]) == 0
    assert '"target": "device9"' in capsys.readouterr().out
    assert cli.main(["breaker", "status", "-c", str(config)]) == 0
    assert "3 disruptive actions within 3600s" in capsys.readouterr().out
    assert cli.main(["breaker", "reset", "-c", str(config)]) == 0
    assert world.state.breaker() is None
