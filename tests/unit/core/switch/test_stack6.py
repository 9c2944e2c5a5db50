"""The switch's IPv6 side through Stack: frames in, frames out, a fake clock."""

from __future__ import annotations

import ipaddress
import random

import dns.flags
import dns.message
import dns.rdatatype
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvpnkit.core.config import NetConfig
from pyvpnkit.core.switch.stack import Stack
from pyvpnkit.wire import dhcpv6 as d
from pyvpnkit.wire import ethernet, icmpv6, ipv6
from pyvpnkit.wire.udp import build_udp, parse_udp

CFG = NetConfig()
L6 = CFG.ipv6
assert L6 is not None
GW, ALIAS, LL = L6.gateway_ip, L6.host_ip, L6.link_local_ip
VM_MAC = bytes.fromhex("525400000001")
VM2_MAC = bytes.fromhex("525400000002")
VM_LL = ipaddress.IPv6Address("fe80::5054:ff:fe00:1").packed
VM_IP = ipaddress.IPv6Address("fd42:7076:6b69:0:5054:ff:fe00:1").packed
VM2_IP = ipaddress.IPv6Address("fd42:7076:6b69::99").packed
WORLD = ipaddress.IPv6Address("2001:db8::1").packed
Frames = list[tuple[int, bytes]]


def make_stack(config: NetConfig = CFG) -> Stack:
    stack = Stack(config, rng=random.Random(1), dns_upstreams=[])
    stack.handle_timer(0.0)  # the first RA goes out at start, to no link yet
    stack.drain(0.0)
    return stack


def frame(
    src: bytes, dst: bytes, nh: int, payload: bytes, *, mac: bytes = VM_MAC,
    eth_dst: bytes | None = None, hops: int = 64,
) -> bytes:
    packet = ipv6.build_ipv6(src, dst, nh, payload, hop_limit=hops)
    if eth_dst is None:
        eth_dst = ipv6.multicast_mac(dst) if ipv6.is_multicast(dst) else CFG.gateway_mac
    return ethernet.build_ethernet(eth_dst, mac, ethernet.ETHERTYPE_IPV6, packet)


def icmp(src: bytes, dst: bytes, msg: bytes, *, mac: bytes = VM_MAC, hops: int = 64) -> bytes:
    return frame(src, dst, ipv6.NH_ICMPV6, msg, mac=mac, hops=hops)


def ndp(src: bytes, dst: bytes, msg: bytes, mac: bytes = VM_MAC) -> bytes:
    return icmp(src, dst, msg, hops=255, mac=mac)


def out6(frames: Frames) -> list[tuple[int, ethernet.EthernetFrame, ipv6.IPv6Packet]]:
    got = []
    for link, data in frames:
        eth = ethernet.parse_ethernet(data)
        assert eth.ethertype == ethernet.ETHERTYPE_IPV6 and eth.src == CFG.gateway_mac
        got.append((link, eth, ipv6.parse_ipv6(eth.payload)))
    return got


def ns(src: bytes, target: bytes, lladdr: bytes | None = VM_MAC) -> bytes:
    opts = icmpv6.encode_options(source_lladdr=lladdr) if lladdr else b""
    return icmpv6.build_ns(src, ipv6.solicited_node(target), target, opts)


def test_ns_for_the_gateway_answered_on_the_link() -> None:
    stack = make_stack()
    stack.receive(3, ndp(VM_LL, ipv6.solicited_node(GW), ns(VM_LL, GW)), 1.0)
    [(link, eth, pkt)] = out6(stack.drain(1.0)[0])
    msg = icmpv6.parse_ndp(icmpv6.parse_icmpv6(pkt.payload, pkt.src, pkt.dst))
    assert link == 3 and eth.dst == VM_MAC and pkt.dst == VM_LL
    assert isinstance(msg, icmpv6.NeighborAdvertisement) and msg.target == GW
    assert stack.v6 is not None and stack.v6.neighbors.lookup(VM_LL) == VM_MAC


def test_dad_probe_for_a_vm_address_silent_ours_defended() -> None:
    stack = make_stack()
    stack.receive(1, ndp(ipv6.UNSPECIFIED, ipv6.solicited_node(VM_IP), ns(ipv6.UNSPECIFIED,
                         VM_IP, None)), 1.0)
    assert stack.drain(1.0)[0] == []
    stack.receive(1, ndp(ipv6.UNSPECIFIED, ipv6.solicited_node(GW), ns(ipv6.UNSPECIFIED,
                         GW, None)), 1.0)
    [(_link, eth, pkt)] = out6(stack.drain(1.0)[0])
    assert pkt.dst == ipv6.ALL_NODES and eth.dst == ipv6.multicast_mac(ipv6.ALL_NODES)
    # The probe claimed the address: the VM's name answers AAAA with it.
    assert stack.v6 is not None and stack.v6.vm_addresses() == [VM_IP]


def test_router_advertisements_flooded_on_the_timer_and_on_solicitation() -> None:
    stack = make_stack()
    stack.receive(1, ndp(VM_LL, ipv6.ALL_NODES, icmpv6.build_na(
        VM_LL, ipv6.ALL_NODES, VM_LL, router=False, solicited=False, override=True)), 1.0)
    stack.receive(2, ndp(VM_LL, ipv6.ALL_NODES, icmpv6.build_na(
        VM_LL, ipv6.ALL_NODES, VM_LL, router=False, solicited=False, override=True),
        mac=VM2_MAC), 1.0)
    assert stack.stats["drop_spoofed_source"] == 1  # VM_LL is VM_MAC's
    stack.drain(1.0)
    deadline = stack.next_deadline()
    assert deadline is not None and 0.0 < deadline <= 16.0  # initial RAs: at most 16 s apart
    stack.handle_timer(deadline)
    ras = out6(stack.drain(deadline)[0])
    assert sorted(link for link, _e, _p in ras) == [1, 2]  # every link
    for _link, eth, pkt in ras:
        assert eth.dst == bytes.fromhex("333300000001") and pkt.src == LL
        msg = icmpv6.parse_ndp(icmpv6.parse_icmpv6(pkt.payload, pkt.src, pkt.dst))
        assert isinstance(msg, icmpv6.RouterAdvertisement)
        assert msg.options.prefixes[0].prefix == L6.prefix
        assert msg.options.rdnss is not None and msg.options.rdnss[1] == (GW,)
    # A solicitation from a VM with an address: a unicast RA at once.
    stack.receive(1, ndp(VM_LL, ipv6.ALL_ROUTERS, icmpv6.build_rs(
        VM_LL, ipv6.ALL_ROUTERS, icmpv6.encode_options(source_lladdr=VM_MAC))), deadline + 1)
    flooded, ours = [], []
    for link, data in stack.drain(deadline + 1)[0]:
        (ours if data[6:12] == CFG.gateway_mac else flooded).append((link, data))
    assert flooded == [(2, flooded[0][1])]  # the RS itself reached the other VM's link
    [(link, eth, pkt)] = out6(ours)
    assert (link, eth.dst, pkt.dst) == (1, VM_MAC, VM_LL)


def test_dhcpv6_exchange_through_the_stack() -> None:
    stack = make_stack()
    solicit = d.build_dhcpv6(d.SOLICIT, 0x123456, [
        (d.OPT_CLIENTID, d.duid_ll(VM_MAC)), (d.OPT_RAPID_COMMIT, b""),
        (d.OPT_IA_NA, d.encode_ia_na(1, 0, 0, [])),
    ])
    udp = build_udp(VM_LL, d.ALL_SERVERS, d.CLIENT_PORT, d.SERVER_PORT, solicit)
    stack.receive(4, frame(VM_LL, d.ALL_SERVERS, ipv6.NH_UDP, udp), 1.0)
    [(link, eth, pkt)] = out6(stack.drain(1.0)[0])
    assert (link, eth.dst, pkt.src, pkt.dst) == (4, VM_MAC, LL, VM_LL)
    dgram = parse_udp(pkt.payload, pkt.src, pkt.dst)
    assert (dgram.src_port, dgram.dst_port) == (d.SERVER_PORT, d.CLIENT_PORT)
    reply = d.parse_dhcpv6(dgram.payload)
    assert reply.msg_type == d.REPLY
    assert [a.address for x in reply.ia_nas for a in x.addresses] == [L6.lowest_ip]
    # The leased address routes to the VM before it sends from it.
    stack.receive(4, icmp(VM_LL, LL, icmpv6.build_icmpv6(
        VM_LL, LL, icmpv6.ECHO_REQUEST, 0, icmpv6.echo_rest(1, 1))), 1.0)
    stack.drain(1.0)
    assert stack.v6 is not None
    stack.v6.route(ipv6.build_ipv6(GW, L6.lowest_ip, ipv6.NH_UDP, b"12345678"))
    [(link, eth, _pkt)] = out6(stack.drain(1.0)[0])
    assert (link, eth.dst) == (4, VM_MAC)


@pytest.mark.parametrize("dst", [GW, LL, ALIAS])
def test_echo_to_our_addresses_answered_locally(dst: bytes) -> None:
    stack = make_stack()
    req = icmpv6.build_icmpv6(VM_IP, dst, icmpv6.ECHO_REQUEST, 0, icmpv6.echo_rest(7, 9), b"hi")
    stack.receive(1, icmp(VM_IP, dst, req), 1.0)
    [(link, eth, pkt)] = out6(stack.drain(1.0)[0])
    msg = icmpv6.parse_icmpv6(pkt.payload, pkt.src, pkt.dst)
    assert (link, eth.dst, pkt.src, pkt.dst) == (1, VM_MAC, dst, VM_IP)
    assert (msg.type, msg.ident, msg.seq, bytes(msg.body)) == (icmpv6.ECHO_REPLY, 7, 9, b"hi")


def test_dns_aaaa_over_udp_on_the_gateway() -> None:
    stack = make_stack()
    stack.receive(1, ndp(VM_IP, ipv6.ALL_NODES, icmpv6.build_na(
        VM_IP, ipv6.ALL_NODES, VM_IP, router=False, solicited=False, override=True)), 1.0)
    for name, want in (("host.docker.internal", ALIAS), ("gateway.docker.internal", GW),
                       ("vm.internal", VM_IP)):
        query = dns.message.make_query(name, dns.rdatatype.AAAA).to_wire()
        stack.receive(1, frame(VM_IP, GW, ipv6.NH_UDP, build_udp(VM_IP, GW, 5353, 53, query)),
                      1.0)
        [(_link, _eth, pkt)] = out6(stack.drain(1.0)[0])
        assert (pkt.src, pkt.dst) == (GW, VM_IP)
        answer = dns.message.from_wire(bytes(parse_udp(pkt.payload, GW, VM_IP).payload))
        [rrset] = answer.answer
        assert [r.address for r in rrset] == [str(ipaddress.IPv6Address(want))]


def test_spoofed_and_garbage_dropped_and_counted() -> None:
    stack = make_stack()
    req = icmpv6.build_icmpv6(GW, GW, icmpv6.ECHO_REQUEST, 0, icmpv6.echo_rest(1, 1))
    stack.receive(1, icmp(GW, GW, req), 1.0)  # from the gateway's own address
    stack.receive(1, icmp(VM_IP, GW, icmpv6.build_icmpv6(
        VM_IP, GW, icmpv6.ECHO_REQUEST, 0, icmpv6.echo_rest(1, 1))), 1.0)
    stack.receive(2, icmp(VM_IP, GW, icmpv6.build_icmpv6(
        VM_IP, GW, icmpv6.ECHO_REQUEST, 0, icmpv6.echo_rest(1, 1)), mac=VM2_MAC), 1.0)
    assert stack.stats["drop_spoofed_source"] == 2
    assert len(stack.drain(1.0)[0]) == 1  # only VM_MAC's echo
    good = frame(VM_IP, GW, ipv6.NH_ICMPV6, b"\x80\x00\x00\x00")
    for bad in (good[:30], good[:14] + b"\x45" + good[15:], good[:-1] + b"\xff"):
        stack.receive(1, bad, 1.0)
    stack.receive(1, ndp(VM_LL, ipv6.solicited_node(GW), ns(VM_LL, GW)[:-3]), 1.0)
    assert stack.stats["drop_malformed"] == 4 and stack.stats["drop_internal_error"] == 0
    # MLD is ignored politely; transport goes to the data plane's seam.
    stack.receive(1, ndp(VM_LL, bytes.fromhex("ff020000000000000000000000000016"),
                         icmpv6.build_icmpv6(VM_LL, bytes.fromhex(
                             "ff020000000000000000000000000016"), icmpv6.MLD2_REPORT, 0,
                             bytes(4))), 1.0)
    assert stack.v6 is not None and stack.v6.ndp.stats["mld_ignored"] == 1
    stack.receive(1, frame(VM_IP, WORLD, ipv6.NH_UDP, build_udp(VM_IP, WORLD, 1, 2, b"x")), 1.0)
    assert stack.udp.ipv6_flows == 1  # the data plane's UDP NAT took it


def test_fragments_reassembled_before_dispatch() -> None:
    stack = make_stack()
    body = icmpv6.build_icmpv6(VM_IP, GW, icmpv6.ECHO_REQUEST, 0, icmpv6.echo_rest(2, 3),
                               bytes(range(200)) * 4)
    parts = [(0, body[:400], True), (400, body[400:], False)]
    for off, chunk, more in parts:
        payload = ipv6.fragment_header(ipv6.NH_ICMPV6, off, more, 77) + chunk
        stack.receive(1, frame(VM_IP, GW, ipv6.NH_FRAGMENT, payload), 1.0)
    [(_link, _eth, pkt)] = out6(stack.drain(1.0)[0])
    msg = icmpv6.parse_icmpv6(pkt.payload, pkt.src, pkt.dst)
    assert (msg.type, bytes(msg.body)) == (icmpv6.ECHO_REPLY, bytes(range(200)) * 4)


def test_unknown_vm_address_solicited_once_a_second_then_routed() -> None:
    stack = make_stack()
    stack.receive(1, icmp(VM_LL, LL, icmpv6.build_icmpv6(
        VM_LL, LL, icmpv6.ECHO_REQUEST, 0, icmpv6.echo_rest(1, 1))), 1.0)
    stack.drain(1.0)
    assert stack.v6 is not None
    packet = ipv6.build_ipv6(GW, VM2_IP, ipv6.NH_UDP, b"12345678")
    stack.v6.route(packet)
    stack.v6.route(packet)
    [(link, eth, pkt)] = out6(stack.drain(1.5)[0])
    msg = icmpv6.parse_ndp(icmpv6.parse_icmpv6(pkt.payload, pkt.src, pkt.dst))
    assert isinstance(msg, icmpv6.NeighborSolicitation) and msg.target == VM2_IP
    assert (link, pkt.dst) == (1, ipv6.solicited_node(VM2_IP))
    assert stack.stats["drop_no_route"] == 2
    assert stack.drain(2.5)[0] == []
    stack.v6.route(packet)
    assert len(stack.drain(2.5)[0]) == 1  # a second later: asked again
    na = icmpv6.build_na(VM2_IP, LL, VM2_IP, router=False, solicited=True, override=True,
                         options=icmpv6.encode_options(target_lladdr=VM_MAC))
    stack.receive(1, ndp(VM2_IP, LL, na), 3.0)
    stack.v6.route(packet)
    [(link, eth, pkt)] = out6(stack.drain(3.0)[0])
    assert (link, eth.dst, pkt.dst) == (1, VM_MAC, VM2_IP)


def test_stats_cover_ipv6() -> None:
    from pyvpnkit.api.server import stats_of

    stack = make_stack()
    stack.receive(1, icmp(VM_IP, GW, icmpv6.build_icmpv6(
        VM_IP, GW, icmpv6.ECHO_REQUEST, 0, icmpv6.echo_rest(1, 1))), 1.0)
    stack.receive(1, frame(VM_IP, WORLD, ipv6.NH_UDP, build_udp(VM_IP, WORLD, 1, 2, b"x")), 1.0)
    stack.drain(1.0)
    stats = stats_of(stack)
    assert stats["machines"]["ipv6"]["echo_answered"] == 1
    assert stats["machines"]["ndp"] == {"ra_multicast": 1}
    assert stats["flows"]["udp_ipv6"] == 1
    assert stats["vms6"] == {"fd42:7076:6b69:0:5054:ff:fe00:1": VM_MAC.hex(":")}
    assert "ndp" not in stats_of(make_stack(NetConfig(ipv6=None)))["machines"]


def test_no_ipv6_drops_the_ethertype() -> None:
    stack = make_stack(NetConfig(ipv6=None))
    stack.receive(1, icmp(VM_IP, GW, icmpv6.build_icmpv6(
        VM_IP, GW, icmpv6.ECHO_REQUEST, 0, icmpv6.echo_rest(1, 1))), 1.0)
    assert stack.drain(1.0)[0] == [] and stack.stats["drop_ethertype"] == 1
    assert stack.next_deadline() is None


def test_dns_answer_too_big_for_ipv6_is_truncated() -> None:
    stack = make_stack(NetConfig(mtu=1280))
    assert stack.v6 is not None
    stack.receive(1, icmp(VM_IP, GW, icmpv6.build_icmpv6(
        VM_IP, GW, icmpv6.ECHO_REQUEST, 0, icmpv6.echo_rest(1, 1))), 1.0)
    stack.drain(1.0)
    wire = dns.message.make_response(dns.message.make_query("x.test", "TXT")).to_wire()
    stack.v6.dns_reply(VM_IP, 5000, wire + bytes(1240 - len(wire)))
    [(_link, _eth, pkt)] = out6(stack.drain(1.0)[0])
    reply = dns.message.from_wire(bytes(parse_udp(pkt.payload, GW, VM_IP).payload))
    assert reply.flags & dns.flags.TC and len(pkt.header) + len(pkt.payload) <= 1280


@pytest.mark.slow  # hypothesis: more examples than the profile
@settings(max_examples=300, deadline=None)
@given(
    nh=st.sampled_from([ipv6.NH_ICMPV6, ipv6.NH_UDP, ipv6.NH_TCP, ipv6.NH_FRAGMENT,
                        ipv6.NH_HOPOPTS, ipv6.NH_DSTOPTS, 99]),
    dst=st.sampled_from([GW, LL, ALIAS, ipv6.ALL_NODES, d.ALL_SERVERS, VM2_IP, WORLD]),
    src=st.sampled_from([VM_LL, VM_IP, ipv6.UNSPECIFIED, GW]),
    body=st.binary(max_size=200),
    hops=st.sampled_from([1, 64, 255]),
    typ=st.sampled_from([None, 128, 130, 133, 134, 135, 136, 143]),
)
def test_garbage_never_escapes(
    nh: int, dst: bytes, src: bytes, body: bytes, hops: int, typ: int | None
) -> None:
    """Checksummed ICMPv6 with a random body reaches NDP's option parsing; none raises."""
    stack = make_stack()
    if nh == ipv6.NH_ICMPV6 and typ is not None:
        body = icmpv6.build_icmpv6(src, dst, typ, 0, body[:4].ljust(4, b"\0"), body[4:])
    stack.receive(1, frame(src, dst, nh, body, hops=hops), 1.0)
    stack.handle_timer(2.0)
    stack.drain(2.0)
    assert stack.stats["drop_internal_error"] == 0, stack.last_error
