"""TOML (``npuagent.toml`` plus ``conf.d/*.toml``) -> validated, frozen objects.

Decisions, as an operator of a fleet would expect them:

* ``-c FILE`` names the main file; ``conf.d/*.toml`` beside it is read after it
  in name order (so fleet tools drop files, as with systemd drop-ins). ``-c DIR``
  means ``DIR/npuagent.toml`` and ``DIR/conf.d``. With no main file at the
  default path the agent runs on its defaults: everything has one.
* Tables merge key by key and a later file wins a key; ``[[rules]]`` of all
  files add up, and two rules of one name are an error naming both places.
* Every problem carries file, line and key, and all problems of all files are
  reported together, as ``nginx -t`` and ``promtool check config`` would.
* Unknown keys are errors, with "did you mean" when one is close: a misspelt
  threshold silently ignored is a missed page.
* Run as root, a file that a non-root user can change is refused (see
  :mod:`npuagent.permissions`).
"""

from __future__ import annotations

import glob
import os
import re
import sys
import types
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from . import permissions, remediation
from .options import (
    Array,
    Boolean,
    Duration,
    OneOf,
    Option,
    OptionError,
    String,
    close_matches,
    validate_table,
)
from .tomllines import Path, key_lines, line_of

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python < 3.11 only
    import tomli as tomllib

DEFAULT_PATH = "/etc/npuagent/npuagent.toml"

# -- the core's own keys -------------------------------------------------------

AGENT_OPTIONS = (
    Option("log_level", OneOf("debug", "info", "warning", "error"), "info", "Logging level of the daemon."),
    Option("state_dir", String(), "/var/lib/npuagent", "Where state (alerts, audit log, offsets) is kept."),
    Option("evaluation_interval", Duration(min=0.1), 1.0,
           "Rules are evaluated after every collection round, and at least this often."),
    *remediation.AGENT_OPTIONS,
)

_LISTEN_RE = r"(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.\-]+):([0-9]{1,5})"
HTTP_OPTIONS = (
    Option("enabled", Boolean(), True, "Serve /metrics, /healthz and /status."),
    Option("listen", String(_LISTEN_RE, 'an address such as "127.0.0.1:9740" or "[::1]:9740"'),
           "127.0.0.1:9740", "Address and port to listen on; loopback unless you mean otherwise."),
)

CONTROL_OPTIONS = (
    Option("enabled", Boolean(), True, "Listen for inference processes using npuagent.client."),
    Option("socket", String(), "/run/npuagent/control.sock",
           "The control socket; bind-mount it into serving containers."),
    Option("mode", String(r"0?[0-7]{3}", 'an octal mode such as "0660"'), "0660", "The socket file's mode."),
    Option("group", String(), "npuagent", "The socket file's group (with mode 0660: who may connect)."),
    Option("users", Array(String()), (), "Users whose processes may connect, besides root and the agent's user."),
    Option("groups", Array(String()), ("npuagent",), "Groups whose members' processes may connect."),
)

PLUGINS_OPTIONS = (
    Option("disabled", Array(String()), (), "Names of plugins not to load (see `npuagent plugins`)."),
)

COLLECTOR_COMMON = (
    Option("type", String(), None, "The collector type; defaults to the table's name."),
    Option("enabled", Boolean(), None, "Run this collector (default: the type's own default)."),
    Option("interval", Duration(min=0.1), None, "Time between two collections."),
    Option("timeout", Duration(min=0.05), None, "A collection still running after this is abandoned."),
)

TOP_LEVEL = ("agent", "http", "control", "plugins", "collectors", "rules", "actions")


# -- results -------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Problem:
    """One configuration error, printed as ``file:line: key: message``."""

    file: str
    line: int
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.key}: {self.message}" if self.key else \
            f"{self.file}:{self.line}: {self.message}"


class ConfigError(Exception):
    """The configuration is invalid; ``problems`` lists every error found."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = sorted(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass(frozen=True)
class TableConfig:
    """One configured instance of a collector, rule or action type."""

    name: str
    type: str
    plugin: str
    options: Mapping[str, Any]
    file: str
    line: int
    #: the line of each key written in the table, for errors found after validation
    lines: Mapping[str, int] = field(default_factory=dict, compare=False)

    def where(self, key: str = "") -> Tuple[str, int]:
        return self.file, self.lines.get(key, self.line)


@dataclass(frozen=True)
class CollectorConfig(TableConfig):
    interval: float = 15.0
    timeout: float = 10.0


@dataclass(frozen=True)
class Config:
    agent: Mapping[str, Any]
    http: Mapping[str, Any]
    disabled_plugins: Tuple[str, ...]
    plugin_options: Mapping[str, Mapping[str, Any]]
    collectors: Tuple[CollectorConfig, ...]
    rules: Tuple[TableConfig, ...]
    actions: Mapping[str, TableConfig]
    files: Tuple[str, ...] = field(default=())
    control: Mapping[str, Any] = field(default_factory=lambda: freeze(validate_table({}, CONTROL_OPTIONS)[0]))

    @property
    def listen(self) -> Tuple[str, int]:
        m = re.fullmatch(_LISTEN_RE, self.http["listen"])
        assert m is not None  # validated at load
        return m.group(1).strip("[]"), int(m.group(2))


def freeze(value: Any) -> Any:
    """Dicts become read-only mappings and lists tuples, all the way down."""
    if isinstance(value, Mapping):
        return types.MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    return value


# -- reading and merging -------------------------------------------------------


@dataclass
class Sources:
    """The parsed files merged into one document, remembering where each key came from."""

    doc: Dict[str, Any] = field(default_factory=dict)
    where: Dict[Path, Tuple[str, int]] = field(default_factory=dict)
    files: List[str] = field(default_factory=list)
    problems: List[Problem] = field(default_factory=list)

    def at(self, path: Path) -> Tuple[str, int]:
        """(file, line) of ``path`` or of its nearest recorded ancestor."""
        for n in range(len(path), 0, -1):
            if path[:n] in self.where:
                return self.where[path[:n]]
        return (self.files[0] if self.files else "<defaults>", 1)

    def problem(self, path: Path, message: str) -> None:
        file, line = self.at(path)
        self.problems.append(Problem(file, line, format_path(path), message))


def format_path(path: Path) -> str:
    """``("rules", 0, "for")`` -> ``rules[0].for``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def config_files(path: Optional[str]) -> Tuple[str, List[str], bool]:
    """(main file, conf.d files, whether the main file was asked for explicitly)."""
    explicit = path is not None
    path = path or DEFAULT_PATH
    if os.path.isdir(path):
        confdir, main = path, os.path.join(path, "npuagent.toml")
    else:
        confdir, main = os.path.dirname(os.path.abspath(path)), path
    return main, sorted(glob.glob(os.path.join(confdir, "conf.d", "*.toml"))), explicit


def merge(into: Dict[str, Any], new: Mapping[str, Any], lines: Mapping[Path, int], file: str,
           src: Sources, prefix: Path = ()) -> None:
    for key, value in new.items():
        path = prefix + (key,)
        if path == ("rules",) and isinstance(value, list):
            offset = len(into.get("rules", []))
            into.setdefault("rules", []).extend(value)
            for p, line in lines.items():
                if p[:1] == ("rules",) and len(p) > 1 and isinstance(p[1], int):
                    src.where[("rules", p[1] + offset) + p[2:]] = (file, line)
            continue
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            src.where.setdefault(path, (file, line_of(lines, path)))
            merge(into[key], value, lines, file, src, path)
            continue
        into[key] = value
        for p, line in lines.items():
            if p[:len(path)] == path:
                src.where[p] = (file, line)
        src.where[path] = (file, line_of(lines, path))


def read_sources(path: Optional[str] = None, strict: Optional[bool] = None) -> Sources:
    """Read and merge the main file and its conf.d; syntax and permission errors go to ``problems``.

    :param strict: refuse files non-root users can change; defaults to "running as root".
    """
    strict = permissions.running_as_root() if strict is None else strict
    main, dropins, explicit = config_files(path)
    src = Sources()
    candidates = []
    if os.path.exists(main) or explicit:
        candidates.append(main)
    candidates.extend(dropins)
    if strict:
        confd = os.path.join(os.path.dirname(os.path.abspath(main)), "conf.d")
        checked = candidates + ([confd] if os.path.isdir(confd) else [])
        for message in permissions.check_files([c for c in checked if os.path.exists(c)], "configuration"):
            src.problems.append(Problem(message.split(": ", 1)[0], 1, "", message.split(": ", 1)[1]))
    return read_files(candidates, src)


def read_files(files: Sequence[str], src: Optional[Sources] = None,
               tables: Optional[Sequence[str]] = None) -> Sources:
    """Parse and merge exactly these files, in order; unreadable files and syntax errors go to ``problems``.

    :param tables: keep only these top-level tables (``rules test`` reads rule files this way).
    """
    src = src if src is not None else Sources()
    for file in files:
        try:
            with open(file, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            src.problems.append(Problem(file, 0, "", f"cannot read: {e.strerror}"))
            continue
        except UnicodeDecodeError as e:
            line = e.object[:e.start].count(b"\n") + 1
            src.problems.append(Problem(file, line, "", "not valid UTF-8"))
            continue
        src.files.append(file)
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            m = re.search(r"\(at line (\d+), column \d+\)", str(e))
            line = int(m.group(1)) if m else (getattr(e, "lineno", 0) or 1)
            message = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(e)) if m else str(e)
            src.problems.append(Problem(file, line, "", f"TOML syntax error: {message}"))
            continue
        if tables is not None:
            doc = {k: v for k, v in doc.items() if k in tables}
        merge(src.doc, doc, key_lines(text), file, src)
    return src


def disabled_plugins(src: Sources) -> Tuple[str, ...]:
    """The ``[plugins] disabled`` list, read before the plugins load (they decide what else is valid)."""
    value = src.doc.get("plugins", {})
    value = value.get("disabled", ()) if isinstance(value, dict) else ()
    return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()


# -- validation ----------------------------------------------------------------


def validated(src: Sources, table: Any, options: Sequence[Option], path: Path) -> Dict[str, Any]:
    """``table`` checked against ``options``: the values, defaults filled in; problems go to ``src``."""
    if not isinstance(table, dict):
        src.problem(path, "expected a table")
        return {}
    values, errors = validate_table(table, options)
    for subpath, message in errors:
        src.problem(path + subpath, message)
    return values


def build(src: Sources, plugins: Any) -> Config:
    """Validate the merged document against the core's keys and every plugin's
    declarations, and return the frozen :class:`Config`.

    :param plugins: a loaded :class:`npuagent.plugins.Plugins`.
    :raises ConfigError: with every problem found, syntax errors of ``src`` included.
    """
    doc = src.doc
    for key in doc:
        if key not in TOP_LEVEL:
            src.problem((key,), f"unknown table{close_matches(key, TOP_LEVEL)}")
    agent = validated(src, doc.get("agent", {}), AGENT_OPTIONS, ("agent",))
    http = validated(src, doc.get("http", {}), HTTP_OPTIONS, ("http",))
    control = validated(src, doc.get("control", {}), CONTROL_OPTIONS, ("control",))

    plugins_doc = doc.get("plugins", {})
    plugin_options: Dict[str, Any] = {}
    declared = plugins.config_options()
    known_plugins = [i.name for i in plugins.infos.values()]
    if isinstance(plugins_doc, dict):
        core_part = {k: v for k, v in plugins_doc.items() if not isinstance(v, dict)}
        disabled = validated(src, core_part, PLUGINS_OPTIONS, ("plugins",)).get("disabled", ())
        for name in disabled:
            if name not in known_plugins:
                src.problem(("plugins", "disabled"), f"unknown plugin {name!r}{close_matches(name, known_plugins)}")
        for name, table in plugins_doc.items():
            if not isinstance(table, dict):
                continue
            if name not in known_plugins:
                src.problem(("plugins", name), f"unknown plugin {name!r}{close_matches(name, known_plugins)}")
            elif plugins.infos[name].status == "loaded":
                plugin_options[name] = validated(src, table, declared.get(name, ()), ("plugins", name))
    else:
        src.problem(("plugins",), "expected a table")
        disabled = ()
    for name in declared:
        if name not in plugin_options:
            plugin_options[name] = validate_table({}, declared[name])[0]

    collectors = _collectors(src, doc.get("collectors", {}), plugins.collector_types(), plugin_options)
    from .rules import RULE_COMMON

    rule_types = plugins.rule_types()
    rules = []
    seen_rules: Dict[str, Path] = {}
    raw_rules = doc.get("rules", [])
    if not isinstance(raw_rules, list):
        src.problem(("rules",), "expected [[rules]] tables")
        raw_rules = []
    for i, table in enumerate(raw_rules):
        path: Path = ("rules", i)
        rule = _typed(src, table, path, rule_types, RULE_COMMON, "rule", plugin_options)
        if rule is None:
            continue
        if rule.name in seen_rules:
            first = src.at(seen_rules[rule.name])
            src.problem(path + ("name",), f"rule {rule.name!r} is already defined at {first[0]}:{first[1]}")
            continue
        seen_rules[rule.name] = path
        rules.append(rule)

    actions = {}
    raw_actions = doc.get("actions", {})
    if not isinstance(raw_actions, dict):
        src.problem(("actions",), "expected [actions.<name>] tables")
        raw_actions = {}
    action_types = plugins.action_types()
    for name, table in raw_actions.items():
        if isinstance(table, dict):
            table = {"name": name, **table}
        action = _typed(src, table, ("actions", name), action_types, remediation.ACTION_COMMON, "action",
                        plugin_options)
        if action is not None:
            actions[name] = action

    if src.problems:
        raise ConfigError(src.problems)
    return Config(
        agent=freeze(agent), http=freeze(http), disabled_plugins=tuple(disabled),
        plugin_options=freeze(plugin_options), collectors=tuple(collectors), rules=tuple(rules),
        actions=freeze(actions), files=tuple(src.files), control=freeze(control),
    )


def _typed(src: Sources, table: Any, path: Path, registered: Mapping[str, Tuple[str, Any]],
           common: Sequence[Option], what: str, plugin_options: Mapping[str, Any]) -> Optional[TableConfig]:
    """Validate a rule or action table against its type's declared keys."""
    if not isinstance(table, dict):
        src.problem(path, "expected a table")
        return None
    type_name = table.get("type")
    if not isinstance(type_name, str):
        src.problem(path, f'missing required key "type" (the {what} type: one of {", ".join(sorted(registered))})'
                    if "type" not in table else f"type: expected a string, got {table['type']!r}")
        return None
    if type_name not in registered:
        src.problem(path + ("type",), f"unknown {what} type {type_name!r}{close_matches(type_name, list(registered))}"
                    f" (known: {', '.join(sorted(registered)) or 'none'})")
        return None
    plugin, kind = registered[type_name]
    values = validated(src, table, (*common, *kind.options), path)
    file, line = src.at(path)
    name = values.get("name") or str(path[-1])
    lines = {k: src.at((*path, k))[1] for k in table}
    return TableConfig(name, type_name, plugin, freeze(values), file, line, freeze(lines))


def _collectors(src: Sources, raw: Any, types_: Mapping[str, Tuple[str, Any]],
                plugin_options: Mapping[str, Any]) -> List[CollectorConfig]:
    if not isinstance(raw, dict):
        src.problem(("collectors",), "expected [collectors.<name>] tables")
        raw = {}
    out = []
    tabled_types = set()
    for name, table in raw.items():
        path: Path = ("collectors", name)
        if not isinstance(table, dict):
            src.problem(path, "expected a table")
            continue
        type_name = table.get("type", name)
        if type_name not in types_:
            src.problem(path + (("type",) if "type" in table else ()),
                        f"unknown collector type {type_name!r}{close_matches(str(type_name), list(types_))}"
                        f" (known: {', '.join(sorted(types_)) or 'none'}; is its plugin installed and enabled?)")
            continue
        tabled_types.add(type_name)
        plugin, kind = types_[type_name]
        values = validated(src, table, (*COLLECTOR_COMMON, *kind.options), path)
        if values.get("enabled") is False:  # a table of its own means "run it" unless it says otherwise
            continue
        out.append(_collector_config(src, name, type_name, plugin, kind, values, path))
    for type_name, (plugin, kind) in sorted(types_.items()):
        if type_name in tabled_types or not kind.enabled_by_default:
            continue
        values, errors = validate_table({}, (*COLLECTOR_COMMON, *kind.options))
        if errors:  # a type that needs configuration cannot run on its defaults
            continue
        out.append(_collector_config(src, type_name, type_name, plugin, kind, values, ("collectors", type_name)))
    return out


def _collector_config(src: Sources, name: str, type_name: str, plugin: str, kind: Any,
                      values: Dict[str, Any], path: Path) -> CollectorConfig:
    interval = values.pop("interval", None) or kind.interval
    timeout = values.pop("timeout", None) or min(kind.timeout, interval)
    values.pop("enabled", None)
    values.pop("type", None)
    file, line = src.at(path)
    return CollectorConfig(name, type_name, plugin, freeze(values), file, line, interval=interval, timeout=timeout)


def load(path: Optional[str], plugins: Any, strict: Optional[bool] = None) -> Config:
    """Read, merge and validate in one go (plugins already loaded)."""
    return build(read_sources(path, strict), plugins)


__all__ = ["Config", "ConfigError", "OptionError", "Problem", "load", "read_sources"]
