"""What the core hands a plugin's factory: its name, options, logger, and a
command runner bound to the deadline of the current collection."""

from __future__ import annotations

import contextlib
import logging
import subprocess
import threading
import time
from typing import Any, Callable, Iterator, List, Mapping, Optional, Sequence, Set

from . import commands
from .model import Event, Sample


class PluginContext:
    """One instance of a collector, rule or action type, as configured.

    :ivar name: the instance's name (``[collectors.<name>]``, the rule's or action's name).
    :ivar type: the type's name.
    :ivar options: the instance's validated options, defaults filled in.
    :ivar plugin_options: the validated ``[plugins.<plugin>]`` table of the plugin that registered the type.
    :ivar interval: for collectors, seconds between collections.
    :ivar timeout: seconds one collection (or action) may take before it is abandoned.
    :ivar state_dir: a directory the plugin may keep files in.
    :ivar metrics: every declared metric, name -> :class:`npuagent.model.MetricSpec`.
    """

    def __init__(
        self,
        name: str,
        type: str,
        options: Mapping[str, Any],
        plugin_options: Optional[Mapping[str, Any]] = None,
        interval: float = 0.0,
        timeout: float = 10.0,
        state_dir: str = "",
        log: Optional[logging.Logger] = None,
        metrics: Optional[Mapping[str, Any]] = None,
    ) -> None:
        self.name = name
        self.type = type
        self.options = options
        self.plugin_options = plugin_options or {}
        self.interval = interval
        self.timeout = timeout
        self.state_dir = state_dir
        self.log = log or logging.getLogger(f"npuagent.{type}.{name}")
        #: every metric the loaded collector types declare, name -> MetricSpec (rules use it)
        self.metrics = metrics or {}
        #: set by the agent: hands events over between collections (see :meth:`emit`)
        self.emitter: Optional[Callable[[Sequence[Event]], None]] = None
        #: monotonic time by which the current collection must end (set by the agent).
        self.deadline: Optional[float] = None
        #: the agent's control server (:class:`npuagent.control.ControlServer`) when it listens for apps
        #: using :mod:`npuagent.client`; None otherwise (``npuagent once``, or ``[control] enabled = false``)
        self.control: Any = None
        #: ``latest(name)``: the freshest sample of every live series of that metric, from any collector
        #: (set by the agent): how an action finds, say, the pids holding memory on a device
        self.latest: Callable[[str], List[Sample]] = lambda name: []
        self._running: Set[subprocess.Popen] = set()
        self._lock = threading.Lock()
        self._local = threading.local()

    def emit(self, events: Sequence[Event]) -> None:
        """Hand events to the agent now, from any thread, without waiting for the next collection:
        a device fault the driver reports through a callback reaches the rules at once."""
        if self.emitter is not None:
            self.emitter(list(events))

    @contextlib.contextmanager
    def deadline_here(self, deadline: float) -> Iterator[None]:
        """A deadline for what this thread does in the block, before :attr:`deadline`: one action runs for
        several targets at once, in several workers, and each run has a deadline of its own."""
        self._local.deadline = deadline
        try:
            yield
        finally:
            self._local.deadline = None

    def remaining(self) -> float:
        """Seconds left before the current deadline (the full timeout when none is set)."""
        deadline = getattr(self._local, "deadline", None)
        if deadline is None:
            deadline = self.deadline
        if deadline is None:
            return self.timeout
        return max(deadline - time.monotonic(), 0.0)

    def run(
        self,
        argv: Sequence[str],
        timeout: Optional[float] = None,
        env: Optional[Mapping[str, str]] = None,
        input: Optional[str] = None,
        user: Optional[str] = None,
    ) -> commands.CommandResult:
        """Run a command (argv list, no shell) within what is left of the deadline.

        The child is killed when its own ``timeout`` or the collection's deadline
        passes, whichever comes first; also when the agent abandons the collection.

        :raises commands.CommandNotFound: the program is missing or not executable.
        :raises commands.CommandTimeout: the command was killed at its deadline (a
            collector that lets this propagate is recorded as failed, with the reason).
        """
        limit = self.remaining() if timeout is None else min(timeout, self.remaining())
        result = commands.run(argv, limit, env=env, input=input, running=self._running, lock=self._lock, user=user)
        if result.timed_out:
            raise commands.CommandTimeout(result)
        return result

    def kill_commands(self) -> int:
        """Kill every command this context is running; returns how many."""
        with self._lock:
            procs = list(self._running)
        for proc in procs:
            commands.kill_group(proc)
        return len(procs)
