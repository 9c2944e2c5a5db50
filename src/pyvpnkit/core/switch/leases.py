"""Time on top of an AddressPool: when offers and leases end, when declined addresses return.

Shared by the DHCPv4 and DHCPv6 servers. Bindings are not released when they
expire, only when the pool runs out (so a VM that comes back late still finds
its address); declined addresses are blocked until their hold ends.
"""

from __future__ import annotations

from pyvpnkit.core.switch.ippool import AddressPool, LeaseKey, PoolExhausted


class LeaseClock:
    def __init__(self, pool: AddressPool) -> None:
        self.pool = pool
        self._expires: dict[LeaseKey, float] = {}  # key -> end of its offer/lease
        self._blocked: dict[bytes, float] = {}  # declined address -> unblock time

    def allocate(self, key: LeaseKey, preferred: bytes | None, now: float) -> bytes:
        """pool.allocate, reclaiming run-out bindings once when the pool is exhausted."""
        try:
            return self.pool.allocate(key, preferred)
        except PoolExhausted:
            if not self._reclaim(now):
                raise
            return self.pool.allocate(key, preferred)

    def offer(self, key: LeaseKey, until: float) -> None:
        """Hold ``key``'s address at least until ``until`` (an offer never shortens a lease)."""
        self._expires[key] = max(self._expires.get(key, until), until)

    def lease(self, key: LeaseKey, until: float) -> None:
        self._expires[key] = until

    def release(self, key: LeaseKey) -> None:
        self.pool.release(key)
        self._expires.pop(key, None)

    def decline(self, key: LeaseKey, addr: bytes, until: float) -> None:
        """``key`` found ``addr`` in use: hand it to no one until ``until``."""
        self.pool.block(addr)
        self._blocked[addr] = until
        self._expires.pop(key, None)

    def unblock_expired(self, now: float) -> None:
        if not self._blocked:
            return
        for addr in [a for a, t in self._blocked.items() if t <= now]:
            del self._blocked[addr]
            self.pool.unblock(addr)

    def _reclaim(self, now: float) -> bool:
        """Release bindings whose offer or lease has run out; True if any were."""
        expired = [k for k, t in self._expires.items() if t <= now]
        for k in expired:
            del self._expires[k]
            if self.pool.lookup(k) is not None:
                self.pool.release(k)
        return bool(expired)
