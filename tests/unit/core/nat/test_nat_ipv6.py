"""The NATs over IPv6, with bytes and a fake clock (issue 11, data plane).

The VM side is our own TCP with 16-byte addresses, so every packet crosses
the NAT as IPv6 bytes with pseudo-header checksums checked on parse.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct

import pytest

from pyvpnkit.core.config import NetConfig
from pyvpnkit.core.effects import IcmpEchoSend, TcpOpen, UdpClose, UdpOpen, UdpSend
from pyvpnkit.core.ip.family import fragment
from pyvpnkit.core.ip.ip6frag import Ipv6Reassembler
from pyvpnkit.core.nat.icmp_errors import build_error_kind, kind_from_icmp6
from pyvpnkit.core.nat.icmp_nat import IcmpNat
from pyvpnkit.core.nat.routes import route
from pyvpnkit.core.nat.udp_nat import UdpNat
from pyvpnkit.core.tcp import Closed, Established, PeerClosed, Reset
from pyvpnkit.wire import icmpv6 as icmp6
from pyvpnkit.wire.ipv4 import PROTO_TCP, PROTO_UDP
from pyvpnkit.wire.ipv6 import NH_ICMPV6, build_ipv6, parse_ipv6
from pyvpnkit.wire.tcp import ACK, RST, SYN, build_tcp, parse_tcp
from pyvpnkit.wire.udp import build_udp, parse_udp
from tests.unit.support.tcp_nat_world import World


def a6(text: str) -> bytes:
    return ipaddress.IPv6Address(text).packed


CFG = NetConfig()
VM6 = a6("fd42:7076:6b69::3")
GW6 = a6("fd42:7076:6b69::1")
ALIAS6 = a6("fd42:7076:6b69::2")
WORLD6 = a6("2001:db8::2")

# -- route policy ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("dst", "expected"),
    [
        ("2001:db8::2", ("2001:db8::2", None, None)),
        ("fd42:7076:6b69::2", ("::1", None, None)),
        ("fd42:7076:6b69::1", (None, "port_unreachable", GW6)),
        ("fd42:7076:6b69::99", (None, "host_unreachable", GW6)),
        ("::1", (None, None, None)),
        ("fe80::1", (None, None, None)),
        ("ff02::1", (None, None, None)),
        ("::", (None, None, None)),
        ("::ffff:127.0.0.1", (None, None, None)),
    ],
)
def test_ipv6_route_policy(dst: str, expected: tuple[object, ...]) -> None:
    assert route(CFG, a6(dst)) == expected


def test_no_host_loopback_and_no_ipv6() -> None:
    assert route(NetConfig(host_loopback=False), ALIAS6) == (None, "admin_prohibited", ALIAS6)
    # Without IPv6 the stack drops the VMs' IPv6 frames itself; the policy still
    # answers for the HTTP proxy, which connects on the host's behalf.
    assert route(NetConfig(ipv6=None), WORLD6) == ("2001:db8::2", None, None)
    assert route(NetConfig(ipv6=None), ALIAS6) == ("fd42:7076:6b69::2", None, None)


# -- TCP --------------------------------------------------------------------------


def test_tcp_open_data_and_half_close_over_ipv6() -> None:
    w = World()
    vm = w.connect(dst=WORLD6, port=443, src=VM6)
    fid = w.only_flow()
    assert w.host.socks[fid].open == TcpOpen(fid, "2001:db8::2", 443)
    w.host_connected(fid)
    assert vm.conn.state == "ESTABLISHED" and vm.events == [Established()]
    assert vm.conn.snd_mss == 1500 - 60  # IPv6 MSS from our SYN-ACK
    vm.conn.send(b"x" * 100_000, w.now)
    w.run()
    assert bytes(w.host.socks[fid].received) == b"x" * 100_000
    w.host_read(fid, b"y" * 50_000)
    assert bytes(vm.received) == b"y" * 50_000
    vm.conn.shutdown(w.now)
    w.run()
    assert w.host.socks[fid].shut
    w.nat.host_eof(fid, w.now)
    w.run()
    assert PeerClosed() in vm.events
    assert w.nat.closed_log[-1].startswith(
        "tcp [fd42:7076:6b69::3]:40000 -> [2001:db8::2]:443 up=100000 down=50000 "
    )


def test_tcp_alias_reaches_host_loopback_and_refusal_resets_at_once() -> None:
    w = World()
    vm = w.connect(dst=ALIAS6, port=22, src=VM6)
    fid = w.only_flow()
    assert w.host.socks[fid].open.host == "::1"
    w.nat.host_connect_failed(fid, w.now)
    w.run()
    assert vm.events == [Reset(), Closed()] and w.nat.stats["refused"] == 1


def test_tcp_to_unowned_prefix_address_and_stray_segments_get_rst() -> None:
    w = World()
    vm = w.connect(dst=a6("fd42:7076:6b69::77"), src=VM6)
    assert vm.events == [Reset(), Closed()] and len(w.nat) == 0
    tcp = build_tcp(VM6, WORLD6, 40000, 80, 5, 9, ACK, 1000)
    w.nat.handle(parse_ipv6(build_ipv6(VM6, WORLD6, PROTO_TCP, tcp)),
                 parse_tcp(tcp, VM6, WORLD6), w.now)
    (pkt,), _ = w.nat.drain(w.now)
    ip = parse_ipv6(pkt)
    seg = parse_tcp(ip.payload, ip.src, ip.dst)  # checksum over the IPv6 pseudo-header
    assert (ip.src, ip.dst, seg.flags, seg.seq) == (WORLD6, VM6, RST, 9)


@pytest.mark.parametrize(("kind", "code"), [("net_unreachable", icmp6.NO_ROUTE),
                                            ("host_unreachable", icmp6.ADDRESS_UNREACHABLE)])
def test_unreachable_connect_answers_the_syn_with_icmpv6(kind: str, code: int) -> None:
    w = World()
    vm = w.connect(dst=WORLD6, port=80, src=VM6, sport=40123)
    fid = w.only_flow()
    w.nat.host_connect_failed(fid, w.now, kind)
    (pkt,), _ = w.nat.drain(w.now)
    ip = parse_ipv6(pkt)
    msg = icmp6.parse_icmpv6(ip.payload, ip.src, ip.dst)
    assert (ip.src, ip.dst, msg.type, msg.code) == (WORLD6, VM6, icmp6.DEST_UNREACHABLE, code)
    quoted = bytes(msg.body)
    assert quoted[6] == PROTO_TCP and quoted[8:24] == VM6 and quoted[24:40] == WORLD6
    sport, dport, seq = struct.unpack_from("!HHI", quoted, 40)
    assert (sport, dport, seq) == (40123, 80, 1000)  # the VM's SYN: its kernel matches it
    assert len(w.nat) == 0 and w.nat.stats["unreachable_sent"] == 1
    assert vm.conn.state == "SYN_SENT"  # our test TCP ignores ICMP; a kernel gives up


def test_host_reset_resets_the_vm_over_ipv6() -> None:
    w = World()
    vm, fid = w.established(dst=WORLD6, src=VM6)
    w.nat.host_reset(fid, w.now)
    w.run()
    assert Reset() in vm.events


def test_port_forward_into_a_vm_ipv6_address_comes_from_the_ipv6_gateway() -> None:
    w = World()
    fid = w.nat.open_to_vm(VM6, 8080, w.now)
    (syn,), _ = w.nat.drain(w.now)
    ip = parse_ipv6(syn)
    seg = parse_tcp(ip.payload, ip.src, ip.dst)
    assert ip.src == GW6 and ip.dst == VM6 and seg.flags == SYN and fid in w.nat.by_id


# -- UDP --------------------------------------------------------------------------


def udp6(src: bytes, dst: bytes, sport: int, dport: int, data: bytes, hops: int = 64) -> tuple:
    raw = build_ipv6(src, dst, PROTO_UDP, build_udp(src, dst, sport, dport, data), hop_limit=hops)
    pkt = parse_ipv6(raw)
    return pkt, parse_udp(pkt.payload, pkt.src, pkt.dst)


def test_udp_flow_both_ways_and_expiry() -> None:
    nat = UdpNat(CFG, idle_timeout=60.0)
    nat.handle(*udp6(VM6, WORLD6, 5000, 53, b"q"), now=0.0)
    nat.handle(*udp6(VM6, ALIAS6, 5000, 53, b"r"), now=1.0)
    _, eff = nat.drain()
    assert eff == [UdpOpen(1, (VM6, 5000)), UdpSend(1, "2001:db8::2", 53, b"q", 63),
                   UdpSend(1, "::1", 53, b"r", 63)]
    nat.host_datagram(1, "::1", 53, b"answer", 2.0)
    nat.host_datagram(1, "2001:db8::2%3", 53, b"scoped", 2.0)
    nat.host_datagram(1, "fe80::5", 53, b"link-local: dropped", 2.0)
    nat.host_datagram(1, "192.0.2.1", 53, b"wrong family: dropped", 2.0)
    out, _ = nat.drain()
    assert [parse_ipv6(p).src for p in out] == [ALIAS6, WORLD6]
    ip = parse_ipv6(out[0])
    assert parse_udp(ip.payload, ip.src, ip.dst).payload == b"answer"
    assert nat.stats["drop_host_datagram"] == 2
    assert nat.next_deadline() == 62.0
    nat.handle_timer(62.0)
    assert nat.drain()[1] == [UdpClose(1)]


def test_udp_errors_become_icmpv6() -> None:
    nat = UdpNat(CFG)
    nat.handle(*udp6(VM6, WORLD6, 5000, 9, b"x"), now=0.0)
    nat.drain()
    nat.host_error(1, "port_unreachable", None, "2001:db8::2", 9, 1.0)
    nat.host_error(1, "frag_needed", "2001:db8::9", "2001:db8::2", 9, 1.0, mtu=1400)
    nat.handle(*udp6(VM6, WORLD6, 5000, 9, b"x", hops=1), now=2.0)
    nat.handle(*udp6(VM6, a6("fd42:7076:6b69::1"), 5000, 9, b"x"), now=2.0)
    out, _ = nat.drain()
    msgs = []
    for raw in out:
        ip = parse_ipv6(raw)
        assert ip.proto == NH_ICMPV6 and ip.dst == VM6
        msg = icmp6.parse_icmpv6(ip.payload, ip.src, ip.dst)
        assert bytes(msg.body[8:24]) == VM6  # the quote is the VM's own packet
        msgs.append((ip.src, msg.type, msg.code, msg.u32))
    assert msgs == [
        (WORLD6, icmp6.DEST_UNREACHABLE, icmp6.PORT_UNREACHABLE, 0),
        (a6("2001:db8::9"), icmp6.PACKET_TOO_BIG, 0, 1400),
        (GW6, icmp6.TIME_EXCEEDED, icmp6.HOP_LIMIT_EXCEEDED, 0),
        (GW6, icmp6.DEST_UNREACHABLE, icmp6.PORT_UNREACHABLE, 0),
    ]


def test_big_udp_reply_is_fragmented_and_reassembles() -> None:
    nat = UdpNat(CFG)
    nat.handle(*udp6(VM6, WORLD6, 5000, 7, b"x"), now=0.0)
    nat.drain()
    data = os.urandom(4000)
    nat.host_datagram(1, "2001:db8::2", 7, data, 1.0)
    out, _ = nat.drain()
    assert len(out) == 3 and all(len(p) <= CFG.mtu for p in out)
    reasm = Ipv6Reassembler()
    whole = [reasm.add(parse_ipv6(p), 1.0) for p in out][-1]
    assert whole is not None
    ip = parse_ipv6(whole)
    assert parse_udp(ip.payload, ip.src, ip.dst).payload == data


def test_largest_ipv6_datagram_reaches_the_vm_in_fragments() -> None:
    nat = UdpNat(CFG)
    nat.handle(*udp6(VM6, WORLD6, 5000, 7, b"x"), now=0.0)
    nat.drain()
    nat.host_datagram(1, "2001:db8::2", 7, bytes(65527), 1.0)
    nat.host_datagram(1, "2001:db8::2", 7, bytes(65528), 1.0)
    out, _ = nat.drain()
    reasm = Ipv6Reassembler()
    whole = [reasm.add(parse_ipv6(p), 1.0) for p in out][-1]
    assert whole is not None and len(whole) == 40 + 8 + 65527
    assert nat.stats["drop_host_datagram"] == 1


def test_unknown_next_header_gets_parameter_problem() -> None:
    from pyvpnkit.core.switch.stack import Stack
    from pyvpnkit.wire.ethernet import build_ethernet, parse_ethernet

    stack = Stack(CFG)
    vm_mac = bytes.fromhex("020000000003")
    raw = build_ipv6(VM6, WORLD6, 132, bytes(12))  # SCTP
    stack.receive(1, build_ethernet(CFG.gateway_mac, vm_mac, 0x86DD, raw), 0.0)
    ((_, frame),), _ = stack.drain(0.0)
    ip = parse_ipv6(parse_ethernet(frame).payload)
    msg = icmp6.parse_icmpv6(ip.payload, ip.src, ip.dst)
    assert (msg.type, msg.code, msg.u32) == (icmp6.PARAMETER_PROBLEM, 1, 6)
    assert stack.stats["drop_ipv6_proto"] == 1


def test_no_error_about_non_first_fragments() -> None:
    from pyvpnkit.core.nat.icmp_errors import may_report6
    from pyvpnkit.wire.ipv6 import NH_FRAGMENT, fragment_header

    first = build_ipv6(VM6, WORLD6, NH_FRAGMENT, fragment_header(PROTO_UDP, 0, True, 5) + bytes(8))
    later = build_ipv6(VM6, WORLD6, NH_FRAGMENT, fragment_header(PROTO_UDP, 8, False, 5) + bytes(8))
    assert may_report6(first) and not may_report6(later)


def test_fragment_ipv6_keeps_packets_that_fit() -> None:
    small = build_ipv6(VM6, WORLD6, PROTO_UDP, b"z" * 100)
    assert fragment(small, 1500, 1) == [small]


# -- ICMPv6 echo ---------------------------------------------------------------------


def test_icmpv6_echo_keeps_the_vm_identifier_and_errors_quote_the_request() -> None:
    nat = IcmpNat(CFG)
    body = icmp6.build_icmpv6(VM6, WORLD6, icmp6.ECHO_REQUEST, 0, icmp6.echo_rest(77, 1), b"hi")
    pkt = parse_ipv6(build_ipv6(VM6, WORLD6, NH_ICMPV6, body))
    nat.handle(pkt, icmp6.parse_icmpv6(pkt.payload, pkt.src, pkt.dst), 0.0)
    _, eff = nat.drain()
    assert eff == [IcmpEchoSend(1, "2001:db8::2", 77, 1, b"hi", 63)]
    nat.host_echo_reply(1, "2001:db8::2", 1, b"hi", 0.1)
    nat.host_error(1, "ttl_exceeded", "2001:db8::1", 1, 0.2)
    reply, err = (parse_ipv6(p) for p in nat.drain()[0])
    msg = icmp6.parse_icmpv6(reply.payload, reply.src, reply.dst)
    assert (msg.type, msg.ident, msg.seq, bytes(msg.body)) == (icmp6.ECHO_REPLY, 77, 1, b"hi")
    emsg = icmp6.parse_icmpv6(err.payload, err.src, err.dst)
    assert (err.src, emsg.type) == (a6("2001:db8::1"), icmp6.TIME_EXCEEDED)
    assert bytes(emsg.body[40:48])[:1] == bytes([icmp6.ECHO_REQUEST])


def test_no_error_about_an_icmpv6_error_or_from_multicast() -> None:
    err = icmp6.build_icmpv6(VM6, WORLD6, icmp6.DEST_UNREACHABLE, 4, bytes(4), b"")
    assert build_error_kind(build_ipv6(VM6, WORLD6, NH_ICMPV6, err), GW6, "ttl_exceeded") is None
    mcast = build_ipv6(a6("ff02::1"), WORLD6, PROTO_UDP, bytes(8))
    assert build_error_kind(mcast, GW6, "port_unreachable") is None


def test_kinds_from_host_icmpv6() -> None:
    assert kind_from_icmp6(1, 4) == "port_unreachable"
    assert kind_from_icmp6(1, 0) == "net_unreachable"
    assert kind_from_icmp6(2, 0) == "frag_needed"
    assert kind_from_icmp6(3, 0) == "ttl_exceeded"
    assert kind_from_icmp6(1, 6) == "host_unreachable"
    assert kind_from_icmp6(128, 0) is None


# -- errqueue: IPV6_RECVERR ------------------------------------------------------------


def test_extended_error_from_icmpv6_names_the_offender() -> None:
    from pyvpnkit.runtime.errqueue import SO_EE_ORIGIN_ICMP6, parse_extended_err

    offender = struct.pack("=HHI16sI", socket.AF_INET6, 0, 0, a6("2001:db8::1"), 0)
    ee = struct.pack("=IBBBBII", 113, SO_EE_ORIGIN_ICMP6, 1, 0, 0, 0, 0) + offender
    err = parse_extended_err(ee, b"", ("2001:db8::2", 9))
    assert err is not None and err.kind == "net_unreachable" and err.offender == "2001:db8::1"


# -- TAP offloads: GSO TCPV6 --------------------------------------------------------


@pytest.mark.parametrize("size", [1000, 60000])
def test_tap_sends_ipv6_tcp_with_partial_checksum_and_gso(size: int) -> None:
    from pyvpnkit.links.tap import TapLink
    from pyvpnkit.links.tapdev import (
        VIRTIO_NET_HDR_F_NEEDS_CSUM,
        VIRTIO_NET_HDR_GSO_NONE,
        VIRTIO_NET_HDR_GSO_TCPV6,
        VNET_HDR,
    )
    from pyvpnkit.wire.checksum import pseudo_header_sum

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    link = TapLink.__new__(TapLink)
    link.fd, link.mtu, link.vnet_hdr, link.dropped, link.name = ours.fileno(), 1500, True, 0, "t"
    tcp = build_tcp(GW6, VM6, 443, 40000, 1, 2, ACK, 1000, b"", b"d" * size)
    frame = b"\x02" * 6 + b"\x04" * 6 + b"\x86\xdd" + build_ipv6(GW6, VM6, PROTO_TCP, tcp)
    link.send_frame(frame)
    out = theirs.recv(1 << 17)
    ours.close()
    theirs.close()
    flags, gso_type, hdr_len, gso_size, start, offset = VNET_HDR.unpack_from(out)
    assert flags == VIRTIO_NET_HDR_F_NEEDS_CSUM and (start, offset) == (54, 16)
    assert hdr_len == 54 + 20 and link.dropped == 0
    if size > 1500:
        assert (gso_type, gso_size) == (VIRTIO_NET_HDR_GSO_TCPV6, 1500 - 40 - 20)
    else:
        assert gso_type == VIRTIO_NET_HDR_GSO_NONE
    body = out[VNET_HDR.size:]
    partial = pseudo_header_sum(GW6, VM6, PROTO_TCP, len(tcp))
    assert body[54 + 16 : 54 + 18] == partial.to_bytes(2, "big")
    assert body[:70] == frame[:70] and body[72:] == frame[72:]


def test_stats_count_ipv6_flows() -> None:
    from pyvpnkit.api.server import stats_of
    from pyvpnkit.core.switch.stack import Stack

    stack = Stack(CFG)
    stack.udp.handle(*udp6(VM6, WORLD6, 5000, 53, b"q"), now=0.0)
    tcp = build_tcp(VM6, WORLD6, 40000, 80, 1, 0, SYN, 1000)
    stack.tcp.handle(parse_ipv6(build_ipv6(VM6, WORLD6, PROTO_TCP, tcp)),
                     parse_tcp(tcp, VM6, WORLD6), 0.0)
    flows = stats_of(stack)["flows"]
    assert (flows["tcp"], flows["tcp_ipv6"], flows["udp_ipv6"], flows["icmp_ipv6"]) == (1, 1, 1, 0)


def test_stack_routes_ipv6_nat_packets_and_forgets_flows_when_the_link_closes() -> None:
    from pyvpnkit.core.switch.stack import Stack
    from pyvpnkit.wire.ethernet import build_ethernet, parse_ethernet

    stack = Stack(CFG)
    vm_mac = bytes.fromhex("020000000003")
    raw = build_ipv6(VM6, WORLD6, PROTO_UDP, build_udp(VM6, WORLD6, 5000, 53, b"q"))
    stack.receive(1, build_ethernet(CFG.gateway_mac, vm_mac, 0x86DD, raw), 0.0)
    _, effects = stack.drain(0.0)
    assert UdpSend(1, "2001:db8::2", 53, b"q", 63) in effects
    stack.udp.host_datagram(1, "2001:db8::2", 53, b"a", 0.1)
    ((link, frame),), _ = stack.drain(0.1)
    eth = parse_ethernet(frame)
    assert (link, eth.dst, eth.src, eth.ethertype) == (1, vm_mac, CFG.gateway_mac, 0x86DD)
    assert parse_ipv6(eth.payload).dst == VM6
    stack.link_closed(1, 1.0)
    assert len(stack.udp) == 0 and UdpClose(1) in stack.drain(1.0)[1]
