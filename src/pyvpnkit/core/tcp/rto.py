"""Retransmission timeout estimation (RFC 6298) with exponential backoff."""

from __future__ import annotations


class RtoEstimator:
    __slots__ = ("srtt", "rttvar", "rto", "min_rto", "max_rto", "backoffs")

    def __init__(self, initial: float = 1.0, min_rto: float = 0.2, max_rto: float = 60.0) -> None:
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.min_rto = min_rto
        self.max_rto = max_rto
        self.rto = min(max(initial, min_rto), max_rto)
        self.backoffs = 0

    def sample(self, rtt: float) -> None:
        """Fold in one round-trip measurement (callers follow Karn's rule)."""
        rtt = max(rtt, 0.0)
        if self.srtt is None:
            self.srtt = rtt
            self.rttvar = rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt
        # G (clock granularity) is taken as 1 ms, the resolution of our timestamps.
        self.rto = min(max(self.srtt + max(0.001, 4 * self.rttvar), self.min_rto), self.max_rto)
        self.backoffs = 0

    def backoff(self) -> None:
        """Double the timeout after an expiry (RFC 6298 5.5)."""
        self.rto = min(self.rto * 2, self.max_rto)
        self.backoffs += 1
