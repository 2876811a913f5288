"""The alertmanager action: against a stand-in HTTP server for the answers (4xx, 5xx, auth), and against the
real Alertmanager (``/usr/bin/prometheus-alertmanager``) for what it makes of the posts."""

from __future__ import annotations

import base64
import json
import logging
import os
import queue
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest

from npuagent.builtin import alertmanager, notify
from npuagent.context import PluginContext
from npuagent.model import ActionRequest, ActionResult, AlertTransition
from npuagent.options import validate_table
from npuagent.remediation import ACTION_COMMON

(TYPE,) = alertmanager.npuagent_action_types()
BINARY = "/usr/bin/prometheus-alertmanager"


def wait_for(predicate: Callable[[], Any], seconds: float = 30.0) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(0.05)
    return predicate()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def made(tmp_path: Any) -> Any:
    """make(time=None, **table) -> an Alertmanager action on this test's state directory; closed at the end."""
    actions: List[Any] = []

    def make(time: Optional[Callable[[], float]] = None, **table: Any) -> Any:
        values, errors = validate_table({"name": "am", "type": "alertmanager", **table},
                                        (*ACTION_COMMON, *TYPE.options))
        assert not errors, errors
        ctx = PluginContext("am", "alertmanager", values, state_dir=str(tmp_path / "alertmanager"))
        action = alertmanager.Alertmanager(ctx, time=time) if time else TYPE.factory(ctx)
        actions.append(action)
        return action

    yield make
    for action in actions:
        action.close()


def request(state: str = "firing", device: str = "3", at: Optional[float] = None, dry_run: bool = False,
            history: Tuple[ActionResult, ...] = (), started: Optional[float] = None) -> ActionRequest:
    now = time.time() if at is None else at
    return ActionRequest("am", "npu-hot", {"device_id": device, "npu_id": device}, state, 91.5,
                         summary=f"NPU {device} at 92 °C", dry_run=dry_run,
                         annotations={"summary": f"NPU {device} at 92 °C", "runbook": "https://wiki/npu-hot"},
                         severity="critical", started_at=now - 120 if started is None else started, at=now,
                         history=history, next_step="if not cleared within 2m, then restart-serving")


# -- a stand-in for the answers ---------------------------------------------------------------------------


class StandIn:
    """Answers each POST with the next scripted status (200 when the script is empty); records the posts."""

    def __init__(self, port: int = 0) -> None:
        self.script: List[int] = []
        self.posts: queue.Queue = queue.Queue()
        self.got: List[Tuple[str, Dict[str, str], Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                outer.posts.put((self.path, dict(self.headers), json.loads(self.rfile.read(length))))
                status = outer.script.pop(0) if outer.script else 200
                self.send_response(status)
                body = b'"invalid label set"' if status >= 400 else b""
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, count: int, seconds: float = 30.0) -> List[Tuple[str, Dict[str, str], Any]]:
        deadline = time.monotonic() + seconds
        while len(self.got) < count:
            try:
                self.got.append(self.posts.get(timeout=max(deadline - time.monotonic(), 0.01)))
            except queue.Empty:
                break
        return self.got

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def standin() -> Any:
    s = StandIn()
    yield s
    s.close()


def test_what_is_posted_labels_annotations_times(made: Any, standin: StandIn) -> None:
    clock = [1_700_000_000.0]
    action = made(time=lambda: clock[0], url=standin.url, labels={"cluster": "bj-1", "device_id": "lost"},
                  instance="node-7", generator_url="http://{host}:9740/status?rule={rule}&npu={npu_id}")
    throttled = ActionResult("throttle-app", "success", "set the concurrency to 4")
    (result,) = action.run_group([request(at=clock[0] - 5, history=(throttled,), started=clock[0] - 65)])
    assert result.outcome == "success" and "npu-hot (firing)" in result.output
    clock[0] += 100  # it waited in the outbox: its endsAt counts from when it is sent
    action.outbox.wake()
    ((path, headers, body),) = standin.wait(1)
    assert path == "/api/v2/alerts" and headers["Content-Type"] == "application/json"
    (alert,) = body
    assert alert["labels"] == {"alertname": "npu-hot", "device_id": "3", "npu_id": "3", "severity": "critical",
                               "cluster": "bj-1", "instance": "node-7"}  # the alert's own device_id wins
    assert alert["annotations"] == {"summary": "NPU 3 at 92 °C", "runbook": "https://wiki/npu-hot", "value": "91.5",
                                    "actions": "throttle-app: success: set the concurrency to 4",
                                    "next_step": "if not cleared within 2m, then restart-serving"}
    assert alert["startsAt"] == alertmanager.rfc3339(1_700_000_000.0 - 65)
    assert alert["endsAt"] == alertmanager.rfc3339(clock[0] + 4 * 60)
    assert alert["generatorURL"] == f"http://{socket.gethostname()}:9740/status?rule=npu-hot&npu=3"


def test_a_resolution_posts_the_labels_and_start_it_fired_with(made: Any, standin: StandIn, tmp_path: Any) -> None:
    first = made(url=standin.url, labels={"cluster": "old"})
    first.run_group([request(at=1_700_000_000.0, started=1_700_000_000.0)])
    standin.wait(1)
    first.close()
    second = made(url=standin.url, labels={"cluster": "new"})  # a reload changed the labels meanwhile
    second.run_group([request("resolved", at=1_700_000_600.0, started=1_700_000_600.0)])
    posts = standin.wait(2)
    resolved = posts[1][2][0]
    assert resolved["labels"]["cluster"] == "old"
    assert resolved["startsAt"] == alertmanager.rfc3339(1_700_000_000.0)
    assert resolved["endsAt"] == alertmanager.rfc3339(1_700_000_600.0)
    assert second.tick(time.time()) == []  # nothing fires: nothing to re-post
    assert len(standin.wait(3, seconds=0.3)) == 2


def test_label_names_alertmanager_refuses_are_made_valid_and_empty_values_dropped(made: Any) -> None:
    action = made(url="http://127.0.0.1:9")
    r = ActionRequest("am", "r", {"bad-name": "1", "9lives": "2", "empty": "", "__name__": "x"}, "firing",
                      severity="")
    assert action.labels(r) == {"alertname": "r", "bad_name": "1", "_9lives": "2", "instance": socket.gethostname()}


def test_4xx_is_set_aside_and_5xx_is_retried(made: Any, standin: StandIn, caplog: pytest.LogCaptureFixture) -> None:
    action = made(url=standin.url)
    standin.script = [400, 503]
    action.run_group([request(device="0")])  # refused for good
    action.run_group([request(device="1")])  # 503, then taken
    wait_for(lambda: len(action.outbox.messages(status="delivered")) == 1)
    (rejected,) = action.outbox.messages(status="rejected")
    assert rejected["last_error"] == f'{standin.url}: 400 Bad Request: "invalid label set"'
    (delivered,) = action.outbox.messages(status="delivered")
    assert delivered["attempts"] == 2 and delivered["payload"]["alerts"][0]["labels"]["device_id"] == "1"
    assert "refused by the receiver" in caplog.text


def test_one_member_of_a_cluster_taking_the_post_is_enough(made: Any, standin: StandIn) -> None:
    action = made(urls=[f"http://127.0.0.1:{free_port()}", standin.url])
    action.run_group([request()])
    standin.wait(1)
    wait_for(lambda: action.outbox.pending() == 0)
    assert action.outbox.messages()[0]["attempts"] == 1


def test_credentials_in_the_url_go_in_a_header_and_are_never_shown(made: Any, standin: StandIn,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("AM_TEST_PASSWORD", "pw-5a4b3c2d")
    caplog.set_level(logging.DEBUG)
    url = standin.url.replace("http://", "http://agent:{env:AM_TEST_PASSWORD}@")
    dead = f"http://agent:{{env:AM_TEST_PASSWORD}}@127.0.0.1:{free_port()}"
    action = made(urls=[dead, url])
    results = action.run_group([request()]) + action.run_group([request(dry_run=True)])
    ((_path, headers, _body),) = standin.wait(1)
    assert headers["Authorization"] == "Basic " + base64.b64encode(b"agent:pw-5a4b3c2d").decode()
    wait_for(lambda: action.outbox.pending() == 0)
    seen = caplog.text + "".join(r.output for r in results) + json.dumps(action.outbox.messages())
    assert standin.url in seen and "pw-5a4b3c2d" not in seen


def test_dry_run_says_what_it_would_post_and_queues_nothing(made: Any, standin: StandIn) -> None:
    action = made(url=standin.url)
    (result,) = action.run_group([request(dry_run=True)])
    assert result.outcome == "dry-run" and result.output.startswith(f"would post 1 alert(s) to {standin.url}:")
    assert json.loads(result.output.split("\n", 1)[1])[0]["labels"]["alertname"] == "npu-hot"
    assert action.outbox.messages() == [] and action.tick(time.time()) == []
    assert standin.wait(1, seconds=0.3) == []


def test_firing_alerts_are_re_posted_every_repeat_and_a_waiting_re_post_is_not_queued_twice(made: Any) -> None:
    action = made(url=f"http://127.0.0.1:{free_port()}", repeat="1m")  # down
    now = time.time()
    action.run_group([request(device="0", at=now), request(device="1", at=now)])
    (repost,) = action.tick(now)
    assert "re-post" in repost.output and "2 firing alert(s)" in repost.output
    assert action.tick(now + 30) == []  # not due
    assert action.tick(now + 60) == []  # due, but the previous re-post still waits for the receiver
    action.run_group([request("resolved", device="0", at=now + 70)])
    assert [len(m["payload"]["alerts"]) for m in action.outbox.messages()] == [2, 2, 1]


def test_a_resolution_remediation_does_not_hand_over_is_posted_after_the_grace(made: Any, standin: StandIn) -> None:
    action = made(url=standin.url)
    action.run_group([request(device="0", at=1_700_000_000.0), request(device="1", at=1_700_000_000.0)])
    standin.wait(1)
    silenced = AlertTransition("npu-hot", {"device_id": "0", "npu_id": "0"}, "firing", "inactive", 1_700_000_300.0,
                               70.0, silenced=True)  # remediation ignores a silenced alert's resolution
    alertmanager.npuagent_alert_transition(silenced)
    (repost,) = action.tick(1_700_000_301.0)  # inside the grace remediation may still hand it over: it fires
    assert "re-post" in repost.output and "2 firing" in repost.output
    standin.wait(2)
    (result,) = action.tick(1_700_000_300.0 + notify.RESOLVE_GRACE)
    assert "1 resolved alert" in result.output
    posts = standin.wait(3)
    (resolved,) = posts[2][2]
    assert resolved["labels"]["device_id"] == "0" and resolved["endsAt"] == alertmanager.rfc3339(1_700_000_300.0)
    assert action.tick(1_700_000_300.0 + 3600)
    assert [a["labels"]["device_id"] for a in standin.wait(4)[3][2]] == ["1"]  # only the other is re-posted


def test_options_are_checked_at_load(made: Any) -> None:
    with pytest.raises(ValueError, match="give the Alertmanager"):
        made()
    with pytest.raises(ValueError, match=r"urls\[0\]: expected http://host:port"):
        made(url="alertmanager:9093")
    with pytest.raises(ValueError, match="generator_url: template"):
        made(url="http://127.0.0.1:9", generator_url="http://{host")


# -- the real Alertmanager --------------------------------------------------------------------------------

needs_alertmanager = pytest.mark.skipif(not os.access(BINARY, os.X_OK),
                                        reason=f"{BINARY} is not installed (Debian: apt-get install "
                                               f"prometheus-alertmanager)")


class RealAlertmanager:
    """prometheus-alertmanager on 127.0.0.1, alone (no cluster), routing everything to a receiver that does nothing."""

    def __init__(self, where: Any, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.where = where
        where.mkdir(exist_ok=True)
        config = where / "alertmanager.yml"
        config.write_text('route:\n  receiver: "null"\nreceivers:\n  - name: "null"\n')
        with open(where / "alertmanager.log", "ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen([BINARY, f"--config.file={config}", f"--storage.path={where / 'data'}",
                                          f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
                                         stdout=log, stderr=subprocess.STDOUT)
        if not wait_for(self.ready):
            self.stop()
            raise AssertionError("alertmanager did not become ready:\n" + (where / "alertmanager.log").read_text())

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return self.proc.poll() is not None  # it died: stop waiting

    def alerts(self) -> List[Dict[str, Any]]:
        with urllib.request.urlopen(f"{self.url}/api/v2/alerts", timeout=10) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def real(tmp_path: Any) -> Any:
    started: List[RealAlertmanager] = []

    def start(port: Optional[int] = None) -> RealAlertmanager:
        am = RealAlertmanager(tmp_path / f"am{len(started)}", port or free_port())
        started.append(am)
        return am

    yield start
    for am in started:
        am.stop()
    shutil.rmtree(tmp_path / "am0", ignore_errors=True)


def parse(stamp: str) -> float:
    """Alertmanager's RFC 3339 times (Go trims the fraction's zeros) to seconds."""
    import datetime
    import re

    m = re.fullmatch(r"(.*T\d\d:\d\d:\d\d)(?:\.(\d+))?Z", stamp)
    assert m, stamp
    whole = datetime.datetime.fromisoformat(m.group(1)).replace(tzinfo=datetime.timezone.utc).timestamp()
    return whole + float("0." + (m.group(2) or "0"))


def by_device(alerts: List[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    return {a["labels"]["device_id"]: a for a in alerts}


@pytest.mark.slow
@needs_alertmanager
def test_alertmanager_lists_what_fires_with_our_labels_and_drops_what_resolved(made: Any, real: Any) -> None:
    am = real()
    action = made(url=am.url, labels={"cluster": "bj-1"}, repeat="1m")  # valid 4 minutes: no expiry in this test
    now = time.time()
    throttled = ActionResult("throttle-app", "success", "set the concurrency to 4")
    action.run_group([request(device="0", at=now, history=(throttled,)), request(device="1", at=now)])
    listed = by_device(wait_for(lambda: len(am.alerts()) == 2 and am.alerts()))
    assert set(listed) == {"0", "1"}
    zero = listed["0"]
    assert zero["labels"] == {"alertname": "npu-hot", "device_id": "0", "npu_id": "0", "severity": "critical",
                              "cluster": "bj-1", "instance": socket.gethostname()}
    assert zero["annotations"]["summary"] == "NPU 0 at 92 °C"
    assert zero["annotations"]["actions"] == "throttle-app: success: set the concurrency to 4"
    assert zero["status"]["state"] == "active"
    assert zero["generatorURL"] == f"http://{socket.gethostname()}:9740/status"
    first_end = parse(zero["endsAt"])
    assert now + 200 < first_end < time.time() + 241  # 4 x repeat after it was sent
    time.sleep(0.2)
    assert action.tick(time.time())  # the first tick re-posts; its endsAt counts from now
    assert wait_for(lambda: parse(by_device(am.alerts())["0"]["endsAt"]) > first_end)
    action.run_group([request("resolved", device="0", at=time.time())])
    assert wait_for(lambda: set(by_device(am.alerts())) == {"1"})


@pytest.mark.slow
@needs_alertmanager
def test_a_post_made_while_alertmanager_is_down_arrives_when_it_is_up(made: Any, real: Any) -> None:
    port = free_port()
    action = made(url=f"http://127.0.0.1:{port}")
    action.run_group([request(device="5")])
    assert wait_for(lambda: action.outbox.messages()[0]["attempts"] >= 1
                    and "refused" in action.outbox.messages()[0]["last_error"].lower())
    am = real(port)
    action.outbox.wake()
    listed = wait_for(lambda: am.alerts())
    assert [a["labels"]["device_id"] for a in listed] == ["5"]
    assert action.outbox.pending() == 0
