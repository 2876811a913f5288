"""A plugin that raises in every hook: the agent and the other plugins must go on.

Loaded with NPUAGENT_PLUGINS=raising_plugin (this directory on PYTHONPATH).
"""

from __future__ import annotations

from typing import Any

from npuagent import hookimpl


@hookimpl
def npuagent_collector_types() -> Any:
    raise RuntimeError("raising_plugin: collector_types")


@hookimpl
def npuagent_rule_types() -> Any:
    raise RuntimeError("raising_plugin: rule_types")


@hookimpl
def npuagent_action_types() -> Any:
    raise RuntimeError("raising_plugin: action_types")


@hookimpl
def npuagent_config_options() -> Any:
    raise RuntimeError("raising_plugin: config_options")


@hookimpl
def npuagent_startup(agent: Any) -> None:
    raise RuntimeError("raising_plugin: startup")


@hookimpl
def npuagent_shutdown(agent: Any) -> None:
    raise RuntimeError("raising_plugin: shutdown")


@hookimpl
def npuagent_alert_transition(transition: Any) -> None:
    raise RuntimeError("raising_plugin: alert_transition")


@hookimpl
def npuagent_action_result(result: Any) -> None:
    raise RuntimeError("raising_plugin: action_result")
