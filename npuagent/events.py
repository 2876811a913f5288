"""Recent events (log matches, device faults), kept per kind for the ``event`` rules.

Events are rare next to samples (a log tailer emits one per matching line, not
per line), so a deque per kind, bounded both in count and in age, is enough.
"""

from __future__ import annotations

from collections import deque
from typing import Deque, Dict, Iterable, List, Mapping, Optional

from .model import Event

DEFAULT_PER_KIND = 10_000


class EventLog:
    """The last events of each kind, newest last, none older than ``retention`` seconds."""

    def __init__(self, retention: float = 3600.0, per_kind: int = DEFAULT_PER_KIND) -> None:
        self.retention = retention
        self.per_kind = per_kind
        self._by_kind: Dict[str, Deque[Event]] = {}
        self.total = 0

    def add(self, events: Iterable[Event], now: float) -> None:
        for e in events:
            if e.timestamp is None:
                e = e._replace(timestamp=now)
            log = self._by_kind.get(e.kind)
            if log is None:
                log = self._by_kind[e.kind] = deque(maxlen=self.per_kind)
            log.append(e)
            self.total += 1
        self.expire(now)

    def expire(self, now: float) -> None:
        cutoff = now - self.retention
        for kind in list(self._by_kind):
            log = self._by_kind[kind]
            while log and (log[0].timestamp or 0.0) < cutoff:
                log.popleft()
            if not log:
                del self._by_kind[kind]

    def select(self, kind: str, matchers: Optional[Mapping[str, str]] = None, start: float = float("-inf"),
               end: float = float("inf")) -> List[Event]:
        """Events of ``kind`` (``*`` for any) whose labels match, with ``start < t <= end``."""
        logs = self._by_kind.values() if kind == "*" else [self._by_kind.get(kind, ())]
        out = []
        for log in logs:
            for e in log:
                t = e.timestamp or 0.0
                if start < t <= end and all(e.labels.get(k) == v for k, v in (matchers or {}).items()):
                    out.append(e)
        return out

    def recent(self, limit: int = 50) -> List[Event]:
        """The newest events of all kinds, newest last (for /status)."""
        merged = sorted((e for log in self._by_kind.values() for e in log), key=lambda e: e.timestamp or 0.0)
        return merged[-limit:]
