"""The alert engine: every transition, timing to one evaluation step, hysteresis, missing series,
silences, templates, persistence and reload."""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

import pytest

from npuagent import config, hookimpl
from npuagent.model import ActionType, MetricSpec, RuleType
from npuagent.options import Number, Option, validate_table
from npuagent.rules import (
    FIRING,
    INACTIVE,
    PENDING,
    RESOLVING,
    RULE_COMMON,
    CompiledRule,
    Engine,
    Verdict,
    compile_rules,
    digest,
    template_fields,
)
from npuagent.state import State

from .conftest import make_plugins


class Scripted:
    """A rule type whose values the test sets: ``values[labels] = v``; fire above, clear below."""

    def __init__(self, ctx: Any) -> None:
        self.o = ctx.options
        self.values: Dict[tuple, Optional[float]] = {}

    def evaluate(self, ctx: Any) -> List[Verdict]:
        out = []
        for labels, v in self.values.items():
            if v is None:
                continue
            fire = v > self.o["above"]
            clear = v < self.o["clear_below"] if self.o["clear_below"] is not None else not fire
            out.append(Verdict(dict(labels), v, fire, clear))
        return out

    def template_fields(self) -> set:
        return {"device_id"}

    def metrics(self) -> Sequence[str]:
        return [self.o["metric"]] if self.o["metric"] else []


class ScriptedPlugin:
    @hookimpl
    def npuagent_action_types(self) -> list:
        return [ActionType("note", lambda ctx: None)]

    @hookimpl
    def npuagent_rule_types(self) -> list:
        return [RuleType("scripted", Scripted, options=[
            Option("above", Number(), 80.0), Option("clear_below", Number(), None),
            Option("metric", config.String(), "")])]


def rule(name: str = "hot", **options: Any) -> CompiledRule:
    values, errors = validate_table({"name": name, "type": "scripted", **options},
                                    (*RULE_COMMON, *ScriptedPlugin().npuagent_rule_types()[0].options))
    assert not errors, errors
    ctx = type("Ctx", (), {"options": values})()
    return CompiledRule(name, "scripted", values, Scripted(ctx), digest("scripted", values))


DEV0 = (("device_id", "0"),)


def run(engine: Engine, r: CompiledRule, series: Sequence[Optional[float]], step: float = 10.0,
        start: float = 1000.0, labels: tuple = DEV0) -> List[tuple]:
    """Feed one value per evaluation; return (time, previous, state) of every transition."""
    out = []
    for n, v in enumerate(series):
        r.impl.values[labels] = v
        now = start + n * step
        out += [(t.at - start, t.previous, t.state) for t in engine.evaluate(now, store=None)]
    return out


def test_inactive_pending_firing_resolving_inactive_each_at_its_step() -> None:
    r = rule(**{"for": "30s", "clear_for": "20s", "clear_below": 75})
    e = Engine([r], started=0)
    got = run(e, r, [70, 85, 85, 85, 85, 70, 70, 70])
    assert got == [(10, INACTIVE, PENDING),     # fire condition first seen
                   (40, PENDING, FIRING),       # held 30s: fires at exactly that step, not one later
                   (50, FIRING, RESOLVING),     # below 75: clear condition
                   (70, RESOLVING, INACTIVE)]   # held 20s
    assert r.instances == {}  # nothing kept for a series that is fine


def test_for_zero_fires_at_once_and_clear_for_zero_resolves_at_once() -> None:
    r = rule()
    got = run(Engine([r], started=0), r, [90, 90, 50])
    assert got == [(0, INACTIVE, FIRING), (20, FIRING, INACTIVE)]


def test_pending_that_drops_is_reset_and_starts_its_timer_again() -> None:
    r = rule(**{"for": "30s"})
    got = run(Engine([r], started=0), r, [90, 90, 50, 90, 90, 90, 90])
    assert got == [(0, INACTIVE, PENDING), (20, PENDING, INACTIVE), (30, INACTIVE, PENDING), (60, PENDING, FIRING)]


def test_resolving_returns_to_firing_when_the_clear_condition_breaks() -> None:
    r = rule(**{"clear_for": "30s", "clear_below": 75})
    e = Engine([r], started=0)
    got = run(e, r, [90, 70, 70, 78, 70, 70, 70, 70])
    # 78 is in the band: not clear, so the resolving alert goes back to firing, and later resolves for real
    assert got == [(0, INACTIVE, FIRING), (10, FIRING, RESOLVING), (30, RESOLVING, FIRING),
                   (40, FIRING, RESOLVING), (70, RESOLVING, INACTIVE)]


def test_hysteresis_an_hour_of_oscillation_between_the_thresholds_fires_once() -> None:
    r = rule(**{"for": "1m", "clear_below": 75})
    e = Engine([r], started=0)
    # one minute above 80 to fire, then an hour swinging between 76 and 84, every 10 s
    series = [85.0] * 7 + [80 + 4 * math.sin(n / 3.0) for n in range(360)]
    assert min(series[7:]) > 75 and max(series[7:]) > 80
    got = run(e, r, series)
    assert got == [(0, INACTIVE, PENDING), (60, PENDING, FIRING)]
    # without the band (clear = not fire), the same signal flaps
    flappy = rule(name="flappy", **{"for": "0s"})
    flaps = run(Engine([flappy], started=0), flappy, series)
    assert sum(1 for *_x, state in flaps if state == FIRING) > 20


def test_a_silenced_alert_still_changes_state_but_says_so() -> None:
    from npuagent.rules import Silence

    r = rule()
    e = Engine([r], started=0)
    e.silences = [Silence(1, None, {"device_id": "0"}, 0, 10_000, "maintenance")]
    r.impl.values[(("device_id", "0"),)] = 90
    r.impl.values[(("device_id", "1"),)] = 90
    transitions = e.evaluate(1000, None)
    assert {t.labels["device_id"]: t.silenced for t in transitions} == {"0": True, "1": False}
    assert all(t.state == FIRING for t in transitions)
    e.silences = [Silence(2, "other-rule", {}, 0, 10_000, "")]
    r.impl.values[(("device_id", "2"),)] = 90
    assert [t.silenced for t in e.evaluate(1010, None)] == [False]


@pytest.mark.parametrize("how,expected", [
    ("resolve", [(0, INACTIVE, FIRING), (60, FIRING, INACTIVE)]),
    ("keep", [(0, INACTIVE, FIRING)]),
])
def test_missing_series_wait_stale_after_then_follow_on_missing(how: str, expected: list) -> None:
    r = rule(on_missing=how, stale_after="1m")
    got = run(Engine([r], started=0), r, [90, None, None, None, None, None, None, None, None])
    assert got == expected  # last seen at 0: missing once 60s have passed (left-open, as Prometheus 3)


def test_on_missing_fire_fires_a_pending_alert_whose_series_vanished() -> None:
    r = rule(on_missing="fire", stale_after="20s", **{"for": "30s"})
    got = run(Engine([r], started=0), r, [90, None, None, None, None])
    assert got == [(0, INACTIVE, PENDING), (30, PENDING, FIRING)]


def test_missing_is_counted_from_the_agents_start_too() -> None:
    """A restarted agent does not resolve alerts because its collectors have not answered yet."""
    r = rule(stale_after="1m")
    e = Engine([r], started=0)
    run(e, r, [90])
    restarted = Engine([r], started=5000)
    restarted.rules["hot"].instances = r.instances
    r.impl.values.clear()
    assert restarted.evaluate(5030, None) == []
    assert [t.state for t in restarted.evaluate(5061, None)] == [INACTIVE]


def test_annotations_are_rendered_templates() -> None:
    r = rule(summary="NPU {device_id} at {value:.0f} °C ({severity}, {rule})", description="{nolabel}|")
    r.impl.values[DEV0] = 91.4
    (t,) = Engine([r], started=0).evaluate(1000, None)
    assert t.annotations == {"summary": "NPU 0 at 91 °C (warning, hot)", "description": "|"}


def test_state_survives_a_restart_and_a_changed_rule_forgets_it(tmp_path: Any) -> None:
    path = str(tmp_path / "state.db")
    r = rule(**{"for": "30s"})
    e = Engine([r], State(path), started=0)
    run(e, r, [90, 90])  # pending since 1000
    again = rule(**{"for": "30s"})
    e2 = Engine([again], State(path), started=2000)
    inst = again.instances[DEV0]
    assert (inst.state, inst.active_at) == (PENDING, 1000)  # the timer resumes where it was
    again.impl.values[DEV0] = 90
    assert [(t.previous, t.state) for t in e2.evaluate(1030, None)] == [(PENDING, FIRING)]
    third = rule(**{"for": "30s"})
    e3 = Engine([third], State(path), started=3000)
    assert third.instances[DEV0].state == FIRING
    third.impl.values[DEV0] = 95
    assert e3.evaluate(3010, None) == []  # never fires twice
    changed = rule(**{"for": "45s"})
    Engine([changed], State(path), started=4000)
    assert changed.instances == {}
    assert State(path).load_alerts() == []  # forgotten in the database too


def test_reload_keeps_the_state_of_unchanged_rules_only() -> None:
    a, b = rule("a"), rule("b")
    old = Engine([a, b], started=0)
    a.impl.values[DEV0] = 90
    b.impl.values[DEV0] = 90
    old.evaluate(1000, None)
    a2, b2 = rule("a"), rule("b", above=85)
    new = Engine([a2, b2], started=0)
    new.adopt(old)
    assert a2.instances[DEV0].state == FIRING and b2.instances == {}


def test_silences_in_the_state_database_reach_a_running_engine(tmp_path: Any) -> None:
    path = str(tmp_path / "state.db")
    r = rule()
    e = Engine([r], State(path), started=0)
    cli_side = State(path)  # another process: `npuagent silence`
    sid = cli_side.add_silence("hot", {"device_id": "0"}, 0, 10_000, "fan swap", "ops")
    r.impl.values[DEV0] = 90
    (t,) = e.evaluate(1000, None)
    assert t.silenced and [s.id for s in e.silences] == [sid]
    assert cli_side.remove_silence(sid, now=1005) and not cli_side.remove_silence(sid, now=1006)
    e.evaluate(1010, None)
    assert e.silences == []
    with pytest.raises(ValueError):
        cli_side.add_silence(None, {}, 0, 10, "everything", "ops")


def test_a_rule_that_raises_keeps_its_alerts_and_the_others_go_on() -> None:
    a, b = rule("a"), rule("b")
    e = Engine([a, b], started=0)
    a.impl.values[DEV0] = b.impl.values[DEV0] = 90
    e.evaluate(1000, None)

    def boom(ctx: Any) -> list:
        raise RuntimeError("store on fire")

    a.impl.evaluate = boom
    b.impl.values[DEV0] = 50
    assert [(t.rule, t.state) for t in e.evaluate(1010, None)] == [("b", INACTIVE)]
    assert a.instances[DEV0].state == FIRING and a.failures == 1 and "store on fire" in a.last_error


def test_template_fields_parse() -> None:
    assert template_fields("NPU {device_id} at {value:.0f} {labels[x]} {{literal}}") == {"device_id", "value",
                                                                                      "labels"}
    with pytest.raises(ValueError):
        template_fields("{}")
    with pytest.raises(ValueError):
        template_fields("unclosed {value")


def _compile(tmp_path: Any, text: str, metrics: Optional[Dict[str, MetricSpec]] = None) -> List[CompiledRule]:
    plugins = make_plugins(ScriptedPlugin())
    (tmp_path / "r.toml").write_text(text)
    cfg = config.build(config.read_sources(str(tmp_path / "r.toml"), strict=False), plugins)
    return compile_rules(cfg, plugins, metrics or {})


def test_templates_actions_metrics_are_checked_at_load_with_file_and_line(tmp_path: Any) -> None:
    text = (
        '[[rules]]\n'
        'name = "hot"\n'
        'type = "scripted"\n'
        'summary = "NPU {devce_id} at {value:.0f}"\n'      # line 4
        'description = "broken {"\n'                       # line 5
        'actions = ["pager"]\n'                            # line 6
        'metric = "npu_temprature_celsius"\n'              # line 7
        '[actions.page]\n'
        'type = "note"\n'
    )
    plugins_text = str(tmp_path / "r.toml")
    with pytest.raises(config.ConfigError) as e:
        _compile(tmp_path, text, {"npu_temperature_celsius": MetricSpec("npu_temperature_celsius")})
    message = str(e.value)
    assert f'{plugins_text}:4: rules[0].summary: unknown field {{devce_id}} (did you mean "device_id"?)' in message
    assert f"{plugins_text}:5: rules[0].description: not a valid template" in message
    assert f"{plugins_text}:6: rules[0].actions: unknown action 'pager' (did you mean \"page\"?)" in message
    assert (f"{plugins_text}:7: rules[0].metric: unknown metric 'npu_temprature_celsius' "
            f'(did you mean "npu_temperature_celsius"?)') in message
    # a metric of a family nobody declares (a scraped server's) is not second-guessed
    assert _compile(tmp_path, '[[rules]]\nname = "q"\ntype = "scripted"\nmetric = "vllm:num_requests_waiting"\n',
                    {"npu_temperature_celsius": MetricSpec("npu_temperature_celsius")})


def test_rules_test_command_passes_on_every_shipped_rule_test() -> None:
    """`npuagent rules test tests/rules/*.toml`, as an operator runs it, in the test suite."""
    import glob
    import os
    import subprocess
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    files = sorted(glob.glob(os.path.join(here, "rules", "*.toml")))
    assert files
    result = subprocess.run([sys.executable, "-m", "npuagent", "rules", "test", *files], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1].startswith("PASSED: ")
