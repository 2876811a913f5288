"""Collectors that misbehave on purpose, for tests that run a real agent process.

Loaded with NPUAGENT_PLUGINS=faulty_collectors (this directory on PYTHONPATH).
"""

from __future__ import annotations

from typing import Any, List

from npuagent import hookimpl
from npuagent.model import CollectorType, MetricSpec, Sample


class _Hang:
    """Runs a real `sleep 30`: the agent must abandon it at the timeout and kill the child."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx

    def collect(self) -> List[Sample]:
        self.ctx.run(["sleep", "30"], timeout=300)
        return [Sample("hang_value", {}, 1.0)]


class _Raise:
    def __init__(self, ctx: Any) -> None:
        pass

    def collect(self) -> List[Sample]:
        raise RuntimeError("scripted failure")


class _Missing:
    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx

    def collect(self) -> List[Sample]:
        self.ctx.run(["/nonexistent/npu-smi", "info"])
        return []


class _Good:
    def __init__(self, ctx: Any) -> None:
        self.n = 0

    def collect(self) -> List[Sample]:
        self.n += 1
        return [Sample("good_collections_total", {}, float(self.n))]


@hookimpl
def npuagent_collector_types() -> List[CollectorType]:
    fast = {"interval": 0.5, "timeout": 1.0, "enabled_by_default": False}
    return [
        CollectorType("hang", _Hang, **fast),
        CollectorType("raise", _Raise, **fast),
        CollectorType("missing", _Missing, **fast),
        CollectorType("good", _Good, metrics=[MetricSpec("good_collections_total", "counter", "Collections.")],
                      **fast),
    ]
