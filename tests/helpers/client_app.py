"""An inference process for the tests: uses npuagent.client as a serving app would.

    python client_app.py APP DEVICES LIMIT

DEVICES is a comma-separated list ("" for none). It imports torch_npu and torch (the fake ones on PYTHONPATH, or
none; a CUDA build has torch and no torch_npu), serves simulated requests through the limiter and measure(),
answers a custom command `echo`, and prints one JSON line to stdout at each change of its limit, and "ready"
once started.
"""

import contextlib
import json
import sys
import threading
import time

with contextlib.suppress(ImportError):
    import torch_npu  # noqa: F401
with contextlib.suppress(ImportError):
    import torch  # noqa: F401

from npuagent import client

app, devices, limit = sys.argv[1], sys.argv[2], sys.argv[3]
agent = client.Client(app, [int(d) for d in devices.split(",") if d], limit=int(limit) if limit else None,
                      push_interval=0.2)
agent.backoff_min, agent.backoff_max = 0.05, 0.2
agent.register("echo", lambda args: {"echo": args})
agent.start()
print("ready", flush=True)

last = agent.limiter.limit


def serve() -> None:
    while True:
        with agent.limiter, agent.measure("inference"):
            time.sleep(0.005)
        agent.ttft(0.02)
        agent.tpot(0.01)
        agent.queue_length(1)
        agent.output(valid=True)


for _ in range(2):
    threading.Thread(target=serve, daemon=True).start()
while True:
    time.sleep(0.02)
    if agent.limiter.limit != last:
        last = agent.limiter.limit
        print(json.dumps({"limit": last}), flush=True)
