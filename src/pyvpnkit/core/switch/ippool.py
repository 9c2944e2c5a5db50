"""The VM address pool: one address per key, stable across reconnects.

One pool holds IPv4 or IPv6 addresses (DHCPv6 keeps its own pool, keyed the
same way), chosen by the width of ``lowest``.

Keys are LeaseKeys: a VM's MAC (DHCP, vpnkit VIFs and namespace TAPs all key
by MAC, so each finds the others' lease) or a DHCP client-id that is no MAC.
A VM that goes away and comes back should find its old address, so released
bindings are remembered and their addresses handed to a new key only when no
never-used address is left (oldest release first).

Never-used addresses are taken lowest first from a cursor that sweeps the
range once, plus a small heap of addresses that became unused again below the
cursor; stale heap entries are skipped when popped. Every call is amortised
O(log n) without materialising the range, so a /8 costs as little as a /24.
"""

from __future__ import annotations

import hashlib
import heapq
import ipaddress
from collections.abc import Iterable
from typing import NewType

LeaseKey = NewType("LeaseKey", str)  # "mac:aa:bb:cc:dd:ee:ff" or "cid:HEX"
_MAC = "mac:"


def mac_for_uuid(uuid: str) -> bytes:
    """A stable, locally administered unicast MAC for a vpnkit VIF UUID."""
    digest = hashlib.sha256(uuid.encode()).digest()
    return bytes([(digest[0] & 0xFC) | 0x02]) + digest[1:6]


def mac_key(mac: bytes) -> LeaseKey:
    """The lease key of a VM known by its MAC."""
    return LeaseKey(_MAC + mac.hex(":"))


def client_id_key(client_id: bytes) -> LeaseKey:
    """The lease key of a DHCP client-id that is not an Ethernet MAC."""
    return LeaseKey("cid:" + client_id.hex())


def key_mac(key: LeaseKey) -> bytes | None:
    """The MAC a key names, or None for a client-id key."""
    return bytes.fromhex(key[len(_MAC) :].replace(":", "")) if key.startswith(_MAC) else None


class PoolError(Exception):
    """No address can be handed out for this request."""


class PoolExhausted(PoolError):
    def __init__(self, lowest: bytes, highest: bytes) -> None:
        super().__init__(f"no free address left in {_dotted(lowest)}-{_dotted(highest)}")


class AddressInUse(PoolError):
    def __init__(self, addr: bytes, reason: str) -> None:
        super().__init__(f"address {_dotted(addr)} is not available: {reason}")
        self.addr = addr


class AddressOutOfRange(PoolError):
    def __init__(self, addr: bytes, lowest: bytes, highest: bytes) -> None:
        super().__init__(
            f"address {_dotted(addr)} is outside the pool {_dotted(lowest)}-{_dotted(highest)}"
        )
        self.addr = addr


def _dotted(addr: bytes) -> str:
    return str(ipaddress.ip_address(addr))


class AddressPool:
    def __init__(self, lowest: bytes, highest: bytes, reserved: Iterable[bytes] = ()) -> None:
        if len(lowest) not in (4, 16) or len(highest) != len(lowest):
            raise ValueError(f"pool bounds must be two IPv4 or two IPv6 addresses: {lowest!r}")
        self._width = len(lowest)
        self._lo = int.from_bytes(lowest, "big")
        self._hi = int.from_bytes(highest, "big")
        if self._lo > self._hi:
            raise ValueError(f"empty pool: {_dotted(lowest)} > {_dotted(highest)}")
        ints = map(self._to_int, reserved)
        self._reserved = frozenset(a for a in ints if self._lo <= a <= self._hi)
        self._blocked: set[int] = set()
        self._active: dict[LeaseKey, int] = {}
        self._owner: dict[int, LeaseKey] = {}
        # Released bindings in release order (oldest first): key -> address.
        self._remembered: dict[LeaseKey, int] = {}
        self._remembered_owner: dict[int, LeaseKey] = {}
        self._cursor = self._lo  # every address >= cursor has never been handed out
        self._unused: list[int] = []  # heap of never-/no-longer-used addresses < cursor

    # -- queries -------------------------------------------------------------

    def lookup(self, key: LeaseKey) -> bytes | None:
        """The address currently leased to ``key`` (released bindings excluded)."""
        a = self._active.get(key)
        return None if a is None else self._to_bytes(a)

    def owner(self, addr: bytes) -> LeaseKey | None:
        """The key currently holding ``addr``, if any."""
        return self._owner.get(self._to_int(addr))

    def leases(self) -> dict[LeaseKey, bytes]:
        return {k: self._to_bytes(a) for k, a in self._active.items()}

    def is_blocked(self, addr: bytes) -> bool:
        return self._to_int(addr) in self._blocked

    # -- changes -------------------------------------------------------------

    def allocate(
        self, key: LeaseKey, preferred: bytes | None = None, *, strict: bool = False
    ) -> bytes:
        """Lease an address to ``key`` and return it.

        Order: the key's current (or remembered) address; else ``preferred``
        when it is in range and not held by another key; else the lowest
        never-used address; else the address released longest ago.

        With ``strict=True`` the caller needs exactly ``preferred``: instead
        of falling back, AddressOutOfRange / AddressInUse say why not.
        """
        want = None if preferred is None else self._to_int(preferred)
        strict = strict and want is not None
        cur = self._active.get(key)
        if cur is not None:
            if strict and preferred is not None and want != cur:
                raise AddressInUse(preferred, f"{key} already holds {_dotted(self._to_bytes(cur))}")
            return self._to_bytes(cur)
        old = self._remembered.get(key)
        if old is not None and not (strict and want != old):
            self._forget_remembered(key)
            return self._bind(key, old)
        if want is not None:
            err = self._unavailable(want)
            if err is None:
                if old is not None:
                    self._forget_remembered(key)
                    self._make_unused(old)
                other = self._remembered_owner.get(want)
                if other is not None:
                    self._forget_remembered(other)
                return self._bind(key, want)
            if strict:
                raise err
        addr = self._take_unused()
        if addr is None:
            addr = self._take_remembered()
        if addr is None:
            raise PoolExhausted(self._to_bytes(self._lo), self._to_bytes(self._hi))
        return self._bind(key, addr)

    def release(self, key: LeaseKey) -> None:
        """End ``key``'s lease but remember the binding for when it comes back."""
        a = self._active.pop(key, None)
        if a is None:
            return
        del self._owner[a]
        self._remembered[key] = a
        self._remembered_owner[a] = key

    def block(self, addr: bytes) -> None:
        """Stop handing out ``addr`` (e.g. a client found it taken); its binding is dropped."""
        a = self._to_int(addr)
        if not self._lo <= a <= self._hi or a in self._reserved:
            return
        key = self._owner.pop(a, None)
        if key is not None:
            del self._active[key]
        key = self._remembered_owner.get(a)
        if key is not None:
            self._forget_remembered(key)
        self._blocked.add(a)

    def unblock(self, addr: bytes) -> None:
        a = self._to_int(addr)
        if a in self._blocked:
            self._blocked.discard(a)
            self._make_unused(a)

    # -- internals -----------------------------------------------------------

    def _to_int(self, addr: bytes) -> int:
        if len(addr) != self._width:
            raise ValueError(f"address must be {self._width} bytes, got {len(addr)}")
        return int.from_bytes(addr, "big")

    def _to_bytes(self, a: int) -> bytes:
        return a.to_bytes(self._width, "big")

    def _bind(self, key: LeaseKey, a: int) -> bytes:
        self._active[key] = a
        self._owner[a] = key
        return self._to_bytes(a)

    def _forget_remembered(self, key: LeaseKey) -> None:
        a = self._remembered.pop(key)
        del self._remembered_owner[a]

    def _unavailable(self, a: int) -> PoolError | None:
        addr = self._to_bytes(a)
        if not self._lo <= a <= self._hi:
            return AddressOutOfRange(addr, self._to_bytes(self._lo), self._to_bytes(self._hi))
        if a in self._reserved:
            return AddressInUse(addr, "reserved for the network's own services")
        if a in self._blocked:
            return AddressInUse(addr, "blocked after a client reported a conflict")
        holder = self._owner.get(a)
        if holder is not None:
            return AddressInUse(addr, f"leased to {holder}")
        return None

    def _is_unused(self, a: int) -> bool:
        return not (
            a in self._reserved
            or a in self._blocked
            or a in self._owner
            or a in self._remembered_owner
        )

    def _make_unused(self, a: int) -> None:
        # Addresses at or above the cursor are found by the sweep anyway.
        if a < self._cursor:
            heapq.heappush(self._unused, a)

    def _take_unused(self) -> int | None:
        heap = self._unused
        while heap:
            a = heapq.heappop(heap)
            if self._is_unused(a):
                return a
        while self._cursor <= self._hi:
            a = self._cursor
            self._cursor += 1
            if self._is_unused(a):
                return a
        return None

    def _take_remembered(self) -> int | None:
        for key in self._remembered:
            a = self._remembered[key]
            self._forget_remembered(key)
            return a
        return None
