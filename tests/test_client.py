"""npuagent.client in-process: the limiter, the measurements, and set_concurrency's arithmetic.

The socket, the agent and other processes are in test_control.py; here what an app calls on its request path.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Dict, List

import pytest

from npuagent import client
from npuagent.client import CommandError, Limiter


def by_name(c: client.Client) -> Dict[str, List[dict]]:
    out: Dict[str, List[dict]] = {}
    for s in c.samples():
        out.setdefault(s["name"], []).append(s)
    return out


def test_the_limiter_holds_threads_at_the_limit_and_follows_a_lowered_one() -> None:
    lim = Limiter(2)
    inside, most = [0], [0]
    lock = threading.Lock()
    go = threading.Event()

    def work() -> None:
        with lim:
            with lock:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            go.wait(5)
            with lock:
                inside[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(5)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5
    while lim.waiting < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (lim.active, lim.waiting) == (2, 3)
    lim.limit = 1  # lowered while two run: they finish, then one at a time
    go.set()
    for t in threads:
        t.join(5)
    assert most[0] == 2 and lim.active == 0 and lim.peak == 2
    assert lim.acquire(blocking=False) is not False  # a free slot is taken at once
    lim.release()


def test_the_limiter_works_with_async_with_and_wakes_waiters_when_raised() -> None:
    lim = Limiter(1)

    async def main() -> List[int]:
        seen: List[int] = []

        async def one(i: int) -> None:
            async with lim:
                seen.append(lim.active)
                await asyncio.sleep(0.01)

        await asyncio.gather(*(one(i) for i in range(4)))
        lim.limit = None
        await asyncio.gather(*(one(i) for i in range(3)))
        return seen

    seen = asyncio.run(main())
    assert seen[:4] == [1, 1, 1, 1] and lim.active == 0


@pytest.mark.parametrize("bad", [0, -1, 1.5, "3", True])
def test_a_limit_is_a_positive_integer_or_none(bad: object) -> None:
    with pytest.raises(ValueError, match="positive integer or None"):
        Limiter(bad)  # type: ignore[arg-type]


def test_measure_counts_ok_and_error_and_keeps_the_latency_histogram() -> None:
    c = client.Client("x")
    with c.measure("inference"):
        pass
    with pytest.raises(RuntimeError), c.measure("inference"):
        raise RuntimeError("the model broke")
    c.observe("preprocess", 0.2)
    c.observe("preprocess", "nonsense")  # type: ignore[arg-type]  ignored, never raised
    c.observe("preprocess", 0.1, status="weird")  # a status from request data: ignored
    got = by_name(c)
    counts = {(s["labels"]["stage"], s["labels"]["status"]): s["value"] for s in got["inference_requests_total"]}
    assert counts == {("inference", "ok"): 1, ("inference", "error"): 1, ("preprocess", "ok"): 1,
                      ("preprocess", "error"): 0}
    buckets = {s["labels"]["le"]: s["value"] for s in got["inference_latency_seconds_bucket"]
               if s["labels"]["stage"] == "preprocess"}
    assert (buckets["0.1"], buckets["0.25"], buckets["+Inf"]) == (0, 1, 1)


def test_stages_beyond_the_cap_are_counted_as_other() -> None:
    c = client.Client("x")
    for i in range(client.MAX_STAGES + 5):
        c.observe(f"stage-{i}", 0.01)
    stages = {s["labels"]["stage"] for s in by_name(c)["inference_latency_seconds_count"]}
    assert len(stages) == client.MAX_STAGES + 1 and "other" in stages


def test_set_concurrency_scales_the_original_limit_never_the_current_one() -> None:
    c = client.Client("x", limit=10)
    handle = c._handlers["set_concurrency"]
    assert handle({"factor": 0.5})["new_limit"] == 5
    assert handle({"factor": 0.5})["new_limit"] == 5  # a repeated throttle does not compound
    assert handle({"limit": 3})["new_limit"] == 3
    assert handle({"restore": True})["new_limit"] == 10
    with pytest.raises(CommandError, match="exactly one of"):
        handle({"factor": 0.5, "limit": 2})
    with pytest.raises(CommandError, match="positive number"):
        handle({"factor": 0})
    unlimited = client.Client("y")
    with pytest.raises(CommandError, match="no limit to scale"):
        unlimited._handlers["set_concurrency"]({"factor": 0.5})


def test_visible_devices_are_reported_as_the_hosts_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASCEND_RT_VISIBLE_DEVICES", "4,5")
    assert client.Client("x", [0, 1]).device_ids == [4, 5]
    monkeypatch.setenv("ASCEND_RT_VISIBLE_DEVICES", "")
    assert client.Client("x", [0, 1]).device_ids == [0, 1]


def test_without_an_agent_a_request_costs_no_wait(tmp_path: object) -> None:
    c = client.Client("x", path=str(tmp_path) + "/nobody.sock").start()
    try:
        for _ in range(200):
            with c.limiter, c.measure("inference"):
                pass
        assert not c.connected
        assert by_name(c)["inference_requests_total"][0]["value"] == 200
    finally:
        c.stop()
