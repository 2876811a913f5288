"""The whole loop with real parts: the agent process, the npu-smi simulator, an app using the client,
apprise delivering to a receiver on 127.0.0.1; and the agent killed with SIGKILL in the middle of an action.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, List

import pytest

from .conftest import ROOT

pytestmark = pytest.mark.slow

HERE = os.path.dirname(os.path.abspath(__file__))
HELPERS = os.path.join(HERE, "helpers")
ASCEND = os.path.join(ROOT, "plugins", "ascend")

pytest.importorskip("npuagent_ascend", reason="the end-to-end tests play the Ascend plugin's simulator")


class Receiver:
    """apprise's json:// target: every POST body, in order."""

    def __init__(self, port: int = 0) -> None:
        bodies: queue.Queue = queue.Queue()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                bodies.put(json.loads(self.rfile.read(length) or b"{}"))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.bodies = bodies
        self.got: List[Dict[str, Any]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, count: int, seconds: float = 30.0) -> List[Dict[str, Any]]:
        deadline = time.monotonic() + seconds
        while len(self.got) < count:
            try:
                self.got.append(self.bodies.get(timeout=max(deadline - time.monotonic(), 0.01)))
            except queue.Empty:
                break
        return self.got

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def wait_for(predicate: Callable[[], Any], seconds: float = 30.0) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(0.1)
    return predicate()


class Agent:
    def __init__(self, etc: str, env: Dict[str, str], log: str) -> None:
        self.etc = etc
        self.env = env
        with open(log, "a") as f:
            self.proc = subprocess.Popen([sys.executable, "-m", "npuagent", "run", "-c", etc], env=env, stdout=f,
                                         stderr=subprocess.STDOUT)

    def history(self) -> List[Dict[str, Any]]:
        done = subprocess.run([sys.executable, "-m", "npuagent", "history", "--json", "-c", self.etc], env=self.env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def quiet_agent(tmp_path: Any) -> str:
    """An agent's configuration kept in ``tmp_path``: no HTTP listener, no host collector, a socket of its own."""
    return f"""
[agent]
state_dir = {json.dumps(str(tmp_path / "state"))}
[http]
enabled = false
[control]
socket = {json.dumps(str(tmp_path / "control.sock"))}
group = ""
[collectors.host]
enabled = false"""


@pytest.fixture
def setup(tmp_path: Any) -> Callable[..., Any]:
    def make(rules: str, scenario: str, start_in: float) -> Dict[str, Any]:
        etc = tmp_path / "etc"
        etc.mkdir()
        (tmp_path / "scenario.toml").write_text(scenario)
        sim = ", ".join(json.dumps(a) for a in (sys.executable, "-m", "npuagent_ascend.sim", "--scenario",
                                                str(tmp_path / "scenario.toml")))
        (etc / "npuagent.toml").write_text(f"""{quiet_agent(tmp_path)}
[collectors.npu]
mode = "npu-smi"
interval = "1s"
timeout = "5s"
command = [{sim}]
mapping = true
{rules}
""")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, ASCEND, HELPERS]),
               "NPUAGENT_SIM_START": repr(time.time() + start_in), "NPUAGENT_DISABLE_PLUGINS": "example",
               "NPUAGENT_SOCKET": str(tmp_path / "control.sock")}
        env.pop("NPUAGENT_SIM_TIME", None)
        return {"etc": str(etc), "env": env, "log": str(tmp_path / "agent.log"), "tmp": tmp_path}

    return make


HOT_THEN_COOL = """
layout = "910B"
step = "1s"
temperature = "45"
[devices]
count = 8
[devices.3]
temperature = "70x3 90x7 70"
"""


def test_overheat_throttles_the_app_says_so_and_restores_it(setup: Callable[..., Any]) -> None:
    """simulator overheat -> alert -> throttle sent to the client app -> message -> temperature falls ->
    resolved -> concurrency restored -> resolved message."""
    receiver = Receiver()
    s = setup(f"""
[[rules]]
name = "npu-hot"
type = "threshold"
metric = "npu_temperature_celsius"
above = 80
clear_below = 75
severity = "warning"
summary = "NPU {{device_id}} at {{value:.0f}} °C"
actions = ["throttle-app", "ops"]

[actions.throttle-app]
type = "throttle"
factor = 0.5

[actions.ops]
type = "notify"
urls = ["json://127.0.0.1:{receiver.port}/"]
""", HOT_THEN_COOL, start_in=6.0)
    app = subprocess.Popen([sys.executable, os.path.join(HELPERS, "client_app.py"), "llm", "3", "8"],
                           env=s["env"], stdout=subprocess.PIPE, text=True)
    agent = Agent(s["etc"], s["env"], s["log"])
    try:
        assert app.stdout is not None and app.stdout.readline().strip() == "ready"
        limits = [json.loads(app.stdout.readline())["limit"] for _ in range(2)]  # blocks until both changes
        assert limits == [4, 8], limits  # halved while hot, restored after
        messages = receiver.wait(2)
        assert len(messages) == 2, (s["tmp"] / "agent.log").read_text()
        firing, resolved = messages
        assert "npu-hot" in firing["title"] + firing["message"] and "NPU 3 at 90 °C" in firing["message"]
        assert "resolved" in (resolved["title"] + resolved["message"]).lower()
        assert "throttle-app" in resolved["message"]  # what the agent did, told when it is over
        time.sleep(3)
        assert receiver.wait(3, seconds=0.5) == messages  # exactly one resolved message
        rows = agent.history()
        assert [(r["action"], r["kind"], r["outcome"]) for r in rows if r["action"] == "throttle-app"] == [
            ("throttle-app", "run", "success"), ("throttle-app", "revert", "success")]
    finally:
        agent.stop()
        app.kill()
        app.wait()
        receiver.close()


ALWAYS_HOT = """
layout = "910B"
step = "1s"
temperature = "45"
[devices]
count = 8
[devices.3]
temperature = "90"
"""


def test_killed_during_an_action_the_restarted_agent_shows_it_runs_nothing_twice_and_delivers_once(
        setup: Callable[..., Any], tmp_path: Any) -> None:
    down = Receiver()
    port = down.port
    down.close()  # nobody listens there at first: the message waits in the outbox
    marker = tmp_path / "started"
    s = setup(f"""
[[rules]]
name = "npu-hot"
type = "threshold"
metric = "npu_temperature_celsius"
above = 80
actions = ["drain", "ops"]

[actions.drain]
type = "exec"
argv = ["sh", "-c", "echo run >> {marker}; sleep 60"]
timeout = "2m"
cooldown = "1h"

[actions.ops]
type = "notify"
urls = ["json://127.0.0.1:{port}/"]
""", ALWAYS_HOT, start_in=-10.0)
    first = Agent(s["etc"], s["env"], s["log"])
    try:
        assert wait_for(lambda: marker.exists() and [r for r in first.history() if r["action"] == "drain"])
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait()
    finally:
        first.stop()
    (row,) = [r for r in first.history() if r["action"] == "drain"]
    assert row["outcome"] is None  # the intent is there, the outcome never was: "interrupted"
    receiver = Receiver(port)
    second = Agent(s["etc"], s["env"], s["log"])
    try:
        messages = receiver.wait(1)
        assert len(messages) == 1 and "npu-hot" in messages[0]["title"] + messages[0]["message"]
        time.sleep(5)  # a few evaluations of a still-firing alert
        assert receiver.wait(2, seconds=0.5) == messages  # delivered exactly once
        assert marker.read_text() == "run\n"  # the drain did not run again inside its cooldown
        table = subprocess.run([sys.executable, "-m", "npuagent", "history", "-c", s["etc"]], env=s["env"],
                               capture_output=True, text=True, timeout=60).stdout
        assert "interrupted" in table
    finally:
        second.stop()
        receiver.close()


def test_the_demo_shows_alerts_actions_messages_and_resolutions() -> None:
    done = subprocess.run([sys.executable, "-m", "npuagent", "demo", "-c", os.path.join(ROOT, "etc", "npuagent.toml"),
                           "--seconds", "42"], capture_output=True, text=True, timeout=180,
                          env={**os.environ, "NPUAGENT_DISABLE_PLUGINS": "example"})
    out = done.stdout
    assert done.returncode == 0, done.stderr
    assert "FIRING    npu-critical-temperature {chip_id=0, device_id=3, npu_id=3} value 88" in out
    assert "ACTION    throttle-app (for npu-critical-temperature): dry-run: would set the concurrency to 0.5 x " \
           "the original limit of demo-llm" in out
    assert "RESOLVED  npu-critical-temperature" in out
    assert "FIRING    device-unhealthy {device_id=5}" in out
    assert "RESOLVED  npu-health-degraded" in out  # its Alarm series ended when the health text became OK
    assert "ACTION    ops (for device-unhealthy): dry-run: would send: [FIRING] device-unhealthy" in out
    assert "ACTION    ops (for npu-critical-temperature): dry-run: would send: [RESOLVED] npu-critical-temperature" \
        in out
    assert "- throttle-app: dry-run: would set the concurrency" in out  # the resolved message says what was done
    assert "the audit log of the run" in out


def test_an_hccl_connect_timeout_in_the_logs_restarts_the_unit_with_the_timeout_doubled(tmp_path: Any) -> None:
    """The shipped configuration, unchanged but for paths: a real HCCL plog excerpt appears in a job's log root ->
    cann_log event -> hccl-connect-timeout fires -> env-restart writes the drop-in with HCCL_CONNECT_TIMEOUT
    doubled from the unit's 300 s, daemon-reloads and restarts the unit (a stand-in systemctl) -> the message says
    so."""
    receiver = Receiver()
    etc = tmp_path / "etc"
    (etc / "conf.d").mkdir(parents=True)
    with open(os.path.join(ROOT, "etc", "npuagent.toml")) as f:
        (etc / "npuagent.toml").write_text(f.read())
    state = tmp_path / "systemctl.json"
    unit = {"ActiveState": "active", "SubState": "running", "Result": "success",
            "Environment": "HCCL_CONNECT_TIMEOUT=300"}
    state.write_text(json.dumps({"units": {"llm-serving.service": unit}, "calls": []}))
    systemctl = tmp_path / "systemctl"
    systemctl.write_text(f"#!/bin/sh\nexec {sys.executable} {os.path.join(HELPERS, 'systemctl.py')} \"$@\"\n")
    systemctl.chmod(0o755)
    log_root = tmp_path / "joblogs"
    (etc / "conf.d" / "10-test.toml").write_text(f"""{quiet_agent(tmp_path)}
[collectors.npu]
enabled = false
[collectors.cann_log]
interval = "500ms"
users = []
roots = [{json.dumps(str(log_root))}]
start_at = "beginning"
[actions.hccl-timeout-raise]
systemctl = {json.dumps(str(systemctl))}
dropin_dir = {json.dumps(str(tmp_path / "system"))}
wait = "5s"
[actions.ops]
urls = ["json://127.0.0.1:{receiver.port}/"]
""")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, ASCEND]), "NPUAGENT_DISABLE_PLUGINS": "example",
           "SYSTEMCTL_STATE": str(state), "SYSTEMCTL_DROPINS": str(tmp_path / "system")}
    agent = Agent(str(etc), env, str(tmp_path / "agent.log"))
    dropin = tmp_path / "system" / "llm-serving.service.d" / "90-npuagent.conf"
    try:
        plog = log_root / "debug" / "plog" / "plog-148_20240328102548427.log"
        plog.parent.mkdir(parents=True)
        with open(os.path.join(os.path.dirname(ROOT), "shared", "fixtures", "plog",
                               "fixture-hccl-topo-exchange-socket-timeout-1.txt"), "rb") as f:
            plog.write_bytes(f.read())
        rows = wait_for(lambda: [(r["kind"], r["outcome"]) for r in agent.history()
                                 if r["action"] == "hccl-timeout-raise" and r["outcome"]], 30)
        assert rows == [("run", "success")], (tmp_path / "agent.log").read_text()
        assert 'Environment="HCCL_CONNECT_TIMEOUT=600"\n' in dropin.read_text()
        calls = json.loads(state.read_text())["calls"]
        assert [c for c in calls if c[0] != "show"] == [["daemon-reload"], ["restart", "llm-serving.service"]]
        messages = [m for m in receiver.wait(1) if "hccl-connect-timeout" in m["title"] + m["message"]]
        assert messages and "Next: running hccl-timeout-raise now" in messages[0]["message"], receiver.got
    finally:
        agent.stop()
        receiver.close()
