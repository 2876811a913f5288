"""The notify action: real apprise delivering to json:// on a real HTTP server on 127.0.0.1, through the
durable outbox. Grouping, reminders, exactly one resolved message, what a message says, secrets (from the
environment and from a 0600 file, never logged nor returned), dry-run, and a receiver that is down, then up."""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest

from npuagent.builtin import notify
from npuagent.context import PluginContext
from npuagent.model import ActionRequest, ActionResult, AlertTransition
from npuagent.options import validate_table
from npuagent.remediation import ACTION_COMMON, Bound, Remediation
from npuagent.state import State

from .conftest import make_plugins

(TYPE,) = notify.npuagent_action_types()
T0 = 1_700_000_000.0


class Receiver:
    """apprise's json:// target: every POST, (path, body), in order."""

    def __init__(self, port: int = 0) -> None:
        posts: queue.Queue = queue.Queue()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                posts.put((self.path, json.loads(self.rfile.read(length) or b"{}")))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.posts = posts
        self.got: List[Tuple[str, Dict[str, Any]]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.url = f"json://127.0.0.1:{self.port}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, count: int, seconds: float = 30.0) -> List[Dict[str, Any]]:
        """The bodies received so far, waiting up to ``seconds`` for ``count`` of them."""
        deadline = time.monotonic() + seconds
        while len(self.got) < count:
            try:
                self.got.append(self.posts.get(timeout=max(deadline - time.monotonic(), 0.01)))
            except queue.Empty:
                break
        return [body for _path, body in self.got]

    def settle(self, box: Any, count: int) -> List[Dict[str, Any]]:
        """Wait for ``count`` messages and for the outbox to be empty, then take whatever else came."""
        self.wait(count)
        wait_for(lambda: box.pending() == 0)
        return self.wait(count + 1, seconds=0.3)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Any:
    r = Receiver()
    yield r
    r.close()


def wait_for(predicate: Callable[[], Any], seconds: float = 30.0) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(0.02)
    return predicate()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def made(tmp_path: Any) -> Any:
    """make(**table) -> a Notify on this test's state directory; closed at the end."""
    actions: List[Any] = []

    def make(**table: Any) -> Any:
        values, errors = validate_table(table, TYPE.options)
        assert not errors, errors
        action = TYPE.factory(PluginContext("ops", "notify", values, state_dir=str(tmp_path / "notify")))
        actions.append(action)
        return action

    yield make
    for action in actions:
        action.close()


def request(state: str = "firing", device: str = "3", value: float = 91.0, at: float = T0, dry_run: bool = False,
            history: Tuple[ActionResult, ...] = (), next_step: str = "", rule: str = "npu-hot") -> ActionRequest:
    return ActionRequest("ops", rule, {"device_id": device}, state, value, summary=f"NPU {device} at {value:.0f} °C",
                         dry_run=dry_run, annotations={"summary": f"NPU {device} at {value:.0f} °C",
                                                       "runbook": "https://wiki/npu-hot"},
                         severity="critical", started_at=T0 if state == "firing" else at - 300, at=at,
                         history=history, next_step=next_step)


THROTTLED = ActionResult("throttle-app", "success", "set the concurrency of llm-serving to 4 (was 8)")


def test_the_alerts_of_one_evaluation_become_one_message(made: Any, receiver: Receiver) -> None:
    action = made(urls=[receiver.url])
    results = action.run_group([request(device=d) for d in ("0", "1", "2")])
    assert [r.outcome for r in results] == ["success"]
    (message,) = receiver.settle(action.outbox, 1)
    assert message["title"].startswith("[FIRING:3] npu-hot on ")
    assert all(f"NPU {d} at 91 °C" in message["message"] for d in ("0", "1", "2"))
    assert message["type"] == "failure"  # critical


def test_group_false_sends_one_message_per_alert(made: Any, receiver: Receiver) -> None:
    action = made(urls=[receiver.url], group=False)
    assert len(action.run_group([request(device=d) for d in ("0", "1", "2")])) == 3
    messages = receiver.settle(action.outbox, 3)
    assert [m["title"].split(": ", 1)[1] for m in messages] == [f"NPU {d} at 91 °C" for d in ("0", "1", "2")]


def test_a_message_says_what_happened_the_evidence_what_was_done_and_what_comes_next(made: Any,
                                                                                      receiver: Receiver) -> None:
    action = made(urls=[receiver.url])
    action.run_group([request(history=(THROTTLED,), next_step="if not cleared within 120s, then restart-serving",
                              at=T0 + 90)])
    action.run_group([request("resolved", value=72.0, at=T0 + 600, history=(THROTTLED,))])
    firing, resolved = receiver.settle(action.outbox, 2)
    text = firing["message"]
    assert firing["title"].startswith("[FIRING] npu-hot on ") and firing["title"].endswith(": NPU 3 at 91 °C")
    for expected in ("npu-hot", "severity critical", "What: NPU 3 at 91 °C", "Labels: device_id=3",
                     f"Since: {notify.when(T0)} (firing for 1m30s)", "Value: 91",
                     "- throttle-app: success: set the concurrency of llm-serving to 4 (was 8)",
                     "runbook: https://wiki/npu-hot", "Outcome: still firing",
                     "Next: if not cleared within 120s, then restart-serving"):
        assert expected in text, (expected, text)
    assert resolved["title"].startswith("[RESOLVED] npu-hot") and resolved["type"] == "success"
    for expected in ("RESOLVED: npu-hot", "Value: 72 (at resolution)", "after 10m",
                     "- throttle-app: success", "Outcome: resolved after 10m"):
        assert expected in resolved["message"], (expected, resolved["message"])
    assert "Next:" not in resolved["message"]


def test_templates_replace_the_title_and_the_text_of_each_alert(made: Any, receiver: Receiver) -> None:
    action = made(urls=[receiver.url], title="{status} {rules} x{count}", body="{rule}/{device_id}={value}{missing}")
    action.run_group([request(device="1"), request(device="2")])
    (message,) = receiver.settle(action.outbox, 1)
    assert message["title"] == "FIRING:2 npu-hot x2"
    assert message["message"] == "npu-hot/1=91\n\nnpu-hot/2=91"  # a field the alert lacks renders empty


def test_exactly_one_resolved_message_per_episode_and_none_without_a_firing(made: Any, receiver: Receiver) -> None:
    action = made(urls=[receiver.url])
    (never,) = action.run_group([request("resolved", device="7", at=T0 + 60)])
    assert never.outcome == "skipped" and "no firing message was sent" in never.output
    action.run_group([request()])
    action.run_group([request("resolved", at=T0 + 60)])
    (again,) = action.run_group([request("resolved", at=T0 + 61)])
    assert again.outcome == "skipped"
    messages = receiver.settle(action.outbox, 2)
    assert [m["title"].split("]")[0] for m in messages] == ["[FIRING", "[RESOLVED"]


def test_a_restarted_agent_resolves_what_it_told_of_before_once_with_what_it_kept(made: Any,
                                                                                   receiver: Receiver) -> None:
    first = made(urls=[receiver.url])
    first.run_group([request(at=T0 + 30)])
    notify.npuagent_action_result(ActionResult("throttle-app", "success", "throttled", 0.1, request(at=T0 + 31)))
    receiver.settle(first.outbox, 1)
    first.close()
    second = made(urls=[receiver.url])
    # remediation lost the episode with the process: no history, and it thinks the alert began now
    lost = ActionRequest("ops", "npu-hot", {"device_id": "3"}, "resolved", 70.0, started_at=T0 + 900, at=T0 + 900)
    second.run_group([lost])
    second.run_group([lost])
    messages = receiver.settle(second.outbox, 2)
    assert len(messages) == 2
    resolved = messages[1]["message"]
    assert f"Fired: {notify.when(T0)}" in resolved and "after 15m" in resolved
    assert "- throttle-app: success: throttled" in resolved and "What: NPU 3 at 91 °C" in resolved


def test_repeat_reminds_every_interval_while_firing_with_the_history_as_it_is_then(made: Any,
                                                                                   receiver: Receiver) -> None:
    action = made(urls=[receiver.url], repeat="1h")
    action.run_group([request(device="0"), request(device="1")])
    assert action.tick(T0 + 3599) == []
    notify.npuagent_action_result(ActionResult("restart", "failure", "start-limit-hit", 1.0, request(device="0")))
    notify.npuagent_action_result(ActionResult("ops", "success", "queued", 0.0, request(device="0")))  # itself: no
    (reminder,) = action.tick(T0 + 3600)
    assert reminder.outcome == "success" and "queued reminder" in reminder.output
    assert action.tick(T0 + 3601) == []
    receiver.settle(action.outbox, 2)
    action.run_group([request("resolved", device="1", at=T0 + 4000)])
    receiver.settle(action.outbox, 3)
    (reminder,) = action.tick(T0 + 7200)
    assert "queued reminder" in reminder.output
    action.run_group([request("resolved", device="0", at=T0 + 8000)])
    assert action.tick(T0 + 20000) == []
    messages = receiver.settle(action.outbox, 5)
    assert [m["title"].split("]")[0] for m in messages] == ["[FIRING:2", "[STILL FIRING:2", "[RESOLVED",
                                                            "[STILL FIRING", "[RESOLVED"]
    first_reminder = messages[1]["message"]
    assert "firing for 1h" in first_reminder and "- restart: failure: start-limit-hit" in first_reminder
    assert "- ops:" not in first_reminder
    assert "device_id=0" in messages[3]["message"] and "device_id=1" not in messages[3]["message"]


def test_during_a_reload_only_the_new_action_records_what_was_done(made: Any, receiver: Receiver) -> None:
    old = made(urls=[receiver.url], repeat="1h")
    old.run_group([request()])
    new = made(urls=[receiver.url], repeat="1h")  # a reload makes the new one before it closes the old one
    notify.npuagent_action_result(ActionResult("throttle-app", "success", "throttled", 0.1, request()))
    old.close()
    new.tick(T0 + 3600)
    reminder = receiver.settle(new.outbox, 2)[1]["message"]
    assert reminder.count("- throttle-app: success: throttled") == 1


def test_no_reminders_when_repeat_is_zero(made: Any, receiver: Receiver) -> None:
    action = made(urls=[receiver.url])
    action.run_group([request()])
    assert action.tick(T0 + 10 * 86400) == []
    assert len(receiver.settle(action.outbox, 1)) == 1


def test_a_reminder_waiting_for_a_receiver_that_is_down_is_not_queued_again(made: Any) -> None:
    action = made(urls=[f"json://127.0.0.1:{free_port()}/"], repeat="1m")
    action.run_group([request()])
    assert "queued reminder" in action.tick(T0 + 60)[0].output
    assert "already waiting" in action.tick(T0 + 120)[0].output
    assert action.outbox.pending() == 2


def test_secrets_from_the_environment_reach_the_receiver_and_nothing_else(
        made: Any, receiver: Receiver, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    secret = "tok-9f8e7d6c5b4a"
    monkeypatch.setenv("NPUAGENT_TEST_TOKEN", secret)
    caplog.set_level(logging.DEBUG)  # apprise and urllib3 print URLs at debug level
    dead = free_port()
    action = made(urls=[receiver.url + "{env:NPUAGENT_TEST_TOKEN}",
                        f"json://127.0.0.1:{dead}/{{env:NPUAGENT_TEST_TOKEN}}"])
    results = action.run_group([request()])
    results += action.run_group([request(device="4", dry_run=True)])
    wait_for(lambda: action.outbox.messages()[0]["attempts"] >= 2)  # failed twice on the dead one
    receiver.wait(1)
    assert receiver.got[0][0] == f"/{secret}"  # the token went where it belongs
    stored = json.dumps(action.outbox.messages())
    seen = caplog.text + "".join(r.output for r in results) + stored
    assert "json://127.0.0.1" in seen and "***" in seen  # the URLs are shown, masked
    assert secret not in seen


def test_secrets_from_a_0600_file(made: Any, receiver: Receiver, tmp_path: Any,
                                  caplog: pytest.LogCaptureFixture) -> None:
    secret = "file-secret-4b3c2d1e"
    path = tmp_path / "secrets"
    path.write_text(f"# tokens of the notification services\n\nexport PATHPART = \"{secret}\"\nOTHER=a=b\n")
    path.chmod(0o600)
    caplog.set_level(logging.DEBUG)
    action = made(urls=[receiver.url + "{secret:PATHPART}"], secrets_file=str(path))
    results = action.run_group([request()])
    receiver.settle(action.outbox, 1)
    assert receiver.got[0][0] == f"/{secret}"
    assert notify.read_secrets_file(str(path))["OTHER"] == "a=b"
    assert secret not in caplog.text + "".join(r.output for r in results)


def test_a_secrets_file_others_can_read_is_refused_and_errors_never_show_a_value(
        made: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "secrets"
    path.write_text("TOKEN=abcdef123456\n")
    path.chmod(0o644)
    with pytest.raises(ValueError, match=r"mode 0644 .* refused: it must be readable by its owner only "
                                         r"\(chmod 600 "):
        made(urls=["json://127.0.0.1:9/{secret:TOKEN}"], secrets_file=str(path))
    path.chmod(0o600)
    with pytest.raises(ValueError, match=r"urls\[0\]: \{secret:NOPE\}: NOPE of secrets_file is not set"):
        made(urls=["json://127.0.0.1:9/{secret:NOPE}"], secrets_file=str(path))
    monkeypatch.delenv("NPUAGENT_UNSET", raising=False)
    with pytest.raises(ValueError, match=r"the environment variable NPUAGENT_UNSET is not set"):
        made(urls=["json://127.0.0.1:9/{env:NPUAGENT_UNSET}"])
    path.write_text("TOKEN=abcdef123456\nthis line is a secret without a name\n")
    with pytest.raises(ValueError, match=r"line 2: expected NAME=value$"):
        notify.read_secrets_file(str(path))


def test_bad_urls_and_templates_are_refused_at_load(made: Any) -> None:
    with pytest.raises(ValueError, match=r"urls\[1\]: apprise does not understand this nosuchservice:// URL"):
        made(urls=["json://127.0.0.1:9/", "nosuchservice://x"])
    with pytest.raises(ValueError, match="title: template"):
        made(urls=["json://127.0.0.1:9/"], title="{status")


def test_with_no_url_the_message_is_logged_and_kept_whole_in_the_result(made: Any,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    action = made(urls=[])  # as shipped, before anyone has a token
    (fired,) = action.run_group([request(history=(THROTTLED,))])
    assert fired.outcome == "success" and fired.output.startswith("[FIRING] npu-hot on ")
    assert "- throttle-app: success" in fired.output and fired.output.endswith("(no URL: logged only)")
    (resolved,) = action.run_group([request("resolved", at=T0 + 60)])
    assert resolved.output.startswith("[RESOLVED] npu-hot")
    assert action.run_group([request("resolved", at=T0 + 61)])[0].outcome == "skipped"  # still exactly one
    assert wait_for(lambda: action.outbox.pending() == 0)
    assert "notify ops has no URL; the message:\n[FIRING] npu-hot" in caplog.text
    assert "[RESOLVED] npu-hot" in caplog.text


def test_dry_run_renders_the_message_and_sends_nothing(made: Any, receiver: Receiver) -> None:
    action = made(urls=[receiver.url], repeat="10m")
    (fired,) = action.run_group([request(dry_run=True, next_step="then restart-serving")])
    assert fired.outcome == "dry-run"
    assert fired.output.startswith("would send: [FIRING] npu-hot on ")
    assert "Next: then restart-serving" in fired.output and f"(to {receiver.url[:-1]}" in fired.output
    (reminder,) = action.tick(T0 + 600)
    assert reminder.outcome == "dry-run" and reminder.output.startswith("would remind: [STILL FIRING]")
    (resolved,) = action.run_group([request("resolved", dry_run=True, at=T0 + 700)])
    assert resolved.output.startswith("would send: [RESOLVED]")
    (again,) = action.run_group([request("resolved", dry_run=True, at=T0 + 701)])
    assert again.outcome == "skipped"
    assert action.outbox.messages() == []
    assert receiver.wait(1, seconds=0.5) == []


def test_a_receiver_down_then_up_gets_the_message_once(made: Any) -> None:
    port = free_port()
    action = made(urls=[f"json://127.0.0.1:{port}/"])
    action.run_group([request()])
    assert wait_for(lambda: action.outbox.messages()[0]["attempts"] >= 1 and
                    action.outbox.messages()[0]["last_error"] not in ("", notify_in_flight()))
    assert "apprise could not deliver to json://127.0.0.1" in action.outbox.messages()[0]["last_error"]
    late = Receiver(port)
    try:
        action.outbox.wake()
        assert len(late.settle(action.outbox, 1)) == 1
    finally:
        late.close()


def test_a_message_that_reached_one_url_is_retried_only_to_the_other(made: Any, receiver: Receiver) -> None:
    port = free_port()
    action = made(urls=[receiver.url, f"json://127.0.0.1:{port}/"])
    action.run_group([request()])
    receiver.wait(1)
    assert wait_for(lambda: action.outbox.messages()[0]["payload"]["done"])  # recorded: the first has it
    late = Receiver(port)
    try:
        action.outbox.wake()
        assert len(late.settle(action.outbox, 1)) == 1
        assert len(receiver.wait(2, seconds=0.3)) == 1  # not sent twice to the first
    finally:
        late.close()


def notify_in_flight() -> str:
    from npuagent.outbox import IN_FLIGHT

    return IN_FLIGHT


def test_through_remediation_one_message_per_evaluation_and_one_audit_row(tmp_path: Any, receiver: Receiver) -> None:
    values, errors = validate_table({"name": "ops", "type": "notify", "urls": [receiver.url]},
                                    (*ACTION_COMMON, *TYPE.options))
    assert not errors, errors
    ctx = PluginContext("ops", "notify", values, state_dir=str(tmp_path / "notify"))
    action = TYPE.factory(ctx)
    state = State(str(tmp_path / "state.db"))

    class Clock:
        t = T0

        def time(self) -> float:
            return self.t

    class Rule:
        def __init__(self) -> None:
            self.options = {"actions": ["ops"]}

    def t(previous: str, now: str, device: str, value: Optional[float] = 91.0) -> AlertTransition:
        return AlertTransition("npu-hot", {"device_id": device}, previous, now, Clock.t, value, "warning",
                               {"summary": f"NPU {device} hot"})

    r = Remediation({"ops": Bound("ops", "notify", values, action, ctx)}, state, clock=Clock())
    try:
        r.handle([t("pending", "firing", "0"), t("pending", "firing", "1")], {"npu-hot": Rule()})
        r.wait()
        Clock.t += 60
        r.handle([t("firing", "inactive", "0", 70.0), t("firing", "inactive", "1", 70.0)], {"npu-hot": Rule()})
        r.wait()
        messages = receiver.settle(action.outbox, 2)
        assert [m["title"].split("]")[0] for m in messages] == ["[FIRING:2", "[RESOLVED:2"]
        assert [(a["action"], a["outcome"]) for a in state.attempts()] == [("ops", "success")] * 2
    finally:
        r.close()


def test_the_person_paged_by_an_escalation_hears_that_it_is_over_once(tmp_path: Any, receiver: Receiver) -> None:
    """The rule lists only a healing action; the notify is its ``escalate`` target, so remediation never hands
    it the resolution: the plugin learns it from the transition and says so at a tick after the grace."""
    common = (*ACTION_COMMON, *TYPE.options)
    values, errors = validate_table({"name": "oncall", "type": "notify", "urls": [receiver.url]}, common)
    assert not errors, errors
    ctx = PluginContext("oncall", "notify", values, state_dir=str(tmp_path / "notify"))
    oncall = TYPE.factory(ctx)
    heal_values, errors = validate_table({"name": "heal", "type": "t", "escalate": "oncall"}, ACTION_COMMON)
    assert not errors, errors

    class Failing:
        def run(self, request: ActionRequest) -> ActionResult:
            return ActionResult("heal", "failure", "could not heal")

    class Clock:
        t = T0

        def time(self) -> float:
            return self.t

    class Rule:
        def __init__(self) -> None:
            self.options = {"actions": ["heal"]}

    rules = {"npu-hot": Rule()}
    r = Remediation({"heal": Bound("heal", "t", heal_values, Failing(), PluginContext("heal", "t", heal_values)),
                     "oncall": Bound("oncall", "notify", values, oncall, ctx)},
                    State(str(tmp_path / "state.db")), clock=Clock())
    try:
        r.handle([AlertTransition("npu-hot", {"device_id": "3"}, "pending", "firing", Clock.t, 91.0, "critical",
                                  {"summary": "NPU 3 hot"})], rules)
        r.wait()
        assert receiver.wait(1)[0]["title"].startswith("[FIRING] npu-hot")
        Clock.t += 600
        resolved = AlertTransition("npu-hot", {"device_id": "3"}, "firing", "inactive", Clock.t, 70.0, "critical",
                                   {"summary": "NPU 3 hot"})
        notify.npuagent_alert_transition(resolved)  # what the agent does before remediation.handle
        r.handle([resolved], rules)
        for step in (1, 10, notify.RESOLVE_GRACE, 60, 3600):
            r.tick(Clock.t + step, rules)
            r.wait()
        messages = receiver.settle(oncall.outbox, 2)
        assert [m["title"].split("]")[0] for m in messages] == ["[FIRING", "[RESOLVED"]
        assert "- heal: failure: could not heal" in messages[1]["message"] and "after 10m" in messages[1]["message"]
    finally:
        r.close()


def test_an_alert_silenced_when_it_resolves_is_forgotten_without_a_message(made: Any, receiver: Receiver) -> None:
    action = made(urls=[receiver.url], repeat="1h")
    action.run_group([request()])
    notify.npuagent_alert_transition(AlertTransition("npu-hot", {"device_id": "3"}, "firing", "inactive", T0 + 60,
                                                     70.0, silenced=True))
    assert action.tick(T0 + 60 + notify.RESOLVE_GRACE) == []
    assert action.tick(T0 + 10 * 3600) == []  # no reminders of it either
    assert len(receiver.settle(action.outbox, 1)) == 1


def test_a_resolution_remediation_hands_over_is_not_sent_again_by_the_tick(made: Any, receiver: Receiver) -> None:
    action = made(urls=[receiver.url])
    action.run_group([request()])
    notify.npuagent_alert_transition(AlertTransition("npu-hot", {"device_id": "3"}, "firing", "inactive", T0 + 60,
                                                     70.0))
    action.run_group([request("resolved", at=T0 + 60)])
    assert action.tick(T0 + 3600) == []
    assert len(receiver.settle(action.outbox, 2)) == 2


def test_the_built_in_plugins_provide_notify_and_alertmanager() -> None:
    types = make_plugins(builtins=True).action_types()
    assert types["notify"][0] == "notify" and types["alertmanager"][0] == "alertmanager"
    assert all(o.help for o in types["notify"][1].options + types["alertmanager"][1].options)
    assert os.path.basename(notify.__file__) == "notify.py"
