"""`npuagent rules test` and `npuagent rules export`: the notation, the simulation, the diff on failure,
invalid files, the Prometheus export, and the cross-check of both against Prometheus itself (promtool)."""

from __future__ import annotations

import glob
import io
import math
import os
import re
import shutil
import subprocess
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import pytest

from npuagent import export, hookimpl, rulestest
from npuagent.model import CollectorType, MetricSpec, RuleType
from npuagent.options import Option, String
from npuagent.rules import FIRING, PENDING, RESOLVING, compile_rules

from .conftest import ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python < 3.11
    import tomli as tomllib

SHIPPED = os.path.join(ROOT, "etc", "npuagent.toml")
RULE_TESTS = sorted(glob.glob(os.path.join(ROOT, "tests", "rules", "*.toml")))
CROSSCHECK = os.path.join(ROOT, "tests", "promtool", "crosscheck.toml")
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian package prometheus) is not installed")

STALE = rulestest.STALE
NAN = object()  # stands for NaN in expected value lists (NaN != NaN)


# -- the shipped rules and their tests ------------------------------------------------------------------------


def test_the_shipped_rules_pass_their_tests() -> None:
    out = io.StringIO()
    status = rulestest.run(RULE_TESTS, out)
    assert status == 0, out.getvalue()
    assert out.getvalue().splitlines()[-1].startswith("PASSED: ")


def test_every_shipped_rule_has_a_test() -> None:
    """A rule added to etc/npuagent.toml without a case in tests/rules fails here."""
    with open(SHIPPED, "rb") as f:
        shipped = {r["name"] for r in tomllib.load(f).get("rules", [])}
    tested = set()
    for path in RULE_TESTS:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
        assert any(os.path.abspath(os.path.join(os.path.dirname(path), r)) == SHIPPED for r in doc["rule_files"])
        tested |= {a["rule"] for t in doc.get("tests", []) for a in t.get("alert_rule_test", [])}
    assert len(shipped) >= 21
    assert sorted(shipped - tested) == []


# -- the notation ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text,expected", [
    ("1 2 3", [1, 2, 3]),
    ("1+2x3", [1, 3, 5, 7]),
    ("-2+4x3", [-2, 2, 6, 10]),
    ("1-2x4", [1, -1, -3, -5, -7]),
    ("1x4", [1, 1, 1, 1, 1]),
    ("5x0", [5]),
    ("0.1+0.1x2", [0.1, 0.2, 0.1 + 2 * 0.1]),
    ("_", [None]),
    ("_x3", [None, None, None]),
    ("_x0 1", [1]),
    ("1 _x3 stale", [1, None, None, None, STALE]),
    ("stalex2", [STALE, STALE, STALE]),
    ("Inf -Inf +Inf inf", [math.inf, -math.inf, math.inf, math.inf]),
    ("NaN nan", [NAN, NAN]),
    ("1e3 1.5e-3 -2E+2 .5 5. +7", [1000, 0.0015, -200, 0.5, 5, 7]),
    ("1e3x2", [1000, 1000, 1000]),
    ("1e3+1e3x2", [1000, 2000, 3000]),
    ("0x3", [0, 0, 0, 0]),  # not hexadecimal: promtool refuses hex in series values too
    ("  1\t2\n3  ", [1, 2, 3]),
])
def test_values_notation(text: str, expected: List[Any]) -> None:
    got = rulestest.parse_values(text)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        if e is NAN:
            assert isinstance(g, float) and math.isnan(g)
        elif e is None or e is STALE:
            assert g is e
        else:
            assert g == pytest.approx(e, rel=1e-12)


@pytest.mark.parametrize("text,message", [
    ("", 'no values: expected values such as "1 2 3", "0+10x5", "_x3" or "stale"'),
    ("1 abc", 'value 2 "abc": expected a number (1, -2.5, 1e3, Inf, NaN), a+bxn, a-bxn, axn, _, _xn or stale'),
    ("1+2", 'value 1 "1+2": expected a number'),
    ("1x", 'value 1 "1x": expected a number'),
    ("1+2xn", 'value 1 "1+2xn": expected a number'),
    ("_+1x2", 'value 1 "_+1x2": expected a number'),
    ("stale+1x2", 'value 1 "stale+1x2": expected a number'),
    ("1,2", 'value 1 "1,2": expected a number'),
    ("0x1F", 'value 1 "0x1F": expected a number'),
    ("1 2 3x1000000", 'value 3 "3x1000000": expands to more than 1000000 values'),
])
def test_values_notation_errors(text: str, message: str) -> None:
    with pytest.raises(rulestest.NotationError) as e:
        rulestest.parse_values(text)
    assert str(e.value).startswith(message)


@pytest.mark.parametrize("text,name,labels", [
    ("up", "up", {}),
    ("up{}", "up", {}),
    ('npu_temperature_celsius{device_id="0",npu_id="0",chip_id="0"}', "npu_temperature_celsius",
     {"device_id": "0", "npu_id": "0", "chip_id": "0"}),
    ('  m { a = "1" , b="2", }  ', "m", {"a": "1", "b": "2"}),
    ('{__name__="m", a="1"}', "m", {"a": "1"}),
    ('m{a="q\\"uote", b="back\\\\slash", c="new\\nline", d="\\u00e9", e="tab\\t"}', "m",
     {"a": 'q"uote', "b": "back\\slash", "c": "new\nline", "d": "é", "e": "tab\t"}),
    ("m{a='single \"x\"', b=`raw \\n`}", "m", {"a": 'single "x"', "b": "raw \\n"}),
    ('ns:m_total{le="+Inf"}', "ns:m_total", {"le": "+Inf"}),
])
def test_series_selector(text: str, name: str, labels: Dict[str, str]) -> None:
    assert rulestest.parse_series(text) == (name, labels)
    assert rulestest.parse_series(rulestest.format_series(name, labels)) == (name, labels)


@pytest.mark.parametrize("text,message", [
    ("", "expected a series such as"),
    ('m{a=~"1"}', 'only "=" is allowed in a series (not "=~") at character 4 of \'m{a=~"1"}\''),
    ('m{a="1"', 'expected "," or "}" at character 8'),
    ('m{a="1', "unterminated label value at character 5"),
    ('m{1a="x"}', "expected a label name at character 3"),
    ('{a="1"}', "no metric name in"),
    ('m{a="1",a="2"}', "label a given twice"),
    ("m{a=1}", "expected a quoted label value at character 5"),
    ('m{a="1"} extra', "unexpected text after the labels"),
    ("m extra", 'expected "{" or the end at character 3'),
    ('m{a="\\q"}', "unknown escape \\q"),
    ('m{__name__="n"}', "two names in"),
])
def test_series_selector_errors(text: str, message: str) -> None:
    with pytest.raises(rulestest.NotationError) as e:
        rulestest.parse_series(text)
    assert message in str(e.value)


# -- running test files ---------------------------------------------------------------------------------------

HOT = '''\
[[rules]]
name = "hot"
type = "threshold"
metric = "temp"
above = 80
for = "1m"
summary = "NPU {device_id} at {value:.0f}"
'''


def run_files(tmp_path: Any, rules: str, test: str, load_plugins: Optional[Callable[..., Any]] = None
              ) -> Tuple[int, str, str]:
    (tmp_path / "rules.toml").write_text(rules)
    path = tmp_path / "t.toml"
    path.write_text(test)
    out = io.StringIO()
    status = rulestest.run([str(path)], out, load_plugins)
    return status, out.getvalue(), str(path)


WRONG = '''\
rule_files = ["rules.toml"]

[[tests]]
name = "wrong on purpose"
interval = "15s"
[[tests.input_series]]
series = 'temp{device_id="0"}'
values = "90x10"
[[tests.input_series]]
series = 'temp{device_id="1"}'
values = "70x10"
[[tests.alert_rule_test]]
eval_time = "30s"
rule = "hot"
[[tests.alert_rule_test.exp_alerts]]
labels = { device_id = "0" }
[[tests.alert_rule_test]]
eval_time = "1m"
rule = "hot"
[[tests.alert_rule_test.exp_alerts]]
labels = { device_id = "0" }
annotations = { summary = "NPU 0 at 91" }
[[tests.alert_rule_test.exp_alerts]]
labels = { device_id = "1" }
state = "pending"
[[tests.alert_rule_test]]
eval_time = "2m"
rule = "hot"
[[tests.alert_rule_test.exp_alerts]]
labels = { device_id = "0" }
'''


def test_a_wrong_expectation_gives_exit_1_and_a_readable_diff(tmp_path: Any) -> None:
    status, out, path = run_files(tmp_path, HOT, WRONG)
    assert status == 1
    assert out == f'''\
{path}: FAILED 1 of 1 test (2 of 3 expectations)
  test "wrong on purpose", rule hot, eval_time 30s (line 14):
    expected:
      - {{device_id="0"}} firing
    got:
      + {{device_id="0"}} pending  value=90  summary="NPU 0 at 90"
  test "wrong on purpose", rule hot, eval_time 1m (line 19):
    expected:
      - {{device_id="0"}} firing  summary="NPU 0 at 91"
      - {{device_id="1"}} pending
    got:
      + {{device_id="0"}} firing  value=90  summary="NPU 0 at 90"
FAILED: 1 of 1 test failed (2 of 3 expectations), in 1 file
'''


def test_no_alert_expected_and_one_unexpected(tmp_path: Any) -> None:
    test = WRONG.split("[[tests.alert_rule_test]]")[0] + '[[tests.alert_rule_test]]\neval_time = "5m"\nrule = "hot"\n'
    status, out, _path = run_files(tmp_path, HOT, test)
    assert status == 1
    assert '''\
    expected:
        (no alert)
    got:
      + {device_id="0"} firing  value=90  summary="NPU 0 at 90"
''' in out


RESOLVING_RULES = '''\
[[rules]]
name = "hot"
type = "threshold"
metric = "temp"
above = 80
for = "30s"
clear_for = "1m"
labels = { team = "ml" }
runbook = "https://runbooks.example/hot"
summary = "{device_id} {value:.0f} {team}"
'''

SEMANTICS = '''\
rule_files = ["rules.toml"]
evaluation_interval = "10s"

[[tests]]
interval = "20s"
[[tests.input_series]]
# 0s 90, 20s 90, 40s 90, 60s 70, 80s 70, 100s 90, 120s 70 ... 200s 70; samples every 20s, evaluations every 10s
series = 'temp{device_id="0"}'
values = "90x2 70 70 90 70x5"
[[tests.alert_rule_test]]
eval_time = "25s"              # between two evaluations: the state of the one at 20s
rule = "hot"
[[tests.alert_rule_test.exp_alerts]]
labels = { device_id = "0", team = "ml" }     # the rule's labels table is part of the alert's labels
state = "pending"
[[tests.alert_rule_test]]
eval_time = "30s"
rule = "hot"
[[tests.alert_rule_test.exp_alerts]]
labels = { device_id = "0", team = "ml" }
annotations = { summary = "0 90 ml", runbook = "https://runbooks.example/hot" }
[[tests.alert_rule_test]]
eval_time = "1m"
rule = "hot"
[[tests.alert_rule_test.exp_alerts]]
labels = { device_id = "0", team = "ml" }
state = "resolving"
annotations = { summary = "0 70 ml" }
[[tests.alert_rule_test]]
eval_time = "1m40s"            # above 80 again while resolving: back to firing, the clear_for timer starts over
rule = "hot"
[[tests.alert_rule_test.exp_alerts]]
labels = { device_id = "0", team = "ml" }
[[tests.alert_rule_test]]
eval_time = "2m50s"
rule = "hot"
[[tests.alert_rule_test.exp_alerts]]
labels = { device_id = "0", team = "ml" }
state = "resolving"
[[tests.alert_rule_test]]
eval_time = "3m"
rule = "hot"
'''


def test_simulation_semantics_resolving_rule_labels_and_times_between_evaluations(tmp_path: Any) -> None:
    status, out, _path = run_files(tmp_path, RESOLVING_RULES, SEMANTICS)
    assert status == 0, out
    assert out.endswith("PASSED: 1 test, 6 expectations, in 1 file\n")


def test_gaps_and_stale_give_no_sample(tmp_path: Any) -> None:
    rules = HOT.replace('for = "1m"\n', "")
    test = '''\
rule_files = ["rules.toml"]
evaluation_interval = "1m"
[[tests]]
[[tests.input_series]]
series = 'temp{device_id="0"}'
values = "90 stale _x6 90"
[[tests.input_series]]
series = 'temp{device_id="1"}'
values = "90 _x7 90"
[[tests.alert_rule_test]]
eval_time = "4m"               # 0 ended at 1m (a staleness marker: cleared); 1 has no news, held
rule = "hot"
[[tests.alert_rule_test.exp_alerts]]
labels = { device_id = "1" }
[[tests.alert_rule_test]]
eval_time = "7m"               # 1: no verdict since 5m, missing for stale_after, then resolved... not yet
rule = "hot"
[[tests.alert_rule_test.exp_alerts]]
labels = { device_id = "1" }
[[tests.alert_rule_test]]
eval_time = "8m"               # new samples at 8m: 0 fires again, 1 never resolved
rule = "hot"
[[tests.alert_rule_test.exp_alerts]]
labels = { device_id = "0" }
[[tests.alert_rule_test.exp_alerts]]
labels = { device_id = "1" }
'''
    status, out, _path = run_files(tmp_path, rules, test)
    assert status == 0, out


class Boom:
    """A rule type that raises at every evaluation."""

    @hookimpl
    def npuagent_rule_types(self) -> List[RuleType]:
        class Impl:
            def __init__(self, ctx: Any) -> None:
                pass

            def evaluate(self, ctx: Any) -> list:
                raise RuntimeError("kaput")

        return [RuleType("boom", Impl, options=[Option("note", String(), "")])]


def with_plugins(*extra: Any) -> Callable[[Sequence[str]], Any]:
    def load(disabled: Sequence[str]) -> Any:
        plugins = rulestest.default_plugins(disabled)
        for n, obj in enumerate(extra):
            plugins.register(obj, f"test-extra-{n}")
        return plugins
    return load


def test_a_rule_that_raises_fails_the_test_once_with_its_error(tmp_path: Any) -> None:
    rules = '[[rules]]\nname = "b"\ntype = "boom"\n'
    test = ('rule_files = ["rules.toml"]\n[[tests]]\nname = "x"\n[[tests.alert_rule_test]]\neval_time = "3m"\n'
            'rule = "b"\n')
    status, out, path = run_files(tmp_path, rules, test, with_plugins(Boom()))
    assert status == 1
    assert out.splitlines() == [
        f"{path}: FAILED 1 of 1 test (0 of 1 expectation)",
        '  test "x": rule b raised at 0s: RuntimeError: kaput (and at 3 later evaluations)',
        "FAILED: 1 of 1 test failed (0 of 1 expectation), in 1 file",
    ]


def test_several_rule_files_and_an_action_they_reference(tmp_path: Any) -> None:
    (tmp_path / "more.toml").write_text(
        '[[rules]]\nname = "cold"\ntype = "threshold"\nmetric = "temp"\nbelow = 10\nactions = ["page"]\n'
        '[actions.page]\ntype = "note"\n'
        '[collectors.nonexistent]\ninterval = "1s"\n'  # not a rule's business: ignored
    )

    class Note:
        @hookimpl
        def npuagent_action_types(self) -> list:
            from npuagent.model import ActionType

            return [ActionType("note", lambda ctx: None)]

    test = '''\
rule_files = ["rules.toml", "more.toml"]
[[tests]]
[[tests.input_series]]
series = 'temp{device_id="0"}'
values = "5 90 90"
[[tests.alert_rule_test]]
eval_time = "0s"
rule = "cold"
[[tests.alert_rule_test.exp_alerts]]
labels = { device_id = "0" }
[[tests.alert_rule_test]]
eval_time = "1m"
rule = "hot"
[[tests.alert_rule_test.exp_alerts]]
labels = { device_id = "0" }
state = "pending"
'''
    status, out, _path = run_files(tmp_path, HOT, test, with_plugins(Note()))
    assert status == 0, out


@pytest.mark.parametrize("test,problem", [
    ('rule_file = ["rules.toml"]\n',
     ['t.toml:1: missing required key "rule_files" (an array, each item a string)',
      't.toml:1: rule_file: unknown key (did you mean "rule_files"?)']),
    ('rule_files = ["rules.toml"]\nevaluation_interval = 15\n',
     ['t.toml:2: evaluation_interval: expected a duration such as "30s", "5m" or "1h30m", got an integer 15 '
      '(write "15s" for seconds)']),
    ('rule_files = ["rules.toml"]\n[[tests]\n', ["t.toml:2: TOML syntax error: "]),
    # the second test's first series: item 0 of tests[1], on its own line
    ('rule_files = ["rules.toml"]\n[[tests]]\n[[tests.input_series]]\nseries = "temp"\nvalues = "1"\n'
     '[[tests]]\n[[tests.input_series]]\nseries = "temp"\nvalues = "1 1+2"\n',
     ['t.toml:9: tests[1].input_series[0].values: value 2 "1+2": expected a number (1, -2.5, 1e3, Inf, NaN), '
      "a+bxn, a-bxn, axn, _, _xn or stale"]),
    ('rule_files = ["rules.toml"]\n[[tests]]\n[[tests.input_series]]\nseries = \'temp{a=~"1"}\'\nvalues = "1"\n',
     ['t.toml:4: tests[0].input_series[0].series: only "=" is allowed in a series (not "=~") at character 7 of '
      '\'temp{a=~"1"}\'']),
    ('rule_files = ["rules.toml"]\n[[tests]]\n[[tests.input_series]]\nseries = "temp"\nvalues = "1"\n'
     '[[tests.input_series]]\nseries = "temp{}"\nvalues = "2"\n',
     ["t.toml:7: tests[0].input_series[1].series: series temp is already given at line 4"]),
    ('rule_files = ["rules.toml"]\n[[tests]]\n[[tests.alert_rule_test]]\neval_time = "1m"\nrule = "hto"\n',
     ["t.toml:5: tests[0].alert_rule_test[0].rule: no rule named 'hto' in the rule files (did you mean \"hot\"?)"]),
    ('rule_files = ["rules.toml"]\n[[tests]]\n[[tests.alert_rule_test]]\neval_time = "1m"\nrule = "hot"\n'
     '[[tests.alert_rule_test.exp_alerts]]\nlabels = { a = "1" }\nstate = "fired"\n',
     ['t.toml:8: tests[0].alert_rule_test[0].exp_alerts[0].state: expected one of "pending", "firing", '
      '"resolving", got \'fired\'']),
    ('rule_files = ["rules.toml"]\n[[tests]]\n[[tests.alert_rule_test]]\neval_time = "1m"\nrule = "hot"\n'
     '[[tests.alert_rule_test.exp_alerts]]\nlabels = { a = "1" }\n'
     '[[tests.alert_rule_test.exp_alerts]]\nlabels = { a = "1" }\nstate = "pending"\n',
     ['t.toml:8: tests[0].alert_rule_test[0].exp_alerts[1]: an alert with labels {a="1"} is already expected '
      "(exp_alerts[0]): a rule has one alert per label set"]),
    ('rule_files = ["rules.toml"]\n[[tests]]\n[[tests.input_events]]\nkind = "x"\nat = ["1m", "soon"]\n',
     ['t.toml:5: tests[0].input_events[0].at[1]: expected a duration such as "500ms", "30s", "5m" or "1h30m", '
      "got 'soon'"]),
    ('rule_files = ["nope.toml"]\n', ["nope.toml:0: cannot read: No such file or directory"]),
])
def test_an_invalid_test_file_gives_exit_2_with_file_and_line(tmp_path: Any, test: str, problem: List[str]) -> None:
    status, out, path = run_files(tmp_path, HOT, test)
    assert status == 2, out
    lines = out.splitlines()
    got = [line.replace(str(tmp_path) + os.sep, "") for line in lines[:-2]]
    assert len(got) == len(problem), out
    for g, p in zip(got, problem):
        assert g.startswith(p) if p.endswith(": ") else g == p
    assert lines[-2] == f"{path}: INVALID ({len(problem)} error{'s' * (len(problem) != 1)})"
    assert lines[-1] == "FAILED: 1 invalid test file, in 1 file"


def test_an_invalid_rule_file_gives_exit_2_as_npuagent_check_does(tmp_path: Any) -> None:
    rules = HOT.replace("above = 80", "abve = 80").replace("{device_id}", "{devce_id}")
    status, out, path = run_files(tmp_path, rules, 'rule_files = ["rules.toml"]\n')
    assert status == 2
    rules_path = str(tmp_path / "rules.toml")
    assert out.splitlines() == [
        f'{rules_path}:5: rules[0].abve: unknown key (did you mean "above"?)',
        f"{path}: INVALID (1 error)",
        "FAILED: 1 invalid test file, in 1 file",
    ]


def test_status_is_the_worst_of_all_files(tmp_path: Any) -> None:
    (tmp_path / "rules.toml").write_text(HOT)
    good = tmp_path / "good.toml"
    good.write_text('rule_files = ["rules.toml"]\n[[tests]]\n[[tests.alert_rule_test]]\neval_time = "1m"\n'
                    'rule = "hot"\n')
    bad = tmp_path / "bad.toml"
    bad.write_text(WRONG)
    invalid = tmp_path / "invalid.toml"
    invalid.write_text("rule_files = 3\n")
    out = io.StringIO()
    assert rulestest.run([str(good)], out) == 0
    assert rulestest.run([str(good), str(bad)], out) == 1
    out = io.StringIO()
    assert rulestest.run([str(bad), str(invalid), str(good)], out) == 2
    assert out.getvalue().splitlines()[-1] == ("FAILED: 1 invalid test file; 1 of 2 tests failed "
                                               "(2 of 4 expectations), in 3 files")
    assert rulestest.run([], io.StringIO()) == 2


def test_collector_health_input(tmp_path: Any) -> None:
    rules = ('[[rules]]\nname = "down"\ntype = "absent"\ncollector = "npu-smi"\nintervals = 2\n'
             'summary = "{collector} down for {value:.0f}s"\n')
    test = '''\
rule_files = ["rules.toml"]
evaluation_interval = "5s"
[[tests]]
[[tests.input_collectors]]
name = "npu-smi"
interval = "10s"
successes = "1 1 _ _ _ 1"
[[tests.alert_rule_test]]
eval_time = "30s"             # last success at 10s: 20s is not more than 2 x 10s
rule = "down"
[[tests.alert_rule_test]]
eval_time = "35s"
rule = "down"
[[tests.alert_rule_test.exp_alerts]]
labels = { collector = "npu-smi" }
annotations = { summary = "npu-smi down for 25s" }
[[tests.alert_rule_test]]
eval_time = "50s"
rule = "down"
'''
    status, out, _path = run_files(tmp_path, rules, test)
    assert status == 0, out


# -- export ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("template,go", [
    ("NPU {device_id} at {value:.0f} °C", 'NPU {{ $labels.device_id }} at {{ printf "%.0f" $value }} °C'),
    ("{value}", "{{ $value }}"),
    ("{rule}/{severity}/{team}", "npu-hot/warning/ml"),
    ("{labels[device_id]} {labels}", '{{ index $labels "device_id" }} {{ $labels }}'),
    ("{value:>8.2f}|{value:<6.1f}|{value:+.1f}|{value:08.3f}", '{{ printf "%8.2f" $value }}|'
     '{{ printf "%-6.1f" $value }}|{{ printf "%+.1f" $value }}|{{ printf "%08.3f" $value }}'),
    ("{value:e}|{value:.2e}|{value:g}|{value:.3}|{value:d}", '{{ printf "%e" $value }}|{{ printf "%.2e" $value }}|'
     '{{ printf "%g" $value }}|{{ printf "%.3g" $value }}|{{ printf "%.0f" $value }}'),
    ("{value:.1%}", "{{ humanizePercentage $value }}"),
    ("{value:,}|{value:^9}", "{{ $value }}|{{ $value }}"),  # no Go equivalent: the plain value
    ("{device_id:>3}|{device_id!r}", '{{ printf "%3s" $labels.device_id }}|{{ $labels.device_id }}'),
    ("{{literal}} and {{{device_id}}}", '{{ "{" }}literal} and {{ "{" }}{{ $labels.device_id }}}'),
])
def test_templates_become_go_templates(template: str, go: str) -> None:
    assert export.go_template(template, {"rule": "npu-hot", "severity": "warning", "team": "ml"}) == go


@pytest.mark.parametrize("value,text", [
    (90.0, "90"), (0.1, "0.1"), (123456.0, "123456"), (1234567.0, "1.234567e+06"), (1e6, "1e+06"),
    (0.0001, "0.0001"), (0.00001, "1e-05"), (-2.5, "-2.5"), (0.123456789, "0.123456789"), (1.5e-7, "1.5e-07"),
    (math.nan, "NaN"), (math.inf, "+Inf"), (-math.inf, "-Inf"), (0.0, "0"),
])
def test_go_renders_a_float_as_prometheus_does(value: float, text: str) -> None:
    assert export.go_render("{{ $value }}", {}, value) == text


RULES_TO_EXPORT = '''\
[[rules]]
name = "npu-saturated"
type = "threshold"
metric = "npu_utilization_percent"
above = 95
for = "1m"
clear_for = "30s"
labels = { team = "ml", runbook_id = "NPU-7" }
runbook = "https://runbooks.example/npu-saturated"
summary = "NPU {device_id} at {value:.0f}% ({rule}, {team})"
description = "Quotes \\" and \\\\ and a tab\\t survive"

[[rules]]
name = "npu-hot"
type = "threshold"
metric = "npu_temperature_celsius"
above = 80
clear_below = 75
severity = "warning"

[[rules]]
name = "npu-memory-pressure"
type = "ratio"
metric = "npu_memory_used_bytes"
per = "npu_memory_total_bytes"
scale = 100
above = 90
severity = "critical"

[[rules]]
name = "hot-and-busy"
type = "all"
rules = ["npu-hot", "npu-saturated"]
on = ["device_id"]

[[rules]]
name = "host-down"
type = "absent"
collector = "host"
intervals = 3

[[rules]]
name = "faults"
type = "event"
kind = "device_fault"
over = "10m"
'''

EXPORTED = '''\
# Prometheus alerting rules generated by `npuagent rules export --format prometheus`
# from {path}.
# Each agent evaluates these rules itself; load this file in the fleet's Prometheus to see the same
# conditions centrally. Edit the TOML and export again rather than editing this file.
# Not exported (3 of 6; npuagent still evaluates them):
#   npu-hot: clear_below is hysteresis (a separate clear threshold), which PromQL cannot express
#   hot-and-busy: it reads npu-hot, which is not exported
#   faults: events are not metrics
groups:
  - name: "npuagent"
    rules:
      - alert: "npu-saturated"
        expr: "npu_utilization_percent > 95"
        for: "1m"
        keep_firing_for: "30s"
        labels:
          severity: "warning"
          team: "ml"
          runbook_id: "NPU-7"
        annotations:
          summary: "NPU {{{{ $labels.device_id }}}} at {{{{ printf \\"%.0f\\" $value }}}}% (npu-saturated, ml)"
          description: "Quotes \\" and \\\\ and a tab\\t survive"
          runbook_url: "https://runbooks.example/npu-saturated"
      - alert: "npu-memory-pressure"
        expr: "(npu_memory_used_bytes / npu_memory_total_bytes) * 100 > 90"
        labels:
          severity: "critical"
      - alert: "host-down"
        expr: "time() - npuagent_collector_last_success_timestamp_seconds{{collector=\\"host\\"}} > {interval}"
        labels:
          severity: "warning"
'''


def export_of(path: str) -> Tuple[str, Any, Any]:
    """The export of a configuration file, as `npuagent rules export` makes it."""
    from npuagent import cli

    plugins, cfg = cli.load(path, strict=False)
    metrics = {m.name: m for _p, kind in plugins.collector_types().values() for m in kind.metrics}
    compiled = compile_rules(cfg, plugins, metrics)
    return export.prometheus_rules(cfg, compiled), cfg, compiled


def test_export_exact_yaml(tmp_path: Any) -> None:
    path = tmp_path / "npuagent.toml"
    path.write_text(RULES_TO_EXPORT)
    text, cfg, _compiled = export_of(str(path))
    host = next(c for c in cfg.collectors if c.name == "host")
    assert text == EXPORTED.format(path=path, interval=f"{3 * host.interval:g}")


@needs_promtool
@pytest.mark.slow
def test_promtool_accepts_the_export_of_the_shipped_configuration(tmp_path: Any) -> None:
    text, _cfg, compiled = export_of(SHIPPED)
    exported = re.findall(r'^      - alert: "([^"]+)"$', text, re.M)
    skipped = re.findall(r"^#   ([a-z0-9-]+): ", text, re.M)
    assert sorted(exported + skipped) == sorted(r.name for r in compiled)
    assert len(exported) >= 15
    (tmp_path / "rules.yml").write_text(text)
    r = subprocess.run([PROMTOOL, "check", "rules", str(tmp_path / "rules.yml")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(exported)} rules found" in r.stdout


# -- against Prometheus itself --------------------------------------------------------------------------------


class AppMetrics:
    """Declares the app's metrics as the client channel's collector will, so that a histogram is exported as
    one (histogram_quantile), and the cross-check's own gauges and counters."""

    @hookimpl
    def npuagent_collector_types(self) -> List[CollectorType]:
        return [CollectorType("crosscheck-metrics", lambda ctx: None, enabled_by_default=False, metrics=[
            MetricSpec("inference_latency_seconds", "histogram"), MetricSpec("inference_requests_total", "counter"),
            MetricSpec("inference_outputs_total", "counter"), MetricSpec("inference_queue_length"),
            MetricSpec("inference_latency_mean_seconds"), MetricSpec("xc_gauge"),
            MetricSpec("xc_requests_total", "counter")])]


def promtool_test(tmp_path: Any, tf: rulestest.TestFile, rules: rulestest.Rules) -> subprocess.CompletedProcess:
    (tmp_path / "rules.yml").write_text(export.prometheus_rules(rules.cfg, rules.compile()))
    (tmp_path / "tests.yml").write_text(rulestest.promtool_tests(tf, rules, ["rules.yml"]))
    return subprocess.run([PROMTOOL, "test", "rules", "tests.yml"], cwd=str(tmp_path), capture_output=True,
                          text=True)


@needs_promtool
@pytest.mark.slow
def test_prometheus_alerts_exactly_as_npuagent_does_at_every_evaluation(tmp_path: Any) -> None:
    """The cross-check: the rules named in tests/promtool/crosscheck.toml (shipped ones, and extra ones for the
    window functions the shipped rules do not use) are exported; npuagent's own simulation gives the alerts
    of each at every evaluation; those become promtool's expectations, with the same input series; promtool
    passing proves that Prometheus fires, holds and resolves the same alerts, with the same labels, at the
    same evaluations, with annotations that show the same values."""
    tf = rulestest.load_test_file(CROSSCHECK)
    rules = rulestest.load_rules(tf.rule_files, with_plugins(AppMetrics()))
    _exprs, skipped = export.exports(rules.cfg, rules.compile())
    every = tf.evaluation_interval
    seen: Dict[str, set] = {}
    for case in tf.tests:
        names = sorted({a.rule for a in case.alert_tests})
        assert not set(names) & set(skipped), skipped
        last = max(a.eval_time for a in case.alert_tests)
        case.alert_tests = [rulestest.AlertTest(k * every, n, []) for k in range(int(last // every) + 1) for n in names]
        outcome = rulestest.simulate(case, every, rules.compile(), [a.eval_time for a in case.alert_tests])
        assert not outcome.errors
        for alerts in outcome.alerts.values():
            for n in names:
                seen.setdefault(n, set()).add(frozenset(a.state for a in alerts[n]))
    # not a comparison of nothing with nothing: every rule fires and is quiet at some evaluation,
    # and `for` (pending) and `keep_firing_for` (resolving) are exercised
    assert len(seen) >= 25
    assert {n for n, states in seen.items() if frozenset({FIRING}) in states and frozenset() in states} == set(seen)
    assert any(frozenset({PENDING}) in states for states in seen.values())
    assert frozenset({RESOLVING}) in seen["xc-keep-firing"]
    r = promtool_test(tmp_path, tf, rules)
    assert r.returncode == 0, (r.stdout + r.stderr)[-5000:]
    assert "SUCCESS" in r.stdout
    generated = (tmp_path / "tests.yml").read_text()
    assert generated.count("alertname:") == sum(len(c.alert_tests) for c in tf.tests)
    assert generated.count("exp_labels:") > 500

    # and promtool does compare: a value in one annotation, or one label, different and it fails
    for before, after in (('summary: "', 'summary: "~'), ('severity: "warning"', 'severity: "info"')):
        assert before in generated
        (tmp_path / "tests.yml").write_text(generated.replace(before, after, 1))
        r = subprocess.run([PROMTOOL, "test", "rules", "tests.yml"], cwd=str(tmp_path), capture_output=True,
                           text=True)
        assert r.returncode == 1 and "FAILED" in r.stdout + r.stderr, r.stdout + r.stderr


@needs_promtool
@pytest.mark.slow
def test_go_render_agrees_with_prometheus_templates(tmp_path: Any) -> None:
    """The annotations the cross-check expects are rendered by go_render: it must render as Prometheus does."""
    rules = '''\
[[rules]]
name = "render"
type = "threshold"
metric = "xc_gauge"
above = -1000
severity = "info"
labels = { team = "ml" }
summary = "{instance} {value} {value:.0f} {value:>9.3f} {value:<7.1f}| {value:+.2f} {value:08.2f} {value:e} {value:.2e}"
description = "{value:g} {value:.3} {value:.1%} {value:d} {instance:>4}| {rule} {severity} {team} {{x}} \\u0085 \\"q\\""
'''
    (tmp_path / "r.toml").write_text(rules)
    values = "90 0.5 1.5 2.5 -0.125 1234567 0.00001234 123456.789 1e21 -7"
    (tmp_path / "t.toml").write_text(f'''\
rule_files = ["r.toml"]
[[tests]]
[[tests.input_series]]
series = 'xc_gauge{{instance="i-1"}}'
values = "{values}"
''' + "".join(f'[[tests.alert_rule_test]]\neval_time = "{k}m"\nrule = "render"\n' for k in range(10)))
    tf = rulestest.load_test_file(str(tmp_path / "t.toml"))
    loaded = rulestest.load_rules(tf.rule_files, with_plugins(AppMetrics()))
    r = promtool_test(tmp_path, tf, loaded)
    assert r.returncode == 0, (r.stdout + r.stderr)[-5000:]
    assert "1.234567e+06 1234567 1234567.000" in (tmp_path / "tests.yml").read_text()
