"""Mergeable latency histograms and small summaries.

Every generator process records latencies into a :class:`Histogram` (constant memory,
however many observations), ships it to the parent as a plain dict, and the parent
merges them. Buckets grow geometrically by 1 % from 1 µs, so a percentile is exact to
within 1 % of its value: plenty for p50/p99, and a million observations cost nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Final

_BASE: Final = 1e-6
"""Smallest distinguished latency in seconds (1 µs); anything below lands in bucket 0."""
_GROWTH: Final = math.log(1.01)
"""Bucket width: 1 % of the value, so reported percentiles are within 1 %."""


_log = math.log


def _bucket(seconds: float) -> int:
    if seconds <= _BASE:
        return 0
    return int(math.log(seconds / _BASE) / _GROWTH) + 1


def _value(bucket: int) -> float:
    """The upper edge of ``bucket``: percentiles err on the pessimistic side."""
    return _BASE * math.exp(bucket * _GROWTH)


class Histogram:
    """Counts of latencies (seconds) in 1 % buckets, plus the exact max and sum."""

    __slots__ = ("buckets", "count", "max", "total")

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.count = 0
        self.max = 0.0
        self.total = 0.0

    def add(self, seconds: float) -> None:
        """Record one latency; negative values (clock granularity) count as 0."""
        if seconds > _BASE:  # _bucket, inlined: this runs per watcher per change
            b = int(_log(seconds / _BASE) / _GROWTH) + 1
            if seconds > self.max:
                self.max = seconds
            self.total += seconds
        else:
            b = 0
            seconds = max(seconds, 0.0)
            self.total += seconds
            if seconds > self.max:
                self.max = seconds
        buckets = self.buckets
        buckets[b] = buckets.get(b, 0) + 1
        self.count += 1

    def add_since(self, now: float, starts: Iterable[float]) -> None:
        """Record ``now - start`` for each of ``starts`` (as :meth:`add` would)."""
        buckets = self.buckets
        count, total, top = self.count, self.total, self.max
        for start in starts:
            seconds = now - start
            if seconds > _BASE:
                b = int(_log(seconds / _BASE) / _GROWTH) + 1
            else:
                b = 0
                seconds = max(seconds, 0.0)
            buckets[b] = buckets.get(b, 0) + 1
            count += 1
            total += seconds
            if seconds > top:
                top = seconds
        self.count, self.total, self.max = count, total, top

    def merge(self, other: Histogram) -> None:
        for b, n in other.buckets.items():
            self.buckets[b] = self.buckets.get(b, 0) + n
        self.count += other.count
        self.total += other.total
        self.max = max(self.max, other.max)

    def percentile(self, p: float) -> float:
        """The ``p``-th percentile (0-100) in seconds; 0.0 when empty."""
        if not self.count:
            return 0.0
        rank = max(1, math.ceil(self.count * p / 100))
        seen = 0
        for b in sorted(self.buckets):
            seen += self.buckets[b]
            if seen >= rank:
                return min(_value(b), self.max)
        return self.max

    def summary_ms(self) -> dict[str, float]:
        """count, mean, p50, p95, p99 and max, the latencies in milliseconds."""
        mean = self.total / self.count if self.count else 0.0
        out = {"count": float(self.count), "mean_ms": round(mean * 1e3, 3)}
        for p in (50, 95, 99):
            out[f"p{p}_ms"] = round(self.percentile(p) * 1e3, 3)
        out["max_ms"] = round(self.max * 1e3, 3)
        return out

    def to_dict(self) -> dict[str, object]:
        """A picklable/JSON-able form (bucket keys become strings in JSON)."""
        return {
            "buckets": dict(self.buckets),
            "count": self.count,
            "max": self.max,
            "total": self.total,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Histogram:
        h = cls()
        buckets = data.get("buckets", {})
        assert isinstance(buckets, dict)
        h.buckets = {int(k): int(v) for k, v in buckets.items()}
        count, mx, total = data.get("count", 0), data.get("max", 0.0), data.get("total", 0.0)
        assert isinstance(count, int) and isinstance(mx, float | int)
        assert isinstance(total, float | int)
        h.count, h.max, h.total = count, float(mx), float(total)
        return h

    @classmethod
    def merged(cls, parts: Iterable[Histogram]) -> Histogram:
        h = cls()
        for part in parts:
            h.merge(part)
        return h
