"""The loop: intervals, timeouts, skips, staleness, killed subprocesses, reload, watchdog."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import psutil
import pytest

from npuagent import config
from npuagent.agent import Agent
from npuagent.commands import CommandNotFound
from npuagent.model import Event, Sample
from npuagent.systemd import Notifier

from .conftest import FakeClock, TestPlugin, make_plugins


def build(tmp_path: Any, text: str, plugins: Any) -> config.Config:
    path = tmp_path / "npuagent.toml"
    path.write_text(text)
    return config.build(config.read_sources(str(path), strict=False), plugins)


def wait_results(agent: Agent, n: int = 1, timeout: float = 10.0) -> None:
    """Wait (really) until ``n`` worker results are queued for the loop."""
    deadline = time.monotonic() + timeout
    while agent._done.qsize() < n:
        assert time.monotonic() < deadline, "worker did not answer"
        time.sleep(0.005)


def until(condition: Any, timeout: float = 10.0) -> None:
    """Wait (really) for something a worker thread does."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def live(agent: Agent, name: str) -> list:
    return [(labels, v) for n, labels, v in agent.store.live() if n == name]


def make_agent(tmp_path: Any, text: str, **behaviours: Any) -> tuple:
    plugin = TestPlugin(**behaviours)
    plugins = make_plugins(plugin)
    clock = FakeClock()
    agent = Agent(build(tmp_path, text, plugins), plugins, clock=clock, notifier=Notifier(clock.monotonic))
    return agent, plugin, clock


def test_each_collector_runs_on_its_own_interval(tmp_path) -> None:
    agent, plugin, clock = make_agent(
        tmp_path,
        '[collectors.fast]\ninterval = "1s"\n[collectors.slow]\ninterval = "3s"\n',
        fast=lambda ctx: [Sample("fast_value", {}, 1.0)],
        slow=lambda ctx: [Sample("slow_value", {}, 2.0)],
    )
    for _ in range(6):
        agent.step()
        wait_results(agent, sum(r.busy for r in agent.runners.values()))
        agent.step()
        clock.advance(1.0)
    assert plugin.instances["fast"].calls == 6
    assert plugin.instances["slow"].calls == 2
    assert live(agent, "fast_value") == [((), 1.0)]
    assert agent.runners["slow"].health.up == 1


def test_a_busy_collector_is_skipped_and_counted_never_piled_up(tmp_path) -> None:
    release = threading.Event()

    def blocked(ctx: Any) -> list:
        release.wait(10)
        return [Sample("blocked_value", {}, 7.0)]

    agent, plugin, clock = make_agent(tmp_path, '[collectors.blocked]\ninterval = "1s"\ntimeout = "10s"\n',
                                      blocked=blocked)
    agent.step()
    for _ in range(3):
        clock.advance(1.0)
        agent.step()
    runner = agent.runners["blocked"]
    assert runner.health.skipped == 3
    until(lambda: plugin.instances["blocked"].calls == 1)
    time.sleep(0.05)
    assert plugin.instances["blocked"].calls == 1  # one in flight, never more
    release.set()
    wait_results(agent)
    agent.step()
    assert runner.health.up == 1 and not runner.busy
    assert live(agent, "blocked_value") == [((), 7.0)]


def test_a_collection_over_its_timeout_is_abandoned_and_its_late_answer_discarded(tmp_path) -> None:
    release = threading.Event()
    answer = {"value": 1.0}

    def slow(ctx: Any) -> list:
        if answer["value"] == 2.0:
            release.wait(10)
        return [Sample("slow_value", {}, answer["value"])]

    agent, _plugin, clock = make_agent(tmp_path, '[collectors.slow]\ninterval = "5s"\ntimeout = "2s"\n', slow=slow)
    agent.step()
    wait_results(agent)
    agent.step()
    assert live(agent, "slow_value") == [((), 1.0)]
    answer["value"] = 2.0
    clock.advance(5.0)
    agent.step()  # starts the collection that will hang
    clock.advance(2.0)
    agent.step()  # past the timeout: abandoned
    runner = agent.runners["slow"]
    assert runner.health.up == 0 and runner.health.errors == 1
    assert runner.health.last_error == "timed out after 2s"
    assert live(agent, "slow_value") == []  # the old value is not served as fresh
    release.set()
    wait_results(agent)
    agent.step()
    assert live(agent, "slow_value") == []  # the late answer is discarded
    assert not runner.busy
    answer["value"] = 3.0
    clock.advance(3.0)
    agent.step()
    wait_results(agent)
    agent.step()
    assert live(agent, "slow_value") == [((), 3.0)] and runner.health.up == 1


def test_a_raising_collector_is_an_error_and_the_others_go_on(tmp_path) -> None:
    calls = {"n": 0}

    def flaky(ctx: Any) -> list:
        calls["n"] += 1
        if calls["n"] > 1:
            raise RuntimeError("device vanished")
        return [Sample("flaky_value", {"chip": "0"}, 5.0)]

    agent, _plugin, clock = make_agent(
        tmp_path, "[collectors.flaky]\n[collectors.good]\n",
        flaky=flaky, good=lambda ctx: [Sample("good_value", {}, 1.0), Event("thing", {"a": "b"}, "happened")])
    agent.step()
    wait_results(agent, 2)
    agent.step()
    assert live(agent, "flaky_value") == [((("chip", "0"),), 5.0)]
    clock.advance(1.0)
    agent.step()
    wait_results(agent, 2)
    agent.step()
    flaky_h = agent.runners["flaky"].health
    assert (flaky_h.up, flaky_h.errors, flaky_h.last_error) == (0, 1, "RuntimeError: device vanished")
    assert live(agent, "flaky_value") == []  # stale: gone from /metrics
    assert agent.store.select("flaky_value")  # but history stays for the rules
    assert agent.runners["good"].health.up == 1 and live(agent, "good_value") == [((), 1.0)]
    events = agent.events.recent()
    assert [e.kind for e in events] == ["thing", "thing"]
    assert events[0].timestamp == pytest.approx(clock.t - 1.0)


def test_series_missing_from_a_collection_go_stale_at_once(tmp_path) -> None:
    present = {"labels": ["0", "1"]}
    agent, _plugin, clock = make_agent(
        tmp_path, "[collectors.proc]\n",
        proc=lambda ctx: [Sample("proc_value", {"pid": p}, 1.0) for p in present["labels"]])
    agent.step()
    wait_results(agent)
    agent.step()
    assert len(live(agent, "proc_value")) == 2
    present["labels"] = ["1"]
    clock.advance(1.0)
    agent.step()
    wait_results(agent)
    agent.step()
    assert live(agent, "proc_value") == [((("pid", "1"),), 1.0)]


def test_a_timed_out_subprocess_is_killed(tmp_path) -> None:
    started = []

    def hang(ctx: Any) -> list:
        result = ctx.run(["sleep", "30"])
        started.append(result)
        return []

    plugin = TestPlugin(hang=hang)
    plugins = make_plugins(plugin)
    agent = Agent(build(tmp_path, '[collectors.hang]\ntimeout = "300ms"\n', plugins), plugins)
    me = psutil.Process()
    agent.step()
    deadline = time.monotonic() + 10
    sleeper = None
    while sleeper is None and time.monotonic() < deadline:
        sleeper = next((c for c in me.children(recursive=True) if c.name() == "sleep"), None)
        time.sleep(0.01)
    assert sleeper is not None
    while agent.runners["hang"].health.errors == 0 and time.monotonic() < deadline:
        agent.step()
        time.sleep(0.02)
    assert agent.runners["hang"].health.errors >= 1
    sleeper.wait(5)  # raises if it is still alive
    assert not sleeper.is_running()
    agent.shutdown()


def test_a_missing_command_is_a_clear_collector_error(tmp_path) -> None:
    agent, _plugin, _clock = make_agent(tmp_path, "[collectors.missing]\n",
                                        missing=lambda ctx: ctx.run(["/nonexistent/npu-smi", "info"]))
    agent.step()
    wait_results(agent)
    agent.step()
    health = agent.runners["missing"].health
    assert health.up == 0 and health.errors == 1
    assert health.last_error.startswith("CommandNotFound: ")
    assert "cannot run /nonexistent/npu-smi: No such file or directory" in health.last_error
    with pytest.raises(CommandNotFound):
        agent.runners["missing"].ctx.run(["/nonexistent/npu-smi"])


def test_reload_keeps_unchanged_collectors_and_refuses_invalid_configuration(tmp_path) -> None:
    agent, plugin, _clock = make_agent(
        tmp_path, '[collectors.keep]\n[collectors.change]\nnote = "a"\n',
        keep=lambda ctx: [Sample("keep_value", {}, 1.0)], change=lambda ctx: [Sample("change_value", {}, 1.0)],
        new=lambda ctx: [])
    agent.config_path = str(tmp_path / "npuagent.toml")
    kept, changed = agent.runners["keep"], agent.runners["change"]
    old_change = plugin.instances["change"]
    (tmp_path / "npuagent.toml").write_text('[collectors.keep]\n[collectors.change]\nnote = "b"\n[collectors.new]\n')
    assert agent.reload() is True
    assert agent.runners["keep"] is kept and agent.runners["change"] is not changed
    assert old_change.closed and "new" in agent.runners
    assert agent.reload_ok == 1
    (tmp_path / "npuagent.toml").write_text('[collectors.keep]\ninterval = "soon"\n')
    assert agent.reload() is False
    assert agent.reload_ok == 0
    assert set(agent.runners) == {"keep", "change", "new"}  # the old configuration keeps running
    agent.shutdown()


def test_a_factory_that_rejects_its_options_fails_the_load_with_file_and_line(tmp_path) -> None:
    def picky(ctx: Any) -> list:
        return []

    plugin = TestPlugin(picky=picky)
    original = plugin.npuagent_collector_types

    def types() -> list:
        out = original()

        def refuse(ctx: Any) -> Any:
            raise ValueError("note must say please")
        return [t.__class__(**{**t.__dict__, "factory": refuse}) for t in out]

    plugin.npuagent_collector_types = types  # type: ignore[method-assign]
    plugins = make_plugins(plugin)
    cfg = build(tmp_path, '\n[collectors.picky]\nnote = "now"\n', plugins)
    with pytest.raises(config.ConfigError) as e:
        Agent(cfg, plugins)
    assert str(e.value) == f"{tmp_path}/npuagent.toml:2: collectors.picky: note must say please"


def test_the_watchdog_is_paced_by_watchdog_usec(notify_socket: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    clock = FakeClock()
    n = Notifier(clock.monotonic)
    assert n.watchdog == 10.0 and n.max_sleep() == 2.5
    for _ in range(11):  # 0s, 2s, ... 20s: a ping each time half the period has passed
        n.cycle()
        clock.advance(2.0)
    assert n.pings == 4  # at 0s, 6s, 12s and 18s: each the first cycle at least 5s after the last ping
    assert notify_socket.wait_for("WATCHDOG=1") is not None
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert Notifier().watchdog is None  # meant for another process


def test_events_emitted_between_collections_are_taken_in_at_once(tmp_path) -> None:
    agent, _plugin, clock = make_agent(tmp_path, '[collectors.quiet]\ninterval = "1h"\n', quiet=lambda ctx: [])
    agent.step()
    wait_results(agent)
    agent.step()
    ctx = agent.runners["quiet"].ctx
    done = threading.Event()
    threading.Thread(target=lambda: (ctx.emit([Event("device_fault", {"device_id": "3"}, "0x80E18401")]),
                                     done.set())).start()
    done.wait(5)
    assert agent._wake.is_set()  # the loop is woken, not left sleeping until the next collection
    assert agent.step() == 1
    assert [(e.kind, e.labels["device_id"], e.timestamp) for e in agent.events.recent()] == [
        ("device_fault", "3", clock.t)]
