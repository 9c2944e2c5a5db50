"""Issue 27: one destination policy for the NATs and the HTTP proxy.

The proxy once judged IPv6 by hand and let [::ffff:127.0.0.1] reach the
host's loopback. Here every spelling of a forbidden address is refused, and
random addresses get the same answer from the proxy as from the NAT.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvpnkit.core.config import NetConfig, ip4
from pyvpnkit.core.effects import ProxyOpen, TcpOpen
from pyvpnkit.core.http_proxy.config import ProxyConfig, parse_upstream
from pyvpnkit.core.http_proxy.effects import Connect
from pyvpnkit.core.nat.routes import named_address, route
from pyvpnkit.core.switch.stack import Stack
from pyvpnkit.runtime.http_proxy import HttpProxy, _Refused
from pyvpnkit.wire import ethernet, ipv4, ipv6, tcp
from tests.unit.core.http_proxy.test_http_proxy_machine import Peer

VM_MAC = bytes.fromhex("020000000001")
VM4 = ip4("192.168.65.3")
VM6 = ipaddress.IPv6Address("fd42:7076:6b69::3").packed
UP = parse_upstream("127.0.0.1:8888")

# Every spelling of the host's loopback a VM might try (issue 27's list and more).
LOOPBACK_SPELLINGS = [
    "127.0.0.1", "127.1.2.3", "127.1", "2130706433", "0x7f.0.0.1", "0177.0.0.1", "0.0.0.0",
    "localhost", "LocalHost.", "a.localhost",
    "::1", "0:0:0:0:0:0:0:1", "::ffff:127.0.0.1", "::ffff:7f00:1", "::FFFF:7F00:0001",
    "0:0:0:0:0:ffff:127.0.0.1", "::ffff:127.0.0.1%eth0", "[::ffff:7f00:1%25lo]",
    "::ffff:0:127.0.0.1", "::127.0.0.1", "::7f00:1", "64:ff9b::127.0.0.1",
    "::ffff:192.168.65.1", "::ffff:192.168.65.99", "::ffff:0:192.168.65.2",
    "fe80::1", "fe80::1%eth0", "ff02::1", "::",
]
ALIASES = ["192.168.65.2", "::ffff:192.168.65.2", "::ffff:c0a8:4102", "::192.168.65.2",
           "fd42:7076:6b69::2", "FD42:7076:6B69:0:0:0:0:2"]


@pytest.mark.parametrize("text", LOOPBACK_SPELLINGS)
@pytest.mark.parametrize("loopback", [True, False])
def test_every_spelling_of_the_loopback_is_refused(text: str, loopback: bool) -> None:
    dst = named_address(text)
    assert dst is not None
    assert route(NetConfig(host_loopback=loopback), dst)[0] is None


@pytest.mark.parametrize("text", ALIASES)
def test_the_alias_is_the_loopback_only_when_allowed(text: str) -> None:
    dst = named_address(text)
    assert dst is not None
    assert route(NetConfig(), dst)[0] in ("127.0.0.1", "::ffff:127.0.0.1", "::1")
    assert route(NetConfig(host_loopback=False), dst)[:2] == (None, "admin_prohibited")


def test_carried_ipv4_addresses_go_where_their_ipv4_goes() -> None:
    cfg = NetConfig(blocked=(ipaddress.IPv4Network("169.254.0.0/16"),))
    assert route(cfg, named_address("::ffff:203.0.113.2") or b"")[0] == "::ffff:203.0.113.2"
    assert route(cfg, named_address("::203.0.113.2") or b"")[0] == "::ffff:203.0.113.2"
    assert route(cfg, named_address("64:ff9b::203.0.113.2") or b"")[0] == "64:ff9b::cb00:7102"
    for text in ("::ffff:169.254.169.254", "64:ff9b::169.254.169.254"):
        dst = named_address(text) or b""
        assert route(cfg, dst) == (None, "admin_prohibited", dst)
    gw6 = ipaddress.IPv6Address("fd42:7076:6b69::1").packed  # ICMPv6 needs an IPv6 source
    assert route(cfg, named_address("::ffff:192.168.65.99") or b"") == (
        None, "host_unreachable", gw6)


@pytest.mark.parametrize(("text", "expected"), [
    ("www.example.test", None), ("1.2.3.4.5", None), ("256.1.1.1", None), ("08.1.1.1", None),
    ("1.2.3", "1.2.0.3"), ("1.16777215", "1.255.255.255"), ("0X7F.1", "127.0.0.1"),
])
def test_named_address_takes_what_inet_aton_takes(text: str, expected: str | None) -> None:
    dst = named_address(text)
    assert (None if dst is None else str(ipaddress.ip_address(dst))) == expected


# -- the proxy and the NAT agree ---------------------------------------------------


def syn(cfg: NetConfig, dst: bytes, port: int) -> bytes:
    """A VM's SYN to ``dst``:``port``, over IPv4 or IPv6 by the address's length."""
    if len(dst) == 4:
        seg = tcp.build_tcp(VM4, dst, 40000, port, 1, 0, tcp.SYN, 65535)
        return ethernet.build_ethernet(cfg.gateway_mac, VM_MAC, ethernet.ETHERTYPE_IPV4,
                                       ipv4.build_ipv4(VM4, dst, ipv4.PROTO_TCP, seg))
    seg = tcp.build_tcp(VM6, dst, 40000, port, 1, 0, tcp.SYN, 65535)
    return ethernet.build_ethernet(cfg.gateway_mac, VM_MAC, ethernet.ETHERTYPE_IPV6,
                                   ipv6.build_ipv6(VM6, dst, ipv6.NH_TCP, seg))


def opened(stack: Stack, dst: bytes, port: int) -> list[object]:
    stack.receive(1, syn(stack.config, dst, port), 0.0)
    return [e for e in stack.drain(0.0)[1] if isinstance(e, TcpOpen | ProxyOpen)]


def nat_decision(cfg: NetConfig, dst: bytes) -> str | None:
    """Where the TCP NAT sends a VM's SYN to ``dst``:8001 (None: refused or dropped)."""
    opens = opened(Stack(cfg, rng=random.Random(1)), dst, 8001)
    return opens[0].host if opens and isinstance(opens[0], TcpOpen) else None


def proxy_decision(loop: asyncio.AbstractEventLoop, cfg: NetConfig, text: str) -> str | None:
    """Where the explicit proxy connects for a VM asking for ``text`` directly."""
    proxy = HttpProxy(loop, Stack(cfg, rng=random.Random(1)), lambda: None, lambda: None,
                      ProxyConfig())
    try:
        return loop.run_until_complete(proxy._resolve(text, 8001, direct=True))
    except _Refused:
        return None


def addresses() -> st.SearchStrategy[bytes]:
    four = st.binary(min_size=4, max_size=4)
    ours4 = st.integers(0, 255).map(lambda i: ip4("192.168.65.0")[:3] + bytes([i]))
    ours6 = st.binary(min_size=8, max_size=8).map(lambda b: VM6[:8] + b)
    ours6_low = st.integers(0, 300).map(lambda i: VM6[:14] + i.to_bytes(2, "big"))
    v4 = st.one_of(four, ours4, st.sampled_from([b"\x7f\0\0\1", b"\xa9\xfe\xa9\xfe"]))
    carried = st.tuples(st.sampled_from([bytes(10) + b"\xff\xff", bytes(12),
                                         bytes.fromhex("0064ff9b") + bytes(8),
                                         bytes(8) + b"\xff\xff\0\0"]), v4)
    return st.one_of(v4, st.binary(min_size=16, max_size=16), ours6, ours6_low,
                     carried.map(lambda pair: pair[0] + pair[1]),
                     st.sampled_from([b"\xfe\x80" + bytes(13) + b"\1", b"\xff\x02" + bytes(14)]))


@pytest.mark.slow  # hypothesis: more examples than the profile
@pytest.mark.parametrize("loopback", [True, False])
def test_the_proxy_decides_as_the_nat_does(loopback: bool) -> None:
    loop = asyncio.new_event_loop()
    cfg = NetConfig(host_loopback=loopback, blocked=(ipaddress.IPv4Network("169.254.0.0/16"),))

    @settings(max_examples=300, deadline=None)
    @given(addresses())
    def agree(dst: bytes) -> None:
        text = str(ipaddress.ip_address(dst))
        nat = nat_decision(cfg, dst)
        assert proxy_decision(loop, cfg, text) == nat
        assert proxy_decision(loop, cfg, f"[{text}]" if len(dst) == 16 else text) == nat

    try:
        agree()
    finally:
        loop.close()


# -- what an upstream is asked for -------------------------------------------------


@pytest.mark.parametrize("host", ["[::ffff:127.0.0.1]:8001", "[::1]:8001", "127.1:8001",
                                  "2130706433:8001", "localhost:8001", "192.168.65.2:8001"])
def test_an_upstream_is_never_asked_for_the_loopback(host: str) -> None:
    """tinyproxy on the host would connect to its own loopback for the VM."""
    net = NetConfig(host_loopback=False)
    cases = [
        ("explicit", f"GET http://{host}/ HTTP/1.1\r\nHost: {host}\r\n\r\n", 80),
        ("explicit", f"CONNECT {host} HTTP/1.1\r\nHost: {host}\r\n\r\n", 80),
        ("http", f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n", 80),
    ]
    for mode, request, port in cases:
        p = Peer(mode, ProxyConfig(http=UP, https=UP), port)
        p.m.net = net
        p.from_vm(request.encode())
        assert p.connects == [], (mode, request)
        assert p.take_vm().startswith(b"HTTP/1.1 502 "), (mode, request)
        assert p.m.notes == [f"pyvpnkit: {host.rsplit(':', 1)[0].strip('[]')} "
                             "is not reachable from the VMs"]


def test_names_and_allowed_addresses_still_go_to_the_upstream() -> None:
    for host in ("www.example.test", "203.0.113.2", "[2001:db8::2]"):
        p = Peer("explicit", ProxyConfig(http=UP))
        p.from_vm(f"GET http://{host}/ HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        assert p.connects == [Connect(1, "127.0.0.1", 8888, False)]


def test_the_nat_decision_sees_both_families() -> None:
    """So the comparison above is not between two Nones."""
    cfg = NetConfig()
    for text, host in (("203.0.113.2", "203.0.113.2"), ("2001:db8::2", "2001:db8::2"),
                       ("::ffff:203.0.113.2", "::ffff:203.0.113.2"),
                       ("192.168.65.2", "127.0.0.1"), ("fd42:7076:6b69::2", "::1")):
        assert nat_decision(cfg, ipaddress.ip_address(text).packed) == host


@pytest.mark.parametrize("loopback", [True, False])
def test_transparent_proxying_takes_neither_the_alias_nor_the_loopback(loopback: bool) -> None:
    """Port 80 with an upstream: outside addresses go to the proxy (which connects to
    dst_ip, as the NAT would); the alias and the loopback, in any family, never do."""
    stack = Stack(NetConfig(host_loopback=loopback), rng=random.Random(1))
    stack.set_http_proxy(ProxyConfig(http=UP))
    for text in ("203.0.113.2", "2001:db8::2", "::ffff:203.0.113.2"):
        (eff,) = opened(stack, ipaddress.ip_address(text).packed, 80)
        assert isinstance(eff, ProxyOpen) and eff.mode == "http", text
    for text in ("127.0.0.1", "::ffff:127.0.0.1", "::1", "64:ff9b::7f00:1"):
        assert opened(stack, ipaddress.ip_address(text).packed, 80) == [], text
    for text in ("192.168.65.2", "::ffff:192.168.65.2", "fd42:7076:6b69::2"):
        effects = opened(stack, ipaddress.ip_address(text).packed, 80)
        assert not any(isinstance(e, ProxyOpen) for e in effects), text
        assert bool(effects) == loopback, text  # the NAT's own mapping, or refused
