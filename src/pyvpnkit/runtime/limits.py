"""Descriptor limits: raise RLIMIT_NOFILE at start, budget host sockets, warn once in a while.

Every VM flow costs the process one host socket. A shell's usual soft limit
(1,024) is far below what a busy VM opens, so the soft limit is raised to the
hard one at start. Flows then get the limit minus a reserve (the descriptors
open at start, plus room for DNS, the API, new links and accepts), so running
out refuses a new flow (RST, ICMP unreachable) instead of failing an accept,
a TAP read or a DNS query. The kernel can still say no (ENFILE, ENOBUFS):
callers treat that the same way.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import sys
from collections import Counter
from collections.abc import Callable

log = logging.getLogger("pyvpnkit")

# Descriptors kept back for what is not a flow: DNS upstream sockets, API
# connections, VM links and listeners, port-forward accepts, pcap, /proc reads.
RESERVE = 64
WARN_INTERVAL = 10.0  # seconds between two "out of descriptors" warnings
# macOS refuses a soft limit above OPEN_MAX when the hard one is unlimited (setrlimit(2)).
OPEN_MAX = 10240

# Errors meaning "no descriptor or buffer for a new socket right now".
EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def raise_nofile_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        target = _nr_open()
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as exc:
            log.warning("cannot raise the descriptor limit from %d to %d: %s", soft, target, exc)
            target = soft
    else:
        target = soft
    log.info(
        "descriptor limit: soft %d (was %d), hard %s",
        target, soft, "unlimited" if hard == resource.RLIM_INFINITY else hard,
    )
    return target


def _nr_open() -> int:
    try:
        with open("/proc/sys/fs/nr_open") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1 << 20 if sys.platform.startswith("linux") else OPEN_MAX


def open_descriptors() -> int:
    for fds in ("/proc/self/fd", "/dev/fd"):  # /dev/fd: macOS and the BSDs
        try:
            return len(os.listdir(fds))
        except OSError:
            pass
    return 16


class Throttle:
    """Counts events and says when one more log line is due (at most one per interval)."""

    def __init__(self, clock: Callable[[], float], interval: float = WARN_INTERVAL) -> None:
        self._clock = clock
        self._interval = interval
        self._last: float | None = None
        self._count = 0

    def event(self) -> int:
        """Count one event; the events since the last report if a report is due, else 0."""
        self._count += 1
        now = self._clock()
        if self._last is not None and now - self._last < self._interval:
            return 0
        self._last = now
        count, self._count = self._count, 0
        return count


class DescriptorBudget:
    """How many host sockets flows may hold at once; counts what was refused and why.

    ``take`` before opening a flow's socket, ``give`` when it is closed. A
    refusal (the budget's or the kernel's) is counted by kind and reported by
    one warning per :data:`WARN_INTERVAL` with the counts since the last one.
    """

    def __init__(self, capacity: int, clock: Callable[[], float]) -> None:
        self.capacity = max(0, capacity)
        self.in_use = 0
        self.peak = 0
        self.stats: Counter[str] = Counter()
        self._unreported: Counter[str] = Counter()
        self._throttle = Throttle(clock)

    @classmethod
    def from_limit(cls, limit: int, clock: Callable[[], float]) -> DescriptorBudget:
        """The limit minus what is open now and the reserve."""
        return cls(limit - open_descriptors() - RESERVE, clock)

    def take(self, kind: str) -> bool:
        if self.in_use >= self.capacity:
            self.refused(kind, "budget")
            return False
        self.add()
        return True

    def add(self) -> None:
        """Count a socket that arrived already open (an accepted connection)."""
        self.in_use += 1
        if self.in_use > self.peak:
            self.peak = self.in_use

    def give(self) -> None:
        if self.in_use > 0:
            self.in_use -= 1

    def refused(self, kind: str, reason: str) -> None:
        """A new ``kind`` flow ("tcp", "udp") was refused for ``reason`` (budget or an errno)."""
        self.stats[f"{kind}_refused"] += 1
        self.stats[f"refused_{reason}"] += 1
        self._unreported[kind] += 1
        if self._throttle.event():
            counts = ", ".join(f"{n} {k.upper()}" for k, n in sorted(self._unreported.items()))
            self._unreported.clear()
            log.warning(
                "out of descriptors (%s): refused %s flow(s) since the last warning; "
                "%d of %d in use", reason, counts, self.in_use, self.capacity,
            )

    def describe(self) -> dict[str, int]:
        return {"capacity": self.capacity, "in_use": self.in_use, "peak": self.peak,
                **dict(self.stats)}


def reason_of(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, "error").lower()
