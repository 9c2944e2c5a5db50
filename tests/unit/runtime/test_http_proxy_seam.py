"""Which VM connections the stack hands to the HTTP proxy, and the flow log's via."""

from __future__ import annotations

import random

from pyvpnkit.core.config import NetConfig, ip4
from pyvpnkit.core.effects import ProxyClose, ProxyOpen, TcpOpen
from pyvpnkit.core.http_proxy.config import ProxyConfig, parse_upstream
from pyvpnkit.core.switch.stack import Stack
from pyvpnkit.runtime.host_tcp import HostTcp
from pyvpnkit.runtime.http_proxy import HttpProxy
from pyvpnkit.wire import ethernet, ipv4, tcp

VM_MAC = bytes.fromhex("020000000001")
VM_IP = ip4("192.168.65.3")
CFG = NetConfig()


def syn(dst: bytes, port: int, sport: int = 40000) -> bytes:
    seg = tcp.build_tcp(VM_IP, dst, sport, port, 1000, 0, tcp.SYN, 65535)
    return ethernet.build_ethernet(CFG.gateway_mac, VM_MAC, ethernet.ETHERTYPE_IPV4,
                                   ipv4.build_ipv4(VM_IP, dst, ipv4.PROTO_TCP, seg))


def opened(stack: Stack, dst: str, port: int) -> object:
    stack.receive(1, syn(ip4(dst), port), 0.0)
    (effect,) = stack.drain(0.0)[1]
    return effect


def test_gateway_3128_is_always_the_explicit_proxy() -> None:
    stack = Stack(CFG, rng=random.Random(1))
    eff = opened(stack, "192.168.65.1", 3128)
    assert isinstance(eff, ProxyOpen) and (eff.dst, eff.port, eff.mode) == (
        "192.168.65.1", 3128, "explicit")
    assert isinstance(opened(stack, "203.0.113.2", 80), TcpOpen)  # nothing configured


def test_transparent_ports_of_outside_addresses_only() -> None:
    stack = Stack(CFG, rng=random.Random(1))
    up = parse_upstream("127.0.0.1:8888")
    stack.set_http_proxy(ProxyConfig(http=up, https=up, https_ports=frozenset({443, 8443})))
    for port, mode in ((80, "http"), (443, "https"), (8443, "https")):
        eff = opened(stack, "203.0.113.2", port)
        assert isinstance(eff, ProxyOpen) and eff.mode == mode
    assert isinstance(opened(stack, "203.0.113.2", 22), TcpOpen)
    assert isinstance(opened(stack, "192.168.65.2", 80), TcpOpen)  # the host alias: never


def test_the_flow_log_names_the_upstream() -> None:
    stack = Stack(CFG, rng=random.Random(1))
    eff = opened(stack, "192.168.65.1", 3128)
    assert isinstance(eff, ProxyOpen)
    stack.tcp.host_connected(eff.flow_id, 0.0)
    stack.tcp.host_route(eff.flow_id, "proxy 127.0.0.1:8888")
    stack.tcp.host_reset(eff.flow_id, 0.1)
    stack.drain(0.1)
    (line,) = stack.tcp.closed_log
    assert line.startswith("tcp 192.168.65.3:40000 -> 192.168.65.1:3128 ")
    assert line.endswith(" via proxy 127.0.0.1:8888")


def test_a_gateway_that_is_the_host_keeps_its_3128() -> None:
    """slirp4netns: 10.0.2.2 is the host's loopback, where users run their own proxy."""
    gw = ip4("192.168.65.1")
    stack = Stack(NetConfig(host_ip=gw), rng=random.Random(1))
    eff = opened(stack, "192.168.65.1", 3128)
    assert isinstance(eff, TcpOpen) and (eff.host, eff.port) == ("127.0.0.1", 3128)


def test_a_proxied_flows_host_effects_are_addressed_to_the_proxy() -> None:
    """The engine routes by exact type: Proxy* effects reach the proxy, never HostTcp."""
    stack = Stack(CFG, rng=random.Random(1))
    eff = opened(stack, "192.168.65.1", 3128)
    assert isinstance(eff, ProxyOpen)
    stack.tcp.host_connected(eff.flow_id, 0.0)
    stack.drain(0.0)  # the SYN-ACK
    seg = tcp.build_tcp(VM_IP, ip4("192.168.65.1"), 40000, 3128, 1001, 0, tcp.RST, 0)
    stack.receive(1, ethernet.build_ethernet(CFG.gateway_mac, VM_MAC, ethernet.ETHERTYPE_IPV4,
                                             ipv4.build_ipv4(VM_IP, ip4("192.168.65.1"),
                                                             ipv4.PROTO_TCP, seg)), 0.1)
    (closed,) = stack.drain(0.1)[1]
    assert type(closed) is ProxyClose and closed.flow_id == eff.flow_id and closed.reset
    assert ProxyClose in HttpProxy.effects and ProxyClose not in HostTcp.effects


def test_stats_count_port_forwards_as_the_nat_marks_them() -> None:
    """api/server asks the NAT (forwarded_count) instead of guessing from ports."""
    from pyvpnkit.api.server import stats_of

    stack = Stack(CFG, rng=random.Random(1))
    stack.tcp.open_to_vm(VM_IP, 22, 0.0)
    assert isinstance(opened(stack, "203.0.113.2", 40000), TcpOpen)  # outbound, high port
    counts = stats_of(stack)["connections"]
    assert (counts["tcp_forwarded_in"], counts["tcp_outbound"]) == (1, 1)
