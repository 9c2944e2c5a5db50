"""UdpForwarder: host datagrams to VM ports and back, driven with bytes and a fake clock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvpnkit.core.config import NetConfig, ip4
from pyvpnkit.core.ip.ipfrag import Reassembler
from pyvpnkit.core.nat.udp_forward import PORT_FIRST, PORT_LAST, UdpForwarder, UdpForwardReply
from pyvpnkit.core.switch.stack import Stack
from pyvpnkit.wire.ethernet import ETHERTYPE_IPV4, build_ethernet, parse_ethernet
from pyvpnkit.wire.icmp import DEST_UNREACHABLE, PORT_UNREACHABLE, parse_icmp
from pyvpnkit.wire.ipv4 import PROTO_ICMP, PROTO_UDP, build_ipv4, parse_ipv4
from pyvpnkit.wire.udp import build_udp, parse_udp

CFG = NetConfig(ipv6=None)  # IPv4 only: no router advertisements among the frames
GW = CFG.gateway_ip
VM = ip4("192.168.65.3")
VM2 = ip4("192.168.65.4")
VM_MAC = bytes.fromhex("020000000003")
C1 = ("127.0.0.1", 40001)
C2 = ("127.0.0.1", 40002)


def vm_reply(src: bytes, sport: int, dport: int, payload: bytes):
    """A VM datagram to gateway:dport, parsed like the stack does."""
    pkt = parse_ipv4(build_ipv4(src, GW, PROTO_UDP, build_udp(src, GW, sport, dport, payload)))
    return pkt, parse_udp(pkt.payload, pkt.src, pkt.dst)


def one_packet(fwd: UdpForwarder):
    packets, effects = fwd.drain()
    assert effects == [] and len(packets) == 1
    pkt = parse_ipv4(packets[0])
    return pkt, parse_udp(pkt.payload, pkt.src, pkt.dst)


def test_host_datagram_becomes_a_valid_packet_from_the_gateway() -> None:
    fwd = UdpForwarder(CFG)
    fwd.add(1, VM, 5353)
    fwd.host_datagram(1, C1, b"query", 0.0)
    pkt, dgram = one_packet(fwd)
    assert (pkt.src, pkt.dst, pkt.proto) == (GW, VM, PROTO_UDP)
    assert PORT_FIRST <= dgram.src_port <= PORT_LAST and dgram.dst_port == 5353
    assert bytes(dgram.payload) == b"query"
    assert not pkt.dont_fragment
    assert fwd.owns(VM, 5353, GW, dgram.src_port) and not fwd.owns(VM, 5353, GW, 53)


def test_flows_per_listener_and_client_and_replies_find_them() -> None:
    fwd = UdpForwarder(CFG)
    fwd.add(1, VM, 7)
    fwd.add(2, VM, 7)
    ports = {}
    for lid, client in [(1, C1), (1, C2), (2, C1), (1, C1)]:
        fwd.host_datagram(lid, client, b"x", 0.0)
        _pkt, dgram = one_packet(fwd)
        ports.setdefault((lid, client), set()).add(dgram.src_port)
    assert all(len(p) == 1 for p in ports.values())
    assert len({next(iter(p)) for p in ports.values()}) == 3
    for (lid, client), (port,) in ports.items():
        fwd.handle(*vm_reply(VM, 7, port, b"answer"), 1.0)
        assert fwd.drain() == ([], [UdpForwardReply(lid, client, b"answer")])


def test_reply_from_another_source_is_not_the_forwards() -> None:
    fwd = UdpForwarder(CFG)
    fwd.add(1, VM, 7)
    fwd.host_datagram(1, C1, b"x", 0.0)
    _pkt, dgram = one_packet(fwd)
    assert not fwd.owns(VM2, 7, GW, dgram.src_port) and not fwd.owns(VM, 8, GW, dgram.src_port)
    fwd.handle(*vm_reply(VM, 7, 12345, b"no flow"), 1.0)
    assert fwd.drain() == ([], [])
    assert fwd.stats["drop_no_flow"] == 1


def test_large_datagram_is_fragmented_to_the_mtu() -> None:
    fwd = UdpForwarder(CFG)
    fwd.add(1, VM, 9)
    payload = bytes(range(256)) * 20
    fwd.host_datagram(1, C1, payload, 0.0)
    packets, _ = fwd.drain()
    assert len(packets) == 4 and all(len(p) <= CFG.mtu for p in packets)
    frag = Reassembler()
    whole = [w for p in packets if (w := frag.add(parse_ipv4(p), 0.0)) is not None]
    assert len(whole) == 1
    pkt = parse_ipv4(whole[0])
    assert bytes(parse_udp(pkt.payload, pkt.src, pkt.dst).payload) == payload


def test_oversized_and_unknown_listener_are_dropped() -> None:
    fwd = UdpForwarder(CFG)
    fwd.add(1, VM, 9)
    fwd.host_datagram(1, C1, bytes(65508), 0.0)
    fwd.host_datagram(2, C1, b"x", 0.0)
    assert fwd.drain() == ([], [])
    assert fwd.stats["drop_too_big"] == 1 and fwd.stats["drop_unknown_listener"] == 1
    fwd.host_datagram(1, C1, bytes(65507), 0.0)
    assert len(fwd.drain()[0]) == 45


def test_idle_flows_expire() -> None:
    fwd = UdpForwarder(CFG, idle_timeout=60.0)
    assert fwd.next_deadline() is None
    fwd.add(1, VM, 7)
    fwd.host_datagram(1, C1, b"a", 10.0)
    fwd.host_datagram(1, C2, b"b", 20.0)
    (p1, _), (p2, _) = [
        (parse_udp(parse_ipv4(p).payload, GW, VM).src_port, 0) for p in fwd.drain()[0]
    ]
    fwd.handle(*vm_reply(VM, 7, p1, b"keep"), 30.0)  # a reply keeps the flow alive
    assert fwd.next_deadline() == 80.0
    fwd.handle_timer(79.9)
    assert fwd.owns(VM, 7, GW, p1) and fwd.owns(VM, 7, GW, p2)
    fwd.handle_timer(80.0)
    assert fwd.owns(VM, 7, GW, p1) and not fwd.owns(VM, 7, GW, p2)
    assert fwd.next_deadline() == 90.0
    fwd.handle_timer(90.0)
    assert len(fwd) == 0 and fwd.next_deadline() is None
    assert fwd.stats["expired"] == 2


def test_lru_eviction_keeps_recent_flows() -> None:
    fwd = UdpForwarder(CFG, max_flows=2)
    fwd.add(1, VM, 7)
    fwd.host_datagram(1, ("127.0.0.1", 1), b"", 0.0)
    fwd.host_datagram(1, ("127.0.0.1", 2), b"", 1.0)
    fwd.host_datagram(1, ("127.0.0.1", 1), b"", 2.0)  # touch flow 1
    fwd.host_datagram(1, ("127.0.0.1", 3), b"", 3.0)  # evicts flow 2
    ports = [parse_udp(parse_ipv4(p).payload, GW, VM).src_port for p in fwd.drain()[0]]
    assert ports[0] == ports[2]
    assert fwd.owns(VM, 7, GW, ports[0]) and not fwd.owns(VM, 7, GW, ports[1])
    assert fwd.owns(VM, 7, GW, ports[3])
    assert fwd.stats["evicted"] == 1


def test_remove_and_retarget_forget_flows() -> None:
    fwd = UdpForwarder(CFG)
    fwd.add(1, VM, 7)
    fwd.add(2, VM, 7)
    fwd.host_datagram(1, C1, b"", 0.0)
    fwd.host_datagram(2, C1, b"", 0.0)
    p1, p2 = [parse_udp(parse_ipv4(p).payload, GW, VM).src_port for p in fwd.drain()[0]]
    fwd.add(1, VM, 7)  # same target: flows stay
    assert fwd.owns(VM, 7, GW, p1)
    fwd.add(1, VM2, 7)
    assert not fwd.owns(VM, 7, GW, p1) and fwd.owns(VM, 7, GW, p2)
    fwd.remove(2)
    assert len(fwd) == 0 and 2 not in fwd.listeners
    fwd.remove(2)  # idempotent


ops = st.lists(
    st.one_of(
        st.tuples(st.just("dgram"), st.integers(1, 3), st.integers(1, 6)),
        st.tuples(st.just("reply"), st.integers(PORT_FIRST, PORT_FIRST + 4), st.just(0)),
        st.tuples(st.just("tick"), st.integers(0, 30), st.just(0)),
        st.tuples(st.just("remove"), st.integers(1, 3), st.just(0)),
    ),
    max_size=60,
)


@pytest.mark.slow  # hypothesis: more examples than the profile
@settings(max_examples=150, deadline=None)
@given(ops)
def test_flow_table_invariants(seq) -> None:
    """Ports stay in range and unique, the table stays bounded and consistent."""
    fwd = UdpForwarder(CFG, idle_timeout=20.0, max_flows=8, port_range=(PORT_FIRST, PORT_FIRST + 4))
    assert fwd.max_flows == 5
    now = 0.0
    for op, a, b in seq:
        if op == "dgram":
            if a not in fwd.listeners:
                fwd.add(a, VM, 1000 + a)
            fwd.host_datagram(a, ("10.0.0.1", b), b"p", now)
        elif op == "reply":
            flow = next((f for f in fwd._flows.values() if f.key[3] == a), None)
            if flow is not None:
                lid = flow.listener_id
                fwd.handle(*vm_reply(VM, 1000 + lid, a, b"r"), now)
                (eff,) = fwd.drain()[1]
                assert eff.listener_id == lid
        elif op == "tick":
            now += a
            deadline = fwd.next_deadline()
            fwd.handle_timer(now)
            if deadline is not None and deadline > now:
                assert fwd.next_deadline() == deadline
            assert all(f.last + 20.0 > now for f in fwd._flows.values())
        else:
            fwd.remove(a)
        fwd.drain()
        assert len(fwd) <= 5
        for key, flow in fwd._flows.items():
            assert PORT_FIRST <= key[3] <= PORT_FIRST + 4 and flow.key == key
            assert fwd._by_client[(flow.listener_id, flow.client)] is flow
            assert flow.listener_id in fwd.listeners
        assert len(fwd._by_client) == len(fwd._flows)


# -- through the stack ---------------------------------------------------------


def learned_stack() -> Stack:
    stack = Stack(CFG)
    hello = build_udp(VM, GW, 9999, 9, b"")
    stack.receive(1, build_ethernet(CFG.gateway_mac, VM_MAC, ETHERTYPE_IPV4,
                                    build_ipv4(VM, GW, PROTO_UDP, hello)), 0.0)
    stack.drain(0.0)  # the port-unreachable answer
    assert VM in stack.vms
    return stack


def test_stack_routes_forwarded_datagrams_both_ways() -> None:
    stack = learned_stack()
    stack.udp_forward.add(7, VM, 5000)
    stack.udp_forward.host_datagram(7, C1, b"ping", 1.0)
    frames, effects = stack.drain(1.0)
    assert effects == [] and len(frames) == 1
    link, frame = frames[0]
    eth = parse_ethernet(frame)
    assert link == 1 and eth.dst == VM_MAC
    pkt = parse_ipv4(eth.payload)
    dgram = parse_udp(pkt.payload, pkt.src, pkt.dst)
    assert (dgram.dst_port, bytes(dgram.payload)) == (5000, b"ping")
    assert stack.next_deadline() == 61.0
    reply = build_udp(VM, GW, 5000, dgram.src_port, b"pong")
    stack.receive(1, build_ethernet(CFG.gateway_mac, VM_MAC, ETHERTYPE_IPV4,
                                    build_ipv4(VM, GW, PROTO_UDP, reply)), 2.0)
    assert stack.drain(2.0) == ([], [UdpForwardReply(7, C1, b"pong")])
    # Once the flow expired, the same gateway port answers "port unreachable" again.
    stack.handle_timer(62.0)
    stack.receive(1, build_ethernet(CFG.gateway_mac, VM_MAC, ETHERTYPE_IPV4,
                                    build_ipv4(VM, GW, PROTO_UDP, reply)), 63.0)
    frames, effects = stack.drain(63.0)
    assert effects == [] and len(frames) == 1
    pkt = parse_ipv4(parse_ethernet(frames[0][1]).payload)
    assert pkt.proto == PROTO_ICMP
    msg = parse_icmp(pkt.payload)
    assert (msg.type, msg.code) == (DEST_UNREACHABLE, PORT_UNREACHABLE)


# -- the client's address kept (keep_source) ------------------------------------

WORLD = ("203.0.113.9", 40001)
WORLD2 = ("203.0.113.10", 40001)  # the same port on another address


def source_of(fwd: UdpForwarder) -> tuple[bytes, int]:
    pkt, dgram = one_packet(fwd)
    return pkt.src, dgram.src_port


def test_the_vm_sees_the_client_and_answers_it() -> None:
    fwd = UdpForwarder(CFG)
    fwd.add(1, VM, 7, keep_source=True)
    fwd.host_datagram(1, WORLD, b"a", 0.0)
    assert source_of(fwd) == (ip4(WORLD[0]), WORLD[1])
    fwd.host_datagram(1, WORLD2, b"b", 0.0)
    assert source_of(fwd) == (ip4(WORLD2[0]), WORLD2[1])
    fwd.host_datagram(1, C1, b"c", 0.0)
    assert source_of(fwd) == (CFG.host_ip, C1[1])  # loopback: the host alias
    fwd.host_datagram(1, ("::1", C1[1]), b"d", 0.0)  # the same alias and port: another port
    alias, port = source_of(fwd)
    assert alias == CFG.host_ip and PORT_FIRST <= port <= PORT_LAST
    fwd.host_datagram(1, ("2001:db8::9", 5), b"e", 0.0)  # another family: the gateway
    assert source_of(fwd)[0] == GW
    for client, src in [(WORLD, ip4(WORLD[0])), (WORLD2, ip4(WORLD2[0]))]:
        pkt = parse_ipv4(build_ipv4(VM, src, PROTO_UDP, build_udp(VM, src, 7, client[1], b"r")))
        assert fwd.owns(VM, 7, src, client[1])
        fwd.handle(pkt, parse_udp(pkt.payload, pkt.src, pkt.dst), 1.0)
        assert fwd.drain() == ([], [UdpForwardReply(1, client, b"r")])


def test_a_client_the_vm_also_sends_to_through_the_nat_gets_another_port() -> None:
    sent = {(VM, 7, ip4(WORLD[0]), WORLD[1])}
    fwd = UdpForwarder(CFG, nat_peer=lambda *key: key in sent)
    fwd.add(1, VM, 7, keep_source=True)
    fwd.host_datagram(1, WORLD, b"a", 0.0)
    src, port = source_of(fwd)
    assert src == ip4(WORLD[0]) and port != WORLD[1] and PORT_FIRST <= port <= PORT_LAST
    assert fwd.stats["source_port_changed"] == 1


def test_stack_keeps_forwards_and_the_nat_apart() -> None:
    """A VM socket that sends to a client's address and port through the NAT first:
    the forward from that client gets another port, and each reply finds its way."""
    stack = learned_stack()
    world = ip4(WORLD[0])
    out = build_udp(VM, world, 7, WORLD[1], b"mine")
    stack.receive(1, build_ethernet(CFG.gateway_mac, VM_MAC, ETHERTYPE_IPV4,
                                    build_ipv4(VM, world, PROTO_UDP, out)), 1.0)
    _frames, effects = stack.drain(1.0)
    assert [type(e).__name__ for e in effects] == ["UdpOpen", "UdpSend"]
    stack.udp_forward.add(7, VM, 7, keep_source=True)
    stack.udp_forward.host_datagram(7, WORLD, b"fwd", 2.0)
    ((_link, frame),), _ = stack.drain(2.0)
    pkt = parse_ipv4(parse_ethernet(frame).payload)
    dgram = parse_udp(pkt.payload, pkt.src, pkt.dst)
    assert pkt.src == world and dgram.src_port != WORLD[1]
    for dport, payload in [(dgram.src_port, b"to forward"), (WORLD[1], b"to nat")]:
        reply = build_udp(VM, world, 7, dport, payload)
        stack.receive(1, build_ethernet(CFG.gateway_mac, VM_MAC, ETHERTYPE_IPV4,
                                        build_ipv4(VM, world, PROTO_UDP, reply)), 3.0)
    _frames, effects = stack.drain(3.0)
    assert effects[0] == UdpForwardReply(7, WORLD, b"to forward")
    assert type(effects[1]).__name__ == "UdpSend" and effects[1].payload == b"to nat"


def test_ipv6_vm_and_client() -> None:
    """A forward into a VM's IPv6 address: IPv6 packets from the client's IPv6 address."""
    from pyvpnkit.wire.ipv6 import parse_ipv6

    cfg = NetConfig()
    assert cfg.ipv6 is not None
    vm6 = cfg.ipv6.lowest_ip
    fwd = UdpForwarder(cfg)
    fwd.add(1, vm6, 53, keep_source=True)
    fwd.host_datagram(1, ("2001:db8::9", 4000), b"q", 0.0)
    fwd.host_datagram(1, ("203.0.113.9", 4000), b"r", 0.0)  # an IPv4 client: the gateway
    (p1, p2), _ = fwd.drain()
    pkt1, pkt2 = parse_ipv6(p1), parse_ipv6(p2)
    d1 = parse_udp(pkt1.payload, pkt1.src, pkt1.dst)
    assert (pkt1.src, d1.src_port, pkt1.dst, d1.dst_port) == (
        bytes.fromhex("20010db8000000000000000000000009"), 4000, vm6, 53)
    assert pkt2.src == cfg.ipv6.gateway_ip and bytes(d1.payload) == b"q"
    assert fwd.owns(vm6, 53, pkt1.src, 4000)
