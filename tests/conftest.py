"""Shared fixtures: a simulated clock, throwaway plugins, and a manager to register them on."""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any, Callable, Iterable, List, Optional

import pytest

from npuagent import hookimpl
from npuagent.model import CollectorType, MetricSpec, Sample
from npuagent.options import Option, String
from npuagent.plugins import Plugins

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


class FakeClock:
    """Simulated time: ``wait`` advances the clock instead of sleeping."""

    def __init__(self) -> None:
        self.t = 1_700_000_000.0
        self.m = 1_000.0

    def time(self) -> float:
        return self.t

    def monotonic(self) -> float:
        return self.m

    def advance(self, seconds: float) -> None:
        self.t += seconds
        self.m += seconds

    def wait(self, event: threading.Event, timeout: float) -> bool:
        if event.is_set():
            return True
        self.advance(max(timeout, 0.0))
        return False


class ScriptedCollector:
    """Runs whatever the test scripts it to: return samples, raise, or block on an event."""

    def __init__(self, behave: Callable[[Any], Iterable[Any]], ctx: Any) -> None:
        self.behave = behave
        self.ctx = ctx
        self.calls = 0
        self.closed = False

    def collect(self) -> Iterable[Any]:
        self.calls += 1
        return self.behave(self.ctx)

    def close(self) -> None:
        self.closed = True


class TestPlugin:
    """A throwaway plugin with scripted collector types (``scripted-<name>``)."""

    __test__ = False

    def __init__(self, **behaviours: Callable[[Any], Iterable[Any]]) -> None:
        self.behaviours = behaviours
        self.instances: dict = {}

    @hookimpl
    def npuagent_collector_types(self) -> List[CollectorType]:
        types = []
        for name, behave in self.behaviours.items():
            def factory(ctx: Any, behave: Callable = behave, name: str = name) -> ScriptedCollector:
                made = ScriptedCollector(behave, ctx)
                self.instances[name] = made
                return made
            types.append(CollectorType(name=name, factory=factory, interval=1.0, timeout=0.5,
                                       enabled_by_default=False,
                                       options=[Option("note", String(), "", "free text")],
                                       metrics=[MetricSpec(f"{name.replace('-', '_')}_value", "gauge", "a value")]))
        return types


def make_plugins(*extra: Any, builtins: bool = False) -> Plugins:
    plugins = Plugins()
    plugins.load(entry_points=False, builtins=plugins_builtins() if builtins else ())
    for n, obj in enumerate(extra):
        plugins.register(obj, f"test{n}")
    return plugins


def plugins_builtins() -> Any:
    from npuagent.plugins import BUILTIN_PLUGINS

    return BUILTIN_PLUGINS


def samples(name: str, *values: float, **labels: str) -> List[Sample]:
    return [Sample(name, {"i": str(i), **labels}, v) for i, v in enumerate(values)]


class NotifySocket:
    """A real datagram socket bound as NOTIFY_SOCKET; records what the agent sends, with times."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.2)
        self.messages: List[tuple] = []
        self._stop = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def lines(self) -> List[str]:
        return [line for _t, m in self.messages for line in m.split("\n")]

    def wait_for(self, line: str, timeout: float = 30.0, after: int = 0) -> Optional[int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i, (_t, m) in enumerate(self.messages[after:], after):
                if line in m.split("\n"):
                    return i
            time.sleep(0.02)
        return None

    def close(self) -> None:
        self._stop = True
        self._thread.join(1)
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterable[NotifySocket]:
    ns = NotifySocket(str(tmp_path / "notify.sock"))
    monkeypatch.setenv("NOTIFY_SOCKET", ns.path)
    yield ns
    ns.close()
