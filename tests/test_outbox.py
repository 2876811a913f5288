"""The durable outbox: order, backoff, rejected and partial messages, dedupe keys, wake, close, restart,
and a process killed with SIGKILL while its receiver is down, whose messages a new process delivers once each."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, List

import pytest

from npuagent import outbox
from npuagent.outbox import IN_FLIGHT, Outbox, Partial, Rejected

from .conftest import ROOT, FakeClock


class Recorder:
    """A deliver function: records payloads; fails (or rejects) as scripted."""

    def __init__(self) -> None:
        self.got: List[Any] = []
        self.fail: Callable[[Any], None] = lambda payload: None

    def __call__(self, payload: Any) -> None:
        self.fail(payload)
        self.got.append(payload)


def down(payload: Any) -> None:
    raise ConnectionRefusedError("connection refused")


def make(tmp_path: Any, deliver: Any, clock: Any = None, name: str = "ops", **kw: Any) -> Outbox:
    clock = clock or FakeClock()
    kw.setdefault("random", lambda: 0.5)  # a jitter factor of exactly 1
    return Outbox(str(tmp_path / "outbox.db"), name, deliver, time=clock.time, monotonic=clock.monotonic,
                  wait=clock.wait, start=False, **kw)


def wait_for(predicate: Callable[[], Any], seconds: float = 30.0) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(0.02)
    return predicate()


def test_messages_are_delivered_in_the_order_they_were_queued(tmp_path: Any) -> None:
    got = Recorder()
    box = make(tmp_path, got)
    ids = [box.put({"n": i}) for i in range(5)]
    assert ids == sorted(ids) and box.pending() == 5
    assert box.step() is None  # everything went: nothing left to wait for
    assert got.got == [{"n": i} for i in range(5)]
    assert [(m["status"], m["attempts"]) for m in box.messages()] == [("delivered", 1)] * 5
    assert box.pending() == 0
    box.close()


def test_a_failing_head_blocks_the_queue_and_backs_off_doubling_up_to_the_maximum(tmp_path: Any) -> None:
    clock, got = FakeClock(), Recorder()
    got.fail = down
    box = make(tmp_path, got, clock, initial=1.0, maximum=20.0)
    box.put({"n": 0})
    box.put({"n": 1})
    delays = []
    for _ in range(7):
        delay = box.step()
        assert delay is not None
        delays.append(delay)
        assert box.step() == pytest.approx(delay)  # not due yet: nothing is tried
        clock.advance(delay)
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 20.0, 20.0]
    head, second = box.messages()
    assert (head["attempts"], head["last_error"], head["status"]) == (7, "connection refused", "pending")
    assert second["attempts"] == 0  # never tried past a head that fails: order is kept
    box.put({"n": 2})
    assert box.step() == pytest.approx(20.0)  # a new message does not cut the backoff short
    got.fail = lambda payload: None
    clock.advance(20.0)
    assert box.step() is None
    assert got.got == [{"n": 0}, {"n": 1}, {"n": 2}]
    box.close()


def test_the_jitter_spreads_the_wait_and_never_passes_the_maximum(tmp_path: Any) -> None:
    low = make(tmp_path, down, random=lambda: 0.0, initial=10.0, maximum=100.0)
    low.put({})
    assert low.step() == pytest.approx(8.0)
    low.close()
    high = make(tmp_path, down, random=lambda: 0.999999, initial=10.0, maximum=11.0, name="other")
    high.put({})
    assert high.step() == pytest.approx(11.0)
    high.close()


def test_a_rejected_message_is_set_aside_with_its_error_and_the_queue_goes_on(tmp_path: Any,
                                                                              caplog: pytest.LogCaptureFixture) -> None:
    got = Recorder()

    def refuse_the_first(payload: Any) -> None:
        if payload["n"] == 0:
            raise Rejected("400 Bad Request: invalid label name")

    got.fail = refuse_the_first
    box = make(tmp_path, got)
    for i in range(3):
        box.put({"n": i})
    assert box.step() is None
    assert got.got == [{"n": 1}, {"n": 2}]
    first = box.messages()[0]
    assert (first["status"], first["last_error"]) == ("rejected", "400 Bad Request: invalid label name")
    assert "refused by the receiver" in caplog.text
    box.close()


def test_a_partial_delivery_is_recorded_and_the_retry_sends_only_the_rest(tmp_path: Any) -> None:
    clock = FakeClock()
    sent: List[str] = []
    up = {"a": True, "b": False}

    def deliver(payload: Any) -> None:
        done = list(payload["done"])
        for target in payload["to"]:
            if target in done:
                continue
            if not up[target]:
                if len(done) > len(payload["done"]):
                    raise Partial(f"{target} is down", {**payload, "done": done})
                raise ConnectionError(f"{target} is down")
            sent.append(target)
            done.append(target)

    box = make(tmp_path, deliver, clock)
    box.put({"to": ["a", "b"], "done": []})
    delay = box.step()
    assert sent == ["a"] and delay is not None
    (message,) = box.messages()
    assert message["payload"]["done"] == ["a"] and message["last_error"] == "b is down"
    up["b"] = True
    clock.advance(delay)
    assert box.step() is None
    assert sent == ["a", "b"]  # a got it once
    box.close()


def test_a_dedupe_key_queues_a_message_only_while_none_with_that_key_is_pending(tmp_path: Any) -> None:
    got = Recorder()
    got.fail = down
    box = make(tmp_path, got)
    first = box.put({"reminder": 1}, dedupe_key="reminder")
    assert first is not None
    assert box.put({"reminder": 2}, dedupe_key="reminder") is None
    assert box.put({"other": 1}, dedupe_key="other") is not None
    assert box.put({"plain": 1}) is not None and box.put({"plain": 1}) is not None  # no key: no dedupe
    assert box.pending() == 4
    got.fail = lambda payload: None
    box.wake()
    box.step()
    assert box.put({"reminder": 3}, dedupe_key="reminder") is not None  # the first went: a new one may wait
    box.step()
    assert [p for p in got.got if "reminder" in p] == [{"reminder": 1}, {"reminder": 3}]
    box.close()


def test_wake_tries_the_head_at_once(tmp_path: Any) -> None:
    got = Recorder()
    got.fail = down
    box = make(tmp_path, got, initial=300.0, maximum=300.0)
    box.put({"n": 0})
    assert box.step() == pytest.approx(300.0)
    got.fail = lambda payload: None
    assert box.step() == pytest.approx(300.0)
    box.wake()  # the receiver is back
    assert box.step() is None and got.got == [{"n": 0}]
    box.close()


def test_a_put_rolled_back_with_its_transaction_is_never_sent(tmp_path: Any) -> None:
    box = make(tmp_path, Recorder())
    with box.transaction() as db:
        db.execute("CREATE TABLE mine (x)")
    with pytest.raises(ZeroDivisionError), box.transaction() as db:
        db.execute("INSERT INTO mine VALUES (1)")
        box.put({"n": 0})
        1 / 0  # noqa: B018
    assert box.pending() == 0
    with box.transaction() as db:
        assert db.execute("SELECT count(*) FROM mine").fetchone()[0] == 0
        with box.transaction():  # nested: joins the outer one
            box.put({"n": 1})
        db.execute("INSERT INTO mine VALUES (2)")
    assert box.pending() == 1
    box.close()


def test_old_delivered_messages_are_pruned_to_keep(tmp_path: Any) -> None:
    box = make(tmp_path, Recorder(), keep=3)
    for i in range(10):
        box.put({"n": i})
    box.step()
    assert [m["payload"]["n"] for m in box.messages()] == [7, 8, 9]
    box.close()


def test_the_worker_delivers_when_woken_by_a_put_and_close_lets_the_attempt_under_way_finish(tmp_path: Any) -> None:
    entered, release = threading.Event(), threading.Event()
    got: List[Any] = []

    def deliver(payload: Any) -> None:
        if payload["n"] == 1:
            entered.set()
            release.wait(30)
        got.append(payload)

    box = Outbox(str(tmp_path / "outbox.db"), "ops", deliver)  # a real worker thread
    assert "ops" in outbox.open_names()
    box.put({"n": 0})
    assert wait_for(lambda: got == [{"n": 0}])  # an idle worker is woken by the put
    box.put({"n": 1})
    box.put({"n": 2})
    assert entered.wait(30)
    closed: List[bool] = []
    closer = threading.Thread(target=lambda: closed.append(box.close(timeout=30)))
    closer.start()
    time.sleep(0.2)
    assert not closed  # the attempt under way is not cut off
    assert "ops" not in outbox.open_names()
    release.set()
    closer.join(30)
    assert closed == [True]
    assert got == [{"n": 0}, {"n": 1}]  # no new attempt after close
    with pytest.raises(RuntimeError):
        box.put({"n": 3})
    again = make(tmp_path, Recorder())
    assert [(m["payload"]["n"], m["status"]) for m in again.messages()] == [(0, "delivered"), (1, "delivered"),
                                                                            (2, "pending")]
    again.close()


def test_a_reopened_outbox_delivers_what_was_pending_and_warns_of_an_interrupted_attempt(
        tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    class Killed(BaseException):
        """What the process dying in the middle of a send looks like to the row: it stays in flight."""

    def die(payload: Any) -> None:
        raise Killed()

    first = make(tmp_path, die)
    for i in range(3):
        first.put({"n": i})
    with pytest.raises(Killed):
        first.step()
    assert first.messages()[0]["last_error"] == IN_FLIGHT
    first.close()
    got: List[Any] = []
    with caplog.at_level(logging.WARNING):
        second = Outbox(str(tmp_path / "outbox.db"), "ops", got.append)
    assert "may arrive twice" in caplog.text
    assert wait_for(lambda: len(got) == 3)
    assert got == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert second.pending() == 0
    assert second.close()


def test_outboxes_of_one_file_keep_their_own_queues(tmp_path: Any) -> None:
    a, b = Recorder(), Recorder()
    box_a, box_b = make(tmp_path, a, name="a"), make(tmp_path, b, name="b")
    box_a.put({"for": "a"})
    box_b.put({"for": "b"})
    box_a.step()
    box_b.step()
    assert (a.got, b.got) == ([{"for": "a"}], [{"for": "b"}])
    box_a.close()
    box_b.close()


# -- a process killed while its receiver is down ----------------------------------------------------------

PRODUCER = """
import json, sys, time, urllib.request
from npuagent.outbox import Outbox

path, url, count = sys.argv[1], sys.argv[2], int(sys.argv[3])

def deliver(payload):
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST")
    urllib.request.urlopen(request, timeout=10).read()

box = Outbox(path, "crash", deliver, initial=0.05, maximum=0.2)
for n in range(count):
    box.put({"n": n})
print("queued", flush=True)
time.sleep(600)
"""

CONSUMER = """
import json, sys, time, urllib.request
from npuagent.outbox import Outbox

path, url = sys.argv[1], sys.argv[2]

def deliver(payload):
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST")
    urllib.request.urlopen(request, timeout=10).read()

box = Outbox(path, "crash", deliver, initial=0.05, maximum=0.2)
deadline = time.monotonic() + 120
while box.pending() and time.monotonic() < deadline:
    time.sleep(0.05)
left = box.pending()
box.close()
print(left, flush=True)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Counting:
    """A receiver on 127.0.0.1 that counts what it is sent."""

    def __init__(self, port: int) -> None:
        self.got: List[int] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(handler) -> None:
                length = int(handler.headers.get("Content-Length", 0))
                self.got.append(json.loads(handler.rfile.read(length))["n"])
                handler.send_response(200)
                handler.end_headers()

            def log_message(handler, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.slow
def test_messages_queued_by_a_process_killed_while_the_receiver_was_down_arrive_exactly_once(tmp_path: Any) -> None:
    count = 20
    port = free_port()  # nobody listens there yet
    url = f"http://127.0.0.1:{port}/"
    path = str(tmp_path / "outbox.db")
    env = {**os.environ, "PYTHONPATH": ROOT}
    producer = subprocess.Popen([sys.executable, "-c", PRODUCER, path, url, str(count)], stdout=subprocess.PIPE,
                                text=True, env=env)
    try:
        assert producer.stdout is not None and producer.stdout.readline().strip() == "queued"
        time.sleep(0.5)  # a few failed attempts
        producer.send_signal(signal.SIGKILL)
        producer.wait(30)
    finally:
        if producer.poll() is None:
            producer.kill()
            producer.wait()
    receiver = Counting(port)
    try:
        done = subprocess.run([sys.executable, "-c", CONSUMER, path, url], capture_output=True, text=True, env=env,
                              timeout=180)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "0"
        assert Counter(receiver.got) == Counter(range(count))  # each exactly once
        assert receiver.got == list(range(count))  # and in order
    finally:
        receiver.close()
