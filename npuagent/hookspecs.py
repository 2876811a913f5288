"""The plugin contract: every hook npuagent calls, and nothing else.

A plugin is a module (or an object) with functions named after these hooks and
marked with :data:`npuagent.hookimpl`. Built-in plugins and third-party packages
implement the same hooks; the core calls each implementation on its own, so one
that raises is logged with its plugin's name, counted in
``npuagent_plugin_errors_total{plugin,hook}``, and does not stop the others.

A function whose name starts with ``npuagent_`` but matches no hook here is a
start-up error that names the plugin: a misspelt hook must not be silently ignored.

Hooks are called with keyword arguments; an implementation may accept only the
arguments it needs (pluggy's rule), so hooks can gain arguments without breaking
plugins.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, List

import pluggy

if TYPE_CHECKING:
    from .agent import Agent
    from .model import ActionResult, ActionType, AlertTransition, CollectorType, RuleType
    from .options import Option

hookspec = pluggy.HookspecMarker("npuagent")


# ---------------------------------------------------------------------------
# Registration: called at start and on every reload, before the configuration
# is validated (the registered types and keys are what it is validated against).
# ---------------------------------------------------------------------------


@hookspec
def npuagent_collector_types() -> List[CollectorType]:
    """Register kinds of collectors.

    Called at start and on every reload. The agent instantiates each type once
    per ``[collectors.<name>]`` table (``type`` defaults to the table's name) and
    once more, untabled, for each type whose ``enabled_by_default`` is true.

    :return: a list of :class:`npuagent.model.CollectorType`; names must be unique
        across all plugins.

    .. versionadded:: 0.1
    """


@hookspec
def npuagent_rule_types() -> List[RuleType]:
    """Register kinds of rules, used by ``[[rules]]`` tables through ``type = "<name>"``.

    Called at start and on every reload.

    :return: a list of :class:`npuagent.model.RuleType`.

    .. versionadded:: 0.1
    """


@hookspec
def npuagent_action_types() -> List[ActionType]:
    """Register kinds of actions, used by ``[actions.<name>]`` tables through ``type = "<name>"``.

    Called at start and on every reload.

    :return: a list of :class:`npuagent.model.ActionType`.

    .. versionadded:: 0.1
    """


@hookspec
def npuagent_config_options() -> List[Option]:
    """Declare the keys of this plugin's own table, ``[plugins.<plugin name>]``.

    Called at start and on every reload. The values, validated and with their
    defaults, reach the plugin's factories as ``PluginContext.plugin_options``.
    ``enabled`` is the core's and need not be declared.

    :return: a list of :class:`npuagent.options.Option`.

    .. versionadded:: 0.1
    """


# ---------------------------------------------------------------------------
# Lifecycle
# ---------------------------------------------------------------------------


@hookspec
def npuagent_startup(agent: Agent) -> None:
    """The agent has loaded its configuration and is about to run its first cycle.

    Called once per process start, on the loop's thread, before READY=1. Keep it
    short: it delays readiness. Also called after a successful reload.

    :param agent: the running :class:`npuagent.agent.Agent`.

    .. versionadded:: 0.1
    """


@hookspec
def npuagent_shutdown(agent: Agent) -> None:
    """The agent is stopping (SIGTERM or the end of ``npuagent once``).

    Called once, on the loop's thread, after the last cycle and before the
    collectors are closed. Flush what must not be lost.

    :param agent: the running :class:`npuagent.agent.Agent`.

    .. versionadded:: 0.1
    """


# ---------------------------------------------------------------------------
# Observers: told what happened; their return value is ignored.
# ---------------------------------------------------------------------------


@hookspec
def npuagent_alert_transition(transition: AlertTransition) -> None:
    """An alert changed state (``inactive``, ``pending``, ``firing``, ``resolving``).

    Called on the loop's thread right after the evaluation that caused it:
    return quickly, and hand slow work (a network post) to a queue.

    :param transition: the :class:`npuagent.model.AlertTransition`.

    .. versionadded:: 0.1
    """


@hookspec
def npuagent_action_result(result: ActionResult) -> None:
    """An action finished (successfully or not, or simulated in dry-run).

    Called in the remediation worker after the outcome is written to the audit log.

    :param result: the :class:`npuagent.model.ActionResult`.

    .. versionadded:: 0.1
    """
