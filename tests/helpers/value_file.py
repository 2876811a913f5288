"""A collector that reads one number from a file, and an observer that logs alert transitions to a file.

For tests that drive a real agent process: the test writes the value; the agent's transitions are
appended as JSON lines. Loaded with NPUAGENT_PLUGINS=value_file (this directory on PYTHONPATH); the
files are named by NPUAGENT_TEST_VALUE and NPUAGENT_TEST_TRANSITIONS.
"""

from __future__ import annotations

import json
import os
from typing import Any, List

from npuagent import hookimpl
from npuagent.model import AlertTransition, CollectorType, MetricSpec, Sample


class _ValueFile:
    def __init__(self, ctx: Any) -> None:
        self.path = os.environ["NPUAGENT_TEST_VALUE"]

    def collect(self) -> List[Sample]:
        with open(self.path) as f:
            text = f.read().strip()
        return [Sample("test_value", {"device_id": "0"}, float(text))] if text else []


@hookimpl
def npuagent_collector_types() -> List[CollectorType]:
    return [CollectorType("value-file", _ValueFile, interval=0.2, timeout=0.2, enabled_by_default=False,
                          metrics=[MetricSpec("test_value", "gauge", "The value in the file.", ("device_id",))])]


@hookimpl
def npuagent_alert_transition(transition: AlertTransition) -> None:
    with open(os.environ["NPUAGENT_TEST_TRANSITIONS"], "a") as f:
        f.write(json.dumps({"rule": transition.rule, "labels": dict(transition.labels), "from": transition.previous,
                            "to": transition.state, "at": transition.at, "pid": os.getpid()}) + "\n")
