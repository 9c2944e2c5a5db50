"""A latency histogram of plain integers, observed in the core and read at scrape time.

The metrics exporter turns it into a Prometheus histogram; the core never
imports prometheus_client, so observing costs a bisect and two additions.
"""

from __future__ import annotations

from bisect import bisect_left

# Seconds: sub-millisecond loopback connects up to a connect timeout.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0)


class Histogram:
    """``counts[i]`` holds observations in (bounds[i-1], bounds[i]]; the last, above all."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value


__all__ = ["LATENCY_BUCKETS", "Histogram"]
