"""``npuagent rules test``: unit tests for rules, in the style of ``promtool test rules``.

A rule that never fires is found in production, by the outage it did not page
about; a rule that fires too eagerly is found by whoever it woke. A test file says,
for made-up input, which alerts a rule has at which time, and this module runs the
real engine over simulated time to check it: an hour of rule time runs in
milliseconds, as ``promtool test rules`` does for Prometheus. The format is
promtool's, so operators who know one know the other::

    # the rules under test: files whose [[rules]] (and [actions.*], [plugins.*]) are loaded,
    # relative to this file; their other tables ([collectors.*], [agent], [http]) are ignored
    rule_files = ["../../etc/npuagent.toml"]
    evaluation_interval = "15s"   # default "1m", as promtool

    [[tests]]
    name = "npu overheat fires after 1m and clears below 75"
    interval = "15s"              # spacing of the input values (default: evaluation_interval)

    [[tests.input_series]]
    series = 'npu_temperature_celsius{device_id="0",npu_id="0",chip_id="0"}'
    values = "70+5x4 90x10 76x10 70x20"    # promtool's notation, see parse_values

    [[tests.input_events]]        # events, for `event` rules (npuagent's own addition)
    kind = "hccl_error"
    labels = { kind = "connect_timeout", device_id = "0" }
    at = ["2m", "2m30s"]          # one time or a list, from the start
    message = "HCCL ... connect timeout"

    [[tests.input_collectors]]    # collector health, for `absent` rules with `collector =`
    name = "host"
    interval = "10s"              # default: the test's interval
    successes = "0x10 _x20"       # a value: a successful collection at that step; _ or stale: none

    [[tests.alert_rule_test]]
    eval_time = "3m"
    rule = "npu-hot"
    [[tests.alert_rule_test.exp_alerts]]
    labels = { device_id = "0", npu_id = "0", chip_id = "0" }
    state = "firing"              # default firing; also pending, resolving
    annotations = { summary = "NPU 0 at 90 °C" }   # optional: the keys given are compared

The simulation, and the decisions behind it:

* Each test gets a fresh store, event log and engine, with rules compiled from the
  rule files through the real configuration path (``config.build`` +
  ``rules.compile_rules``), so a rule file that ``npuagent check`` refuses is refused
  here too, as ``file:line: key: message``, and a test exercises exactly the rule
  the agent would run. Plugins load as for the agent (built-ins and entry points).
* Time 0 of a test is :data:`EPOCH` (a real-looking Unix time, so that nothing
  mistakes a success "at 0" for "never"); every time in the file is relative to it.
* Rules are evaluated at every ``evaluation_interval`` from 0 to the last
  ``eval_time``: the state machine (``for``, ``clear_for``, hysteresis) needs every
  step, as Prometheus's does. Inputs due at or before an evaluation are fed to the
  store, the event log and the collectors' health before it, in time order. An
  ``eval_time`` between two evaluations sees the earlier one (promtool does the same).
* The store keeps what the agent's store would keep for these rules (the rules'
  longest window and two intervals of slack), not the whole test: a rule that
  under-reports its ``window()`` fails its test instead of passing on history the
  agent would have dropped. Each input series is its own collection source.
* The expected alerts at ``eval_time`` are compared, as a set, with the rule's alerts
  that are not inactive: their labels (exactly) and state, and the annotations given.
  An alert's labels are the labels its rule type gives it (a series' labels, or the
  ``on``/``by`` labels of a combination) plus the rule's ``labels`` table; not its
  ``severity`` or its rule name, which are the same for every alert of the rule.
  An empty (or absent) ``exp_alerts`` means "no alert".
* ``stale`` ends a series as a staleness marker does: its source answers without
  it, so it leaves the live set (/metrics) and gets no sample, and a threshold on its
  latest value clears its alert at once, as PromQL's ``x > 80`` stops returning.
  ``_`` is no sample and no news: the alert holds for ``stale_after``.
* A rule that raises during a test fails the test, with the error.

Exit status of :func:`run`: 0 all passed, 1 an expectation failed, 2 a test file
(or a rule file it names) is invalid.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import sys
from dataclasses import dataclass, field
from typing import (
    Any,
    Callable,
    Dict,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    TextIO,
    Tuple,
    Union,
)

from . import config as config_mod
from .agent import Health
from .config import validated
from .events import EventLog
from .model import Event, Sample
from .options import (
    REQUIRED,
    Array,
    Duration,
    Map,
    OneOf,
    Option,
    OptionError,
    String,
    ValueType,
    close_matches,
    format_duration,
)
from .rules import FIRING, INACTIVE, PENDING, RESOLVING, CompiledRule, Engine, annotations, compile_rules
from .store import Store
from .tomllines import Path

if sys.version_info >= (3, 11):
    pass
else:  # pragma: no cover - exercised on Python < 3.11 only
    pass

__all__ = [
    "EPOCH",
    "STALE",
    "Alert",
    "NotationError",
    "TestFile",
    "load_test_file",
    "parse_series",
    "parse_values",
    "promtool_tests",
    "run",
    "simulate",
]

#: Time 0 of every test, as a Unix time.
EPOCH = 1_700_000_000.0
#: The most values one input may expand to (``1x100000000`` is a typo, not a test).
MAX_VALUES = 1_000_000
#: Top-level tables of a rule file that a test loads; the others (collectors, agent, http) are not rules.
RULE_FILE_TABLES = ("rules", "actions", "plugins")


# -- the notation -------------------------------------------------------------------------------------------


class NotationError(ValueError):
    """A series selector or a values string that promtool's notation does not allow."""


class _Stale:
    """The ``stale`` marker of a values string."""

    _instance: Optional[_Stale] = None

    def __new__(cls) -> _Stale:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "STALE"


#: A ``stale`` item of a values string.
STALE = _Stale()
#: One expanded item: a number, ``None`` for ``_`` (no sample), or :data:`STALE`.
Value = Union[float, None, _Stale]

_NUM = r"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[iI][nN][fF]|[nN][aA][nN])"
_ITEM = re.compile(
    rf"(?P<blank>_)(?:x(?P<blank_n>\d+))?"
    rf"|(?P<stale>stale)(?:x(?P<stale_n>\d+))?"
    rf"|(?P<a>{_NUM})(?:(?P<b>[+-](?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[iI][nN][fF]|[nN][aA][nN]))?"
    rf"x(?P<n>\d+))?"
)


def parse_values(text: str) -> List[Value]:
    """Expand promtool's values notation, item by item (items are separated by spaces).

    * ``a`` -- one value: any float form, ``1``, ``-2.5``, ``1e3``, ``.5``, ``Inf``, ``-Inf``, ``NaN``;
    * ``a+bxn`` / ``a-bxn`` -- n+1 values: a, a+b, ..., a+n*b (``1-2x4`` is 1 -1 -3 -5 -7);
    * ``axn`` -- a, n+1 times (``a+0xn``);
    * ``_`` -- no sample at this step; ``_xn`` -- n steps without a sample (n, not n+1: a gap does not
      "start" anywhere, which is promtool's rule too);
    * ``stale`` -- the series ends here (see the module's notes); ``stalexn`` -- n+1 of them.

    Hexadecimal is not accepted (promtool refuses it too: ``0x3`` is 0 repeated).

    :raises NotationError: naming the item, its position and the forms allowed.
    """
    if not isinstance(text, str):
        raise NotationError(f"expected a string of values such as \"1 2 3\" or \"0+10x5\", got {text!r}")
    items = text.split()
    if not items:
        raise NotationError('no values: expected values such as "1 2 3", "0+10x5", "_x3" or "stale"')
    out: List[Value] = []
    for pos, item in enumerate(items, 1):
        m = _ITEM.fullmatch(item)
        if m is None:
            raise NotationError(f'value {pos} "{item}": expected a number (1, -2.5, 1e3, Inf, NaN), '
                                f'a+bxn, a-bxn, axn, _, _xn or stale')
        expanded: List[Value]
        if m.group("blank"):
            n = 1 if m.group("blank_n") is None else int(m.group("blank_n"))
            _check_count(pos, item, len(out) + n)
            expanded = [None] * n
        elif m.group("stale"):
            n = 1 if m.group("stale_n") is None else int(m.group("stale_n")) + 1
            _check_count(pos, item, len(out) + n)
            expanded = [STALE] * n
        else:
            a = float(m.group("a"))
            if m.group("n") is None:
                expanded = [a]
            else:
                n = int(m.group("n"))
                _check_count(pos, item, len(out) + n + 1)
                b = float(m.group("b")) if m.group("b") else 0.0
                # a + i*b rather than a running sum: 0.1+0.1x30 ends at 3.1, not 3.0999999999999988
                expanded = [a + i * b if b else a for i in range(n + 1)]
        out.extend(expanded)
    return out


def _check_count(pos: int, item: str, total: int) -> None:
    if total > MAX_VALUES:
        raise NotationError(f'value {pos} "{item}": expands to more than {MAX_VALUES} values')


_NAME = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_LABEL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ESCAPES = {"\\": "\\", '"': '"', "'": "'", "n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f",
            "v": "\v"}


def parse_series(text: str) -> Tuple[str, Dict[str, str]]:
    """``name{label="value",...}`` -> (name, labels), as promtool reads ``series``.

    Values are quoted with ``"`` or ``'`` (with backslash escapes: ``\\"``, ``\\\\``,
    ``\\n``, ``\\t``, ``\\uXXXX``...) or with backticks (raw). The name may instead be
    given as ``{__name__="name", ...}``. Only ``=``: a series is a label set, not a query.

    :raises NotationError: with the position and what was expected there.
    """
    s = text.strip() if isinstance(text, str) else ""
    if not s:
        raise NotationError('expected a series such as \'npu_temperature_celsius{device_id="0"}\'')
    i = 0
    name = ""
    m = _NAME.match(s)
    if m:
        name, i = m.group(), m.end()
    labels: Dict[str, str] = {}

    def fail(message: str) -> NotationError:
        return NotationError(f"{message} at character {i + 1} of {text!r}")

    def space() -> None:
        nonlocal i
        while i < len(s) and s[i] in " \t":
            i += 1

    space()
    if i < len(s):
        if s[i] != "{":
            raise fail('expected "{" or the end')
        i += 1
        while True:
            space()
            if i < len(s) and s[i] == "}":
                i += 1
                break
            lm = _LABEL.match(s, i)
            if not lm:
                raise fail("expected a label name")
            label, i = lm.group(), lm.end()
            space()
            if s[i:i + 2] in ("!=", "=~", "!~"):
                raise fail(f'only "=" is allowed in a series (not "{s[i:i + 2]}")')
            if s[i:i + 1] != "=":
                raise fail(f'expected "=" after {label}')
            i += 1
            space()
            value, i = _quoted(s, i, fail)
            if label in labels:
                raise fail(f"label {label} given twice")
            labels[label] = value
            space()
            if s[i:i + 1] == ",":
                i += 1
                continue
            if s[i:i + 1] == "}":
                i += 1
                break
            raise fail('expected "," or "}"')
        space()
        if i != len(s):
            raise fail("unexpected text after the labels")
    meta = labels.pop("__name__", None)
    if meta is not None:
        if name and meta != name:
            raise NotationError(f"two names in {text!r}: {name} and __name__={meta!r}")
        if not _NAME.fullmatch(meta):
            raise NotationError(f"__name__ {meta!r} is not a valid metric name in {text!r}")
        name = meta
    if not name:
        raise NotationError(f"no metric name in {text!r}")
    return name, labels


def _quoted(s: str, i: int, fail: Callable[[str], NotationError]) -> Tuple[str, int]:
    """A PromQL string literal at ``s[i]``: its value and the index after it."""
    quote = s[i:i + 1]
    if quote not in ('"', "'", "`"):
        raise fail("expected a quoted label value")
    j = i + 1
    out = []
    while j < len(s):
        c = s[j]
        if c == quote:
            return "".join(out), j + 1
        if c == "\\" and quote != "`":
            e = s[j + 1:j + 2]
            if e in _ESCAPES:
                out.append(_ESCAPES[e])
                j += 2
                continue
            for prefix, width in (("x", 2), ("u", 4), ("U", 8)):
                if e == prefix:
                    digits = s[j + 2:j + 2 + width]
                    if len(digits) != width or not all(d in "0123456789abcdefABCDEF" for d in digits):
                        raise fail(f"bad escape \\{prefix}{digits}")
                    out.append(chr(int(digits, 16)))
                    j += 2 + width
                    break
            else:
                raise fail(f"unknown escape \\{e}")
            continue
        out.append(c)
        j += 1
    raise fail("unterminated label value")


def format_labels(labels: Mapping[str, str]) -> str:
    """``{a="1", b="x\\"y"}``, sorted by name, quoted as PromQL quotes them."""
    return "{" + ", ".join(f"{k}={_promql_quote(v)}" for k, v in sorted(labels.items())) + "}"


def _promql_quote(v: str) -> str:
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def format_series(name: str, labels: Mapping[str, str]) -> str:
    """``name{a="1",b="2"}``: a selector promtool (and :func:`parse_series`) reads back."""
    return name + ("{" + ",".join(f"{k}={_promql_quote(v)}" for k, v in sorted(labels.items())) + "}"
                   if labels else "")


# -- the test file ----------------------------------------------------------------------------------------


@dataclass
class SeriesInput:
    name: str
    labels: Dict[str, str]
    values: List[Value]
    text: str          # the values as written, for promtool
    selector: str      # the series as written


@dataclass
class EventInput:
    kind: str
    labels: Dict[str, str]
    at: List[float]
    message: str


@dataclass
class CollectorInput:
    name: str
    interval: float
    successes: List[Value]


@dataclass
class ExpAlert:
    labels: Dict[str, str]
    state: str
    annotations: Optional[Dict[str, str]]


@dataclass
class AlertTest:
    eval_time: float
    rule: str
    exp_alerts: List[ExpAlert]
    line: int = 0
    key: str = ""      # where it is written, e.g. tests[0].alert_rule_test[2]


@dataclass
class TestCase:
    name: str
    interval: float
    series: List[SeriesInput]
    events: List[EventInput]
    collectors: List[CollectorInput]
    alert_tests: List[AlertTest]


@dataclass
class TestFile:
    """A parsed test file, its rule files resolved against its directory."""

    path: str
    rule_files: List[str]
    evaluation_interval: float
    tests: List[TestCase]


class _Tables(ValueType):
    """An array of tables, checked key by key by the caller (so every error gets its own line)."""

    description = "an array of tables ([[...]])"

    def convert(self, value: Any) -> Any:
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.wrong(value)
        return value


class _Times(ValueType):
    """A duration, or an array of them: seconds from the start of the test."""

    description = 'a duration such as "2m", or an array of them'

    def convert(self, value: Any) -> List[float]:
        items = value if isinstance(value, list) else [value]
        if not items:
            raise OptionError("expected at least one time")
        d = Duration(allow_zero=True)
        out = []
        for n, item in enumerate(items):
            try:
                out.append(d.convert(item))
            except OptionError as e:
                raise OptionError(e.message, (n,) if isinstance(value, list) else ()) from None
        return out


_LABELS = Map(String(), r"[A-Za-z_][A-Za-z0-9_]*", "a table of label names to string values")
_STATES = (PENDING, FIRING, RESOLVING)

TOP_OPTIONS = (
    Option("rule_files", Array(String()), REQUIRED, "Files whose rules are tested, relative to the test file."),
    Option("evaluation_interval", Duration(), 60.0, "Time between two evaluations of the rules."),
    Option("tests", _Tables(), (), "The tests."),
)
TEST_OPTIONS = (
    Option("name", String(), "", "What the test shows."),
    Option("interval", Duration(), None, "Spacing of the input values (default: evaluation_interval)."),
    Option("input_series", _Tables(), ()),
    Option("input_events", _Tables(), ()),
    Option("input_collectors", _Tables(), ()),
    Option("alert_rule_test", _Tables(), ()),
)
SERIES_OPTIONS = (
    Option("series", String(), REQUIRED, 'The series: name{label="value",...}.'),
    Option("values", String(), REQUIRED, "Its values, one per interval, in promtool's notation."),
)
EVENT_OPTIONS = (
    Option("kind", String(r"\S+", "an event kind"), REQUIRED),
    Option("labels", _LABELS, {}),
    Option("at", _Times(), REQUIRED),
    Option("message", String(), ""),
)
COLLECTOR_OPTIONS = (
    Option("name", String(), REQUIRED, "The collector's name, as rules name it."),
    Option("interval", Duration(), None, "Its interval (default: the test's interval)."),
    Option("successes", String(), REQUIRED, "A value where a collection succeeded, _ where none did."),
)
ALERT_TEST_OPTIONS = (
    Option("eval_time", Duration(allow_zero=True), REQUIRED),
    Option("rule", String(), REQUIRED),
    Option("exp_alerts", _Tables(), ()),
)
EXP_OPTIONS = (
    Option("labels", _LABELS, {}),
    Option("state", OneOf(*_STATES), FIRING),
    Option("annotations", Map(String(), r"[A-Za-z_][A-Za-z0-9_]*", "a table of strings"), None),
)


class InvalidTestFile(Exception):
    """The test file (or a rule file it names) is invalid; ``problems`` lists every error found."""

    def __init__(self, problems: Sequence[config_mod.Problem]) -> None:
        self.problems = sorted(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


def load_test_file(path: str) -> TestFile:
    """Read and validate a test file (not yet its rule files).

    :raises InvalidTestFile: every problem, as ``file:line: key: message``.
    """
    r = config_mod.read_files([path])
    if r.problems:
        raise InvalidTestFile(r.problems)
    top = validated(r, r.doc, TOP_OPTIONS, ())
    base = os.path.dirname(os.path.abspath(path))
    rule_files = [f if os.path.isabs(f) else os.path.normpath(os.path.join(base, f))
                  for f in top.get("rule_files", ())]
    interval = top.get("evaluation_interval", 60.0)
    tests = [_test_case(r, t, ("tests", i), interval) for i, t in enumerate(top.get("tests", ()))]
    if r.problems:
        raise InvalidTestFile(r.problems)
    return TestFile(path, rule_files, interval, tests)


def _test_case(r: config_mod.Sources, raw: Mapping[str, Any], path: Path, evaluation_interval: float) -> TestCase:
    t = validated(r, raw, TEST_OPTIONS, path)
    interval = t.get("interval") or evaluation_interval
    series: List[SeriesInput] = []
    seen: Dict[Tuple[str, Tuple[Tuple[str, str], ...]], int] = {}
    for i, s in enumerate(t.get("input_series", ())):
        p = path + ("input_series", i)
        v = validated(r, s, SERIES_OPTIONS, p)
        if "series" not in v or "values" not in v:
            continue
        try:
            name, labels = parse_series(v["series"])
        except NotationError as e:
            r.problem(p + ("series",), str(e))
            continue
        try:
            values = parse_values(v["values"])
        except NotationError as e:
            r.problem(p + ("values",), str(e))
            continue
        key = (name, tuple(sorted(labels.items())))
        if key in seen:
            r.problem(p + ("series",), f"series {format_series(name, labels)} is already given at line {seen[key]}")
            continue
        seen[key] = r.at(p + ("series",))[1]
        series.append(SeriesInput(name, labels, values, v["values"], v["series"]))
    events = []
    for i, e in enumerate(t.get("input_events", ())):
        v = validated(r, e, EVENT_OPTIONS, path + ("input_events", i))
        if "kind" in v and "at" in v:
            events.append(EventInput(v["kind"], dict(v["labels"]), list(v["at"]), v["message"]))
    collectors = []
    for i, c in enumerate(t.get("input_collectors", ())):
        p = path + ("input_collectors", i)
        v = validated(r, c, COLLECTOR_OPTIONS, p)
        if "name" not in v or "successes" not in v:
            continue
        try:
            successes = parse_values(v["successes"])
        except NotationError as e:
            r.problem(p + ("successes",), str(e))
            continue
        collectors.append(CollectorInput(v["name"], v.get("interval") or interval, successes))
    alert_tests = []
    for i, a in enumerate(t.get("alert_rule_test", ())):
        p = path + ("alert_rule_test", i)
        v = validated(r, a, ALERT_TEST_OPTIONS, p)
        exp: List[ExpAlert] = []
        seen_labels: Dict[Tuple[Tuple[str, str], ...], int] = {}
        for j, x in enumerate(v.get("exp_alerts", ())):
            q = p + ("exp_alerts", j)
            xv = validated(r, x, EXP_OPTIONS, q)
            if "labels" not in xv:
                continue
            key = tuple(sorted(xv["labels"].items()))
            if key in seen_labels:
                r.problem(q, f"an alert with labels {format_labels(xv['labels'])} is already expected "
                             f"(exp_alerts[{seen_labels[key]}]): a rule has one alert per label set")
                continue
            seen_labels[key] = j
            exp.append(ExpAlert(dict(xv["labels"]), xv.get("state", FIRING),
                                None if xv.get("annotations") is None else dict(xv["annotations"])))
        if "eval_time" in v and "rule" in v:
            alert_tests.append(AlertTest(v["eval_time"], v["rule"], exp, r.at(p + ("rule",))[1],
                                         config_mod.format_path(p)))
    return TestCase(t.get("name") or config_mod.format_path(path), interval, series, events, collectors,
                    alert_tests)


# -- loading the rules ------------------------------------------------------------------------------------


def read_rule_files(files: Sequence[str]) -> config_mod.Sources:
    """Read exactly these files (no ``conf.d`` beside them), keeping their rules, actions and plugin tables."""
    return config_mod.read_files(files, tables=RULE_FILE_TABLES)


def default_plugins(disabled: Sequence[str]) -> Any:
    """The plugins the agent would load: built-ins and installed entry points (not refused for permissions:
    this is a tool for whoever writes rules, not the root-run agent)."""
    from .plugins import Plugins

    plugins = Plugins()
    plugins.load(disabled=disabled, strict=False)
    return plugins


PluginsLoader = Callable[[Sequence[str]], Any]


@dataclass
class Rules:
    """The rule files of a test file, built: compile again for every test (rules hold their alerts' state)."""

    cfg: Any
    plugins: Any
    metrics: Mapping[str, Any]

    def compile(self) -> List[CompiledRule]:
        return compile_rules(self.cfg, self.plugins, self.metrics)


def load_rules(files: Sequence[str], load_plugins: Optional[PluginsLoader] = None) -> Rules:
    """Build the rules of ``files`` as the agent would.

    :raises npuagent.config.ConfigError: every problem, as ``file:line: key: message``.
    """
    src = read_rule_files(files)
    plugins = (load_plugins or default_plugins)(config_mod.disabled_plugins(src))
    cfg = config_mod.build(src, plugins)
    metrics = {m.name: m for _p, kind in plugins.collector_types().values() for m in kind.metrics}
    rules = Rules(cfg, plugins, metrics)
    rules.compile()  # compile-time problems (templates, unknown metrics, cycles) make the file invalid
    return rules


# -- simulation -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Alert:
    """One alert of a rule at an evaluation: what a test expectation is compared with."""

    labels: Mapping[str, str]
    state: str
    annotations: Mapping[str, str]
    value: Optional[float]
    #: the value at the latest evaluation where it was ``firing`` (not ``resolving``): what Prometheus's
    #: annotations still show while ``keep_firing_for`` holds an alert whose expression no longer returns it
    firing_value: Optional[float] = None


@dataclass
class _CollectorCfg:
    name: str
    interval: float
    type: str = ""
    timeout: float = 10.0


@dataclass
class _Collector:
    """A stand-in for the agent's ``CollectorRunner``: ``ctx.collectors[name].health``/``.cfg``."""

    name: str
    cfg: _CollectorCfg
    health: Health = field(default_factory=Health)


@dataclass
class Outcome:
    """What a simulation saw: the alerts at each asked-for time, and the rules that raised."""

    #: ``alerts[eval_time][rule]``: the alerts of the rule that are not inactive
    alerts: Dict[float, Dict[str, List[Alert]]]
    #: ``(time, rule, error)`` of every failed rule evaluation
    errors: List[Tuple[float, str, str]]


def _ms(seconds: float) -> int:
    """Times on an integer millisecond grid: 15s steps and 0.1s steps never drift apart in float sums."""
    return round(seconds * 1000)


class _Capture(logging.Filter):
    """Keeps a failing rule's traceback out of the output (the test reports it, once per rule and time)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return False


@contextlib.contextmanager
def _quiet_rules() -> Iterator[None]:
    """Silence the engine's and the rule types' loggers (``npuagent.rules``, ``npuagent.rules.*``) meanwhile.

    A filter on a logger does not see its children's records, so each existing one gets its own.
    """
    names = ["npuagent.rules", *(n for n in list(logging.Logger.manager.loggerDict)
                                 if n.startswith("npuagent.rules."))]
    f = _Capture()
    loggers = [logging.getLogger(n) for n in names]
    for logger in loggers:
        logger.addFilter(f)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(f)


def simulate(case: TestCase, evaluation_interval: float, compiled: Sequence[CompiledRule],
             times: Sequence[float]) -> Outcome:
    """Run the engine over ``case``'s inputs and snapshot every rule's alerts at each of ``times``.

    Evaluations happen at every ``evaluation_interval`` from 0 to ``max(times)``;
    a time between two evaluations gets the snapshot of the earlier one.
    """
    engine = Engine(list(compiled), state=None, started=EPOCH)
    inputs = case.series
    longest = max([case.interval, *(c.interval for c in case.collectors)])
    store = Store(retention=max(300.0, 3 * longest, engine.window() + 2 * longest))
    events = EventLog(retention=max(3600.0, engine.window()))
    collectors = {c.name: _Collector(c.name, _CollectorCfg(c.name, c.interval, c.name)) for c in case.collectors}

    # the timeline: (ms, order, what) -- samples, then events, then collector outcomes at one time
    timeline: List[Tuple[int, int, int, Any]] = []
    for n, s in enumerate(inputs):
        step = _ms(case.interval)
        for j, v in enumerate(s.values):
            if v is not None:
                timeline.append((j * step, 0, n, v))
    for e in case.events:
        for t in e.at:
            timeline.append((_ms(t), 1, 0, e))
    for n, c in enumerate(case.collectors):
        step = _ms(c.interval)
        for j, v in enumerate(c.successes):
            timeline.append((j * step, 2, n, v))
    timeline.sort(key=lambda x: (x[0], x[1], x[2]))

    wanted = sorted({_ms(t) for t in times})
    outcome = Outcome({}, [])
    if not wanted:
        return outcome
    every = _ms(evaluation_interval)
    sources = [f"test-series-{n}" for n in range(len(inputs))]
    pos = 0
    w = 0
    failures = {name: 0 for name in engine.rules}
    firing_values: Dict[Tuple[str, Tuple[Tuple[str, str], ...]], Optional[float]] = {}
    with _quiet_rules():
        for k in range(wanted[-1] // every + 1):
            now_ms = k * every
            while pos < len(timeline) and timeline[pos][0] <= now_ms:
                t_ms, kind, n, what = timeline[pos]
                pos += 1
                t = EPOCH + t_ms / 1000
                if kind == 0:
                    s = inputs[n]
                    batch = [] if what is STALE else [Sample(s.name, s.labels, what, t)]
                    store.ingest(sources[n], batch, t, case.interval)
                elif kind == 1:
                    events.add([Event(what.kind, dict(what.labels), what.message, t)], t)
                else:
                    c = collectors[case.collectors[n].name]
                    if isinstance(what, float):
                        c.health.up, c.health.last_success, c.health.last_error = 1, t, ""
                    else:
                        c.health.up, c.health.errors = 0, c.health.errors + 1
                        c.health.last_error = "failed (test input)"
            now = EPOCH + now_ms / 1000
            engine.evaluate(now, store, events, collectors)
            for name, rule in engine.rules.items():
                if rule.failures != failures[name]:
                    failures[name] = rule.failures
                    outcome.errors.append((now_ms / 1000, name, rule.last_error))
                for i in rule.instances.values():
                    if i.state == FIRING:
                        firing_values[(name, i.labels)] = i.value
            while w < len(wanted) and wanted[w] < now_ms + every:
                outcome.alerts[wanted[w] / 1000] = {
                    name: [Alert(i.labels_dict(), i.state, annotations(rule, i), i.value,
                                 firing_values.get((name, i.labels)))
                           for i in rule.instances.values() if i.state != INACTIVE]
                    for name, rule in engine.rules.items()}
                w += 1
    return outcome


# -- comparing and reporting ------------------------------------------------------------------------------


def _matches(exp: ExpAlert, got: Alert) -> bool:
    if exp.labels != dict(got.labels) or exp.state != got.state:
        return False
    return exp.annotations is None or all(got.annotations.get(k) == v for k, v in exp.annotations.items())


def _value(v: Optional[float]) -> str:
    if v is None:
        return "none"
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return f"{v:.6g}"


def _annotations_text(annotations: Optional[Mapping[str, str]]) -> str:
    if not annotations:
        return ""
    return "  " + "  ".join(f"{k}={_promql_quote(v)}" for k, v in sorted(annotations.items()))


def diff(expected: Sequence[ExpAlert], got: Sequence[Alert]) -> Optional[List[str]]:
    """None when ``got`` is what was expected; else the lines of a readable diff.

    Each expected alert that no alert matches is marked ``-``, each alert that no
    expectation matches ``+``; the others are shown unmarked, for context.
    """
    matched_got = set()
    matched_exp = set()
    for i, e in enumerate(expected):
        for j, g in enumerate(got):
            if j not in matched_got and _matches(e, g):
                matched_got.add(j)
                matched_exp.add(i)
                break
    if len(matched_exp) == len(expected) and len(matched_got) == len(got):
        return None
    lines = ["expected:"]
    for i, e in sorted(enumerate(expected), key=lambda x: sorted(x[1].labels.items())):
        mark = " " if i in matched_exp else "-"
        lines.append(f"  {mark} {format_labels(e.labels)} {e.state}{_annotations_text(e.annotations)}")
    if not expected:
        lines.append("    (no alert)")
    lines.append("got:")
    for j, g in sorted(enumerate(got), key=lambda x: sorted(x[1].labels.items())):
        mark = " " if j in matched_got else "+"
        lines.append(f"  {mark} {format_labels(g.labels)} {g.state}  value={_value(g.value)}"
                     f"{_annotations_text(g.annotations)}")
    if not got:
        lines.append("    (no alert)")
    return lines


@dataclass
class _Counts:
    tests: int = 0
    failed_tests: int = 0
    expectations: int = 0
    failed_expectations: int = 0


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def _run_file(path: str, out: TextIO, load_plugins: Optional[PluginsLoader], totals: _Counts) -> int:
    """Run one test file, printing its result; its status (0, 1 or 2)."""
    try:
        tf = load_test_file(path)
        rules = load_rules(tf.rule_files, load_plugins)
    except (InvalidTestFile, config_mod.ConfigError) as e:
        for p in e.problems:
            print(p, file=out)
        print(f"{path}: INVALID ({_plural(len(e.problems), 'error')})", file=out)
        return 2
    names = [r.name for r in rules.cfg.rules]
    problems = []
    for case in tf.tests:
        for a in case.alert_tests:
            if a.rule not in names:
                problems.append(config_mod.Problem(path, a.line, f"{a.key}.rule",
                                                   f"no rule named {a.rule!r} in the rule files"
                                                   f"{close_matches(a.rule, names)}"))
    if problems:
        for p in problems:
            print(p, file=out)
        print(f"{path}: INVALID ({_plural(len(problems), 'error')})", file=out)
        return 2
    counts = _Counts()
    report: List[str] = []
    for case in tf.tests:
        counts.tests += 1
        outcome = simulate(case, tf.evaluation_interval, rules.compile(), [a.eval_time for a in case.alert_tests])
        failed = False
        raised: Dict[str, List[Tuple[float, str]]] = {}
        for t, rule, error in outcome.errors:
            raised.setdefault(rule, []).append((t, error))
        for rule, errors in raised.items():
            more = f" (and at {len(errors) - 1} later evaluation{'s' * (len(errors) != 2)})" if len(errors) > 1 else ""
            report.append(f'  test "{case.name}": rule {rule} raised at {format_duration(errors[0][0])}: '
                          f"{errors[0][1]}{more}")
            failed = True
        for a in case.alert_tests:
            counts.expectations += 1
            got = outcome.alerts[a.eval_time][a.rule]
            lines = diff(a.exp_alerts, got)
            if lines is None:
                continue
            failed = True
            counts.failed_expectations += 1
            report.append(f'  test "{case.name}", rule {a.rule}, eval_time {format_duration(a.eval_time)} '
                          f"(line {a.line}):")
            report.extend("    " + line for line in lines)
        counts.failed_tests += failed
    totals.tests += counts.tests
    totals.failed_tests += counts.failed_tests
    totals.expectations += counts.expectations
    totals.failed_expectations += counts.failed_expectations
    if counts.failed_tests:
        print(f"{path}: FAILED {counts.failed_tests} of {_plural(counts.tests, 'test')} "
              f"({counts.failed_expectations} of {_plural(counts.expectations, 'expectation')})", file=out)
        for line in report:
            print(line, file=out)
        return 1
    print(f"{path}: PASSED {_plural(counts.tests, 'test')} ({_plural(counts.expectations, 'expectation')})",
          file=out)
    return 0


def run(paths: Sequence[str], out: TextIO, load_plugins: Optional[PluginsLoader] = None) -> int:
    """Run the test files; print a result per file, a diff per failing expectation, and a summary.

    :param load_plugins: ``f(disabled) -> Plugins``; default: the agent's built-ins and installed plugins.
    :returns: 0 all passed, 1 an expectation failed (or a rule raised), 2 a test or rule file is invalid.
    """
    totals = _Counts()
    statuses = [_run_file(p, out, load_plugins, totals) for p in paths]
    invalid = statuses.count(2)
    files = _plural(len(paths), "file")
    if not paths:
        print("no test files given", file=out)
        return 2
    if invalid or totals.failed_tests:
        parts = []
        if invalid:
            parts.append(f"{invalid} invalid test file{'s' * (invalid != 1)}")
        if totals.failed_tests:
            parts.append(f"{totals.failed_tests} of {_plural(totals.tests, 'test')} failed "
                         f"({totals.failed_expectations} of {_plural(totals.expectations, 'expectation')})")
        print(f"FAILED: {'; '.join(parts)}, in {files}", file=out)
        return 2 if invalid else 1
    print(f"PASSED: {_plural(totals.tests, 'test')}, {_plural(totals.expectations, 'expectation')}, in {files}",
          file=out)
    return 0


# -- promtool ---------------------------------------------------------------------------------------------


def promtool_tests(tf: TestFile, rules: Rules, rule_files: Sequence[str]) -> str:
    """The same tests for ``promtool test rules``, against ``rule_files`` (an export of the same rules).

    The expected alerts are what *npuagent* computes, so promtool passing proves
    that Prometheus, given the exported rules and the same input, alerts exactly
    as npuagent does at every ``eval_time``. promtool compares firing alerts only
    (a ``resolving`` alert is firing there: ``keep_firing_for``), with every label
    (``severity`` and the rule's ``labels`` included) and every annotation. The
    expected annotations are the exported templates rendered the way Prometheus
    renders them (:func:`npuagent.export.go_render`) with npuagent's labels and
    value, so they agree exactly when the values agree to the precision printed.

    :raises ValueError: a test uses inputs Prometheus has no equivalent of (events, collector health).
    """
    from .export import annotation_key, constants, go_render, go_template, yaml_dump

    by_name = {r.name: r for r in rules.compile()}
    tests = []
    for case in tf.tests:
        if case.events or case.collectors:
            raise ValueError(f"test {case.name!r}: events and collector health have no promtool equivalent")
        outcome = simulate(case, tf.evaluation_interval, rules.compile(), [a.eval_time for a in case.alert_tests])
        alert_tests = []
        for a in case.alert_tests:
            o = by_name[a.rule].options
            exp = []
            for alert in sorted(outcome.alerts[a.eval_time][a.rule], key=lambda x: sorted(x.labels.items())):
                if alert.state not in (FIRING, RESOLVING):
                    continue
                # while keep_firing_for holds it, Prometheus's alert keeps the annotations of its last firing value
                value = alert.firing_value if alert.state == RESOLVING else alert.value
                annotations = {k: go_render(go_template(o[k], constants(by_name[a.rule])), alert.labels, value)
                               for k in ("summary", "description") if o[k]}
                if o["runbook"]:
                    annotations[annotation_key("runbook")] = o["runbook"]
                exp.append({"exp_labels": {**dict(alert.labels), "severity": o["severity"], **dict(o["labels"])},
                            "exp_annotations": annotations})
            alert_tests.append({"eval_time": format_duration(a.eval_time), "alertname": a.rule, "exp_alerts": exp})
        tests.append({
            "name": case.name,
            "interval": format_duration(case.interval),
            "input_series": [{"series": format_series(s.name, s.labels), "values": s.text} for s in case.series],
            "alert_rule_test": alert_tests,
        })
    return yaml_dump({"rule_files": list(rule_files), "evaluation_interval": format_duration(tf.evaluation_interval),
                      "tests": tests})
