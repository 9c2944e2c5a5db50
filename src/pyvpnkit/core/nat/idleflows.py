"""A flow table that forgets idle flows and, when full, the least recently used.

Shared by the UDP and ICMP NATs and the UDP port forwarder: flows live in an
OrderedDict kept in last-use order, so the next expiry is always the first
entry and eviction is O(1).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter, OrderedDict
from typing import Any, Generic, Protocol, TypeVar


class _LastUsed(Protocol):
    last: float


F = TypeVar("F", bound=_LastUsed)


class IdleFlows(ABC, Generic[F]):
    idle_timeout: float
    max_flows: int
    stats: Counter[str]
    _flows: OrderedDict[Any, F]

    def __len__(self) -> int:
        return len(self._flows)

    def next_deadline(self) -> float | None:
        flows = self._flows
        if not flows:
            return None  # asked after every flush: no call at all for an empty table
        for flow in flows.values():
            return flow.last + self.idle_timeout
        return None

    def handle_timer(self, now: float) -> None:
        while self._flows:
            flow = next(iter(self._flows.values()))
            if flow.last + self.idle_timeout > now:
                break
            self.stats["expired"] += 1
            self._drop(flow)

    def _make_room(self) -> None:
        """Before adding a flow: evict the least recently used one if the table is full."""
        if len(self._flows) >= self.max_flows:
            self.stats["evicted"] += 1
            self._drop(next(iter(self._flows.values())))

    def _touch_flow(self, key: Any, flow: F, now: float) -> None:
        flow.last = now
        self._flows.move_to_end(key)

    @abstractmethod
    def _drop(self, flow: F) -> None:
        """Remove ``flow`` from the table (and release what it holds)."""
