"""More of remediation: a per-action dry run beside actions that act, and `npuagent history --since`.

Same parts as test_remediation.py (a real state database, scripted actions, a simulated clock), whose helpers
this file uses.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from npuagent import cli

from . import test_remediation as base
from .test_remediation import Heal, Page, Rule, bound, transition

world = base.world  # the fixture, shared


def test_a_per_action_dry_run_only_says_what_it_would_do_while_the_other_actions_act(world: Any) -> None:
    """``dry_run = true`` on one action, the agent-wide one off: that action rehearses, the others act."""
    restart, free, page, page_dry = Heal(), Heal(), Page(), Page()
    r = world.make({"restart": bound("restart", restart, disruptive=True, dry_run=True),
                    "free": bound("free", free),
                    "page": bound("page", page),
                    "page-dry": bound("page-dry", page_dry, dry_run=True)},
                   breaker={"max": 1, "within": 3600.0})
    assert r.dry_run is False
    rules = {"hot": Rule("restart", "page", "page-dry"), "warm": Rule("free")}
    world.fire(rules, "0")
    r.handle([transition("pending", "firing", world.clock.t, "1", rule="warm")], rules)
    r.wait()
    assert [c.dry_run for c in restart.calls] == [True]
    assert [c.dry_run for c in free.calls] == [False]
    assert [q.dry_run for g in page.groups for q in g] == [False]
    assert [q.dry_run for g in page_dry.groups for q in g] == [True]
    rows = {a["action"]: (a["outcome"], a["dry_run"]) for a in world.state.attempts()}
    assert rows == {"restart": ("dry-run", 1), "free": ("success", 0), "page": ("success", 0),
                    "page-dry": ("success", 1)}

    world.resolve(rules, "0")
    r.handle([transition("firing", "inactive", world.clock.t, "1", rule="warm")], rules)
    r.wait()
    assert restart.reverts == []  # it changed nothing, so nothing is undone
    assert [q.labels for q in free.reverts] == [{"device_id": "1"}]  # the real one is

    # a rehearsal is not a disruption: the breaker (1 within the hour) neither counts nor stops it
    for device in "234":
        world.fire(rules, device)
    assert [c.dry_run for c in restart.calls] == [True] * 4
    assert world.state.breaker() is None and world.state.attempts(disruptive=True) == []
    world.state.open_breaker(world.clock.t, "opened by hand")
    world.fire(rules, "5")
    assert len(restart.calls) == 5 and world.state.attempts(action="restart")[-1]["outcome"] == "dry-run"
    assert r.counts[("restart", "dry-run")] == 5
    assert r.counts[("free", "success")] == 2  # its run and its revert


def test_history_since_shows_only_the_attempts_of_that_last_while(world: Any, tmp_path: Any,
                                                                   capsys: pytest.CaptureFixture) -> None:
    """``--since`` counts back from the wall clock: ``npuagent history`` is run by a person, now."""
    heal = Heal()
    world.make({"heal": bound("heal", heal)})
    rules = {"hot": Rule("heal"), "warm": Rule("heal")}
    world.clock.t = time.time() - 2 * 3600  # two hours ago
    world.fire(rules, "0")
    world.clock.t = time.time() - 60  # a minute ago
    world.fire(rules, "1")
    world.r.handle([transition("pending", "firing", world.clock.t, "2", rule="warm")], rules)
    world.r.wait()
    assert len(heal.calls) == 3
    config = tmp_path / "npuagent.toml"
    config.write_text(f'[agent]\nstate_dir = "{tmp_path}"\n')

    def history(*args: str) -> Any:
        assert cli.main(["history", "-c", str(config), *args]) == 0
        return capsys.readouterr().out

    recent = json.loads(history("--since", "1h", "--json"))
    assert [(a["rule"], a["labels"]) for a in recent] == [("hot", {"device_id": "1"}), ("warm", {"device_id": "2"})]
    table = history("--since", "1h").splitlines()
    assert table[0].split()[:3] == ["WHEN", "RULE", "LABELS"]
    assert [line.split()[2:4] for line in table[1:]] == [["hot", "device_id=1"], ["warm", "device_id=2"]]
    assert [a["labels"]["device_id"] for a in json.loads(history("--since", "3h", "--json"))] == ["0", "1", "2"]
    assert [a["labels"]["device_id"] for a in json.loads(history("--json"))] == ["0", "1", "2"]
    assert [a["labels"]["device_id"] for a in json.loads(history("--since", "1h", "--rule", "hot", "--json"))] == ["1"]
    assert json.loads(history("--since", "30s", "--json")) == []  # the latest is a minute old

    assert cli.main(["history", "-c", str(config), "--since", "a while"]) == 2
    assert capsys.readouterr().err.startswith("--since: ")
