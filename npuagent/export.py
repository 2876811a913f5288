"""``npuagent rules export --format prometheus``: the agent's rules as Prometheus alerting rules.

Each agent decides for its own host; the fleet's Prometheus scrapes every agent's
``/metrics`` and can alert on the same conditions centrally (when an agent's host is
too sick to alert, or to see the fleet at once in Alertmanager). Writing the rules
twice, once in TOML and once in PromQL, is how the two drift apart; this writes the
PromQL from the TOML, through each rule type's own ``export()``.

What does not translate, and what is done about it:

* A rule whose type cannot say it in PromQL (hysteresis, events, a collector's
  interval unknown to the file) raises ``ValueError(reason)`` in ``export()``; it is
  left out and listed with its reason in a comment at the top, so the gap is visible
  in the file that Prometheus loads, not only in a log.
* A rule that combines other rules (``all``/``any`` read ``ALERTS{alertname=...}``) is
  left out when one of them is, or Prometheus would wait forever for an alert that
  no rule of its own raises.
* ``export()`` may need what only a running agent knows (the ``absent`` rule of a
  collector needs the collector's interval): each rule whose export fails is given
  one dry evaluation, on an empty store, with the configured collectors, and asked
  again.
* Templates are Python ``str.format`` here and Go ``text/template`` there:
  ``{device_id}`` becomes ``{{ $labels.device_id }}``, ``{value}`` ``{{ $value }}``,
  ``{value:.0f}`` ``{{ printf "%.0f" $value }}``, ``{rule}`` ``{{ $labels.alertname }}``,
  ``{severity}`` ``{{ $labels.severity }}``. A format spec Go's printf has no
  equivalent for falls back to ``{{ $value }}``.
* ``for`` is Prometheus's ``for``. ``clear_for`` is ``keep_firing_for`` (Prometheus
  2.42 and later) when the rule has no separate clear threshold: then "the clear
  condition held for clear_for" is "the fire condition has been false for that
  long", which is what keep_firing_for means.
* The annotation ``runbook`` is exported as ``runbook_url``, the name Alertmanager
  and Grafana templates look for.

The YAML is written by hand (the core depends on no YAML library): block style,
every string double-quoted with JSON's escapes, which YAML reads the same.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import string
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .agent import Health
from .options import format_duration

__all__ = ["annotation_key", "go_render", "go_template", "prometheus_rules", "yaml_dump"]

#: Options whose presence means a separate clear condition: keep_firing_for would not mean clear_for then.
CLEAR_KEYS = ("clear_below", "clear_above", "clear_ratio", "clear_after")


# -- YAML -------------------------------------------------------------------------------------------------

_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: Keys YAML 1.1 (go-yaml) would read as booleans or null if left unquoted.
_YAML_WORDS = {"y", "n", "yes", "no", "true", "false", "on", "off", "null"}
#: Characters YAML does not allow unescaped in a document (JSON already escapes C0 controls).
_NON_PRINTABLE = re.compile("[\u007f-\u0084\u0086-\u009f\ud800-\udfff\ufffe\uffff]")


def yaml_string(s: str) -> str:
    """A double-quoted YAML scalar: JSON's escapes are YAML's too."""
    text = json.dumps(s, ensure_ascii=False)
    return _NON_PRINTABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _key(k: Any) -> str:
    k = str(k)
    return k if _PLAIN_KEY.fullmatch(k) and k.lower() not in _YAML_WORDS else yaml_string(k)


def _scalar(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if v != v:
            return ".nan"
        if v in (float("inf"), float("-inf")):
            return ".inf" if v > 0 else "-.inf"
        return repr(v)
    if isinstance(v, Mapping):
        return "{}"
    if isinstance(v, (list, tuple)):
        return "[]"
    return yaml_string(str(v))


def _emit(obj: Any, indent: int, lines: List[str]) -> None:
    pad = " " * indent
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if isinstance(v, (Mapping, list, tuple)) and v:
                lines.append(f"{pad}{_key(k)}:")
                _emit(v, indent + 2, lines)
            else:
                lines.append(f"{pad}{_key(k)}: {_scalar(v)}")
        return
    for item in obj:
        if isinstance(item, (Mapping, list, tuple)) and item:
            sub: List[str] = []
            _emit(item, indent + 2, sub)
            lines.append(f"{pad}- {sub[0][indent + 2:]}")
            lines.extend(sub[1:])
        else:
            lines.append(f"{pad}- {_scalar(item)}")


def yaml_dump(obj: Mapping[str, Any]) -> str:
    """Block-style YAML of nested dicts, lists, strings and numbers (key order kept)."""
    lines: List[str] = []
    _emit(obj, 0, lines)
    return "\n".join(lines) + "\n"


# -- templates --------------------------------------------------------------------------------------------

_SPEC = re.compile(r"(?P<align>[<>])?(?P<sign>[+ ])?(?P<alt>#)?(?P<zero>0)?(?P<width>\d+)?"
                   r"(?:\.(?P<prec>\d+))?(?P<type>[eEfFgGd%s]?)")


def _printf_verb(spec: str, for_string: bool) -> Optional[str]:
    """Python's format spec as a Go printf verb (``.0f`` -> ``%.0f``), or None when Go has none."""
    m = _SPEC.fullmatch(spec)
    if m is None:
        return None
    kind = m.group("type")
    prec = m.group("prec")
    if for_string:
        if kind not in ("", "s") or prec or m.group("sign"):
            return None
        kind = "s"
    elif kind == "s":
        return None
    elif kind == "d":
        kind, prec = "f", "0"
    elif kind == "":
        kind = "g"
    flags = ("-" if m.group("align") == "<" else "") + (m.group("sign") or "") + (m.group("alt") or "") + \
        (m.group("zero") or "")
    return f"%{flags}{m.group('width') or ''}{'.' + prec if prec is not None else ''}{kind}"


def _literal(text: str) -> str:
    """Text for a Go template: a ``{`` becomes an action printing it, so Go never reads ``{{`` into it."""
    return text.replace("{", '{{ "{" }}')


def _go_action(name: str, spec: str, constants: Mapping[str, str]) -> str:
    """One Python replacement field as Go template text."""
    root = re.match(r"[^.\[]*", name).group()  # type: ignore[union-attr]
    rest = name[len(root):]
    if root in constants and not rest:
        try:
            return _literal(format(constants[root], spec))
        except ValueError:
            return _literal(constants[root])
    if root == "value" and not rest:
        if not spec:
            return "{{ $value }}"
        if spec.endswith("%") and _SPEC.fullmatch(spec):
            return "{{ humanizePercentage $value }}"
        verb = _printf_verb(spec, for_string=False)
        return "{{ $value }}" if verb is None else f'{{{{ printf "{verb}" $value }}}}'
    if root == "labels":
        m = re.fullmatch(r"\[([^\]]+)\]", rest)
        if not rest:
            return "{{ $labels }}"
        arg = f"index $labels {json.dumps(m.group(1))}" if m else "$labels"
    elif rest or not _PLAIN_KEY.fullmatch(root):
        arg = f"index $labels {json.dumps(root)}"  # attribute access on a label is not meaningful: the label
    else:
        arg = f"$labels.{root}"
    if spec:
        verb = _printf_verb(spec, for_string=True)
        if verb is not None:
            return f'{{{{ printf "{verb}" {arg} }}}}'
    return f"{{{{ {arg} }}}}"


def go_template(template: str, constants: Optional[Mapping[str, str]] = None) -> str:
    """A ``str.format`` template of npuagent as a Prometheus (Go ``text/template``) template.

    ``constants`` are the fields that are the same for every alert of the rule:
    ``rule``, ``severity`` and the keys of its ``labels`` table. They are written
    in as text, because Prometheus's ``$labels`` in an annotation holds only the
    labels of the query's result: ``{{ $labels.alertname }}`` and
    ``{{ $labels.severity }}`` render empty there. Without ``constants`` they
    become ``$labels`` lookups all the same.

    :raises ValueError: the template is not valid format syntax (``npuagent check`` refuses it first).
    """
    out = []
    for text, name, spec, _conversion in string.Formatter().parse(template):
        out.append(_literal(text))
        if name is not None:
            out.append(_go_action(name, spec or "", constants or {}))
    return "".join(out)


def _go_float(v: float, verb: str = "v") -> str:
    """Go's ``%v`` (and ``%g`` without a precision) of a float64: the shortest digits that read back
    as ``v``, in exponent form when the exponent is below -4 or at least 6 (``1.234567e+06``)."""
    if v != v:
        return "NaN"
    if v in (math.inf, -math.inf):
        return "+Inf" if v > 0 else "-Inf"
    if v == 0:
        return "-0" if math.copysign(1.0, v) < 0 else "0"
    d = Decimal(repr(v))
    sign, digits, _exp = d.as_tuple()
    text = "".join(map(str, digits)).rstrip("0") or "0"
    x = d.adjusted()
    neg = "-" if sign else ""
    if x < -4 or x >= 6:
        mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
        return f"{neg}{mantissa}{'e' if verb != 'G' else 'E'}{'-' if x < 0 else '+'}{abs(x):02d}"
    if x < 0:
        return f"{neg}0.{'0' * (-x - 1)}{text}"
    whole, frac = text[:x + 1].ljust(x + 1, "0"), text[x + 1:]
    return f"{neg}{whole}{'.' + frac if frac else ''}"


_VERB = re.compile(r"%(?P<flags>[-+ #0]*)(?P<width>\d+)?(?:\.(?P<prec>\d+))?(?P<kind>[eEfFgGsv])")


def _go_printf(verb: str, arg: Any) -> str:
    """Go's ``printf`` of one verb, for the verbs :func:`go_template` writes."""
    m = _VERB.fullmatch(verb)
    if m is None:
        raise ValueError(f"unsupported printf verb {verb!r}")
    flags, width, prec, kind = m.group("flags"), m.group("width") or "", m.group("prec"), m.group("kind")
    if isinstance(arg, str):
        return ("%" + flags.replace("0", "") + width + "s") % arg
    v = float(arg)
    if v != v or v in (math.inf, -math.inf) or (kind in "gGv" and prec is None):
        text = _go_float(v, kind)
        if v == v and v >= 0 and "+" in flags:
            text = "+" + text
        elif v == v and v >= 0 and " " in flags:
            text = " " + text
        n = int(width or 0)
        if "-" in flags:
            return text.ljust(n)
        if "0" in flags and v == v and v not in (math.inf, -math.inf):
            sign = text[0] if text[0] in "+- " else ""
            return sign + text[len(sign):].rjust(n - len(sign), "0")
        return text.rjust(n)
    return ("%" + flags + width + ("." + prec if prec is not None else "") + kind) % v


_ACTION = re.compile(r"\{\{\s*(.*?)\s*\}\}")


def go_render(template: str, labels: Mapping[str, str], value: Optional[float]) -> str:
    """What Prometheus renders of a template :func:`go_template` wrote, for an alert with these
    labels and value (the ``$labels`` and ``$value`` of its annotations).

    Only the forms ``go_template`` writes are understood; a missing label renders
    empty, as in Prometheus (``missingkey=zero``).

    :raises ValueError: an action it does not know.
    """
    v = math.nan if value is None else value

    def arg(expr: str) -> Any:
        if expr == "$value":
            return v
        if expr == "$labels":
            return "map[" + " ".join(f"{k}:{x}" for k, x in sorted(labels.items())) + "]"
        if expr.startswith("$labels."):
            return labels.get(expr[len("$labels."):], "")
        m = re.fullmatch(r'index \$labels ("(?:[^"\\]|\\.)*")', expr)
        if m:
            return labels.get(json.loads(m.group(1)), "")
        raise ValueError(f"unsupported template action {{{{ {expr} }}}}")

    def action(m: re.Match) -> str:
        expr = m.group(1)
        if expr.startswith('"'):
            return str(json.loads(expr))
        if expr.startswith("humanizePercentage "):
            x = arg(expr.split(" ", 1)[1])
            return _go_printf("%.4g", float(x) * 100) + "%"
        pm = re.fullmatch(r'printf ("(?:[^"\\]|\\.)*") (.+)', expr)
        if pm:
            return _go_printf(json.loads(pm.group(1)), arg(pm.group(2)))
        x = arg(expr)
        return _go_float(x) if isinstance(x, float) else str(x)

    return _ACTION.sub(action, template)


def annotation_key(key: str) -> str:
    """npuagent's annotation name -> Prometheus's (``runbook`` -> ``runbook_url``)."""
    return "runbook_url" if key == "runbook" else key


# -- rules ------------------------------------------------------------------------------------------------


@dataclass
class _Runner:
    """A configured collector as a rule's dry evaluation sees it: its configuration, no health yet."""

    name: str
    cfg: Any
    health: Health = field(default_factory=Health)


def _export(impl: Any) -> Tuple[Optional[str], str]:
    fn = getattr(impl, "export", None)
    if fn is None:
        return None, "its rule type has no PromQL export"
    try:
        return str(fn()), ""
    except ValueError as e:
        return None, str(e) or "its rule type cannot say it in PromQL"


def _dry_evaluate(impl: Any, cfg: Any) -> None:
    """One evaluation on an empty store, so that a rule learns what only the agent's runtime tells it."""
    from .events import EventLog
    from .rules import EvalContext
    from .store import Store

    collectors = {c.name: _Runner(c.name, c) for c in getattr(cfg, "collectors", ())}
    ctx = EvalContext(now=0.0, store=Store(), events=EventLog(), alerts=lambda name: [], collectors=collectors)
    with contextlib.suppress(Exception):  # a rule that cannot run dry simply stays unexported
        list(impl.evaluate(ctx) or ())


def exports(cfg: Any, compiled: Sequence[Any]) -> Tuple[Dict[str, str], Dict[str, str]]:
    """(rule name -> PromQL, rule name -> why it is not exported), dependencies judged first."""
    from .rules import order

    exprs: Dict[str, str] = {}
    skipped: Dict[str, str] = {}
    for rule in order(compiled):
        expr, reason = _export(rule.impl)
        if expr is None:
            _dry_evaluate(rule.impl, cfg)
            expr, reason = _export(rule.impl)
        missing = [d for d in getattr(rule.impl, "depends_on", lambda: ())() if d not in exprs]
        if expr is not None and missing:
            expr, reason = None, f"it reads {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} " \
                                 f"not exported"
        if expr is None:
            skipped[rule.name] = " ".join(reason.split())
        else:
            exprs[rule.name] = expr
    return exprs, skipped


def constants(rule: Any) -> Dict[str, str]:
    """The template fields that are the same for every alert of ``rule``: its name, severity and labels table."""
    o = rule.options
    return {**dict(o["labels"]), "rule": rule.name, "severity": o["severity"]}


def alerting_rule(rule: Any, expr: str) -> Dict[str, Any]:
    """One Prometheus alerting rule (a dict in the YAML's key order) for a compiled rule and its PromQL."""
    o = rule.options
    out: Dict[str, Any] = {"alert": rule.name, "expr": expr}
    if o["for"] > 0:
        out["for"] = format_duration(o["for"])
    if o["clear_for"] > 0 and not any(o.get(k) is not None for k in CLEAR_KEYS):
        out["keep_firing_for"] = format_duration(o["clear_for"])
    out["labels"] = {"severity": o["severity"], **dict(o["labels"])}
    annotations = {k: go_template(o[k], constants(rule)) for k in ("summary", "description") if o[k]}
    if o["runbook"]:
        annotations[annotation_key("runbook")] = o["runbook"]
    if annotations:
        out["annotations"] = annotations
    return out


def prometheus_rules(cfg: Any, compiled: Sequence[Any], group: str = "npuagent") -> str:
    """The Prometheus alerting-rules file equivalent to ``compiled`` (the rules of ``cfg``), as YAML.

    Rules are in the configuration's order; those that cannot be exported are listed,
    with the reason, in a comment at the top.
    """
    exprs, skipped = exports(cfg, compiled)
    files = ", ".join(getattr(cfg, "files", ())) or "the built-in defaults"
    head = [
        "# Prometheus alerting rules generated by `npuagent rules export --format prometheus`",
        f"# from {files}.",
        "# Each agent evaluates these rules itself; load this file in the fleet's Prometheus to see the same",
        "# conditions centrally. Edit the TOML and export again rather than editing this file.",
    ]
    if skipped:
        head.append(f"# Not exported ({len(skipped)} of {len(compiled)}; npuagent still evaluates them):")
        head.extend(f"#   {r.name}: {skipped[r.name]}" for r in compiled if r.name in skipped)
    from .rules import order

    # dependency order: Prometheus evaluates a group's rules in turn, and a rule reading ALERTS of another
    # sees that evaluation's alerts only if the other came first
    rules = [alerting_rule(r, exprs[r.name]) for r in order(compiled) if r.name in exprs]
    body = yaml_dump({"groups": [{"name": group, "rules": rules}]}) if rules else "groups: []\n"
    return "\n".join(head) + "\n" + body
