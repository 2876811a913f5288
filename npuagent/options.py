"""Declared configuration keys and the types of their values.

Every table of the configuration is checked against a list of :class:`Option`:
the core's own tables, each plugin's ``[plugins.<name>]`` table, and the tables
of every collector, rule and action type. A plugin declares its keys in one
place, and ``npuagent check`` can then say of any key, in any file, whether it
is known, what it should hold, and what was meant when it is misspelt.
"""

from __future__ import annotations

import abc
import math
import re
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, Tuple


class OptionError(ValueError):
    """A value does not fit its declared type. ``path`` is the key path below
    the option (for nested tables), so the message can name the exact key."""

    def __init__(self, message: str, path: Tuple[Any, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.path = path


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


#: The default of an option that has none: leaving it out is an error.
REQUIRED: Any = _Required()

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_duration(text: str) -> float:
    """``"500ms"``, ``"30s"``, ``"5m"``, ``"1h30m"`` -> seconds.

    Units as Prometheus writes them; a string so that "30" can never be read
    as thirty of the wrong unit.
    """
    if not isinstance(text, str):
        raise OptionError(f'expected a duration string such as "30s", "5m" or "1h30m", got {text!r}')
    s = text.strip()
    pos, total, last_unit = 0, 0.0, math.inf
    for m in _DURATION_RE.finditer(s):
        if m.start() != pos:
            break
        unit = _DURATION_UNITS[m.group(2)]
        if unit >= last_unit:
            break
        total += float(m.group(1)) * unit
        last_unit, pos = unit, m.end()
    if pos != len(s) or not s:
        raise OptionError(f'expected a duration such as "500ms", "30s", "5m" or "1h30m", got {text!r}')
    return total


def format_duration(seconds: float) -> str:
    """Seconds -> the shortest duration string that parses back to them."""
    if seconds == 0:
        return "0s"
    ms = round(seconds * 1000)
    parts = []
    for unit, size in (("d", 86400000), ("h", 3600000), ("m", 60000), ("s", 1000), ("ms", 1)):
        n, ms = divmod(ms, size)
        if n:
            parts.append(f"{n}{unit}")
    return "".join(parts)


def _type_name(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
             list: "an array", dict: "a table"}
    return names.get(type(value), type(value).__name__)


class ValueType(abc.ABC):
    """The type of an option's value: checks a parsed TOML value and converts it."""

    description = "a value"

    @abc.abstractmethod
    def convert(self, value: Any) -> Any:
        """Return the value in its Python form, or raise :class:`OptionError`."""

    def wrong(self, value: Any) -> OptionError:
        shown = repr(value) if not isinstance(value, (dict, list)) else _type_name(value)
        return OptionError(f"expected {self.description}, got {shown}")


class String(ValueType):
    description = "a string"

    def __init__(self, pattern: Optional[str] = None, hint: str = "") -> None:
        self.pattern = re.compile(pattern) if pattern else None
        if hint:
            self.description = hint

    def convert(self, value: Any) -> str:
        if not isinstance(value, str) or (self.pattern and not self.pattern.fullmatch(value)):
            raise self.wrong(value)
        return value


class Boolean(ValueType):
    description = "true or false"

    def convert(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise self.wrong(value)
        return value


class Number(ValueType):
    """A float (an integer is accepted); optional inclusive bounds."""

    description = "a number"
    integer = False

    def __init__(self, min: Optional[float] = None, max: Optional[float] = None) -> None:
        self.min, self.max = min, max
        kind = "an integer" if self.integer else "a number"
        bounds = []
        if min is not None:
            bounds.append(f">= {min:g}")
        if max is not None:
            bounds.append(f"<= {max:g}")
        self.description = kind + (" " + " and ".join(bounds) if bounds else "")

    def convert(self, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.wrong(value)
        if self.integer and not isinstance(value, int):
            raise self.wrong(value)
        if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
            raise self.wrong(value)
        return value if self.integer else float(value)


class Integer(Number):
    integer = True


class Duration(ValueType):
    """A duration string, converted to seconds (a float)."""

    def __init__(self, min: float = 0.0, allow_zero: bool = False) -> None:
        self.min, self.allow_zero = min, allow_zero
        self.description = 'a duration such as "30s", "5m" or "1h30m"'

    def convert(self, value: Any) -> float:
        if not isinstance(value, str):
            hint = f' (write "{value}s" for seconds)' if isinstance(value, (int, float)) and not isinstance(
                value, bool) else ""
            raise OptionError(f"expected {self.description}, got {_type_name(value)} {value!r}{hint}")
        seconds = parse_duration(value)
        if seconds == 0 and not self.allow_zero:
            raise OptionError(f"expected a duration greater than zero, got {value!r}")
        if seconds and seconds < self.min:
            raise OptionError(f"expected a duration of at least {format_duration(self.min)}, got {value!r}")
        return seconds


class OneOf(ValueType):
    def __init__(self, *choices: str) -> None:
        self.choices = choices
        self.description = "one of " + ", ".join(f'"{c}"' for c in choices)

    def convert(self, value: Any) -> str:
        if value not in self.choices:
            raise self.wrong(value)
        return value


class Array(ValueType):
    """An array whose items all have one type; converted to a tuple."""

    def __init__(self, item: ValueType) -> None:
        self.item = item
        self.description = f"an array, each item {item.description}"

    def convert(self, value: Any) -> tuple:
        if not isinstance(value, list):
            raise self.wrong(value)
        out = []
        for i, v in enumerate(value):
            try:
                out.append(self.item.convert(v))
            except OptionError as e:
                raise OptionError(e.message, (i, *e.path)) from None
        return tuple(out)


class Map(ValueType):
    """A table of free keys (label names, environment variables) to values of one type."""

    def __init__(self, value: ValueType, key_pattern: str = r"[A-Za-z_][A-Za-z0-9_]*",
                 description: str = "") -> None:
        self.value = value
        self.key_re = re.compile(key_pattern)
        self.description = description or f"a table of {value.description}s"

    def convert(self, value: Any) -> Mapping[str, Any]:
        if not isinstance(value, dict):
            raise self.wrong(value)
        out = {}
        for k, v in value.items():
            if not self.key_re.fullmatch(k):
                raise OptionError(f"{k!r} is not a valid name (expected {self.key_re.pattern})", (k,))
            try:
                out[k] = self.value.convert(v)
            except OptionError as e:
                raise OptionError(e.message, (k, *e.path)) from None
        return out


class Table(ValueType):
    """A nested table with its own declared keys (``budget = {max = 4, within = "1h"}``)."""

    description = "a table"

    def __init__(self, options: Sequence[Option]) -> None:
        self.options = tuple(options)

    def convert(self, value: Any) -> Mapping[str, Any]:
        if not isinstance(value, dict):
            raise self.wrong(value)
        values, errors = validate_table(value, self.options)
        if errors:
            path, message = errors[0]
            raise OptionError(message, path)
        return values


@dataclass(frozen=True)
class Option:
    """One key of a table: its name, type, default and a line of help."""

    name: str
    type: ValueType
    default: Any = REQUIRED
    help: str = ""

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


def close_matches(word: str, candidates: Sequence[str]) -> str:
    """A "did you mean" suffix for a misspelt key, or the empty string."""
    import difflib

    found = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f' (did you mean "{found[0]}"?)' if found else ""


def validate_table(
    table: Mapping[str, Any], options: Sequence[Option]
) -> Tuple[dict, list]:
    """Check ``table`` against ``options``.

    Returns the converted values, with defaults filled in, and every error
    found as ``(key path, message)``; all of them, so that one run of
    ``npuagent check`` shows everything that is wrong.
    """
    known = {o.name: o for o in options}
    values: dict = {}
    errors: list = []
    for key, raw in table.items():
        option = known.get(key)
        if option is None:
            errors.append(((key,), f"unknown key{close_matches(key, list(known))}"))
            continue
        try:
            values[key] = option.type.convert(raw)
        except OptionError as e:
            errors.append(((key, *e.path), e.message))
    for option in options:
        if option.name in table:
            continue
        if option.required:
            errors.append(((), f'missing required key "{option.name}" ({option.type.description})'))
        else:
            values[option.name] = option.default
    return values, errors
