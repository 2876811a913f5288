"""The loop: collectors on their own intervals, in their own workers, with timeouts.

One pass of the loop (:meth:`Agent.step`) takes in what the workers finished,
abandons collections that overran their timeout (killing their commands),
starts the collectors that are due, and pings the watchdog. Collectors never run
on the loop's thread, so a hung ``npu-smi`` costs one worker, not the agent; a
collector still busy at its next tick is skipped and counted, never piled up.

The clock is a parameter (:class:`SystemClock`, or a simulated one in tests), so
hours of loop time can run in milliseconds.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import config as config_mod
from .context import PluginContext
from .events import EventLog
from .model import AlertTransition, CollectorType, Event, MetricSpec, Sample
from .plugins import Plugins
from .remediation import Bound, Remediation
from .rules import Engine, compile_rules
from .store import Store
from .systemd import Notifier

log = logging.getLogger("npuagent.agent")


class SystemClock:
    """Wall time for timestamps, monotonic time for intervals, and real waiting."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def wait(self, event: threading.Event, timeout: float) -> bool:
        return event.wait(max(timeout, 0.0))


@dataclass
class Health:
    """What /metrics says of one collector."""

    up: int = 0
    duration: float = 0.0
    errors: int = 0
    skipped: int = 0
    last_success: float = 0.0
    last_error: str = ""
    samples: int = 0


class CollectorRunner:
    """One configured collector, its worker thread, and its health.

    The worker is a persistent thread: device libraries (DCMI) want their calls
    on one thread, and a thread per collection would churn.
    """

    def __init__(self, cfg: config_mod.CollectorConfig, kind: CollectorType, ctx: PluginContext, collector: Any,
                 done: queue.Queue[Tuple[CollectorRunner, int, Any, Optional[BaseException], float]],
                 wake: threading.Event) -> None:
        self.cfg = cfg
        self.kind = kind
        self.ctx = ctx
        self.collector = collector
        self.health = Health()
        self.next_due = 0.0
        self.busy = False
        self.abandoned = False
        self.deadline = 0.0
        self.attempt = 0
        self._jobs: queue.Queue[Optional[int]] = queue.Queue()
        self._done = done
        self._wake = wake
        self._thread = threading.Thread(target=self._work, name=f"collector-{cfg.name}", daemon=True)
        self._thread.start()

    @property
    def name(self) -> str:
        return self.cfg.name

    def start(self, now: float) -> None:
        self.attempt += 1
        self.busy, self.abandoned = True, False
        self.deadline = now + self.cfg.timeout
        self.ctx.deadline = time.monotonic() + self.cfg.timeout
        self._jobs.put(self.attempt)

    def _work(self) -> None:
        while True:
            attempt = self._jobs.get()
            if attempt is None:
                return
            started = time.monotonic()
            items, error = None, None
            try:
                items = list(self.collector.collect() or ())
            except BaseException as e:  # a plugin must not kill its worker
                error = e
            self._done.put((self, attempt, items, error, time.monotonic() - started))
            self._wake.set()

    def stop(self) -> None:
        self._jobs.put(None)
        self.ctx.kill_commands()
        close = getattr(self.collector, "close", None)
        if close is not None:
            try:
                close()
            except Exception:
                log.exception("collector %s failed to close", self.name)


class Agent:
    """The running agent: configuration, plugins, store, collectors and the loop."""

    def __init__(self, cfg: config_mod.Config, plugins: Plugins, clock: Any = None,
                 notifier: Optional[Notifier] = None, config_path: Optional[str] = None, state: Any = None,
                 control: Any = None) -> None:
        self.clock = clock or SystemClock()
        #: the control server apps connect to (npuagent.control), made and started by `npuagent run`
        self.control = control
        self.plugins = plugins
        self.config_path = config_path
        self.state = state
        self.notifier = notifier or Notifier(self.clock.monotonic)
        self.store = Store(retention=300.0)
        self.events = EventLog()
        self.runners: Dict[str, CollectorRunner] = {}
        self.metric_specs: Dict[str, MetricSpec] = {}
        self.engine: Optional[Engine] = None
        self.remediation: Optional[Remediation] = None
        self.next_evaluation = 0.0
        self.cycles = 0
        self.last_cycle = 0.0
        self.reload_ok = 1
        self.reload_time = self.clock.time()
        self.started = self.clock.time()
        self._done: queue.Queue = queue.Queue()
        self._emitted: queue.Queue = queue.Queue()
        self._wake = threading.Event()
        self._stop = False
        self._reload = False
        self.cfg = cfg
        self._apply(cfg)

    # -- configuration -------------------------------------------------------

    def _apply(self, cfg: config_mod.Config) -> None:
        """Start, keep or replace collectors to match ``cfg``.

        New collectors are built before anything is replaced: a factory that
        rejects its options fails the whole (re)load, and the old set keeps running.
        """
        types_ = self.plugins.collector_types()
        built: Dict[str, CollectorRunner] = {}
        problems = []
        for c in cfg.collectors:
            old = self.runners.get(c.name)
            if old is not None and _identity(old.cfg) == _identity(c):
                continue
            ctx = self.context(c, cfg, self)
            ctx.emitter = self._emit
            try:
                collector = types_[c.type][1].factory(ctx)
            except Exception as e:
                problems.append(config_mod.Problem(c.file, c.line, f"collectors.{c.name}", str(e)))
                continue
            built[c.name] = CollectorRunner(c, types_[c.type][1], ctx, collector, self._done, self._wake)
        declared = {m.name: m for _p, kind in types_.values() for m in kind.metrics}
        try:
            compiled = compile_rules(cfg, self.plugins, declared)
        except config_mod.ConfigError as e:
            problems.extend(e.problems)
        actions = self._build_actions(cfg, problems)
        if problems:
            for runner in built.values():
                runner.stop()
            for bound in actions.values():
                getattr(bound.impl, "close", lambda: None)()
            raise config_mod.ConfigError(problems)
        engine = Engine(compiled, self.state, started=self.started, notify=self._transitions)
        if self.engine is not None:
            engine.adopt(self.engine)
        self.engine = engine
        self._apply_actions(cfg, actions)
        wanted = {c.name: c for c in cfg.collectors}
        for name in list(self.runners):
            if name not in wanted or name in built:
                self.runners.pop(name).stop()
                self.store.forget_source(name)
        for name, c in wanted.items():
            if name in built:
                self.runners[name] = built[name]
            else:
                self.runners[name].cfg = c
        self.metric_specs = {m.name: m for r in self.runners.values() for m in r.kind.metrics}
        longest = max((r.cfg.interval for r in self.runners.values()), default=15.0)
        # the store keeps what the longest rule window needs (and a little for /status), no more
        self.store.retention = max(300.0, 3 * longest, engine.window() + 2 * longest)
        self.events.retention = max(3600.0, engine.window())
        self.cfg = cfg
        logging.getLogger("npuagent").setLevel(cfg.agent["log_level"].upper())

    def _build_actions(self, cfg: config_mod.Config, problems: List[Any]) -> Dict[str, Bound]:
        """Every configured action made through its type's factory; refusals become problems."""
        types_ = self.plugins.action_types()
        out = {}
        for name, table in cfg.actions.items():
            kind = types_[table.type][1]
            ctx = self.context(table, cfg, self)
            ctx.timeout = table.options["timeout"]
            try:
                out[name] = Bound(name, table.type, table.options, kind.factory(ctx), ctx, kind.disruptive)
            except Exception as e:
                problems.append(config_mod.Problem(table.file, table.line, f"actions.{name}", str(e)))
        return out

    def _apply_actions(self, cfg: config_mod.Config, actions: Dict[str, Bound]) -> None:
        """Actions run only with a state database: the audit log and the guards' memory live there."""
        old = self.remediation
        if self.state is None:
            for bound in actions.values():
                getattr(bound.impl, "close", lambda: None)()
            return
        self.remediation = Remediation(actions, self.state, observe=self.plugins.action_result, clock=self.clock,
                                       dry_run=cfg.agent["dry_run"], breaker=cfg.agent["breaker"])
        if old is not None:
            self.remediation.episodes = old.episodes
            self.remediation.counts = old.counts  # npuagent_actions_total is a counter: a reload does not reset it
            old.close()

    @staticmethod
    def context(c: config_mod.TableConfig, cfg: config_mod.Config, agent: Optional[Agent] = None) -> PluginContext:
        """The context a factory of ``c``'s type is given (with the running agent's control server and store)."""
        ctx = PluginContext(
            name=c.name, type=c.type, options=c.options, plugin_options=cfg.plugin_options.get(c.plugin, {}),
            interval=getattr(c, "interval", 0.0), timeout=getattr(c, "timeout", 10.0),
            state_dir=os.path.join(cfg.agent["state_dir"], c.plugin),
        )
        if agent is not None:
            ctx.control = agent.control
            ctx.latest = agent.latest
        return ctx

    def latest(self, name: str) -> List[Sample]:
        """The last sample of every live series named ``name`` (safe from any thread)."""
        return [Sample(n, dict(labels), v) for n, labels, v in self.store.live() if n == name]

    def reload(self) -> bool:
        """Re-read the configuration; an invalid one is refused and the old one keeps running."""
        self.notifier.reloading()
        try:
            cfg = config_mod.load(self.config_path, self.plugins)
            self._apply(cfg)
        except config_mod.ConfigError as e:
            self.reload_ok = 0
            log.error("reload refused, the running configuration stays:\n%s", e)
        except Exception:
            self.reload_ok = 0
            log.exception("reload refused, the running configuration stays")
        else:
            self.reload_ok = 1
            self.reload_time = self.clock.time()
            self.plugins.startup(self)
            log.info("configuration reloaded: %d collectors", len(self.runners))
        self.notifier.ready(self.summary())
        return bool(self.reload_ok)

    # -- the loop ------------------------------------------------------------

    def step(self) -> int:
        """One pass of the loop; returns how many collections completed in it."""
        now = self.clock.monotonic()
        completed = self._take_results()
        if self.engine is not None and self.engine.rules and (completed or now >= self.next_evaluation):
            # after every collection round, and often enough for `for` timers to move without new data
            self.next_evaluation = now + self.cfg.agent["evaluation_interval"]
            self.engine.evaluate(self.clock.time(), self.store, self.events, self.runners)
            if self.remediation is not None:
                self.remediation.tick(self.clock.time(), self.engine.rules)
        for runner in self.runners.values():
            if runner.busy and not runner.abandoned and now >= runner.deadline:
                self._abandon(runner)
        for runner in self.runners.values():
            if now < runner.next_due:
                continue
            # keep the phase; after a long stall, start again from now rather than catching up
            runner.next_due = max(runner.next_due + runner.cfg.interval, now)
            if runner.next_due == now:
                runner.next_due = now + runner.cfg.interval
            if runner.busy:
                runner.health.skipped += 1
                log.warning("collector %s is still busy at its next tick; skipped", runner.name)
                continue
            runner.start(now)
        self.cycles += 1
        self.last_cycle = self.clock.time()
        self.notifier.cycle()
        return completed

    def _emit(self, events: List[Event]) -> None:
        """Events a plugin hands over between collections (any thread): taken in at the next pass, now."""
        self._emitted.put(events)
        self._wake.set()

    def _take_results(self) -> int:
        completed = 0
        while not self._emitted.empty():
            self.events.add(self._emitted.get_nowait(), self.clock.time())
            completed += 1  # new events: evaluate the rules now
        while True:
            try:
                runner, attempt, items, error, duration = self._done.get_nowait()
            except queue.Empty:
                return completed
            if self.runners.get(runner.name) is not runner:
                continue  # replaced by a reload meanwhile
            if attempt != runner.attempt or runner.abandoned:
                runner.busy = False  # the late answer of an abandoned collection: never served as fresh
                continue
            runner.busy = False
            completed += 1
            self._record(runner, items, error, duration)

    def _record(self, runner: CollectorRunner, items: Optional[List[Any]], error: Optional[BaseException],
                duration: float) -> None:
        h = runner.health
        h.duration = duration
        if error is not None:
            h.up, h.errors = 0, h.errors + 1
            h.last_error = f"{type(error).__name__}: {error}"
            self.store.mark_failed(runner.name)
            log.error("collector %s failed: %s", runner.name, h.last_error)
            return
        now = self.clock.time()
        samples = [i for i in items or () if isinstance(i, Sample)]
        if len(samples) != len(items or ()):
            self.events.add((i for i in items or () if isinstance(i, Event)), now)
        h.samples = self.store.ingest(runner.name, samples, now, runner.cfg.interval)
        h.up, h.last_success, h.last_error = 1, now, ""

    def _abandon(self, runner: CollectorRunner) -> None:
        runner.abandoned = True
        h = runner.health
        h.up, h.errors = 0, h.errors + 1
        h.last_error = f"timed out after {runner.cfg.timeout:g}s"
        killed = runner.ctx.kill_commands()
        self.store.mark_failed(runner.name)
        log.error("collector %s timed out after %gs%s", runner.name, runner.cfg.timeout,
                  f"; killed {killed} command(s)" if killed else "")

    def _transitions(self, transitions: List[AlertTransition]) -> None:
        for t in transitions:
            labels = ",".join(f"{k}={v}" for k, v in sorted(t.labels.items()))
            log.info("alert %s{%s} %s -> %s (value %s)%s", t.rule, labels, t.previous, t.state,
                     "none" if t.value is None else f"{t.value:g}", " [silenced]" if t.silenced else "")
            self.plugins.alert_transition(t)
        if self.remediation is not None and self.engine is not None:
            self.remediation.handle(transitions, self.engine.rules)

    def next_wakeup(self) -> float:
        """Monotonic time of the next thing the loop must do."""
        times = [r.next_due for r in self.runners.values()]
        if self.engine is not None and self.engine.rules:
            times.append(self.next_evaluation)
        times += [r.deadline for r in self.runners.values() if r.busy and not r.abandoned]
        return min([*times, self.clock.monotonic() + self.notifier.max_sleep()])

    def summary(self) -> str:
        up = sum(r.health.up for r in self.runners.values())
        return f"{up}/{len(self.runners)} collectors up, {len(self.store)} series"

    def run(self, ready: Optional[Callable[[], None]] = None) -> None:
        """Run until SIGTERM/SIGINT (or :meth:`stop`); SIGHUP reloads."""
        self._install_signals()
        self.plugins.startup(self)
        announced = False
        while not self._stop:
            if self._reload:
                self._reload = False
                self.reload()
            self._wake.clear()
            self.step()
            if not announced and all(r.health.up or r.health.errors for r in self.runners.values()):
                announced = True  # READY once every collector has finished its first collection
                self.notifier.ready(self.summary())
                if ready:
                    ready()
            else:
                self.notifier.status(self.summary())
            self.clock.wait(self._wake, self.next_wakeup() - self.clock.monotonic())
        self.notifier.stopping()
        self.shutdown()

    def stop(self) -> None:
        self._stop = True
        self._wake.set()

    def request_reload(self) -> None:
        self._reload = True
        self._wake.set()

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        signal.signal(signal.SIGTERM, lambda *_: self.stop())
        signal.signal(signal.SIGINT, lambda *_: self.stop())
        signal.signal(signal.SIGHUP, lambda *_: self.request_reload())

    def shutdown(self) -> None:
        self.plugins.shutdown(self)
        if self.remediation is not None:
            self.remediation.close()
        for runner in self.runners.values():
            runner.stop()
        if self.control is not None:
            self.control.close()

    # -- one-shot ------------------------------------------------------------

    def collect_once(self) -> List[Any]:
        """Run every collector once, concurrently, each within its timeout; return all samples and events."""
        start = self.clock.monotonic()
        for runner in self.runners.values():
            runner.start(start)
        items: List[Any] = []
        pending = set(self.runners)
        while pending:
            deadline = max(r.deadline for r in self.runners.values() if r.name in pending)
            try:
                runner, _attempt, got, error, duration = self._done.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                for name in pending:
                    self._abandon(self.runners[name])
                break
            pending.discard(runner.name)
            runner.busy = False
            self._record(runner, got, error, duration)
            if error is None:
                items.extend(got or ())
        return items


def _identity(c: config_mod.CollectorConfig) -> Tuple[Any, ...]:
    """What makes a collector the same across a reload (its place in a file does not)."""
    return (c.type, c.plugin, dict(c.options), c.interval, c.timeout)
