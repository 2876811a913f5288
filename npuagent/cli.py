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
from typing import List, Optional, Sequence, Tuple

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


def _make_collectors(cfg: config_mod.Config, plugins: Plugins) -> List[config_mod.Problem]:
    """Build (and close) every configured collector: factories reject what declared types cannot."""
    from .agent import Agent

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
    return problems


def cmd_check(args: argparse.Namespace) -> int:
    try:
        plugins, cfg = load(args.config)
        problems = _make_collectors(cfg, plugins)
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


def cmd_run(args: argparse.Namespace) -> int:
    from .agent import Agent
    from .http import serve

    try:
        plugins, cfg = load(args.config)
        setup_logging(args.verbose, cfg.agent["log_level"])
        agent = Agent(cfg, plugins, config_path=args.config)
    except (config_mod.ConfigError, StartupError) as e:
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
    plug = sub.add_parser("plugins", parents=[common], help="list plugins with distribution, version and hooks",
                          description="List every plugin with its distribution, version, status, hooks, and "
                                      "the collector, rule and action types it provides.")
    plug.set_defaults(func=cmd_plugins)
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
