"""The ``npuagent`` command: run | once | check | plugins.

Exit codes follow the tools operators know: ``check`` exits 2 on an invalid
configuration (as ``nginx -t`` and ``promtool check config`` do), ``once``
exits 1 when a collector failed, and ``run`` exits 2 when it cannot start on
its configuration.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from typing import Any, List, Optional, Sequence, Tuple

from . import __version__
from . import config as config_mod
from .model import Event, Sample
from .plugins import Plugins, StartupError

log = logging.getLogger("npuagent")

_SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class _JournalFormatter(logging.Formatter):
    """``<6>npuagent.agent: message``: journald reads the priority from the prefix
    and stamps the time itself."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        prefix = f"<{_SYSLOG_PRIORITY.get(record.levelno, 6)}>"
        return "\n".join(prefix + line for line in text.splitlines())


def setup_logging(verbose: int, level: Optional[str] = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(_JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else getattr(logging, (level or "info").upper()))


def load(path: Optional[str], strict: Optional[bool] = None) -> Tuple[Plugins, config_mod.Config]:
    """Plugins first (a ``[plugins] disabled`` list decides which load), then the configuration.

    :raises config_mod.ConfigError: with every problem, including refused plugin files.
    :raises StartupError: a plugin implements an unknown hook.
    """
    src = config_mod.read_sources(path, strict)
    plugins = Plugins()
    plugins.load(disabled=config_mod.disabled_plugins(src), strict=strict)
    for info in plugins.infos.values():
        if info.status == "failed" and "refusing plugin code" in info.error:
            src.problems.append(config_mod.Problem(info.files[0] if info.files else info.dist, 1, "", info.error))
    return plugins, config_mod.build(src, plugins)


def build_check(cfg: config_mod.Config, plugins: Plugins) -> List[config_mod.Problem]:
    """What only building can tell: every collector made (and closed) through its factory, every rule
    compiled. Factories do no I/O, so this is safe on a live host."""
    from .agent import Agent
    from .rules import compile_rules

    types_ = plugins.collector_types()
    problems = []
    for c in cfg.collectors:
        try:
            made = types_[c.type][1].factory(Agent.context(c, cfg))
        except Exception as e:
            problems.append(config_mod.Problem(c.file, c.line, f"collectors.{c.name}", str(e)))
            continue
        close = getattr(made, "close", None)
        if close:
            close()
    try:
        compile_rules(cfg, plugins, {m.name: m for _p, kind in types_.values() for m in kind.metrics})
    except config_mod.ConfigError as e:
        problems.extend(e.problems)
    return problems


def cmd_check(args: argparse.Namespace) -> int:
    try:
        plugins, cfg = load(args.config)
        problems = build_check(cfg, plugins)
        if problems:
            raise config_mod.ConfigError(problems)
    except (config_mod.ConfigError, StartupError) as e:
        print(e, file=sys.stderr)
        count = len(getattr(e, "problems", [e]))
        print(f"FAILED: {count} error{'s' * (count != 1)}", file=sys.stderr)
        return 2
    print(f"OK: {len(cfg.files)} file(s), {len(cfg.collectors)} collector(s), {len(cfg.rules)} rule(s), "
          f"{len(cfg.actions)} action(s)")
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    try:
        plugins, _cfg = load(args.config)
    except StartupError as e:
        print(e, file=sys.stderr)
        return 2
    except config_mod.ConfigError:
        plugins = Plugins()
        plugins.load(disabled=config_mod.disabled_plugins(config_mod.read_sources(args.config)))
    provides: dict = {}
    for kind, table in (("collector", plugins.collector_types()), ("rule", plugins.rule_types()),
                        ("action", plugins.action_types())):
        for name, (plugin, _t) in table.items():
            provides.setdefault(plugin, []).append(f"{kind}:{name}")
    rows = [("PLUGIN", "DISTRIBUTION", "VERSION", "STATUS", "HOOKS", "PROVIDES")]
    for info in sorted(plugins.infos.values(), key=lambda i: (not i.builtin, i.name)):
        status = info.status + (f" ({info.error})" if info.error else "")
        rows.append((info.name, info.dist, info.version, status,
                     ",".join(h.replace("npuagent_", "") for h in info.hooks) or "-",
                     ",".join(sorted(provides.get(info.name, []))) or "-"))
    _print_table(rows)
    return 0


def _print_table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def _value(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(int(v)) if v == int(v) and abs(v) < 1e15 else repr(v)


def cmd_once(args: argparse.Namespace) -> int:
    from .agent import Agent

    try:
        plugins, cfg = load(args.config)
        agent = Agent(cfg, plugins, config_path=args.config)
    except (config_mod.ConfigError, StartupError) as e:
        print(e, file=sys.stderr)
        return 2
    items = agent.collect_once()
    failed = [r for r in agent.runners.values() if not r.health.up]
    samples = sorted((i for i in items if isinstance(i, Sample)), key=lambda s: (s.name, sorted(s.labels.items())))
    events = [i for i in items if isinstance(i, Event)]
    if args.format == "json":
        json.dump({
            "samples": [{"name": s.name, "labels": dict(s.labels), "value": s.value} for s in samples],
            "events": [{"kind": e.kind, "labels": dict(e.labels), "message": e.message} for e in events],
            "collectors": {r.name: {"up": bool(r.health.up), "error": r.health.last_error}
                           for r in agent.runners.values()},
        }, sys.stdout, indent=1, default=str)
        print()
    elif args.format == "prom":
        from prometheus_client.exposition import generate_latest

        from .http import registry_for

        sys.stdout.write(generate_latest(registry_for(agent)).decode())
    else:
        rows = [("METRIC", "VALUE")]
        for s in samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            rows.append((f"{s.name}{{{labels}}}" if labels else s.name, _value(s.value)))
        _print_table(rows)
        for e in events:
            print(f"event {e.kind} {dict(e.labels)}: {e.message}")
    for r in failed:
        print(f"collector {r.name} failed: {r.health.last_error}", file=sys.stderr)
    agent.shutdown()
    return 1 if failed else 0


def state_path(state_dir: str) -> str:
    return os.path.join(state_dir, "state.db")


def start_control(cfg: config_mod.Config) -> Any:
    """The control socket apps connect to; an agent that cannot listen there still watches and heals the rest."""
    from .control import ControlServer

    c = cfg.control
    if not c["enabled"]:
        return None
    try:
        return ControlServer(c["socket"], users=c["users"], groups=c["groups"], mode=int(c["mode"], 8),
                             group=c["group"]).start()
    except OSError as e:
        log.error("cannot listen on the control socket %s (%s): apps cannot connect; actions on apps will fail",
                  c["socket"], e)
        return None


#: glibc's mallopt() parameter that caps the malloc arenas (malloc.h: M_ARENA_MAX)
M_ARENA_MAX = -8


def fewer_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas, as ``MALLOC_ARENA_MAX=2`` would, unless the environment already says.

    glibc gives each thread that allocates an arena of its own, up to eight per core; the agent has a dozen
    threads that mostly wait (collector workers, remediation, HTTP, the control socket), and their arenas
    are resident memory that buys nothing (1.5 MiB of the daemon's 31). Must run before those threads
    start. Elsewhere than glibc (musl has no mallopt) this does nothing."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        import ctypes

        return bool(ctypes.CDLL(None).mallopt(M_ARENA_MAX, arenas))
    except (OSError, AttributeError):
        return False


def cmd_run(args: argparse.Namespace) -> int:
    from .agent import Agent
    from .http import serve
    from .state import State

    fewer_malloc_arenas()
    try:
        plugins, cfg = load(args.config)
        setup_logging(args.verbose, cfg.agent["log_level"])
    except (config_mod.ConfigError, StartupError) as e:
        log.error("cannot start, the configuration is invalid:\n%s", e)
        return 2
    try:
        state = State(state_path(cfg.agent["state_dir"]))
    except (OSError, Exception) as e:
        log.error("cannot open the state database in %s: %s", cfg.agent["state_dir"], e)
        return 1
    control = start_control(cfg)
    try:
        agent = Agent(cfg, plugins, config_path=args.config, state=state, control=control)
    except config_mod.ConfigError as e:
        log.error("cannot start, the configuration is invalid:\n%s", e)
        return 2
    if cfg.http["enabled"]:
        host, port = cfg.listen
        try:
            serve(agent, host, port)
        except OSError as e:
            log.error("cannot listen on %s: %s", cfg.http["listen"], e.strerror)
            agent.shutdown()
            return 1
    log.info("npuagent %s running: %d collector(s) from %s", __version__, len(agent.runners),
             ", ".join(cfg.files) or "built-in defaults")
    agent.run()
    log.info("stopped")
    return 0


def _raw_settings(path: Optional[str]) -> Tuple[str, str]:
    """(state_dir, listen) read without validating the rest: silencing must work while a broken
    configuration is being fixed, in the middle of an incident."""
    doc = config_mod.read_sources(path, strict=False).doc
    agent = doc.get("agent", {}) if isinstance(doc.get("agent"), dict) else {}
    http = doc.get("http", {}) if isinstance(doc.get("http"), dict) else {}
    state_dir = agent.get("state_dir", "/var/lib/npuagent")
    listen = http.get("listen", "127.0.0.1:9740")
    return (state_dir if isinstance(state_dir, str) else "/var/lib/npuagent",
            listen if isinstance(listen, str) else "127.0.0.1:9740")


def _when(t: Optional[float], now: float) -> str:
    if not t:
        return "-"
    d = t - now
    from .options import format_duration

    return ("in " if d >= 0 else "") + format_duration(round(abs(d))) + ("" if d >= 0 else " ago")


def cmd_silence(args: argparse.Namespace) -> int:
    import getpass
    import time

    from .options import OptionError, parse_duration
    from .state import State

    state_dir, _listen = _raw_settings(args.config)
    state = State(state_path(state_dir))
    now = time.time()
    if args.list:
        rows = [("ID", "RULE", "MATCHERS", "ENDS", "REASON")]
        for x in state.silences(now):
            rows.append((str(x.id), x.rule or "*", ",".join(f"{k}={v}" for k, v in x.matchers.items()) or "*",
                         _when(x.ends, now), x.reason))
        _print_table(rows)
        return 0
    matchers = {}
    for m in args.match or ():
        key, sep, value = m.partition("=")
        if not sep or not key:
            print(f"--match {m!r}: expected label=value", file=sys.stderr)
            return 2
        matchers[key] = value
    if not args.rule and not matchers:
        print("say what to silence: --rule NAME and/or --match label=value", file=sys.stderr)
        return 2
    if not args.reason:
        print("say why: --reason TEXT (it is kept with the silence, for whoever looks next)", file=sys.stderr)
        return 2
    try:
        seconds = parse_duration(args.duration)
    except OptionError as e:
        print(f"--for: {e}", file=sys.stderr)
        return 2
    sid = state.add_silence(args.rule, matchers, now, now + seconds, args.reason, args.author or getpass.getuser())
    what = " ".join(filter(None, [f"rule {args.rule}" if args.rule else "",
                                  ",".join(f"{k}={v}" for k, v in matchers.items())]))
    print(f"silence {sid}: {what} for {args.duration}: {args.reason}")
    return 0


def cmd_unsilence(args: argparse.Namespace) -> int:
    from .state import State

    state_dir, _listen = _raw_settings(args.config)
    state = State(state_path(state_dir))
    missing = [i for i in args.ids if not state.remove_silence(i)]
    for i in missing:
        print(f"no running silence {i}", file=sys.stderr)
    return 1 if missing else 0


def cmd_status(args: argparse.Namespace) -> int:
    import urllib.request

    url = args.url
    if not url:
        _state_dir, listen = _raw_settings(args.config)
        host, _sep, port = listen.rpartition(":")
        host = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]", "": "127.0.0.1"}.get(host, host)
        url = f"http://{host}:{port}/status"
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            status = json.loads(r.read())
    except (OSError, ValueError) as e:
        print(f"cannot reach the agent at {url}: {e}", file=sys.stderr)
        return 1
    if args.json:
        json.dump(status, sys.stdout, indent=1)
        print()
        return 0
    now = status["now"]
    print(f"ALERTS ({len(status['alerts'])})")
    rows = [("RULE", "LABELS", "STATE", "SEVERITY", "VALUE", "SINCE", "NEXT STEP", "SUMMARY")]
    for a in status["alerts"]:
        rows.append((a["rule"] + (" [silenced]" if a["silenced"] else ""),
                     ",".join(f"{k}={v}" for k, v in sorted(a["labels"].items())), a["state"], a["severity"],
                     "-" if a["value"] is None else f"{a['value']:g}", _when(a["active_at"], now),
                     "-" if a["next_step_in"] is None else _when(now + a["next_step_in"], now), a["summary"]))
    _print_table(rows)
    print(f"\nSILENCES ({len(status['silences'])})")
    rows = [("ID", "RULE", "MATCHERS", "ENDS", "REASON")]
    for x in status["silences"]:
        rows.append((str(x["id"]), x["rule"] or "*", ",".join(f"{k}={v}" for k, v in x["matchers"].items()) or "*",
                     _when(x["ends"], now), x["reason"]))
    _print_table(rows)
    print(f"\nCOLLECTORS ({len(status['collectors'])})")
    rows = [("NAME", "UP", "LAST SUCCESS", "DURATION", "ERRORS", "SKIPPED", "LAST ERROR")]
    for c in status["collectors"]:
        rows.append((c["name"], "yes" if c["up"] else "NO", _when(c["last_success"], now), f"{c['duration']:.3f}s",
                     str(c["errors"]), str(c["skipped"]), c["last_error"] or "-"))
    _print_table(rows)
    failing = status["rules"]["failing"]
    if failing:
        print("\nFAILING RULES")
        for name, error in failing.items():
            print(f"  {name}: {error}")
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    import time

    from .options import OptionError, parse_duration
    from .state import State

    try:
        since = time.time() - parse_duration(args.since) if args.since else 0.0
    except OptionError as e:
        print(f"--since: {e}", file=sys.stderr)
        return 2
    state_dir, _listen = _raw_settings(args.config)
    rows = State(state_path(state_dir)).attempts(since=since, rule=args.rule)
    if args.json:
        json.dump(rows, sys.stdout, indent=1)
        print()
        return 0
    print_history(rows)
    return 0


def print_history(rows: List[dict]) -> None:
    """The audit log as a table: one row per attempt, "interrupted" where the outcome was never written."""
    import time

    now = time.time()
    table = [("WHEN", "RULE", "LABELS", "ACTION", "KIND", "TARGET", "OUTCOME", "DURATION", "OUTPUT")]
    for a in rows:
        outcome = a["outcome"] or "interrupted"  # the intent was written, the outcome never was
        table.append((_when(a["at"], now), a["rule"], ",".join(f"{k}={v}" for k, v in sorted(a["labels"].items())),
                      a["action"] + (" [dry-run]" if a["dry_run"] else ""), a["kind"], a["target"], outcome,
                      "-" if a["duration"] is None else f"{a['duration']:.2f}s",
                      (a["output"] or "").replace("\n", " ")[:80]))
    _print_table(table)


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run

    return run(args.config, args.seconds)


def cmd_breaker(args: argparse.Namespace) -> int:
    from .state import State

    state_dir, _listen = _raw_settings(args.config)
    state = State(state_path(state_dir))
    opened = state.breaker()
    if args.action == "status":
        print(f"open since {_when(opened[0], __import__('time').time())}: {opened[1]}" if opened else "closed")
        return 0
    if state.reset_breaker():
        print(f"breaker reset (it had opened: {opened[1] if opened else '?'})")
    else:
        print("the breaker was not open")
    return 0


def cmd_rules_test(args: argparse.Namespace) -> int:
    from . import rulestest

    return rulestest.run(args.files, sys.stdout)


def cmd_rules_export(args: argparse.Namespace) -> int:
    from .export import prometheus_rules
    from .rules import compile_rules

    try:
        plugins, cfg = load(args.config)
        types_ = plugins.collector_types()
        compiled = compile_rules(cfg, plugins, {m.name: m for _p, kind in types_.values() for m in kind.metrics})
    except (config_mod.ConfigError, StartupError) as e:
        print(e, file=sys.stderr)
        return 2
    sys.stdout.write(prometheus_rules(cfg, compiled))
    return 0


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", metavar="FILE",
                        help=f"main configuration file, or a directory holding npuagent.toml; conf.d/*.toml "
                             f"beside it is read too (default: {config_mod.DEFAULT_PATH})")
    common.add_argument("-v", "--verbose", action="count", default=0, help="log debug messages")
    p = argparse.ArgumentParser(
        prog="npuagent",
        description="Host agent for AI-accelerator servers: watches devices, host and services, "
                    "decides locally, heals, and says what it did.")
    p.add_argument("--version", action="version", version=f"npuagent {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    run = sub.add_parser("run", parents=[common], help="run the agent in the foreground (systemd runs this)",
                         description="Run the agent in the foreground. SIGHUP reloads the configuration "
                                     "(an invalid one is refused), SIGTERM stops it.")
    run.set_defaults(func=cmd_run)
    once = sub.add_parser("once", parents=[common], help="collect once from every enabled collector and print",
                          description="Collect once from every enabled collector and print the samples; "
                                      "exit 1 if a collector failed.")
    once.add_argument("--format", choices=("table", "json", "prom"), default="table",
                      help="table (default), json, or Prometheus text exposition")
    once.set_defaults(func=cmd_once)
    check = sub.add_parser("check", parents=[common], help="validate the configuration; exit 0 (OK) or 2",
                           description="Validate the configuration files and print OK or every error as "
                                       "file:line: key: message; exit 0 or 2.")
    check.set_defaults(func=cmd_check)
    demo = sub.add_parser("demo", parents=[common], help="the whole loop in a minute, on simulated NPUs",
                          description="Run the agent on the shipped rules and actions (dry-run) against simulated "
                                      "NPUs and a demo app, and show alerts, actions, messages and resolutions.")
    demo.add_argument("--seconds", type=float, default=60.0, help="how long to run (default 60)")
    demo.set_defaults(func=cmd_demo)
    plug = sub.add_parser("plugins", parents=[common], help="list plugins with distribution, version and hooks",
                          description="List every plugin with its distribution, version, status, hooks, and "
                                      "the collector, rule and action types it provides.")
    plug.set_defaults(func=cmd_plugins)
    st = sub.add_parser("status", parents=[common], help="alerts, silences and collector health of the running agent",
                        description="Ask the running agent (its /status) for its alerts with values and timers, "
                                    "its silences and the health of its collectors.")
    st.add_argument("--json", action="store_true", help="print the raw JSON")
    st.add_argument("--url", help="the agent's /status URL (default: from the configuration's [http] listen)")
    st.set_defaults(func=cmd_status)
    si = sub.add_parser("silence", parents=[common], help="silence alerts of a rule or matching labels for a while",
                        description="Silence alerts: they still change state and show everywhere, but trigger no "
                                    "action and no message. Written to the state database, so it works whether "
                                    "the agent runs or not.")
    si.add_argument("--rule", help="the rule to silence")
    si.add_argument("--match", action="append", metavar="LABEL=VALUE",
                    help="silence only alerts with this label value (repeatable): silencing one device leaves "
                         "the others watched")
    si.add_argument("--for", dest="duration", default="1h", metavar="DURATION", help='how long (default "1h")')
    si.add_argument("--reason", help="why (kept with the silence)")
    si.add_argument("--author", help="who (default: the login name)")
    si.add_argument("--list", action="store_true", help="list the silences in force or to come")
    si.set_defaults(func=cmd_silence)
    un = sub.add_parser("unsilence", parents=[common], help="end silences now",
                        description="End the silences with these ids (see `npuagent silence --list`).")
    un.add_argument("ids", nargs="+", type=int, metavar="ID")
    un.set_defaults(func=cmd_unsilence)
    hi = sub.add_parser("history", parents=[common], help="the audit log of actions",
                        description="Every action attempt from the audit log: when, for which alert, on what "
                                    "target, its outcome and output. An attempt whose outcome was never written "
                                    "was interrupted (the agent died while it ran).")
    hi.add_argument("--since", metavar="DURATION", help='only the last DURATION ("2h")')
    hi.add_argument("--rule", help="only this rule's")
    hi.add_argument("--json", action="store_true", help="print JSON")
    hi.set_defaults(func=cmd_history)
    br = sub.add_parser("breaker", parents=[common], help="show or reset the host-wide breaker",
                        description="The host-wide breaker refuses disruptive actions after too many in a window, "
                                    "until reset here.")
    br.add_argument("action", choices=("status", "reset"))
    br.set_defaults(func=cmd_breaker)
    rules = sub.add_parser("rules", help="unit-test rules, or export them as Prometheus rules",
                           description="Work with the configured rules.")
    rsub = rules.add_subparsers(dest="rules_command", metavar="COMMAND")
    rsub.required = True
    rt = rsub.add_parser("test", parents=[common], help="run rule unit tests (as promtool test rules)",
                         description="Run rule unit tests: input series in promtool's notation (50+5x10 90x20), "
                                     "evaluation times and expected alerts, on a simulated clock. Exit 0 when all "
                                     "pass, 1 when an expectation fails (with a diff), 2 for an invalid file.")
    rt.add_argument("files", nargs="+", metavar="FILE", help="test files (TOML)")
    rt.set_defaults(func=cmd_rules_test)
    rx = rsub.add_parser("export", parents=[common], help="print the rules as Prometheus alerting rules (YAML)",
                         description="Print the configured rules as a Prometheus alerting-rules file; rules PromQL "
                                     "cannot express are listed in a comment at its top.")
    rx.add_argument("--format", choices=("prometheus",), default="prometheus", help="the output format")
    rx.set_defaults(func=cmd_rules_export)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parser().parse_args(argv)
    if args.command != "run":
        setup_logging(args.verbose, "warning")
    else:
        setup_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # `npuagent once | head`: the reader left, which is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
