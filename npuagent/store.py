"""The in-memory time-series store, and the PromQL window functions rules evaluate on it.

Collectors deliver samples on their own intervals; the store keeps a bounded
window of each series and hands the rule engine the samples of a time range.
It also knows which series are *live*, i.e. were returned by the latest
successful collection of their source, which is what /metrics exposes.

Why it is built this way:

* **Memory.** An agent on a busy accelerator host holds thousands of series,
  each with up to an hour of samples. A ``(t, v)`` tuple of two floats costs
  over 100 bytes in CPython; two ring buffers, an ``array('d')`` of values
  and an array of 32-bit millisecond offsets from a per-series base, cost
  12 bytes per sample and no Python object at all. Timestamps are thus
  whole milliseconds, as in Prometheus. Buffers start small and double up
  to a bound derived from retention and the source's interval, so
  short-lived or sparse series never pay for a full window.
* **Speed.** A rule over one hour at 1 s reads 3600 samples. The window is two
  ``bisect`` calls and one or two C-level slices; the functions then let C do
  the per-sample work (``math.fsum``, ``min``, ``sorted``, ``map`` with
  ``operator`` functions, ``itertools.compress``) instead of Python loops.
  Timestamps become float seconds only where a function reads them
  (:meth:`Series.window`): most read none, rate and friends two.
* **Semantics.** Operators know PromQL, so the functions follow Prometheus 3
  exactly: left-open ranges ``(start, end]``, ``extrapolatedRate`` for
  rate/increase/delta, ``linearRegression`` for deriv/predict_linear,
  ``quantile`` and ``BucketQuantile`` for the quantiles, NaN handling of
  ``min_over_time``/``max_over_time``, Go's x/0 = ±Inf instead of an
  exception. Sums use ``math.fsum`` (exactly rounded; ``math.sumprod`` for
  dot products on Python 3.12+) where Prometheus uses Kahan-Neumaier
  summation, so results agree to the last bits in ordinary cases and are
  *more* accurate in the pathological ones Prometheus documents as wrong.
  The reference is ``promql/functions.go`` and ``promql/quantile.go``.
* **Threads.** The loop thread is the only writer and the only reader of
  windows, so reads take no lock. ``live()`` is called from the HTTP thread;
  it and every write share one lock, and a write holds it for a whole batch so
  a scrape never sees half of a collection.
"""

from __future__ import annotations

import math
import threading
from array import array
from bisect import bisect_left, bisect_right
from itertools import compress, repeat
from math import ceil, floor, fsum, inf, isinf, isnan, nan
from operator import add, eq, gt, itemgetter, mul, sub, truediv
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Set, Tuple, Union, overload

try:  # Python 3.12+: a dot product in one C loop, with exact products and extended-precision sums.
    from math import sumprod as _sumprod
except ImportError:  # pragma: no cover - Python < 3.12
    _sumprod = None

__all__ = [
    "Labels",
    "Series",
    "SeriesKey",
    "Store",
    "Times",
    "absent",
    "avg_over",
    "bucket_increases",
    "bucket_le",
    "bucket_series",
    "count_over",
    "delta",
    "deriv",
    "histogram_quantile",
    "increase",
    "last_value",
    "max_capacity",
    "max_over",
    "min_over",
    "predict_linear",
    "quantile_over",
    "rate",
    "series_key",
    "stddev_over",
    "stdvar_over",
    "sum_over",
]

#: A label set in canonical form: pairs sorted by name, hashable and cheap to compare.
Labels = Tuple[Tuple[str, str], ...]
#: The identity of a series: its name and canonical label set.
SeriesKey = Tuple[str, Labels]
#: What window functions take: ``array('d')`` or :class:`Times` from a :class:`Series`, or any float sequence.
Floats = Sequence[float]

# ``array * n`` allocates exactly n items, unlike ``array(..., bytes)`` or
# ``extend``, which over-allocate by 1/16 -- a full window must cost 12 bytes a sample.
_ZERO = array("d", [0.0])
#: Timestamps: unsigned 32-bit millisecond offsets from a per-series base. C's unsigned int
#: is 4 bytes on every platform CPython supports (the tests check ``itemsize``).
_MS_TYPECODE = "I"
_ZERO_MS = array(_MS_TYPECODE, [0])
#: The largest offset: 2**32 - 1 ms, 49.7 days.
_MAX_OFFSET = (1 << 32) - 1
#: Offsets up to here are one-digit Python ints (12.4 days), which convert ~1.5x faster than larger ones.
_FAST_OFFSET = (1 << 30) - 1
#: Timestamps must be within this many seconds of 1970 (278,000 years): floats still tell milliseconds apart.
_MAX_TIME = 2.0**43
#: ``_last_ms`` of a series without samples: older than any valid one.
_NO_MS = -(1 << 63)
_INITIAL_CAPACITY = 8
#: Prometheus's smallDeltaTolerance (promql/quantile.go).
_SMALL_DELTA_TOLERANCE = 1e-12
#: The smallest positive normal float64 (Prometheus util/almost).
_MIN_NORMAL = 2.2250738585072014e-308
_MAX_FLOAT = 1.7976931348623157e308


def series_key(name: str, labels: Union[Mapping[str, str], Iterable[Tuple[str, str]]]) -> SeriesKey:
    """The identity of a series: ``(name, tuple(sorted(labels.items())))``.

    Sorting makes the key independent of the order a collector built its
    label dict in; a tuple makes it hashable and shares nothing mutable.
    """
    items = labels.items() if isinstance(labels, Mapping) else labels
    return (name, tuple(sorted(items)))


def max_capacity(retention: float, interval: float) -> int:
    """How many samples a series of a source with this interval may keep.

    ``ceil(retention / interval) + 2``: one window's worth, plus slack for
    jitter in the collection times so the oldest sample still inside the
    retention is not overwritten by one that arrives a little early.
    """
    if not interval > 0:
        raise ValueError(f"interval must be > 0, not {interval!r}")
    return max(2, math.ceil(retention / interval) + 2)


def _check_retention(value: float) -> float:
    value = float(value)
    if not 0 < value < inf:
        raise ValueError(f"retention must be a positive number of seconds, not {value!r}")
    return value


def _to_ms(t: float) -> int:
    """Seconds to whole milliseconds as Prometheus's ``timestamp.FromFloatSeconds``: nearest, halves away from 0."""
    x = t * 1000.0
    return floor(x + 0.5) if x >= 0.0 else ceil(x - 0.5)


def _floor_ms(x: float) -> int:
    """The largest whole millisecond ``m`` with ``m / 1000 <= x``, for a finite ``x``.

    Windows select by the float seconds they return, ``m / 1000``, so a bound
    converts to milliseconds exactly this way. ``x * 1000`` is off by a
    rounding error; the loops correct it (by one step, or a few beyond
    ``2**42`` s where floats no longer tell every millisecond apart).
    """
    m = floor(x * 1000.0)
    while m / 1000 > x:
        m -= 1
    while (m + 1) / 1000 <= x:
        m += 1
    return m


def _seconds(ms: array[int], base: int) -> array[float]:
    """Offsets in milliseconds from ``base`` as float seconds: ``(base + offset) / 1000``, rounded once.

    ``float(base) + offset`` is exact (an integer below 2**53), so each value
    equals ``m / 1000`` for the sample's millisecond ``m``: a timestamp that
    was a whole millisecond comes back as the very float it was ingested as.
    (A comprehension: 15-20% faster here than chained ``map`` calls, which
    allocate the same int and float objects per item.)
    """
    b = float(base)
    return array("d", [(b + x) / 1000.0 for x in ms])


class Times(Sequence[float]):
    """A window's timestamps in float seconds, converted from milliseconds only when read.

    :meth:`Series.window` returns one for its timestamps. The standard library cannot convert integers to
    floats in bulk, so converting a 1 h window at 1 s costs some 60 times
    the window itself -- while most window functions read no timestamp at
    all (``avg_over``, ``min_over``, ...) and ``rate``, ``increase`` and
    ``delta`` read only the first and the last. Indexing converts one;
    iterating converts in C-level ``map``; :meth:`seconds` converts all.
    """

    __slots__ = ("_base", "_ms")

    def __init__(self, ms: array[int], base: int) -> None:
        self._ms = ms
        self._base = base

    def __len__(self) -> int:
        return len(self._ms)

    @overload
    def __getitem__(self, i: int) -> float: ...

    @overload
    def __getitem__(self, i: slice) -> Times: ...

    def __getitem__(self, i: Union[int, slice]) -> Union[float, Times]:
        if isinstance(i, slice):
            return Times(self._ms[i], self._base)
        return (self._base + self._ms[i]) / 1000

    def __iter__(self) -> Iterator[float]:
        return map(truediv, map(add, self._ms, repeat(float(self._base))), repeat(1000.0))

    def __repr__(self) -> str:
        return f"Times({self.seconds().tolist()!r})"

    def __eq__(self, other: object) -> bool:
        """Equal to any sequence of the same timestamps (an ``array('d')``, a list, another Times)."""
        if isinstance(other, (Times, array, list, tuple)):
            return len(self) == len(other) and all(map(eq, self, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # a sequence compared by value is not hashable

    def seconds(self) -> array[float]:
        """All timestamps as an ``array('d')`` of float seconds."""
        return _seconds(self._ms, self._base)

    def since(self, origin: float) -> List[float]:
        """Seconds from ``origin`` to each timestamp, as Prometheus's linearRegression computes them.

        ``float64(sample.T - interceptTime) / 1e3``: the difference in whole
        milliseconds (``origin`` rounded to one), then one division. Exact
        differences, where subtracting float seconds would carry the
        rounding of both operands.
        """
        if not -_MAX_TIME < origin < _MAX_TIME:  # NaN or infinite: NaN or infinite x, as with floats
            return list(map(sub, self, repeat(origin)))
        shift = _to_ms(origin) - self._base
        return [(x - shift) / 1000.0 for x in self._ms]


class Series:
    """One series: its identity and a ring buffer of its samples.

    Values live in an ``array('d')``; timestamps in an array of unsigned
    32-bit millisecond offsets from ``_base`` (an int, in milliseconds), both
    of the same size. The logical order starts at ``_head``; once the buffer
    holds ``_max`` samples, each new sample overwrites the oldest.
    ``_last_ms``/``_last_t``/``_last_v`` duplicate the newest sample (``_last_t``
    in float seconds) so the ingest path, ``select`` and ``live()`` need no
    index arithmetic.

    An offset reaches at most 2**32 - 1 ms (49.7 days) past the base. The
    series is *rebased* before that (:meth:`_fit`): the base moves to the
    oldest sample and every offset shifts down. Samples more than 49.7 days
    older than the newest cannot share a base with it and are dropped then;
    no retention this agent uses comes close.
    """

    __slots__ = (
        "_base",
        "_head",
        "_last_ms",
        "_last_t",
        "_last_v",
        "_len",
        "_max",
        "_store",
        "_ts",
        "_vs",
        "ended",
        "labels",
        "name",
        "source",
    )

    name: str
    labels: Labels
    #: The source that delivered this series most recently, and so owns its live entry.
    source: str
    #: The source's last successful collection did not return it: gone, as after a Prometheus staleness
    #: marker (a failed collection says nothing and does not set it).
    ended: bool

    def __init__(self, name: str, labels: Labels, source: str, store: Store, capacity_bound: int) -> None:
        self.name = name
        self.labels = labels
        self.source = source
        self.ended = False
        # The store supplies the retention cut-off: a reload may change it
        # without touching every series.
        self._store = store
        self._max = capacity_bound
        size = min(_INITIAL_CAPACITY, capacity_bound)
        self._ts: array[int] = _ZERO_MS * size
        self._vs: array[float] = _ZERO * size
        self._base = 0
        self._head = 0
        self._len = 0
        self._last_ms = _NO_MS
        self._last_t = -inf
        self._last_v = nan

    def __repr__(self) -> str:
        labels = ",".join(f'{k}="{v}"' for k, v in self.labels)
        return f"<Series {self.name}{{{labels}}} {self._len}/{len(self._ts)} samples>"

    def labels_dict(self) -> Dict[str, str]:
        """The labels as a fresh dict, for callers that build new label sets from them."""
        return dict(self.labels)

    @property
    def capacity(self) -> int:
        """Samples the buffers hold now (grows by doubling up to the bound)."""
        return len(self._ts)

    def samples_stored(self) -> int:
        """Samples held, including any already older than the retention."""
        return self._len

    def last(self) -> Optional[Tuple[float, float]]:
        """The newest sample as ``(timestamp, value)``, or None if it is older than the retention."""
        if self._len and self._last_t > self._store._cutoff:
            return (self._last_t, self._last_v)
        return None

    def window(self, start: float, end: float) -> Tuple[Times, array[float]]:
        """The samples with ``start < t <= end``: their timestamps as :class:`Times` and values as an array.

        Left-open like a Prometheus 3 range selector, so ``[5m]`` at a 1 m
        interval holds 5 samples, not 6. Samples older than the retention are
        excluded even while the ring still holds them. The result is a copy:
        the caller may keep it while new samples arrive. Timestamps are
        converted to float seconds only when read (``Times.seconds()`` converts
        all): every window function takes them, most read none, rate/increase/
        delta read two, and deriv/predict_linear compute from the milliseconds.
        """
        ms, vs = self._select(start, end)
        return Times(ms, self._base), vs

    def _select(self, start: float, end: float) -> Tuple[array[int], array[float]]:
        """Copies of the offsets and values of the samples with ``start < t <= end``, oldest first."""
        cutoff = self._store._cutoff
        if start < cutoff:
            start = cutoff
        n = self._len
        ts = self._ts
        vs = self._vs
        if not n or not end > start:
            return ts[:0], vs[:0]
        # Offsets at or below lo are not newer than start; at or below hi, not newer than end.
        lo = self._floor_offset(start)
        hi = self._floor_offset(end)
        size = len(ts)
        head = self._head
        stop = head + n
        if stop <= size:
            lo1 = bisect_right(ts, lo, head, stop)
            hi1 = bisect_right(ts, hi, lo1, stop)
            return ts[lo1:hi1], vs[lo1:hi1]
        # Wrapped: the older part is [head, size), the newer [0, stop - size).
        stop -= size
        lo1 = bisect_right(ts, lo, head, size)
        hi1 = bisect_right(ts, hi, lo1, size)
        lo2 = bisect_right(ts, lo, 0, stop)
        hi2 = bisect_right(ts, hi, lo2, stop)
        if lo1 == hi1:
            return ts[lo2:hi2], vs[lo2:hi2]
        if lo2 == hi2:
            return ts[lo1:hi1], vs[lo1:hi1]
        return ts[lo1:hi1] + ts[lo2:hi2], vs[lo1:hi1] + vs[lo2:hi2]

    def _floor_offset(self, x: float) -> int:
        """The largest offset whose timestamp is ``<= x``; ``x`` may be infinite, not NaN.

        May be outside the offsets' range, which only means every sample (or none) is newer than ``x``.
        """
        # Every stored timestamp is strictly inside +-_MAX_TIME, so clamping keeps every comparison.
        return _floor_ms(min(max(x, -_MAX_TIME), _MAX_TIME)) - self._base

    # -- writing (loop thread, under the store's lock) --

    def _append(self, ms: int, v: float) -> None:
        """Add a sample newer than every stored one; the caller has checked the order."""
        off = ms - self._base
        if not 0 <= off <= _FAST_OFFSET:
            off = self._fit(ms)
        n = self._len
        ts = self._ts
        size = len(ts)
        if n < size:
            i = self._head + n
            if i >= size:
                i -= size
            ts[i] = off
            self._vs[i] = v
            self._len = n + 1
        elif size < self._max:
            self._resize(min(size * 2, self._max))
            self._ts[n] = off
            self._vs[n] = v
            self._len = n + 1
        else:
            head = self._head
            ts[head] = off
            self._vs[head] = v
            head += 1
            self._head = 0 if head == size else head
        self._last_ms = ms
        self._last_t = ms / 1000
        self._last_v = v

    def _fit(self, ms: int) -> int:
        """The offset of ``ms`` when it is past the fast range: rebase first if it must, or if that pays.

        Every per-sample conversion (``window``, ``Times.since``) makes a Python
        int of each offset, ~1.5x faster below 2**30 (12.4 days). So a series is
        rebased not only when the offset would overflow but also as soon as
        that at least halves it: a series spanning up to 6.2 days keeps its
        offsets fast and is rebased every 12.4 days less its span; a longer
        one once per span, or every 49.7 days less its span once that is
        sooner. A rebase moves every sample (O(samples)), so it is amortised
        over the appends in between -- except for a span within a few
        intervals of 49.7 days, which nothing here configures.
        """
        off = ms - self._base
        if self._len and off <= _MAX_OFFSET and 2 * self._ts[self._head] < off:
            return off
        self._rebase(ms)
        return ms - self._base

    def _rebase(self, ms: int) -> None:
        """Move the base to the oldest sample that can share one with ``ms`` (the first sample sets it too)."""
        base = self._base
        ts, vs = self._ordered()
        first = bisect_left(ts, ms - _MAX_OFFSET - base)
        new_base = base + ts[first] if first < len(ts) else ms
        shifted = array(_MS_TYPECODE, map(sub, ts[first:], repeat(new_base - base)))
        self._load(shifted, vs[first:], len(self._ts))
        self._base = new_base

    def _ordered(self) -> Tuple[array[int], array[float]]:
        """Copies of the stored offsets and values, oldest first."""
        head = self._head
        stop = head + self._len
        size = len(self._ts)
        if stop <= size:
            return self._ts[head:stop], self._vs[head:stop]
        stop -= size
        return self._ts[head:] + self._ts[:stop], self._vs[head:] + self._vs[:stop]

    def _load(self, ts: array[int], vs: array[float], size: int) -> None:
        """Replace the buffers by ones of exactly ``size`` items holding these samples, oldest first at 0."""
        n = len(ts)
        self._ts = _ZERO_MS * size
        self._vs = _ZERO * size
        self._ts[:n] = ts
        self._vs[:n] = vs
        self._head = 0
        self._len = n

    def _resize(self, size: int) -> None:
        """Move the samples into buffers of exactly ``size`` items."""
        ts, vs = self._ordered()
        self._load(ts, vs, size)

    def _set_bound(self, capacity_bound: int, cutoff: float) -> None:
        """Adopt a new capacity bound after the retention or the source's interval changed.

        Growing only raises the bound; the buffers double when they fill.
        Shrinking drops the oldest samples, but never one newer than
        ``cutoff``: a sample still inside the (new) retention stays, even if
        that leaves the buffer above the bound.
        """
        self._max = capacity_bound
        size = len(self._ts)
        if size <= capacity_bound:
            return
        ts, vs = self._ordered()
        n = len(ts)
        inside = n - bisect_right(ts, self._floor_offset(cutoff))
        # One more than what is inside: room for the sample being appended,
        # so it does not overwrite one the retention still covers.
        keep = max(capacity_bound, inside + 1)
        if keep >= size:
            return
        k = min(n, keep)
        self._load(ts[n - k :], vs[n - k :], keep)


class Store:
    """Bounded windows of every series, the live set per source, and the lock that guards them.

    ``ingest``, ``mark_failed``, ``forget_source`` and ``live`` may be called
    from any thread. Everything else (``select``, ``get``, ``Series.window``)
    belongs to the loop thread, the only writer, and takes no lock.
    """

    #: Samples dropped because their timestamp was not newer than the series' last one.
    out_of_order: int
    #: Samples dropped because their name, labels, value or timestamp were unusable.
    invalid: int

    def __init__(self, retention: float = 300.0) -> None:
        self._lock = threading.Lock()
        self._retention = _check_retention(retention)
        self._series: Dict[SeriesKey, Series] = {}
        # select() by name is the rule engine's hot path.
        self._by_name: Dict[str, Dict[Labels, Series]] = {}
        self._live: Dict[SeriesKey, Series] = {}
        self._by_source: Dict[str, Set[SeriesKey]] = {}
        self._bounds: Dict[float, int] = {}
        self._now = -inf
        self._cutoff = -inf
        self._last_sweep = -inf
        self.out_of_order = 0
        self.invalid = 0
        #: Counts series created and forgotten: a rule that caches its ``select()`` selects again when it moves.
        self.generation = 0

    def __repr__(self) -> str:
        return f"<Store {len(self._series)} series, {len(self._live)} live, retention {self._retention:g}s>"

    # -- configuration --

    @property
    def retention(self) -> float:
        """Seconds of history kept. Window functions never see older samples."""
        return self._retention

    @retention.setter
    def retention(self, value: float) -> None:
        # Capacities are re-derived lazily, when a series next receives a
        # sample: a reload must not stall the loop copying every buffer.
        value = _check_retention(value)
        with self._lock:
            self._retention = value
            self._cutoff = self._now - value
            self._bounds.clear()

    def _bound(self, interval: float) -> int:
        bound = self._bounds.get(interval)
        if bound is None:
            bound = self._bounds[interval] = max_capacity(self._retention, interval)
        return bound

    # -- writing --

    def ingest(self, source: str, samples: Iterable[Any], now: float, interval: float) -> int:
        """Store one collection of ``source`` and make its series the source's live set.

        Each sample has ``name``, ``labels``, ``value`` and ``timestamp``
        (None means ``now``, the time the collection finished, which also
        moves the retention cut-off). Timestamps are rounded to whole
        milliseconds, Prometheus's resolution (halves away from zero, as its
        ``timestamp.FromFloatSeconds``). ``interval`` is the source's collection
        interval: it bounds how many samples each of its series keeps
        (:func:`max_capacity`). A sample whose millisecond is not newer than its
        series' last one is dropped and counted in :attr:`out_of_order`; one
        with unusable fields (a timestamp that is not finite or further than
        2**43 s from 1970 among them) is dropped and counted in :attr:`invalid`. Series the source returned
        last time but not now leave the live set -- the source says they are
        gone, as a Prometheus staleness marker would -- but keep their
        history for window functions. Returns the number of samples stored.
        """
        if now - now != 0.0:
            raise ValueError(f"now must be a finite time, not {now!r}")
        # Materialise first: a generator runs collector code, which must not
        # run under the lock that /metrics waits on.
        batch = samples if isinstance(samples, (list, tuple)) else list(samples)
        accepted = 0
        dropped = 0
        invalid = 0
        delivered: Set[SeriesKey] = set()
        add = delivered.add
        with self._lock:
            bound = self._bound(interval)
            self._now = now
            cutoff = self._cutoff = now - self._retention
            series = self._series
            live = self._live
            for sample in batch:
                try:
                    name = sample.name
                    labels = tuple(sorted(sample.labels.items()))
                    value = float(sample.value)
                    t = sample.timestamp
                    t = now if t is None else float(t)
                except (AttributeError, TypeError, ValueError):
                    invalid += 1
                    continue
                if not -_MAX_TIME < t < _MAX_TIME:
                    # NaN or infinite, it would poison the series' ordering for good;
                    # beyond 2**43 s, floats no longer tell milliseconds apart.
                    invalid += 1
                    continue
                # Whole milliseconds, as Prometheus stores them (_to_ms, inlined: this loop is hot).
                x = t * 1000.0
                ms = floor(x + 0.5) if x >= 0.0 else ceil(x - 0.5)
                key = (name, labels)
                s = series.get(key)
                if s is None:
                    s = self._create(key, bound)
                elif s._max != bound:
                    s._set_bound(bound, cutoff)
                if ms > s._last_ms:
                    s._append(ms, value)
                    accepted += 1
                else:
                    dropped += 1
                # The latest source to deliver a series owns its live entry.
                s.source = source
                s.ended = False
                live[key] = s
                add(key)
            previous = self._by_source.get(source)
            if previous:
                for key in previous.difference(delivered):
                    s = series.get(key)
                    if s is not None and s.source == source:
                        live.pop(key, None)
                        s.ended = True
            self._by_source[source] = delivered
            self.out_of_order += dropped
            self.invalid += invalid
            if now < self._last_sweep:
                # The clock went back; restart the sweep schedule from here.
                self._last_sweep = now
            elif now - self._last_sweep >= self._retention / 4:
                self._sweep(cutoff)
                self._last_sweep = now
        return accepted

    def _create(self, key: SeriesKey, bound: int) -> Series:
        name, labels = key
        s = Series(name, labels, "", self, bound)
        self.generation += 1
        self._series[key] = s
        group = self._by_name.get(name)
        if group is None:
            group = self._by_name[name] = {}
        group[labels] = s
        return s

    def _sweep(self, cutoff: float) -> None:
        """Forget series whose newest sample is older than the retention.

        Run every retention/4 at most: it visits every series, and a series
        that is a little late to go costs only its buffers for a while.
        """
        stale = [key for key, s in self._series.items() if s._last_t <= cutoff]
        self.generation += bool(stale)
        for key in stale:
            del self._series[key]
            name, labels = key
            group = self._by_name[name]
            del group[labels]
            if not group:
                del self._by_name[name]
            self._live.pop(key, None)

    def mark_failed(self, source: str) -> None:
        """The source's collection failed or timed out: none of its series is fresh any more.

        They leave the live set at once (a scrape must not serve the last
        good values as current); their history stays for window functions.
        """
        with self._lock:
            keys = self._by_source.get(source)
            if keys:
                # kept as the source's last answer: the next good one ends what it no longer returns
                self._drop_live(source, keys)

    def forget_source(self, source: str) -> None:
        """The source was removed by a reload: drop its live set and its bookkeeping."""
        with self._lock:
            keys = self._by_source.pop(source, None)
            if keys:
                self._drop_live(source, keys)

    def _drop_live(self, source: str, keys: Iterable[SeriesKey]) -> None:
        live = self._live
        for key in keys:
            s = live.get(key)
            # Another source that delivered the series later owns the entry.
            if s is not None and s.source == source:
                del live[key]

    # -- reading --

    def live(self) -> List[Tuple[str, Labels, float]]:
        """``(name, labels, last value)`` of every live series, as one consistent snapshot.

        Safe from any thread: it holds the lock writers hold for a whole
        batch, so it never mixes two collections of one source.
        """
        with self._lock:
            return [(s.name, s.labels, s._last_v) for s in self._live.values()]

    def select(self, name: str, matchers: Optional[Mapping[str, str]] = None) -> List[Series]:
        """Every series named ``name`` with a sample inside the retention whose labels match.

        A matcher ``k: v`` requires label ``k`` to equal ``v``; as in PromQL,
        ``k: ""`` matches series without label ``k``. Live or not does not
        matter: a rule wants the history of a series that just disappeared.
        """
        group = self._by_name.get(name)
        if not group:
            return []
        cutoff = self._cutoff
        if not matchers:
            return [s for s in group.values() if s._last_t > cutoff]
        wanted = tuple(matchers.items())
        return [s for labels, s in group.items() if s._last_t > cutoff and _matches(labels, wanted)]

    def get(self, name: str, labels: Union[Mapping[str, str], Iterable[Tuple[str, str]]]) -> Optional[Series]:
        """The series with exactly this name and label set, if it has a sample inside the retention."""
        s = self._series.get(series_key(name, labels))
        if s is None or s._last_t <= self._cutoff:
            return None
        return s

    def __len__(self) -> int:
        """Series held (a series older than the retention counts until the next sweep)."""
        return len(self._series)

    def samples_stored(self) -> int:
        """Samples held over all series."""
        return sum(s._len for s in self._series.values())


def _matches(labels: Labels, wanted: Tuple[Tuple[str, str], ...]) -> bool:
    for pair in wanted:
        if pair not in labels:
            if pair[1] != "":
                return False
            name = pair[0]
            for k, _v in labels:
                if k == name:
                    return False
    return True


# --------------------------------------------------------------------------
# Window functions. Each takes the arrays of Series.window (or any float
# sequences) and returns None for an empty window, where PromQL returns no
# element; NaN and infinities follow PromQL.
# --------------------------------------------------------------------------


def _kahan_inc(inc: float, total: float, c: float) -> Tuple[float, float]:
    """Prometheus's kahansum.Inc (Kahan-Neumaier), for the rare paths that must match it step by step."""
    t = total + inc
    if isinf(t):
        c = 0.0
    elif abs(total) >= abs(inc):
        c += (total - t) + inc
    else:
        c += (inc - t) + total
    return t, c


def _div(a: float, b: float) -> float:
    """Division as in Go: x/0 is ±Inf, 0/0 is NaN. A bucket or a regression may divide by zero legitimately."""
    try:
        return a / b
    except ZeroDivisionError:
        if a != a or a == 0:
            return nan
        return math.copysign(inf, a) * math.copysign(1.0, b)


def _fsum(values: Floats) -> float:
    """Exactly rounded sum; where fsum refuses (inf + -inf, overflow) the float addition Prometheus does.

    ``values`` must be re-iterable: an array or a list.
    """
    try:
        return fsum(values)
    except (OverflowError, ValueError):
        return sum(values)


def last_value(ts: Floats, vs: Floats) -> Optional[float]:
    """last_over_time: the newest value in the window."""
    return vs[-1] if len(vs) else None


def count_over(vs: Floats) -> float:
    """count_over_time. The one function that answers an empty window (with 0)."""
    return float(len(vs))


def sum_over(vs: Floats) -> Optional[float]:
    """sum_over_time, exactly rounded (Prometheus: Kahan-Neumaier; ±Inf on overflow, NaN on Inf-Inf)."""
    if not len(vs):
        return None
    return _fsum(vs)


def avg_over(vs: Floats) -> Optional[float]:
    """avg_over_time: the sum divided by the count, dividing first if the sum would overflow.

    Prometheus switches to an incremental mean when the running sum
    overflows, which is why the mean of two values near the float maximum is
    finite; dividing each value by n before summing gets the same answer.
    """
    n = len(vs)
    if not n:
        return None
    try:
        return fsum(vs) / n
    except ValueError:
        return nan  # +Inf and -Inf both present
    except OverflowError:
        pass
    try:
        return fsum(map(truediv, vs, repeat(n, n)))
    except (OverflowError, ValueError):
        return sum(vs) / n


def min_over(vs: Floats) -> Optional[float]:
    """min_over_time: NaN is ignored unless every value is NaN, as in Prometheus."""
    if not len(vs):
        return None
    # min() only returns NaN when the first value is NaN (nothing compares
    # less than it); later NaNs are already skipped, as Prometheus skips them.
    m = min(vs)
    if m == m:
        return m
    clean = [v for v in vs if v == v]
    return min(clean) if clean else nan


def max_over(vs: Floats) -> Optional[float]:
    """max_over_time: NaN is ignored unless every value is NaN, as in Prometheus."""
    if not len(vs):
        return None
    m = max(vs)
    if m == m:
        return m
    clean = [v for v in vs if v == v]
    return max(clean) if clean else nan


def _welford_variance(vs: Floats) -> float:
    """Prometheus's varianceOverTime, step by step: the answer for non-finite data or overflow."""
    count = 0.0
    mean = c_mean = 0.0
    aux = c_aux = 0.0
    for v in vs:
        count += 1.0
        d = v - (mean + c_mean)
        mean, c_mean = _kahan_inc(d / count, mean, c_mean)
        aux, c_aux = _kahan_inc(d * (v - (mean + c_mean)), aux, c_aux)
    return (aux + c_aux) / count


def stdvar_over(vs: Floats) -> Optional[float]:
    """stdvar_over_time: the population variance.

    ``(sum(d*d) - sum(d)**2 / n) / n`` over the values shifted by the first
    one, with exactly rounded sums: one pass for the shift and one for the
    squares instead of Welford's per-sample Python loop. The shift keeps the
    subtraction from cancelling for a large offset (a counter at 1e12 that
    moves by 1) and makes a flat series exactly 0, as Prometheus's test
    #4927 requires. Infinities, NaN and overflow fall back to Prometheus's own
    algorithm, whose answers there (NaN, Inf) are what PromQL users get.
    """
    n = len(vs)
    if not n:
        return None
    shifted = list(map(sub, vs, repeat(vs[0], n)))
    try:
        total = fsum(shifted)
        squares = _dot(shifted, shifted)
    except (OverflowError, ValueError):
        return _welford_variance(vs)
    var = (squares - total * total / n) / n
    if var - var != 0.0:
        return _welford_variance(vs)
    return var if var > 0.0 else 0.0


def stddev_over(vs: Floats) -> Optional[float]:
    """stddev_over_time: the population standard deviation."""
    var = stdvar_over(vs)
    if var is None:
        return None
    # Go's math.Sqrt gives NaN where Python's raises; NaN >= 0 is False too.
    return math.sqrt(var) if var >= 0 else nan


def _quantile(q: float, values: Floats) -> float:
    """PromQL's quantile(): linear interpolation between the closest ranks; NaN sorts lowest."""
    if isnan(q):
        return nan
    if q < 0:
        return -inf
    if q > 1:
        return inf
    n = len(values)
    ordered = sorted(values)
    total = sum(ordered)  # cheaper on the sorted list than on an array
    if total != total:
        # NaN present (or +Inf and -Inf): Go's sort puts NaN first; Python's scatters it.
        clean = [v for v in ordered if v == v]
        ordered = [nan] * (n - len(clean)) + sorted(clean)
    rank = q * (n - 1)
    lower = max(0, math.floor(rank))
    upper = min(n - 1, lower + 1)
    weight = rank - math.floor(rank)
    return ordered[lower] * (1 - weight) + ordered[upper] * weight


def quantile_over(q: float, vs: Floats) -> Optional[float]:
    """quantile_over_time: q<0 gives -Inf, q>1 +Inf, NaN q gives NaN."""
    if not len(vs):
        return None
    return _quantile(q, vs)


def _extrapolated_rate(
    ts: Floats, vs: Floats, start: float, end: float, is_counter: bool, is_rate: bool
) -> Optional[float]:
    """Prometheus's extrapolatedRate for float samples (promql/functions.go).

    The raw difference (for counters plus the value before each reset) is
    extrapolated towards the range boundaries: all the way if the first/last
    sample is within 1.1 average intervals of it, else by half an average
    interval; a counter is never extrapolated below zero.
    """
    n = len(vs)
    if n < 2:
        return None
    first_t = ts[0]
    last_t = ts[-1]
    first_v = vs[0]
    result = vs[-1] - first_v
    if is_counter:
        # A decrease is a reset to 0: add back the value it dropped from.
        # Converting once is cheaper than making floats of every item twice.
        values = vs.tolist() if isinstance(vs, array) else list(vs)
        result += sum(compress(values, map(gt, values, values[1:])))
    duration_to_start = first_t - start
    duration_to_end = end - last_t
    sampled = last_t - first_t
    average = sampled / (n - 1)
    threshold = average * 1.1
    if duration_to_start >= threshold:
        duration_to_start = average / 2
    if is_counter:
        duration_to_zero = duration_to_start
        if result > 0 and first_v >= 0:
            duration_to_zero = sampled * (first_v / result)
        if duration_to_zero < duration_to_start:
            duration_to_start = duration_to_zero
    if duration_to_end >= threshold:
        duration_to_end = average / 2
    factor = (sampled + duration_to_start + duration_to_end) / sampled
    if is_rate:
        factor /= end - start
    return result * factor


def rate(ts: Floats, vs: Floats, start: float, end: float) -> Optional[float]:
    """rate(): per-second increase of a counter over the range ``(start, end]``."""
    return _extrapolated_rate(ts, vs, start, end, True, True)


def increase(ts: Floats, vs: Floats, start: float, end: float) -> Optional[float]:
    """increase(): rate() times the range, i.e. the extrapolated counter increase."""
    return _extrapolated_rate(ts, vs, start, end, True, False)


def delta(ts: Floats, vs: Floats, start: float, end: float) -> Optional[float]:
    """delta(): extrapolated difference of a gauge (no reset handling, no zero clamp)."""
    return _extrapolated_rate(ts, vs, start, end, False, False)


def _dot(a: Floats, b: Floats) -> float:
    """The sum of products, as accurate as fsum: ``math.sumprod`` where it exists (3x faster)."""
    if _sumprod is not None:
        return _sumprod(a, b)
    try:
        return fsum(map(mul, a, b))
    except (OverflowError, ValueError):
        return sum(map(mul, a, b))


def _linear_regression(ts: Floats, vs: Floats, intercept_time: float) -> Tuple[float, float]:
    """Prometheus's linearRegression: least-squares slope, and the fitted value at ``intercept_time``.

    From :class:`Times` the x values are Prometheus's own, millisecond
    differences divided by 1000 (:meth:`Times.since`), and cost no more than
    subtracting floats.
    """
    n = len(vs)
    first = vs[0]
    if first == vs[-1] and vs.count(first) == n:
        # Constant: exact answer, no division by the cancellation of two sums.
        # (NaN != NaN keeps an all-NaN window out of here, as in Go.)
        if isinf(first):
            return nan, nan
        return 0.0, first
    xs = ts.since(intercept_time) if isinstance(ts, Times) else list(map(sub, ts, repeat(intercept_time, n)))
    sum_x = fsum(xs)
    sum_y = _fsum(vs)
    sum_xy = _dot(xs, vs)
    sum_x2 = _dot(xs, xs)
    cov_xy = sum_xy - sum_x * sum_y / n
    var_x = sum_x2 - sum_x * sum_x / n
    slope = _div(cov_xy, var_x)
    intercept = sum_y / n - slope * sum_x / n
    return slope, intercept


def deriv(ts: Floats, vs: Floats) -> Optional[float]:
    """deriv(): per-second slope of the least-squares line through the window."""
    if len(vs) < 2:
        return None
    # Times relative to the first sample keep x small (prometheus#2674).
    return _linear_regression(ts, vs, ts[0])[0]


def predict_linear(ts: Floats, vs: Floats, at: float, horizon: float) -> Optional[float]:
    """predict_linear(): the least-squares line's value ``horizon`` seconds after ``at``.

    ``at`` is the evaluation time (PromQL's ``enh.Ts``), not the last sample's time.
    """
    if len(vs) < 2:
        return None
    slope, intercept = _linear_regression(ts, vs, at)
    return slope * horizon + intercept


def _almost_equal(a: float, b: float, epsilon: float) -> bool:
    """Prometheus util/almost.Equal."""
    if a != a and b != b:
        return True
    if a == b:
        return True
    abs_sum = abs(a) + abs(b)
    diff = abs(a - b)
    if a == 0 or b == 0 or abs_sum < _MIN_NORMAL:
        return diff < epsilon * _MIN_NORMAL
    return diff / min(abs_sum, _MAX_FLOAT) < epsilon


def histogram_quantile(q: float, buckets: Iterable[Tuple[float, float]]) -> float:
    """histogram_quantile() of a classic histogram: Prometheus's BucketQuantile.

    ``buckets`` are ``(le, cumulative count)`` pairs in any order, including
    ``+Inf``. Buckets with the same bound are merged; counts are forced
    monotonic (ignoring relative differences below 1e-12 in either
    direction); the quantile is interpolated linearly inside its bucket,
    the lowest bucket starting at 0 if its bound is positive. NaN without a
    +Inf bucket, with fewer than two buckets, or with no observations; the
    second-highest bound if the quantile falls in the +Inf bucket.
    """
    if isnan(q):
        return nan
    if q < 0:
        return -inf
    if q > 1:
        return inf
    ordered = sorted(buckets, key=itemgetter(0))
    if not ordered or ordered[-1][0] != inf:
        return nan
    bounds: List[float] = []
    counts: List[float] = []
    for le, count in ordered:
        if bounds and le == bounds[-1]:
            counts[-1] += count
        else:
            bounds.append(le)
            counts.append(count)
    prev = counts[0]
    for i in range(1, len(counts)):
        curr = counts[i]
        if curr == prev:
            continue
        if _almost_equal(prev, curr, _SMALL_DELTA_TOLERANCE) or curr < prev:
            # Float noise in either direction, or a real decrease: carry the
            # previous count forward without making this one the reference.
            counts[i] = prev
            continue
        prev = curr
    nb = len(counts)
    if nb < 2:
        return nan
    observations = counts[-1]
    if observations == 0:
        return nan
    rank = q * observations
    # Go's sort.Search(nb-1, counts[i] >= rank), spelled out so NaN counts behave as in Go.
    lo, hi = 0, nb - 1
    while lo < hi:
        mid = (lo + hi) >> 1
        if not counts[mid] >= rank:
            lo = mid + 1
        else:
            hi = mid
    b = lo
    if b == nb - 1:
        return bounds[nb - 2]
    if b == 0 and bounds[0] <= 0:
        return bounds[0]
    bucket_start = 0.0
    bucket_end = bounds[b]
    count = counts[b]
    if b > 0:
        bucket_start = bounds[b - 1]
        count -= counts[b - 1]
        rank -= counts[b - 1]
    return bucket_start + (bucket_end - bucket_start) * _div(rank, count)


def bucket_le(series: Series) -> float:
    """The upper bound of a ``_bucket`` series from its ``le`` label (``+Inf`` and ``1e0`` spellings too)."""
    for k, v in series.labels:
        if k == "le":
            return float(v)
    raise ValueError(f"{series.name} has no le label")


def bucket_series(store: Store, name: str, matchers: Optional[Mapping[str, str]] = None) -> Dict[Labels, List[Series]]:
    """The ``<name>_bucket`` series grouped into histograms: labels without ``le`` -> buckets by bound.

    A rule computes ``histogram_quantile(q, increase per bucket over a
    window)`` per group, e.g. with :func:`bucket_increases`. Series whose
    ``le`` is missing or not a number are left out, as Prometheus ignores them.
    """
    groups: Dict[Labels, List[Tuple[float, Series]]] = {}
    for s in store.select(name + "_bucket", matchers):
        le: Optional[float] = None
        rest = []
        for k, v in s.labels:
            if k == "le":
                try:
                    le = float(v)
                except ValueError:
                    le = None
                    break
            else:
                rest.append((k, v))
        if le is None or le != le:
            continue
        groups.setdefault(tuple(rest), []).append((le, s))
    return {labels: [s for _le, s in sorted(pairs, key=itemgetter(0))] for labels, pairs in groups.items()}


def bucket_increases(buckets: Iterable[Series], start: float, end: float) -> List[Tuple[float, float]]:
    """``(le, increase over (start, end])`` for each bucket series, ready for :func:`histogram_quantile`.

    A bucket with fewer than two samples in the window has no increase and
    is left out, as it would be missing from ``increase(x_bucket[...])``.
    """
    out = []
    for s in buckets:
        ts, vs = s.window(start, end)
        inc = increase(ts, vs, start, end)
        if inc is not None:
            out.append((bucket_le(s), inc))
    return out


def absent(series_list: Iterable[Series], now: float, staleness: float) -> bool:
    """True when none of the series has a sample newer than ``now - staleness``."""
    threshold = now - staleness
    for s in series_list:
        last = s.last()
        if last is not None and last[0] > threshold:
            return False
    return True
