"""AddressPool: lowest-first allocation, sticky bindings, typed errors."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from pyvpnkit.core.switch.ippool import (
    AddressInUse,
    AddressOutOfRange,
    AddressPool,
    PoolError,
    PoolExhausted,
    client_id_key,
    key_mac,
    mac_key,
)


def ip(text: str) -> bytes:
    return ipaddress.IPv4Address(text).packed


def net(last: int) -> bytes:
    return bytes((192, 168, 65, last))


def default_pool() -> AddressPool:
    return AddressPool(net(3), net(254), reserved=(net(1), net(2)))


def test_first_vm_gets_lowest_then_next() -> None:
    pool = default_pool()
    assert pool.allocate("mac:a") == net(3)
    assert pool.allocate("mac:b") == net(4)
    assert pool.allocate("mac:a") == net(3)  # same key, same address
    assert pool.lookup("mac:a") == net(3)
    assert pool.lookup("mac:zz") is None
    assert pool.owner(net(4)) == "mac:b"
    assert pool.owner(net(5)) is None
    assert pool.leases() == {"mac:a": net(3), "mac:b": net(4)}


def test_reserved_addresses_are_skipped() -> None:
    pool = AddressPool(net(1), net(5), reserved=(net(1), net(3), ip("10.0.0.1")))
    assert [pool.allocate(f"k{i}") for i in range(3)] == [net(2), net(4), net(5)]
    with pytest.raises(PoolExhausted):
        pool.allocate("k3")


def test_preferred_is_used_when_free_and_falls_back_otherwise() -> None:
    pool = default_pool()
    assert pool.allocate("a", preferred=net(10)) == net(10)
    assert pool.allocate("b", preferred=net(10)) == net(3)  # in use -> lowest free
    assert pool.allocate("c", preferred=net(1)) == net(4)  # below the pool -> lowest free
    assert pool.allocate("d", preferred=ip("10.0.0.9")) == net(5)  # out of range
    assert pool.allocate("a", preferred=net(20)) == net(10)  # existing binding wins


def test_strict_preferred_raises_typed_errors_with_clear_messages() -> None:
    pool = default_pool()
    pool.allocate("a", preferred=net(10))
    with pytest.raises(AddressInUse, match=r"192\.168\.65\.10 .*leased to a") as e1:
        pool.allocate("b", preferred=net(10), strict=True)
    assert e1.value.addr == net(10)
    with pytest.raises(AddressInUse, match="reserved"):
        AddressPool(net(1), net(9), reserved=[net(2)]).allocate("b", net(2), strict=True)
    with pytest.raises(AddressOutOfRange, match=r"10\.0\.0\.9 is outside .*\.3-192\.168\.65\.254"):
        pool.allocate("b", preferred=ip("10.0.0.9"), strict=True)
    with pytest.raises(AddressInUse, match=r"a already holds 192\.168\.65\.10"):
        pool.allocate("a", preferred=net(11), strict=True)
    assert pool.lookup("b") is None  # failed strict requests bind nothing
    assert pool.allocate("b", preferred=net(11), strict=True) == net(11)
    assert issubclass(PoolExhausted, PoolError)


def test_exhaustion_raises_with_range_in_message() -> None:
    pool = AddressPool(net(3), net(4))
    pool.allocate("a")
    pool.allocate("b")
    with pytest.raises(PoolExhausted, match=r"192\.168\.65\.3-192\.168\.65\.4"):
        pool.allocate("c")


def test_released_key_comes_back_to_its_address() -> None:
    pool = default_pool()
    pool.allocate("a")
    pool.allocate("b")
    pool.release("a")
    assert pool.lookup("a") is None
    assert pool.owner(net(3)) is None
    assert pool.allocate("c") == net(5)  # .3 is remembered for a, not reused yet
    assert pool.allocate("a") == net(3)
    pool.release("nobody")  # unknown keys are ignored


def test_released_addresses_reused_oldest_first_only_when_needed() -> None:
    pool = AddressPool(net(3), net(6))
    for k in "abcd":
        pool.allocate(k)
    pool.release("c")
    pool.release("a")
    assert pool.allocate("e") == net(5)  # c released first
    assert pool.allocate("f") == net(3)
    with pytest.raises(PoolExhausted):
        pool.allocate("c")  # its address went to someone who needed it
    pool.release("e")
    assert pool.allocate("c") == net(5)


def test_preferred_takes_a_remembered_address_from_its_old_key() -> None:
    pool = default_pool()
    pool.allocate("a")
    pool.release("a")
    assert pool.allocate("b", preferred=net(3)) == net(3)
    assert pool.allocate("a") == net(4)


def test_block_drops_binding_and_unblock_returns_address() -> None:
    pool = default_pool()
    pool.allocate("a")
    pool.allocate("b")
    pool.block(net(3))
    assert pool.is_blocked(net(3))
    assert pool.lookup("a") is None and pool.owner(net(3)) is None
    assert pool.allocate("a") == net(5)
    assert pool.allocate("c", preferred=net(3)) == net(6)
    with pytest.raises(AddressInUse, match="conflict"):
        pool.allocate("d", preferred=net(3), strict=True)
    pool.unblock(net(3))
    assert pool.allocate("d") == net(3)  # lowest unused again


def test_large_range_is_not_materialised() -> None:
    pool = AddressPool(ip("10.0.0.1"), ip("10.255.255.254"))
    assert pool.allocate("x") == ip("10.0.0.1")
    assert pool.allocate("y", preferred=ip("10.200.0.1")) == ip("10.200.0.1")
    assert len(pool._unused) == 0


def test_bad_construction() -> None:
    with pytest.raises(ValueError):
        AddressPool(net(9), net(3))
    with pytest.raises(ValueError):
        AddressPool(b"\x01", net(3))


# -- model-based check against a naive reading of the specification ----------

LOW, HIGH = 3, 10
RESERVED = frozenset({4, 7})
KEYS = st.sampled_from([f"k{i}" for i in range(12)])
ADDRS = st.integers(min_value=0, max_value=12)


class NaivePool:
    """O(n) restatement of the allocation rules."""

    def __init__(self) -> None:
        self.active: dict[str, int] = {}
        self.remembered: dict[str, int] = {}  # insertion order = release order
        self.blocked: set[int] = set()

    def free(self, a: int) -> bool:
        return (
            LOW <= a <= HIGH
            and a not in RESERVED
            and a not in self.blocked
            and a not in self.active.values()
        )

    def allocate(self, key: str, want: int | None, strict: bool) -> int | str:
        strict = strict and want is not None
        if key in self.active:
            if strict and want != self.active[key]:
                return "in-use"
            return self.active[key]
        old = self.remembered.get(key)
        if old is not None and not (strict and want != old):
            del self.remembered[key]
            self.active[key] = old
            return old
        if want is not None:
            if self.free(want):
                self.remembered.pop(key, None)
                for k, a in list(self.remembered.items()):
                    if a == want:
                        del self.remembered[k]
                self.active[key] = want
                return want
            if strict:
                return "out-of-range" if not LOW <= want <= HIGH else "in-use"
        for a in range(LOW, HIGH + 1):
            if self.free(a) and a not in self.remembered.values():
                self.active[key] = a
                return a
        if self.remembered:
            k = next(iter(self.remembered))
            a = self.remembered.pop(k)
            self.active[key] = a
            return a
        return "exhausted"


class PoolMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.pool = AddressPool(net(LOW), net(HIGH), reserved=[net(a) for a in RESERVED])
        self.model = NaivePool()

    @rule(key=KEYS, want=st.none() | ADDRS, strict=st.booleans())
    def allocate(self, key: str, want: int | None, strict: bool) -> None:
        expected = self.model.allocate(key, want, strict)
        try:
            got: int | str = self.pool.allocate(
                key, None if want is None else net(want), strict=strict
            )[3]
        except PoolExhausted:
            got = "exhausted"
        except AddressOutOfRange:
            got = "out-of-range"
        except AddressInUse:
            got = "in-use"
        assert got == expected

    @rule(key=KEYS)
    def release(self, key: str) -> None:
        self.pool.release(key)
        a = self.model.active.pop(key, None)
        if a is not None:
            self.model.remembered[key] = a

    @rule(a=ADDRS)
    def block(self, a: int) -> None:
        self.pool.block(net(a))
        if LOW <= a <= HIGH and a not in RESERVED:
            m = self.model
            m.active = {k: v for k, v in m.active.items() if v != a}
            m.remembered = {k: v for k, v in m.remembered.items() if v != a}
            m.blocked.add(a)

    @rule(a=ADDRS)
    def unblock(self, a: int) -> None:
        self.pool.unblock(net(a))
        self.model.blocked.discard(a)

    @invariant()
    def same_leases(self) -> None:
        leases = self.pool.leases()
        assert {k: v[3] for k, v in leases.items()} == self.model.active
        for k, v in leases.items():
            assert self.pool.owner(v) == k and self.pool.lookup(k) == v


TestPoolModel = PoolMachine.TestCase
TestPoolModel.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
TestPoolModel.pytestmark = [pytest.mark.slow]  # hypothesis: many more examples


def test_lease_keys_name_a_mac_or_a_client_id() -> None:
    mac = bytes.fromhex("020000000009")
    assert mac_key(mac) == "mac:02:00:00:00:00:09" and key_mac(mac_key(mac)) == mac
    assert key_mac(client_id_key(b"\x00abc")) is None


def test_ipv6_pool_same_keying() -> None:
    lo = ipaddress.IPv6Address("fd42:7076:6b69::3").packed
    hi = ipaddress.IPv6Address("fd42:7076:6b69::ffff").packed
    pool = AddressPool(lo, hi)
    a = pool.allocate("mac:52:54:00:00:00:01")
    assert a == lo and pool.owner(a) == "mac:52:54:00:00:00:01"
    pool.release("mac:52:54:00:00:00:01")
    assert pool.allocate("mac:52:54:00:00:00:02") == lo[:15] + b"\x04"
    assert pool.allocate("mac:52:54:00:00:00:01") == lo  # remembered across a reconnect
    with pytest.raises(AddressOutOfRange, match="fd42:7076:6b69::2 is outside"):
        pool.allocate("k", lo[:15] + b"\x02", strict=True)
    with pytest.raises(ValueError):
        AddressPool(lo, b"\x00" * 4)
