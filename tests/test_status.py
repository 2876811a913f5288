"""Visibility of alerts from a real agent: /metrics, /status, `npuagent status`, silences from the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from typing import Any

import pytest

from .conftest import HERE, ROOT

pytestmark = pytest.mark.slow

CONFIG = """
[agent]
state_dir = "{tmp}/state"
evaluation_interval = "100ms"
[http]
listen = "127.0.0.1:{port}"
[plugins]
disabled = ["example"]
[collectors.host]
enabled = false
[collectors.value-file]
[[rules]]
name = "hot"
type = "threshold"
metric = "test_value"
above = 80
clear_below = 75
severity = "critical"
summary = "device {{device_id}} at {{value:.0f}}"
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(config: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "npuagent", *args, "-c", config], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": ROOT})


def test_alerts_and_silences_are_visible_everywhere(tmp_path: Any) -> None:
    port = free_port()
    config = tmp_path / "npuagent.toml"
    config.write_text(CONFIG.format(tmp=tmp_path, port=port))
    (tmp_path / "value").write_text("91")
    # installed device plugins would add collectors that fail on a machine without the device
    env = {**os.environ, "NPUAGENT_PLUGINS": "value_file", "NPUAGENT_TEST_VALUE": str(tmp_path / "value"),
           "NPUAGENT_DISABLE_PLUGINS": "ascend",
           "NPUAGENT_TEST_TRANSITIONS": str(tmp_path / "transitions.jsonl"),
           "PYTHONPATH": os.pathsep.join([os.path.join(HERE, "helpers"), ROOT])}
    with open(tmp_path / "agent.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "npuagent", "run", "-c", str(config)], stdout=log,
                                stderr=subprocess.STDOUT, env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        body = ""
        while time.monotonic() < deadline:
            try:
                body = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
            except OSError:
                body = ""
            if 'npuagent_alerts{' in body:
                break
            time.sleep(0.1)
        assert ('npuagent_alerts{device_id="0",rule="hot",severity="critical",state="firing"} 1.0') in body, body
        assert "npuagent_rule_evaluation_duration_seconds " in body

        out = cli(str(config), "status")
        assert out.returncode == 0, out.stderr
        row = next(line for line in out.stdout.splitlines() if line.startswith("hot "))
        assert row.split()[1:5] == ["device_id=0", "firing", "critical", "91"]
        assert row.endswith("device 0 at 91")
        assert "value-file" in out.stdout and "NO" not in out.stdout.split("COLLECTORS")[1]

        out = cli(str(config), "silence", "--match", "device_id=0", "--for", "2h", "--reason", "fan swap")
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("silence 1: device_id=0 for 2h: fan swap")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            status = json.loads(urllib.request.urlopen(base + "/status", timeout=5).read())
            if status["silences"] and status["alerts"][0]["silenced"]:
                break
            time.sleep(0.1)
        assert status["alerts"][0]["silenced"] and status["silences"][0]["reason"] == "fan swap"
        assert "hot [silenced]" in cli(str(config), "status").stdout
        listed = cli(str(config), "silence", "--list")
        assert listed.stdout.splitlines()[1].split()[:3] == ["1", "*", "device_id=0"]
        assert cli(str(config), "unsilence", "1").returncode == 0
        assert cli(str(config), "unsilence", "1").returncode == 1  # already ended
        assert cli(str(config), "silence", "--rule", "hot").returncode == 2  # no reason given
    finally:
        proc.terminate()
        proc.wait(20)


def test_status_says_clearly_when_no_agent_answers(tmp_path: Any) -> None:
    config = tmp_path / "npuagent.toml"
    config.write_text(f'[http]\nlisten = "127.0.0.1:{free_port()}"\n')
    out = cli(str(config), "status")
    assert out.returncode == 1
    assert out.stderr.startswith("cannot reach the agent at http://127.0.0.1:")
