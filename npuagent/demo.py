"""``npuagent demo``: the whole loop in about a minute, with no NPU and no network.

The agent runs on the shipped configuration (its rules and actions, unchanged), with three things
swapped for the demo: the ``npu`` collector reads ``npuagent-npu-sim`` (the Ascend plugin's stand-in
npu-smi) playing the ``demo`` scenario, one value per second, instead of the real npu-smi; every action
runs in dry-run (it says what it would do, and a message is rendered instead of sent); and the state,
the control socket and the HTTP port are private to the run. A small inference app
(:mod:`npuagent.demoapp`) connects through the client channel on NPU 3.

What it shows, as it happens: alerts going pending, firing and resolved, with their values; what each
action did or would do; the messages the notification actions rendered; and at the end the audit log.
The simulator belongs to the Ascend plugin: without ``npuagent-ascend`` installed the demo says so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from typing import Any, List, Optional, TextIO

from . import hookimpl
from .model import ActionResult, AlertTransition

#: where `npuagent demo` looks for the configuration when none is given
DEFAULT_CONFIGS = ("/etc/npuagent/npuagent.toml",
                   os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "etc", "npuagent.toml"))


def simulator() -> Optional[List[str]]:
    """The argv of the npu-smi stand-in playing the demo scenario, or None without the Ascend plugin."""
    try:
        from importlib.resources import files  # type: ignore[attr-defined]

        scenario = str(files("npuagent_ascend") / "scenarios" / "demo.toml")
    except (ImportError, AttributeError, TypeError):
        try:
            import npuagent_ascend  # type: ignore[import-not-found]
        except ImportError:
            return None
        scenario = os.path.join(os.path.dirname(npuagent_ascend.__file__), "scenarios", "demo.toml")
    if not os.path.exists(scenario):
        return None
    return [sys.executable, "-m", "npuagent_ascend.sim", "--scenario", scenario]


class Narrator:
    """A plugin of the demo's own: says each alert transition and action result, with the time since the start."""

    def __init__(self, out: TextIO, start: float) -> None:
        self.out = out
        self.start = start
        self.lock = threading.Lock()
        self.transitions: List[AlertTransition] = []
        self.results: List[ActionResult] = []

    def say(self, text: str) -> None:
        with self.lock:
            self.out.write(f"[{time.time() - self.start:5.1f}s] {text}\n")
            self.out.flush()

    @hookimpl
    def npuagent_alert_transition(self, transition: AlertTransition) -> None:
        t = transition
        self.transitions.append(t)
        labels = ", ".join(f"{k}={v}" for k, v in sorted(t.labels.items()))
        state = "RESOLVED" if t.state == "inactive" else t.state.upper()
        value = "" if t.value is None else f" value {t.value:g}"
        summary = t.annotations.get("summary", "")
        self.say(f"{state:9} {t.rule} {{{labels}}}{value}" + (f": {summary}" if summary else ""))

    @hookimpl
    def npuagent_action_result(self, result: ActionResult) -> None:
        self.results.append(result)
        rule = f" (for {result.request.rule})" if result.request is not None else ""
        lines = result.output.splitlines() or [""]
        self.say(f"ACTION    {result.action}{rule}: {result.outcome}: {lines[0]}")
        if len(lines) > 1:
            with self.lock:
                self.out.write(textwrap.indent("\n".join(lines[1:]), " " * 17) + "\n")


def write_config(base: str, where: str, sim: List[str]) -> str:
    """The shipped file and an overlay in conf.d: the simulator, dry-run, private state, socket and port."""
    etc = os.path.join(where, "etc")
    os.makedirs(os.path.join(etc, "conf.d"))
    shutil.copy(base, os.path.join(etc, "npuagent.toml"))
    argv = ", ".join(_q(a) for a in sim)
    with open(os.path.join(etc, "conf.d", "90-demo.toml"), "w") as f:
        f.write(f"""# written by `npuagent demo`
[agent]
state_dir = {_q(os.path.join(where, "state"))}
dry_run = true
log_level = "warning"

[http]
enabled = false

[control]
socket = {_q(os.path.join(where, "control.sock"))}
group = ""
groups = []

[collectors.npu]
mode = "npu-smi"
interval = "1s"
timeout = "5s"
command = [{argv}]
mapping = true
""")
    return etc


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def run(config: Optional[str], seconds: float, out: TextIO = sys.stdout) -> int:
    from . import cli
    from . import config as config_mod
    from .agent import Agent
    from .state import State

    base = config or next((p for p in DEFAULT_CONFIGS if os.path.exists(p)), None)
    if base is None:
        print("npuagent demo: no configuration found; give one with -c", file=sys.stderr)
        return 2
    sim = simulator()
    if sim is None:
        print("npuagent demo: the demo plays an NPU simulator that comes with the Ascend plugin; install it "
              "(pip install npuagent-ascend, or ./dev demo in a checkout)", file=sys.stderr)
        return 2
    where = tempfile.mkdtemp(prefix="npuagent-demo-")
    start = time.time()
    os.environ["NPUAGENT_SIM_START"] = repr(start)  # the scenario's second 0 is now
    os.environ.pop("NPUAGENT_SIM_TIME", None)
    narrator = Narrator(out, start)
    app: Optional[subprocess.Popen] = None
    try:
        etc = write_config(base, where, sim)
        try:
            plugins, cfg = cli.load(etc)
        except config_mod.ConfigError as e:
            print(e, file=sys.stderr)
            return 2
        plugins.register(narrator, "demo")
        control = cli.start_control(cfg)
        agent = Agent(cfg, plugins, config_path=etc, state=State(cli.state_path(cfg.agent["state_dir"])),
                      control=control)
        app = subprocess.Popen([sys.executable, "-m", "npuagent.demoapp", "--socket", cfg.control["socket"],
                                "--device", "3", "--seconds", str(seconds + 30)],
                               stdout=subprocess.PIPE, text=True)
        threading.Thread(target=_relay, args=(app, narrator), daemon=True).start()
        narrator.say(f"npuagent demo: {len(cfg.rules)} shipped rules, {len(cfg.actions)} actions (dry-run), "
                     f"8 simulated NPUs read every second; running {seconds:.0f}s (Ctrl-C ends it)")
        narrator.say("scenario: NPU 3 heats to 88 °C and cools after ~37 s; NPU 5 raises a device alarm 12-30 s")
        timer = threading.Timer(seconds, agent.stop)
        timer.daemon = True
        timer.start()
        try:
            agent.run()
        except KeyboardInterrupt:
            agent.stop()
        timer.cancel()
        if agent.remediation is not None:
            agent.remediation.wait(10)
        _summary(narrator, agent, out)
        agent.shutdown()
        return 0
    finally:
        if app is not None:
            app.kill()
            app.wait()
        shutil.rmtree(where, ignore_errors=True)


def _relay(app: subprocess.Popen, narrator: Narrator) -> None:
    assert app.stdout is not None
    for line in app.stdout:
        narrator.say(f"APP       {line.strip()}")


def _summary(narrator: Narrator, agent: Any, out: TextIO) -> None:
    fired = sorted({t.rule for t in narrator.transitions if t.state == "firing"})
    resolved = sorted({t.rule for t in narrator.transitions if t.state == "inactive" and t.previous != "pending"})
    out.write(f"\nfired: {', '.join(fired) or 'nothing'}\nresolved: {', '.join(resolved) or 'nothing'}\n"
              f"actions: {len(narrator.results)} ({', '.join(sorted({r.action for r in narrator.results}))})\n")
    out.write("\nthe audit log of the run (npuagent history):\n")
    out.flush()
    from .cli import print_history

    print_history(agent.state.attempts())
