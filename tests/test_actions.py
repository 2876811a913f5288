"""The built-in healing actions against a stand-in systemctl, a real HTTP server, and real commands."""

from __future__ import annotations

import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, Dict, List

import pytest

from npuagent.builtin import actions
from npuagent.context import PluginContext
from npuagent.model import ActionRequest
from npuagent.options import validate_table

from .conftest import HERE

TYPES = {t.name: t for t in actions.npuagent_action_types()}


def make(type_: str, **table: Any) -> Any:
    values, errors = validate_table(table, TYPES[type_].options)
    assert not errors, errors
    return TYPES[type_].factory(PluginContext("act", type_, values, timeout=20))


def request(dry_run: bool = False, **labels: str) -> ActionRequest:
    return ActionRequest("act", "hccl-connect-timeout", labels or {"device_id": "3"}, "firing", 1.0, dry_run=dry_run)


@pytest.fixture
def systemctl(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    state = tmp_path / "systemctl.json"
    monkeypatch.setenv("SYSTEMCTL_STATE", str(state))
    monkeypatch.setenv("SYSTEMCTL_DROPINS", str(tmp_path / "system"))
    wrapper = tmp_path / "systemctl"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} {os.path.join(HERE, 'helpers', 'systemctl.py')} \"$@\"\n")
    wrapper.chmod(0o755)

    class Units:
        path = str(wrapper)
        dropins = str(tmp_path / "system")

        def set(self, **units: Dict[str, Any]) -> None:
            state.write_text(json.dumps({"units": units, "calls": []}))

        def read(self) -> Dict[str, Any]:
            return json.loads(state.read_text())

        def calls(self) -> List[List[str]]:
            return [c for c in self.read()["calls"] if c[0] != "show"]

    return Units()


def test_exec_fills_labels_per_argument_never_through_a_shell(tmp_path: Any) -> None:
    out = tmp_path / "out"
    a = make("exec", argv=[sys.executable, "-c", "import sys; open(sys.argv[1], 'w').write(sys.argv[2])",
                           str(out), "{device_id}"])
    result = a.run(request(device_id="3; rm -rf / #"))
    assert result.outcome == "success"
    assert out.read_text() == "3; rm -rf / #"  # one argument, as given: no shell ever saw it
    assert a.target(request()).endswith(" 3")


def test_exec_outcomes_dry_run_user_and_revert(tmp_path: Any) -> None:
    assert make("exec", argv=["false"]).run(request()).outcome == "failure"
    missing = make("exec", argv=["/nonexistent/fix-it"]).run(request())
    assert (missing.outcome, missing.output) == ("failure", "[Errno 2] cannot run /nonexistent/fix-it: No such file "
                                                           "or directory")
    dry = make("exec", argv=["touch", str(tmp_path / "x")]).run(request(dry_run=True))
    assert dry.outcome == "dry-run" and not (tmp_path / "x").exists()
    assert "would run" in dry.output
    a = make("exec", argv=["true"], revert_argv=["sh", "-c", "echo undone {device_id}"])
    assert a.revert(request()).output == "undone 3"
    if os.geteuid() == 0:
        assert make("exec", argv=["id", "-un"], user="nobody").run(request()).output == "nobody"
    assert make("exec", argv=["true"], user="no-such-user-x").run(request()).output == "no such user 'no-such-user-x'"


def test_exec_timeout_kills_the_command() -> None:
    values, _ = validate_table({"argv": ["sleep", "30"]}, TYPES["exec"].options)
    ctx = PluginContext("slow", "exec", values, timeout=0.3)
    import time

    ctx.deadline = time.monotonic() + 0.3
    result = TYPES["exec"].factory(ctx).run(request())
    assert result.outcome == "timeout" and "sleep killed after" in result.output


def test_systemd_restart_waits_for_active_and_respects_the_units_own_policy(systemctl: Any) -> None:
    a = make("systemd", unit="llm-{device_id}.service", systemctl=systemctl.path, wait="5s")
    systemctl.set(**{"llm-3.service": {"ActiveState": "failed", "SubState": "failed", "Result": "exit-code"}})
    result = a.run(request())
    assert result.outcome == "success" and "llm-3.service restarted and active (NRestarts=1)" in result.output
    assert systemctl.calls() == [["restart", "llm-3.service"]]
    systemctl.set(**{"llm-3.service": {"ActiveState": "activating", "SubState": "auto-restart", "Restart": "always"}})
    result = a.run(request())
    assert result.outcome == "skipped" and "systemd is already restarting llm-3.service itself (Restart=always)" \
        in result.output
    assert systemctl.calls() == []  # never fights systemd
    systemctl.set(**{"llm-3.service": {"ActiveState": "failed", "Result": "start-limit-hit"}})
    result = a.run(request())
    assert result.outcome == "failure" and result.output.startswith("start-limit-hit: systemd refuses to start")
    assert systemctl.calls() == []
    systemctl.set(**{"llm-3.service": {"ActiveState": "active", "fail_restart": True}})
    result = a.run(request())
    assert result.outcome == "failure" and "Job for llm-3.service failed." in result.output


def test_env_restart_doubles_hccl_connect_timeout_within_its_range_and_reverts(systemctl: Any) -> None:
    a = make("env-restart", unit="llm.service", scale={"HCCL_CONNECT_TIMEOUT": 2}, base={"HCCL_CONNECT_TIMEOUT": 120},
             limit={"HCCL_CONNECT_TIMEOUT": 7200}, set={"HCCL_EXEC_TIMEOUT": "1800"}, dropin_dir=systemctl.dropins,
             systemctl=systemctl.path, wait="5s")
    systemctl.set(**{"llm.service": {"ActiveState": "active", "Environment": ""}})
    result = a.run(request())
    assert result.outcome == "success", result.output
    dropin = os.path.join(systemctl.dropins, "llm.service.d", "90-npuagent.conf")
    with open(dropin) as f:
        text = f.read()
    assert 'Environment="HCCL_CONNECT_TIMEOUT=240"\n' in text and 'Environment="HCCL_EXEC_TIMEOUT=1800"\n' in text
    assert oct(os.stat(dropin).st_mode & 0o777) == "0o644"
    assert systemctl.calls() == [["daemon-reload"], ["restart", "llm.service"]]
    for expected in ("480", "960", "1920", "3840", "7200", "7200"):  # doubled each time, capped at 7200
        assert a.run(request()).outcome == "success"
        with open(dropin) as f:
            assert f'HCCL_CONNECT_TIMEOUT={expected}"' in f.read()
    result = a.revert(request())
    assert result.outcome == "success" and not os.path.exists(dropin)
    assert systemctl.calls()[-2:] == [["daemon-reload"], ["restart", "llm.service"]]
    assert "HCCL_CONNECT_TIMEOUT" not in systemctl.read()["units"]["llm.service"]["Environment"]
    dry = a.run(request(dry_run=True))
    assert dry.outcome == "dry-run" and "HCCL_CONNECT_TIMEOUT=240" in dry.output and not os.path.exists(dropin)


def test_env_restart_validates_its_keys() -> None:
    values, _ = validate_table({"unit": "x", "scale": {"A": 2}}, TYPES["env-restart"].options)
    with pytest.raises(ValueError, match="scale needs a base value for A"):
        TYPES["env-restart"].factory(PluginContext("e", "env-restart", values))


def test_http_action_against_a_real_server() -> None:
    seen: List[tuple] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"])).decode()
            seen.append((self.path, body, self.headers.get("X-Token")))
            code = 200 if "ok" in self.path else 503
            self.send_response(code)
            self.end_headers()
            self.wfile.write(b"draining" if code == 200 else b"busy")

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        a = make("http", url=f"http://127.0.0.1:{port}/ok/{{device_id}}", body='{{"device": "{device_id}"}}',
                 headers={"X-Token": "t"})
        result = a.run(request())
        assert (result.outcome, result.output) == ("success", "200 draining")
        assert seen == [("/ok/3", '{"device": "3"}', "t")]
        assert make("http", url=f"http://127.0.0.1:{port}/no").run(request()).output == "503 busy"
    finally:
        server.shutdown()


def test_exec_env_adds_variables_to_the_agents_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NPUAGENT_TEST_INHERITED", "from-the-agent")
    monkeypatch.setenv("NPUAGENT_TEST_OVERRIDDEN", "agent")
    show = "import os; print(*(os.environ.get(k, '-') for k in ('FIX_MODE', 'NPUAGENT_TEST_INHERITED', " \
           "'NPUAGENT_TEST_OVERRIDDEN')))"
    a = make("exec", argv=[sys.executable, "-c", show],
             env={"FIX_MODE": "gentle", "NPUAGENT_TEST_OVERRIDDEN": "action"})
    result = a.run(request())
    assert (result.outcome, result.output) == ("success", "gentle from-the-agent action")
    plain = make("exec", argv=[sys.executable, "-c", show]).run(request())
    assert plain.output == "- from-the-agent agent"  # without env: the agent's environment, unchanged
    reverted = make("exec", argv=["true"], revert_argv=[sys.executable, "-c", show], env={"FIX_MODE": "undo"})
    assert reverted.revert(request()).output == "undo from-the-agent agent"  # the revert command has it too


def test_a_unit_this_host_does_not_have_is_a_failure_that_says_so_and_nothing_is_run(systemctl: Any) -> None:
    systemctl.set(**{"llm-serving.service": {"ActiveState": "active"}})
    for a in (make("systemd", unit="llm-{device_id}.service", systemctl=systemctl.path, wait="5s"),
              make("env-restart", unit="llm-{device_id}.service", scale={"HCCL_CONNECT_TIMEOUT": 2},
                   base={"HCCL_CONNECT_TIMEOUT": 120}, dropin_dir=systemctl.dropins, systemctl=systemctl.path)):
        result = a.run(request())
        assert result.outcome == "failure" and result.output.startswith("no-such-unit: this host has no unit "
                                                                        "llm-3.service"), result.output
    assert systemctl.calls() == [] and not os.path.exists(os.path.join(systemctl.dropins, "llm-3.service.d"))


def test_systemd_stop_start_and_reload(systemctl: Any) -> None:
    def unit() -> Dict[str, Any]:
        return systemctl.read()["units"]["llm-3.service"]

    stop = make("systemd", unit="llm-{device_id}.service", operation="stop", systemctl=systemctl.path, wait="5s")
    systemctl.set(**{"llm-3.service": {"ActiveState": "active", "SubState": "running", "Result": "success"}})
    result = stop.run(request())
    assert (result.outcome, result.output) == ("success", "llm-3.service stopped")
    assert systemctl.calls() == [["stop", "llm-3.service"]]
    assert (unit()["ActiveState"], unit()["SubState"]) == ("inactive", "dead")

    start = make("systemd", unit="llm-{device_id}.service", operation="start", systemctl=systemctl.path, wait="5s")
    result = start.run(request())  # the unit as the stop left it
    assert (result.outcome, result.output) == ("success", "llm-3.service started and active (NRestarts=0)")
    assert systemctl.calls()[-1:] == [["start", "llm-3.service"]]
    assert unit()["ActiveState"] == "active"

    reload = make("systemd", unit="llm-{device_id}.service", operation="reload", systemctl=systemctl.path, wait="5s")
    result = reload.run(request())
    assert (result.outcome, result.output) == ("success", "llm-3.service reloaded and active (NRestarts=0)")
    assert systemctl.calls()[-1:] == [["reload", "llm-3.service"]]
    assert [c[0] for c in systemctl.calls()] == ["stop", "start", "reload"]  # never a restart in their place

    systemctl.set(**{"llm-3.service": {"ActiveState": "inactive", "SubState": "dead", "fail_restart": True}})
    result = start.run(request())
    assert result.outcome == "failure" and result.output.startswith("systemctl start llm-3.service: ")
    assert "Job for llm-3.service failed." in result.output
    for a, operation in ((stop, "stop"), (start, "start"), (reload, "reload")):
        dry = a.run(request(dry_run=True))
        assert (dry.outcome, dry.output) == ("dry-run", f"would: systemctl {operation} llm-3.service")
    assert systemctl.calls() == [["start", "llm-3.service"]]  # the failed start; the dry runs called nothing
