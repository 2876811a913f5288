"""The built-in healing actions: ``exec``, ``systemd``, ``env-restart`` and ``http``.

Label values reach commands only as whole arguments: a template such as
``"{device_id}"`` is filled per argument, never handed to a shell, so a label
holding ``; rm -rf /`` is just an odd argument. A value the alert lacks renders
empty. Every action honours ``request.dry_run``: it says what it would do and does
nothing.

``systemd`` and ``env-restart`` work with the unit's own restart policy rather than
against it: a unit that systemd is already restarting (Restart=) is left to it, and
one that hit its start limit is reported as such (a person must ``reset-failed`` it),
never restarted in a loop.
"""

from __future__ import annotations

import os
import re
import time
import urllib.error
import urllib.request
from typing import Any, Dict, List, Mapping, Optional, Tuple

from npuagent import hookimpl
from npuagent.commands import CommandNotFound, CommandResult, CommandTimeout
from npuagent.model import ActionRequest, ActionResult, ActionType
from npuagent.options import Array, Duration, Map, Number, OneOf, Option, String

DROPIN = "90-npuagent.conf"


class _Fields(dict):
    def __missing__(self, key: str) -> str:
        return ""


def fill(template: str, request: ActionRequest) -> str:
    """``{device_id}``, ``{rule}``, ``{value}``, ``{severity}`` of the alert in one argument."""
    fields = _Fields(request.labels)
    fields.update(rule=request.rule, severity=request.severity,
                  value="" if request.value is None else f"{request.value:g}")
    try:
        return template.format_map(fields)
    except (ValueError, IndexError, AttributeError) as e:
        raise ValueError(f"template {template!r}: {e}") from None


def _excerpt(result: CommandResult) -> str:
    return (result.stdout + result.stderr).strip()[-2000:]


def _run(ctx: Any, argv: List[str], user: Optional[str] = None,
         env: Optional[Mapping[str, str]] = None) -> Tuple[str, str]:
    """(outcome, output) of one command, every way it can end."""
    try:
        result = ctx.run(argv, env=env, user=user)
    except CommandNotFound as e:
        return "failure", str(e)
    except CommandTimeout as e:
        return "timeout", f"{e}: {_excerpt(e.result)}"
    except KeyError:
        return "failure", f"no such user {user!r}"
    return ("success" if result.ok else "failure"), _excerpt(result) or result.describe()


# -- exec -------------------------------------------------------------------------------------------------


class Exec:
    """Run a command (argv list, label values filled per argument)."""

    def __init__(self, ctx: Any) -> None:
        o = ctx.options
        self.ctx, self.argv, self.undo = ctx, list(o["argv"]), list(o["revert_argv"])
        self.env = dict(o["env"])
        self.user: Optional[str] = o["user"] or None
        if not self.argv:
            raise ValueError("argv must name a command")

    def _do(self, argv: List[str], request: ActionRequest, what: str) -> ActionResult:
        filled = [fill(a, request) for a in argv]
        if request.dry_run:
            return ActionResult(self.ctx.name, "dry-run", f"would {what}: {filled!r}")
        env = {**os.environ, **self.env} if self.env else None
        outcome, output = _run(self.ctx, filled, self.user, env)
        return ActionResult(self.ctx.name, outcome, output)

    def run(self, request: ActionRequest) -> ActionResult:
        return self._do(self.argv, request, "run")

    def target(self, request: ActionRequest) -> str:
        return " ".join(fill(a, request) for a in self.argv)


class ExecWithRevert(Exec):
    def revert(self, request: ActionRequest) -> ActionResult:
        return self._do(self.undo, request, "revert")


def make_exec(ctx: Any) -> Exec:
    return ExecWithRevert(ctx) if ctx.options["revert_argv"] else Exec(ctx)


# -- systemd ----------------------------------------------------------------------------------------------


#: refusals that are failures (the ladder goes on to its next step, a person): nothing will change by itself
FAILURES = ("start-limit-hit", "no-such-unit")


class Systemctl:
    """systemctl through the action's deadline; show, operate, and wait for the unit to be active."""

    def __init__(self, ctx: Any, path: str) -> None:
        self.ctx, self.path = ctx, path

    def show(self, unit: str) -> Dict[str, str]:
        outcome, output = _run(self.ctx, [self.path, "show", unit, "--property=LoadState,ActiveState,SubState,"
                                          "Result,Restart,NRestarts,Environment"])
        if outcome != "success":
            raise RuntimeError(f"systemctl show {unit}: {output}")
        return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)

    def refusal(self, unit: str) -> Optional[str]:
        """Why not to touch the unit now, if there is a reason."""
        props = self.show(unit)
        if props.get("LoadState") == "not-found":
            return (f"no-such-unit: this host has no unit {unit}; name the serving unit in the action's `unit` "
                    "(the shipped configuration says llm-serving.service)")
        if props.get("Result") == "start-limit-hit":
            return (f"start-limit-hit: systemd refuses to start {unit} after too many restarts (StartLimitBurst); "
                    f"a person must look at it, then `systemctl reset-failed {unit}`")
        if props.get("SubState") == "auto-restart" or props.get("ActiveState") == "activating":
            return f"systemd is already restarting {unit} itself (Restart={props.get('Restart', '?')}): left to it"
        return None

    def operate(self, operation: str, unit: str, wait: float) -> Tuple[str, str]:
        outcome, output = _run(self.ctx, [self.path, operation, unit])
        if outcome != "success":
            return outcome, f"systemctl {operation} {unit}: {output}"
        if operation == "stop":
            return "success", f"{unit} stopped"
        deadline = time.monotonic() + wait
        state = "?"
        while True:
            props = self.show(unit)
            state = props.get("ActiveState", "?")
            if state == "active":
                return "success", f"{unit} {operation}ed and active (NRestarts={props.get('NRestarts', '?')})"
            if props.get("Result") == "start-limit-hit":
                return "failure", f"start-limit-hit: {unit} did not come back"
            if state == "failed" or time.monotonic() >= deadline:
                return "failure", f"{unit} is {state} after {operation} ({props.get('Result', '?')})"
            time.sleep(0.2)


class Systemd:
    def __init__(self, ctx: Any) -> None:
        o = ctx.options
        self.ctx, self.unit, self.operation, self.wait = ctx, o["unit"], o["operation"], o["wait"]
        self.systemctl = Systemctl(ctx, o["systemctl"])

    def target(self, request: ActionRequest) -> str:
        return fill(self.unit, request)

    def run(self, request: ActionRequest) -> ActionResult:
        unit = self.target(request)
        if request.dry_run:
            return ActionResult(self.ctx.name, "dry-run", f"would: systemctl {self.operation} {unit}")
        try:
            refusal = self.systemctl.refusal(unit)
            if refusal:
                outcome = "failure" if refusal.startswith(FAILURES) else "skipped"
                return ActionResult(self.ctx.name, outcome, refusal)
            outcome, output = self.systemctl.operate(self.operation, unit, self.wait)
        except RuntimeError as e:
            return ActionResult(self.ctx.name, "failure", str(e))
        return ActionResult(self.ctx.name, outcome, output)


# -- env-restart ------------------------------------------------------------------------------------------


def _environment(text: str) -> Dict[str, str]:
    """``Environment=`` of systemctl show, or of a drop-in's lines: K=V pairs, quoted or not."""
    out = {}
    for m in re.finditer(r'"([A-Za-z_][A-Za-z0-9_]*)=([^"]*)"|([A-Za-z_][A-Za-z0-9_]*)=(\S*)', text):
        key, value = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
        out[key] = value
    return out


class EnvRestart:
    """Set environment variables of a unit through a drop-in, daemon-reload, restart; undo on resolve.

    ``scale`` multiplies the variable's current value (the unit's Environment=, or ``base``
    when it has none) and ``limit`` caps it: doubling HCCL_CONNECT_TIMEOUT from its
    default of 120 s never goes past its documented maximum of 7200 s.
    """

    def __init__(self, ctx: Any) -> None:
        o = ctx.options
        self.ctx, self.unit, self.wait = ctx, o["unit"], o["wait"]
        self.set, self.scale, self.base, self.limit = dict(o["set"]), dict(o["scale"]), dict(o["base"]), dict(
            o["limit"])
        self.dir = o["dropin_dir"]
        self.systemctl = Systemctl(ctx, o["systemctl"])
        if not (self.set or self.scale):
            raise ValueError("give the variables to change: set = {...} and/or scale = {...}")
        missing = [k for k in self.scale if k not in self.base]
        if missing:
            raise ValueError(f"scale needs a base value for {', '.join(missing)} (its value when the unit sets none)")

    def target(self, request: ActionRequest) -> str:
        return fill(self.unit, request)

    def dropin(self, unit: str) -> str:
        return os.path.join(self.dir, f"{unit}.d", DROPIN)

    def values(self, unit: str) -> Dict[str, str]:
        current = _environment(self.systemctl.show(unit).get("Environment", ""))
        out = {k: v for k, v in self.set.items()}
        for key, factor in self.scale.items():
            try:
                now = float(current.get(key, self.base[key]))
            except ValueError:
                now = float(self.base[key])
            value = now * factor
            if key in self.limit:
                value = min(value, self.limit[key])
            out[key] = f"{value:g}"
        return out

    def run(self, request: ActionRequest) -> ActionResult:
        unit = self.target(request)
        try:
            refusal = self.systemctl.refusal(unit)
            if refusal:
                return ActionResult(self.ctx.name, "failure" if refusal.startswith(FAILURES) else "skipped", refusal)
            values = self.values(unit)
            text = "# written by npuagent: removed when the alert resolves\n[Service]\n" + "".join(
                f'Environment="{k}={v}"\n' for k, v in sorted(values.items()))
            path = self.dropin(unit)
            if request.dry_run:
                return ActionResult(self.ctx.name, "dry-run", f"would write {path}:\n{text}and restart {unit}")
            os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                f.write(text)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
            return self._reload_restart(unit, "set " + " ".join(f"{k}={v}" for k, v in sorted(values.items())))
        except (RuntimeError, OSError) as e:
            return ActionResult(self.ctx.name, "failure", str(e))

    def _reload_restart(self, unit: str, what: str) -> ActionResult:
        outcome, output = _run(self.ctx, [self.systemctl.path, "daemon-reload"])
        if outcome != "success":
            return ActionResult(self.ctx.name, outcome, f"daemon-reload: {output}")
        outcome, output = self.systemctl.operate("restart", unit, self.wait)
        return ActionResult(self.ctx.name, outcome, f"{what}; {output}")

    def revert(self, request: ActionRequest) -> ActionResult:
        unit = self.target(request)
        path = self.dropin(unit)
        if request.dry_run:
            return ActionResult(self.ctx.name, "dry-run", f"would remove {path} and restart {unit}")
        try:
            os.remove(path)
        except FileNotFoundError:
            return ActionResult(self.ctx.name, "success", f"{path} was already gone")
        except OSError as e:
            return ActionResult(self.ctx.name, "failure", str(e))
        return self._reload_restart(unit, f"removed {path}")


# -- http -------------------------------------------------------------------------------------------------


class Http:
    """A request to a service's admin endpoint (drain, reload, set a limit)."""

    def __init__(self, ctx: Any) -> None:
        o = ctx.options
        self.ctx, self.url, self.method, self.body, self.headers = ctx, o["url"], o["method"], o["body"], dict(
            o["headers"])

    def target(self, request: ActionRequest) -> str:
        return fill(self.url, request)

    def run(self, request: ActionRequest) -> ActionResult:
        url = self.target(request)
        body = fill(self.body, request).encode() if self.body else None
        if request.dry_run:
            return ActionResult(self.ctx.name, "dry-run", f"would {self.method} {url}")
        req = urllib.request.Request(url, data=body, method=self.method, headers=self.headers)
        try:
            with urllib.request.urlopen(req, timeout=max(self.ctx.remaining(), 0.1)) as r:
                return ActionResult(self.ctx.name, "success", f"{r.status} {r.read(2000).decode(errors='replace')}")
        except urllib.error.HTTPError as e:
            return ActionResult(self.ctx.name, "failure", f"{e.code} {e.read(2000).decode(errors='replace')}")
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            return ActionResult(self.ctx.name, "timeout" if "timed out" in str(reason) else "failure",
                                f"{self.method} {url}: {reason}")


SYSTEMCTL = Option("systemctl", String(), "systemctl", "The systemctl command.")
WAIT = Option("wait", Duration(), 30.0, "How long to wait for the unit to be active again.")


@hookimpl
def npuagent_action_types() -> List[ActionType]:
    return [
        ActionType("exec", make_exec, help="Run a command: an argv list, label values filled per argument.", options=[
            Option("argv", Array(String()), help='The command, e.g. ["/usr/local/bin/drain", "{device_id}"].'),
            Option("revert_argv", Array(String()), (), "A command that undoes it, run when the alert resolves."),
            Option("env", Map(String()), {}, "Environment variables added to the agent's."),
            Option("user", String(), "", "Run as this user (the agent must be root)."),
        ]),
        ActionType("systemd", Systemd, disruptive=True, help="Restart, stop or start a systemd unit.", options=[
            Option("unit", String(), help='The unit, a template: "llm-serving.service".'),
            Option("operation", OneOf("restart", "start", "stop", "reload"), "restart", "What to do."),
            WAIT, SYSTEMCTL,
        ]),
        ActionType("env-restart", EnvRestart, disruptive=True,
                   help="Set environment variables of a unit (a drop-in), daemon-reload and restart it.", options=[
            Option("unit", String(), help="The unit, a template."),
            Option("set", Map(String()), {}, "Variables set to fixed values."),
            Option("scale", Map(Number(min=0)), {}, "Variables multiplied: { HCCL_CONNECT_TIMEOUT = 2 }."),
            Option("base", Map(Number()), {}, "The value of a scaled variable when the unit sets none (its default)."),
            Option("limit", Map(Number()), {}, "Caps of scaled variables (their documented maximum)."),
            Option("dropin_dir", String(), "/etc/systemd/system", "Where <unit>.d/ drop-ins are written."),
            WAIT, SYSTEMCTL,
        ]),
        ActionType("http", Http, help="A request to a service's admin endpoint.", options=[
            Option("url", String(), help="The URL, a template."),
            Option("method", OneOf("GET", "POST", "PUT", "DELETE"), "POST", "The method."),
            Option("body", String(), "", "The body, a template."),
            Option("headers", Map(String(), r"[A-Za-z0-9-]+"), {}, "Request headers."),
        ]),
    ]
