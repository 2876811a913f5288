"""The records that cross the plugin boundary.

Collectors produce :class:`Sample` and :class:`Event`; plugins register
:class:`CollectorType`, :class:`RuleType` and :class:`ActionType` factories;
the core hands alert transitions and action results to observers.

Samples and events are named tuples, not dataclasses: a busy host produces
thousands a second, and a tuple is the cheapest immutable record Python has.
Everything else is a frozen dataclass, built once at start or reload.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, NamedTuple, Optional, Protocol, Sequence, Union

if TYPE_CHECKING:
    from .context import PluginContext
    from .options import Option


class Sample(NamedTuple):
    """One measurement: what Prometheus calls a sample of a series.

    ``timestamp`` is seconds since the epoch; ``None`` means "now", the time
    the collection finished, which is what nearly every collector wants.
    """

    name: str
    labels: Mapping[str, str]
    value: float
    timestamp: Optional[float] = None


class Event(NamedTuple):
    """Something that happened once: a log match, a device fault, an action result.

    ``kind`` is a short machine name (``hccl_connect_timeout``, ``device_fault``);
    ``labels`` are what rules match on; ``message`` is the human text.
    """

    kind: str
    labels: Mapping[str, str]
    message: str = ""
    timestamp: Optional[float] = None


#: What a collector may yield.
Collected = Union[Sample, Event]

METRIC_TYPES = ("gauge", "counter", "histogram", "summary", "info", "untyped")


@dataclass(frozen=True)
class MetricSpec:
    """A metric a collector declares: its type and help text for /metrics, and
    the name ``npuagent check`` knows when a rule refers to it."""

    name: str
    type: str = "gauge"
    help: str = ""
    #: the label names its series carry; ``None`` when they vary (a template naming
    #: another label is then a configuration error)
    labels: Optional[Sequence[str]] = None

    def __post_init__(self) -> None:
        if self.type not in METRIC_TYPES:
            raise ValueError(f"metric {self.name}: type must be one of {', '.join(METRIC_TYPES)}")


class Collector(Protocol):
    """What a collector factory returns.

    ``collect`` runs in the collector's own worker thread, never on the loop,
    and may block up to the collector's timeout; the agent abandons (and kills
    the commands of) a collection that overruns it.
    """

    def collect(self) -> Iterable[Collected]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class CollectorType:
    """A kind of collector, registered through ``npuagent_collector_types``.

    Operators instantiate it with a ``[collectors.<name>]`` table (``type =``
    defaults to the table's name, so ``[collectors.host]`` is the host collector).
    """

    name: str
    factory: Callable[[PluginContext], Collector]
    options: Sequence[Option] = ()
    help: str = ""
    interval: float = 15.0
    timeout: float = 10.0
    enabled_by_default: bool = True
    metrics: Sequence[MetricSpec] = ()


@dataclass(frozen=True)
class RuleType:
    """A kind of rule, registered through ``npuagent_rule_types``; a
    ``[[rules]]`` table with ``type = "<name>"`` is handed to ``factory``."""

    name: str
    factory: Callable[[PluginContext], Any]
    options: Sequence[Option] = ()
    help: str = ""


@dataclass(frozen=True)
class ActionType:
    """A kind of action, registered through ``npuagent_action_types``; an
    ``[actions.<name>]`` table with ``type = "<name>"`` is handed to ``factory``.

    ``disruptive`` actions (restarts) count against the host-wide breaker.
    """

    name: str
    factory: Callable[[PluginContext], Action]
    options: Sequence[Option] = ()
    help: str = ""
    disruptive: bool = False


@dataclass(frozen=True)
class ActionRequest:
    """What an action is asked to do: the alert that triggered it, and why.

    ``state`` is ``firing`` (the alert fired, or is still firing at a repeat) or
    ``resolved``. ``history`` is what the agent already did for this alert episode
    (oldest first) and ``next_step`` what it will do if the alert does not clear:
    a message can then say what happened, what was done, and what comes next.
    """

    action: str
    rule: str
    labels: Mapping[str, str]
    state: str
    value: Optional[float] = None
    summary: str = ""
    dry_run: bool = False
    annotations: Mapping[str, str] = field(default_factory=dict)
    severity: str = "warning"
    #: when the alert started firing, and when this request was made (seconds since the epoch)
    started_at: float = 0.0
    at: float = 0.0
    history: Sequence[ActionResult] = ()
    next_step: str = ""


@dataclass(frozen=True)
class ActionResult:
    """What an action did. ``outcome`` is one of ``success``, ``failure``,
    ``timeout``, ``skipped`` or ``dry-run``; ``output`` is an excerpt for the audit log."""

    action: str
    outcome: str
    output: str = ""
    duration: float = 0.0
    request: Optional[ActionRequest] = None

    @property
    def ok(self) -> bool:
        return self.outcome in ("success", "dry-run")


class Action(Protocol):
    """What an action factory returns.

    ``run`` is called in a remediation worker, never on the loop, with the action's
    timeout. Optional methods the core uses when an action has them:

    * ``run_group(requests) -> Sequence[ActionResult]``: called instead of ``run``
      with all the requests of one evaluation for this action (one message for
      several alerts);
    * ``revert(request) -> ActionResult``: undo a change when the alert resolves
      (or its ``ttl`` ends);
    * ``target(request) -> str``: what the action acts on (a unit, an app's pid),
      for cooldowns, budgets and "one action per target at a time";
    * ``tick(now) -> Sequence[ActionResult]``: called after every evaluation, for
      work of its own (repeat reminders, re-posting firing alerts);
    * ``close()``: the action is dropped (reload, stop).
    """

    def run(self, request: ActionRequest) -> ActionResult: ...


@dataclass(frozen=True)
class AlertTransition:
    """An alert of one (rule, label set) moved from one state to another."""

    rule: str
    labels: Mapping[str, str]
    previous: str
    state: str
    at: float
    value: Optional[float] = None
    severity: str = "warning"
    annotations: Mapping[str, str] = field(default_factory=dict)
    silenced: bool = False
