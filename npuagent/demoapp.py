"""The demo's inference service: a small app that uses :mod:`npuagent.client` as a real one would.

    python -m npuagent.demoapp --app demo-llm --device 3 --limit 16 [--seconds 120]

It serves simulated requests through the client's limiter and ``measure()``, reports TTFT, TPOT,
queue length and output validity, and answers ``empty_cache`` with an allocator of its own (there is
no torch in the demo): reserved memory grows with the requests, and emptying the cache gives back what
is not allocated. It prints each change of its concurrency limit, so the demo shows a throttle landing
in the app and being restored. Standard library and the client only.
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time
from typing import Any, Dict

from . import client

GIB = 1 << 30


class Allocator:
    """A caching allocator's two figures: what tensors use, and what the cache holds on to."""

    def __init__(self, device: int) -> None:
        self.device = device
        self.allocated = 20 * GIB
        self.reserved = 24 * GIB
        self.lock = threading.Lock()

    def request(self) -> None:
        with self.lock:
            self.reserved = min(self.reserved + 64 * 2**20, 60 * GIB)  # every request leaves a little cached

    def empty_cache(self, args: Dict[str, Any]) -> Dict[str, Any]:
        with self.lock:
            before, self.reserved = self.reserved, self.allocated
        return {"devices": [{"device": self.device, "reserved_before": before, "reserved_after": self.allocated}],
                "reserved_before": before, "reserved_after": self.allocated, "freed": before - self.allocated,
                "backend": "demo"}


def main(argv: Any = None) -> int:
    p = argparse.ArgumentParser(prog="npuagent-demo-app", description=__doc__.split("\n\n")[0])
    p.add_argument("--app", default="demo-llm")
    p.add_argument("--device", type=int, default=3)
    p.add_argument("--limit", type=int, default=16)
    p.add_argument("--socket", default=None, help="the agent's control socket (default: $NPUAGENT_SOCKET)")
    p.add_argument("--seconds", type=float, default=3600.0, help="stop after this long")
    args = p.parse_args(argv)
    agent = client.Client(args.app, [args.device], path=args.socket, limit=args.limit, push_interval=0.5)
    agent.backoff_min, agent.backoff_max = 0.1, 1.0
    allocator = Allocator(args.device)
    agent.register("empty_cache", allocator.empty_cache)
    agent.start()

    def serve() -> None:
        while True:
            with agent.limiter, agent.measure("inference"):
                started = time.monotonic()
                time.sleep(random.uniform(0.01, 0.04))
                agent.ttft(time.monotonic() - started)
                tokens = random.randint(20, 50)
                time.sleep(tokens * 0.001)
                agent.tpot(0.001 + random.uniform(0, 0.0005))
            allocator.request()
            agent.output(valid=True)

    for _ in range(24):
        threading.Thread(target=serve, daemon=True).start()
    limit = agent.limiter.limit
    print(f"demo app {args.app}: serving on NPU {args.device}, concurrency limit {limit}", flush=True)
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        time.sleep(0.1)
        agent.queue_length(agent.limiter.waiting)
        if agent.limiter.limit != limit:
            print(f"demo app {args.app}: concurrency limit {limit} -> {agent.limiter.limit}", flush=True)
            limit = agent.limiter.limit
    agent.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
