"""npuagent-example: a small, complete npuagent plugin, and the guide to writing one.

Copy this package to start your own. What follows holds for every plugin, built
in or installed; the whole contract is in :mod:`npuagent.hookspecs`.

What a plugin is
================

A plugin is a Python module (or an object) with functions named after the hooks
of :mod:`npuagent.hookspecs`, each marked with :data:`npuagent.hookimpl`. The
agent finds installed plugins through the entry-point group ``npuagent``; declare
yours in your ``pyproject.toml``::

    [project.entry-points.npuagent]
    example = "npuagent_example"

The name on the left is the plugin's name. ``npuagent plugins`` lists it with
your distribution and version; it names the plugin's own table
``[plugins.example]``; it labels your failures in the logs and in
``npuagent_plugin_errors_total{plugin="example",hook="..."}``; and it is what an
operator disables. The value on the right is the module that holds the hooks.

A function whose name starts with ``npuagent_`` but matches no hook is a
start-up error naming your plugin: a misspelt hook is never silently ignored.
Hooks are called with keyword arguments, and a hook function may take only the
arguments it needs, so hooks can gain arguments without breaking you.

Import only the core's public names: :data:`npuagent.hookimpl`, the records of
:mod:`npuagent.model`, the value types of :mod:`npuagent.options` and
:class:`npuagent.context.PluginContext`.

The hooks
=========

Registration hooks are called at start and on every reload, before the
configuration is validated. They return *types*; the agent makes instances of
them from the configuration by calling the type's ``factory`` with a
:class:`~npuagent.context.PluginContext` (``ctx.name``, ``ctx.options``,
``ctx.plugin_options``, ``ctx.log``, ``ctx.run``, ``ctx.timeout``, ``ctx.state_dir``).

``npuagent_collector_types() -> List[CollectorType]``
    Kinds of collectors. The factory returns an object with ``collect()``, which
    returns (or yields) :class:`~npuagent.model.Sample` and
    :class:`~npuagent.model.Event` records, and ``close()``, called when the
    instance is dropped (at reload or stop). The agent makes one instance per
    ``[collectors.<name>]`` table (``type`` defaults to the table's name) and one
    more, untabled, of each type with ``enabled_by_default=True``.
    ``interval`` and ``timeout`` are defaults that a table may override. Declare
    your metrics as :class:`~npuagent.model.MetricSpec`: ``/metrics`` then carries
    their type and help, and ``npuagent check`` knows them when a rule names one.
    Here: ``example-files``.

``npuagent_action_types() -> List[ActionType]``
    Kinds of actions, used by ``[actions.<name>]`` tables through
    ``type = "<name>"``. The factory returns an object whose
    ``run(request: ActionRequest)`` returns an :class:`~npuagent.model.ActionResult`.
    Set ``disruptive=True`` on actions that restart or reset something: they count
    against the host-wide breaker. Here: ``example-append``.

``npuagent_rule_types() -> List[RuleType]``
    Kinds of rules, used by ``[[rules]]`` tables through ``type = "<name>"``.
    Not implemented here; the built-in rule types (threshold, window, ...) are the
    examples to read.

``npuagent_config_options() -> List[Option]``
    The keys of your plugin's own table, ``[plugins.<plugin name>]``: settings
    shared by all your types. The validated values, defaults filled in, reach
    every factory of your plugin as ``ctx.plugin_options``. Here: ``label_host``.

Lifecycle hooks: ``npuagent_startup(agent)`` is called on the loop's thread
before the agent reports ready (and after each successful reload), and
``npuagent_shutdown(agent)`` once when it stops, before the collectors are
closed. Keep them short: the first delays readiness.

Observer hooks: ``npuagent_alert_transition(transition)`` (an alert changed
state, called on the loop's thread) and ``npuagent_action_result(result)`` (an
action finished, called in the remediation worker). Their return value is
ignored; return quickly and hand slow work, such as a network post, to a queue.

A hook that raises is logged with your plugin's name and counted; the other
plugins, and the agent, go on.

Configuration keys
==================

Every key a type accepts is declared once, as
``Option(name, type, default, help)`` in the type's ``options``. Leave out the
default to make the key required. The value types are in
:mod:`npuagent.options`: ``String(pattern, hint)``, ``Boolean``,
``Number(min, max)``, ``Integer``, ``Duration`` (``"30s"`` -> 30.0),
``OneOf(...)``, ``Array(item)`` (-> a tuple), ``Map(value)`` and ``Table(options)``.

The agent validates each table against the declaration before your factory
runs: ``npuagent check`` reports unknown keys (with "did you mean"), wrong types
and missing keys with file, line and key, and a reload with errors is refused.
Your factory receives the converted values, defaults filled in, as
``ctx.options``: there is nothing left to check. An operator configures this
plugin so::

    [plugins.example]
    label_host = true

    [collectors.example-files]
    paths = ["/etc/hostname", "/var/lib/dpkg/status"]
    interval = "1m"

    [actions.append-to-file]
    type = "example-append"
    path = "/var/log/npuagent-example.jsonl"

and names ``"append-to-file"`` in a rule's ``actions``.

The rules of plugin code
========================

- ``collect()`` runs in the collector's own worker thread, with a timeout
  (``ctx.timeout``; ``ctx.remaining()`` is what is left of it). A collection that
  overruns is abandoned and its commands are killed; its late answer is thrown
  away.
- Keep state in the instance, never in module globals: one type may have several
  instances (two tables of one type), and a reload builds new instances and
  closes the old ones.
- Never use a shell. Run commands with ``ctx.run(["npu-smi", "info"])``: an argv
  list, bounded by the collection's deadline, killed with it. Put values from
  labels or configuration in their own argument, never into a command string.
- On failure, raise. The agent records the error (a log line, the collector's
  health in ``/status``, its series marked as failed) and tries again at the next
  interval. Do not return partial or made-up values: no value is better than a
  wrong one. Something legitimately absent, such as a file that does not exist,
  is a measurement, not a failure.
- An action returns an ``ActionResult`` for every outcome, failures included,
  with text an operator can act on; it honours ``request.dry_run`` by saying
  what it would do and doing nothing.
- The agent usually runs as root: create files with explicit modes, do not
  follow symbolic links you did not expect, and trust no label value as a path.

Testing
=======

Test your types without an agent: take them from your hook functions, validate
an options table as the agent does, build a context, and call the factory::

    from npuagent.context import PluginContext
    from npuagent.options import validate_table
    import npuagent_example

    (kind,) = npuagent_example.npuagent_collector_types()
    options, errors = validate_table({"paths": ["/etc/hostname"]}, kind.options)
    assert errors == []
    collector = kind.factory(PluginContext("example-files", kind.name, options))
    samples = list(collector.collect())

Check that the hooks are wired up by registering the module on a fresh manager,
without loading the installed entry points::

    from npuagent.plugins import Plugins

    plugins = Plugins()
    plugins.load(entry_points=False, builtins=())
    plugins.register(npuagent_example, "example")
    assert "example-files" in plugins.collector_types()

``tests/test_example.py`` does all of this, and checks the entry point of the
installed distribution: ``pip install -e .`` then ``python -m pytest tests``.
In a real agent, ``npuagent plugins`` lists the plugin and ``npuagent once``
shows what its collectors report.

Disabling a plugin
==================

In the configuration::

    [plugins]
    disabled = ["example"]

or from the environment, for one run: ``NPUAGENT_DISABLE_PLUGINS=example``
(comma-separated names). A disabled plugin is not even imported.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import socket
import time
from typing import Dict, List

from npuagent import hookimpl
from npuagent.context import PluginContext
from npuagent.model import ActionRequest, ActionResult, ActionType, CollectorType, MetricSpec, Sample
from npuagent.options import Array, Boolean, Option, String

__version__ = "0.1.0"

_ABSOLUTE_PATH = String(r"/.*", "an absolute path")


# ---------------------------------------------------------------------------
# The collector type "example-files"
# ---------------------------------------------------------------------------


class FilesCollector:
    """For each configured path: whether it exists, and if so its size and age."""

    def __init__(self, ctx: PluginContext) -> None:
        self.paths = ctx.options["paths"]
        # A plugin-wide option ([plugins.example]), read once per instance.
        self.extra_labels: Dict[str, str] = (
            {"host": socket.gethostname()} if ctx.plugin_options.get("label_host") else {}
        )

    def collect(self) -> List[Sample]:
        """Stat every path; a missing one is reported as such, any other error raises."""
        now = time.time()
        samples = []
        for path in self.paths:
            labels = {**self.extra_labels, "path": path}
            try:
                st = os.stat(path)
            except (FileNotFoundError, NotADirectoryError):
                samples.append(Sample("example_file_exists", labels, 0.0))
                continue
            # Anything else (permission denied, I/O error) raises: the agent records it.
            samples += [
                Sample("example_file_exists", labels, 1.0),
                Sample("example_file_size_bytes", labels, float(st.st_size)),
                Sample("example_file_age_seconds", labels, now - st.st_mtime),
            ]
        return samples

    def close(self) -> None:
        """Nothing to release: no open files or connections are kept."""


FILES_OPTIONS = (
    Option("paths", Array(_ABSOLUTE_PATH), ("/etc/hostname", "/etc/os-release"), "The files to watch."),
)

FILES_METRICS = (
    MetricSpec("example_file_exists", "gauge", "1 if the file exists, else 0."),
    MetricSpec("example_file_size_bytes", "gauge", "Size of the file in bytes."),
    MetricSpec("example_file_age_seconds", "gauge",
               "Seconds since the file was last modified (negative if its time is in the future)."),
)


@hookimpl
def npuagent_collector_types() -> List[CollectorType]:
    """Register ``example-files``: on by default, so installing the package shows data."""
    return [
        CollectorType(
            name="example-files",
            factory=FilesCollector,
            options=FILES_OPTIONS,
            help="Existence, size and age of a few files.",
            interval=30.0,
            timeout=5.0,
            enabled_by_default=True,
            metrics=FILES_METRICS,
        )
    ]


# ---------------------------------------------------------------------------
# The action type "example-append"
# ---------------------------------------------------------------------------


class AppendAction:
    """Appends one JSON line describing each request to a file."""

    def __init__(self, ctx: PluginContext) -> None:
        self.path = ctx.options["path"]

    def run(self, request: ActionRequest) -> ActionResult:
        """Append the line, or only describe it in dry-run; failures are results, not exceptions."""
        started = time.monotonic()
        line = json.dumps(self.record(request), sort_keys=True) + "\n"
        if request.dry_run:
            return self._result(request, "dry-run", f"would append to {self.path}: {line.strip()}", started)
        try:
            # 0600: the line carries labels and summaries. O_NOFOLLOW: as root, never
            # write through a symbolic link someone planted where the file should be.
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "a", encoding="utf-8") as f:
                f.write(line)
        except OSError as e:
            return self._result(request, "failure", f"cannot append to {self.path}: {e.strerror or e}", started)
        return self._result(request, "success", f"appended to {self.path}", started)

    @staticmethod
    def record(request: ActionRequest) -> Dict[str, object]:
        """The JSON object written for ``request`` (valid JSON: no NaN or infinity)."""
        value = request.value
        return {
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds"),
            "action": request.action,
            "rule": request.rule,
            "state": request.state,
            "labels": dict(request.labels),
            "value": value if value is None or math.isfinite(value) else str(value),
            "summary": request.summary,
        }

    @staticmethod
    def _result(request: ActionRequest, outcome: str, output: str, started: float) -> ActionResult:
        return ActionResult(request.action, outcome, output, time.monotonic() - started, request)


APPEND_OPTIONS = (
    Option("path", _ABSOLUTE_PATH, help="The file to append to; created with mode 0600 if missing."),
)


@hookimpl
def npuagent_action_types() -> List[ActionType]:
    """Register ``example-append``."""
    return [
        ActionType(
            name="example-append",
            factory=AppendAction,
            options=APPEND_OPTIONS,
            help="Append one JSON line per request to a file.",
        )
    ]


# ---------------------------------------------------------------------------
# The plugin's own table, [plugins.example]
# ---------------------------------------------------------------------------


@hookimpl
def npuagent_config_options() -> List[Option]:
    """Declare ``[plugins.example]``; its values reach every factory as ``ctx.plugin_options``."""
    return [
        Option("label_host", Boolean(), False, "Add a host label (this machine's hostname) to every sample."),
    ]
