"""The switch driven with raw frames and a fake clock."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvpnkit.core.config import NetConfig, ip4
from pyvpnkit.core.effects import TcpOpen
from pyvpnkit.core.switch.stack import Stack
from pyvpnkit.wire import arp, ethernet, icmp, ipv4, tcp, udp
from pyvpnkit.wire.dhcp import DhcpMessage, build_dhcp, parse_dhcp

VM_MAC = bytes.fromhex("020000000001")
VM_IP = ip4("192.168.65.3")
GW = ip4("192.168.65.1")
HOST = ip4("192.168.65.2")
WORLD = ip4("203.0.113.2")
CFG = NetConfig(ipv6=None)  # IPv4 only: no router advertisements among the frames


def make_stack() -> Stack:
    return Stack(CFG, rng=random.Random(1))


def eth(
    payload: bytes, etype: int = ethernet.ETHERTYPE_IPV4, dst: bytes = CFG.gateway_mac
) -> bytes:
    return ethernet.build_ethernet(dst, VM_MAC, etype, payload)


def ip_frame(dst: bytes, proto: int, payload: bytes, src: bytes = VM_IP) -> bytes:
    return eth(ipv4.build_ipv4(src, dst, proto, payload))


def out_frames(stack: Stack, now: float = 0.0) -> list[ethernet.EthernetFrame]:
    frames, _effects = stack.drain(now)
    return [ethernet.parse_ethernet(f) for _link, f in frames]


def test_arp_for_gateway_host_and_next_hop() -> None:
    stack = make_stack()
    for target in (GW, HOST, WORLD):
        req = arp.build_arp(arp.ARP_REQUEST, VM_MAC, VM_IP, b"\0" * 6, target)
        stack.receive(1, eth(req, ethernet.ETHERTYPE_ARP, ethernet.BROADCAST), 0.0)
        (frame,) = out_frames(stack)
        reply = arp.parse_arp(frame.payload)
        assert reply.op == arp.ARP_REPLY
        assert (reply.sha, reply.spa, reply.tpa) == (CFG.gateway_mac, target, VM_IP)
        assert frame.dst == VM_MAC


def test_arp_probe_and_vm_address_not_answered() -> None:
    stack = make_stack()
    probe = arp.build_arp(arp.ARP_REQUEST, VM_MAC, b"\0" * 4, b"\0" * 6, VM_IP)
    stack.receive(1, eth(probe, ethernet.ETHERTYPE_ARP, ethernet.BROADCAST), 0.0)
    assert out_frames(stack) == []
    # Once .3 is known as a VM, nobody but that VM answers for it.
    stack.receive(1, ip_frame(GW, ipv4.PROTO_UDP, udp.build_udp(VM_IP, GW, 1, 9, b"")), 0.0)
    stack.drain(0.0)
    other = bytes.fromhex("020000000002")
    req = arp.build_arp(arp.ARP_REQUEST, other, ip4("192.168.65.4"), b"\0" * 6, VM_IP)
    stack.receive(
        2, ethernet.build_ethernet(ethernet.BROADCAST, other, ethernet.ETHERTYPE_ARP, req), 0
    )
    frames, _ = stack.drain(0.0)
    assert [link for link, _f in frames] == [1]  # flooded to the VM, not answered by us


def test_arp_probe_for_our_own_addresses_defended() -> None:
    """RFC 5227: a VM probing the gateway's or the alias's address hears it is taken."""
    stack = make_stack()
    for target in (GW, HOST):
        probe = arp.build_arp(arp.ARP_REQUEST, VM_MAC, b"\0" * 4, b"\0" * 6, target)
        stack.receive(1, eth(probe, ethernet.ETHERTYPE_ARP, ethernet.BROADCAST), 0.0)
        (frame,) = out_frames(stack)
        reply = arp.parse_arp(frame.payload)
        assert frame.dst == VM_MAC and reply.op == arp.ARP_REPLY
        assert (reply.sha, reply.spa, reply.tha, reply.tpa) == (
            CFG.gateway_mac, target, VM_MAC, b"\0" * 4)
    for target in (ip4("192.168.65.9"), WORLD):  # a free pool address, anything else
        probe = arp.build_arp(arp.ARP_REQUEST, VM_MAC, b"\0" * 4, b"\0" * 6, target)
        stack.receive(1, eth(probe, ethernet.ETHERTYPE_ARP, ethernet.BROADCAST), 0.0)
        assert out_frames(stack) == []
    assert stack.arp.defended == 2


def test_spoofed_arp_reply_ignored() -> None:
    stack = make_stack()
    rep = arp.build_arp(arp.ARP_REPLY, VM_MAC, GW, CFG.gateway_mac, VM_IP)
    stack.receive(1, eth(rep, ethernet.ETHERTYPE_ARP), 0.0)
    assert out_frames(stack) == []


def test_ping_gateway_and_host_alias() -> None:
    stack = make_stack()
    for target in (GW, HOST):
        req = icmp.build_icmp(icmp.ECHO_REQUEST, 0, icmp.echo_rest(7, 3), b"abc")
        stack.receive(1, ip_frame(target, ipv4.PROTO_ICMP, req), 0.0)
        (frame,) = out_frames(stack)
        pkt = ipv4.parse_ipv4(frame.payload)
        assert (pkt.src, pkt.dst) == (target, VM_IP)
        msg = icmp.parse_icmp(pkt.payload)
        assert (msg.type, msg.ident, msg.seq, bytes(msg.payload)) == (icmp.ECHO_REPLY, 7, 3, b"abc")


def test_dhcp_discover_gets_offer() -> None:
    stack = make_stack()
    chaddr = VM_MAC + b"\0" * 10
    discover = DhcpMessage(
        op=1,
        htype=1,
        hlen=6,
        hops=0,
        xid=0x1234,
        secs=0,
        flags=0,
        ciaddr=b"\0" * 4,
        yiaddr=b"\0" * 4,
        siaddr=b"\0" * 4,
        giaddr=b"\0" * 4,
        chaddr=chaddr,
        options={53: b"\x01"},
    )
    payload = udp.build_udp(b"\0" * 4, b"\xff" * 4, 68, 67, build_dhcp(discover))
    frame = ethernet.build_ethernet(
        ethernet.BROADCAST,
        VM_MAC,
        ethernet.ETHERTYPE_IPV4,
        ipv4.build_ipv4(b"\0" * 4, b"\xff" * 4, 17, payload),
    )
    stack.receive(1, frame, 0.0)
    (out,) = out_frames(stack)
    pkt = ipv4.parse_ipv4(out.payload)
    dgram = udp.parse_udp(pkt.payload, pkt.src, pkt.dst)
    offer = parse_dhcp(dgram.payload)
    assert offer.yiaddr == VM_IP and offer.xid == 0x1234
    assert (dgram.src_port, dgram.dst_port) == (67, 68)


def test_udp_to_unknown_gateway_port_is_unreachable() -> None:
    stack = make_stack()
    stack.receive(1, ip_frame(GW, ipv4.PROTO_UDP, udp.build_udp(VM_IP, GW, 5000, 9999, b"x")), 0.0)
    (frame,) = out_frames(stack)
    msg = icmp.parse_icmp(ipv4.parse_ipv4(frame.payload).payload)
    assert (msg.type, msg.code) == (icmp.DEST_UNREACHABLE, icmp.PORT_UNREACHABLE)


def syn(dst: bytes, port: int, sport: int = 40000) -> bytes:
    opts = tcp.encode_options(tcp.TcpOptions(mss=1460))
    return ip_frame(
        dst, ipv4.PROTO_TCP, tcp.build_tcp(VM_IP, dst, sport, port, 1000, 0, tcp.SYN, 64240, opts)
    )


def test_tcp_to_closed_gateway_port_gets_rst() -> None:
    stack = make_stack()
    stack.receive(1, syn(GW, 80), 0.0)
    (frame,) = out_frames(stack)
    pkt = ipv4.parse_ipv4(frame.payload)
    seg = tcp.parse_tcp(pkt.payload, pkt.src, pkt.dst)
    assert seg.flags == tcp.RST | tcp.ACK and seg.ack == 1001


def test_tcp_syn_connects_on_host_first() -> None:
    stack = make_stack()
    stack.receive(1, syn(HOST, 8080), 0.0)
    frames, effects = stack.drain(0.0)
    assert frames == []
    (open_,) = effects
    assert isinstance(open_, TcpOpen) and (open_.host, open_.port) == ("127.0.0.1", 8080)
    stack.receive(1, syn(HOST, 8080), 0.5)  # retransmitted SYN absorbed while connecting
    assert stack.drain(0.5) == ([], [])
    stack.tcp.host_connected(open_.flow_id, 1.0)
    (frame,) = out_frames(stack, 1.0)
    pkt = ipv4.parse_ipv4(frame.payload)
    seg = tcp.parse_tcp(pkt.payload, pkt.src, pkt.dst)
    assert seg.flags == tcp.SYN | tcp.ACK and seg.ack == 1001 and pkt.src == HOST


def test_tcp_refused_on_host_gives_rst() -> None:
    stack = make_stack()
    stack.receive(1, syn(WORLD, 81), 0.0)
    (open_,) = stack.drain(0.0)[1]
    assert isinstance(open_, TcpOpen) and open_.host == "203.0.113.2"
    stack.tcp.host_connect_failed(open_.flow_id, 0.1)
    (frame,) = out_frames(stack, 0.1)
    pkt = ipv4.parse_ipv4(frame.payload)
    seg = tcp.parse_tcp(pkt.payload, pkt.src, pkt.dst)
    assert seg.flags & tcp.RST and pkt.src == WORLD
    assert len(stack.tcp) == 0


def test_no_host_loopback_refuses_alias() -> None:
    from dataclasses import replace

    stack = Stack(replace(CFG, host_loopback=False), rng=random.Random(1))
    stack.receive(1, syn(HOST, 8080), 0.0)
    frames, effects = stack.drain(0.0)
    assert effects == [] and len(frames) == 1


@pytest.mark.slow  # hypothesis: more examples than the profile
@settings(max_examples=300)
@given(st.binary(max_size=300), st.sampled_from([0x0800, 0x0806, 0x86DD, 0x1234]))
def test_garbage_frames_are_dropped_not_raised(payload: bytes, etype: int) -> None:
    stack = make_stack()
    stack.receive(1, eth(payload, etype), 0.0)
    stack.receive(1, payload, 0.0)
    stack.drain(0.0)
    stack.handle_timer(100.0)
    assert stack.stats["drop_internal_error"] == 0, stack.last_error


def test_tcp_never_reaches_host_loopback_or_unowned_subnet_addresses() -> None:
    from dataclasses import replace

    stack = Stack(replace(CFG, host_loopback=False), rng=random.Random(1))
    for dst in (ip4("127.0.0.1"), ip4("192.168.65.50"), ip4("224.0.0.1"), HOST):
        stack.receive(1, syn(dst, 22), 0.0)
        frames, effects = stack.drain(0.0)
        assert effects == [], dst
        seg = tcp.parse_tcp(
            ipv4.parse_ipv4(ethernet.parse_ethernet(frames[0][1]).payload).payload, dst, VM_IP
        )
        assert seg.flags & tcp.RST


def test_vm_to_vm_through_the_gateway_is_routed_not_natted() -> None:
    stack = make_stack()
    other_mac, other_ip = bytes.fromhex("020000000002"), ip4("192.168.65.4")
    stack.add_vm(2, other_mac, other_ip)
    stack.receive(1, syn(other_ip, 80), 0.0)
    frames, effects = stack.drain(0.0)
    assert effects == []
    ((link, frame),) = frames
    assert link == 2 and ethernet.parse_ethernet(frame).dst == other_mac


def test_spoofed_source_addresses_are_dropped() -> None:
    stack = make_stack()
    stack.pool.allocate("mac:" + VM_MAC.hex(":"), VM_IP)
    ping = icmp.build_icmp(icmp.ECHO_REQUEST, 0, icmp.echo_rest(1, 1), b"")
    intruder = bytes.fromhex("020000000099")

    def from_mac(mac: bytes, src: bytes) -> bytes:
        return ethernet.build_ethernet(
            CFG.gateway_mac, mac, ethernet.ETHERTYPE_IPV4,
            ipv4.build_ipv4(src, GW, ipv4.PROTO_ICMP, ping),
        )

    for src in (VM_IP, GW, HOST):  # leased to another MAC, or the stack's own addresses
        stack.receive(2, from_mac(intruder, src), 0.0)
    assert out_frames(stack) == []
    assert stack.stats["drop_spoofed_source"] == 3
    stack.receive(1, from_mac(VM_MAC, VM_IP), 0.0)  # the owner is answered
    assert len(out_frames(stack)) == 1
    stack.receive(2, from_mac(intruder, ip4("192.168.65.9")), 0.0)  # a free address is fine
    assert len(out_frames(stack)) == 1
    stack.receive(1, from_mac(VM_MAC, ip4("192.168.65.9")), 0.0)  # now in use by the intruder
    assert out_frames(stack) == [] and stack.stats["drop_spoofed_source"] == 4


def test_mac_table_is_bounded() -> None:
    from pyvpnkit.core.switch.stack import MAX_MACS

    stack = Stack(NetConfig(ipv6=None), rng=random.Random(1))
    extra = 10
    for i in range(MAX_MACS + extra):
        src = bytes([0x02]) + i.to_bytes(5, "big")
        stack.receive(1, ethernet.build_ethernet(ethernet.BROADCAST, src, 0x88B5, b"x" * 46), 0.0)
    assert len(stack.macs) == MAX_MACS and stack.stats["mac_evicted"] == extra
    assert bytes([0x02]) + (MAX_MACS + extra - 1).to_bytes(5, "big") in stack.macs
