"""UDP NAT state machine: flows, rewriting, expiry, eviction, ICMP errors (fake clock)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvpnkit.core.config import NetConfig, ip4
from pyvpnkit.core.ip.ipfrag import Reassembler
from pyvpnkit.core.nat.udp_nat import UdpClose, UdpNat, UdpOpen, UdpSend
from pyvpnkit.wire.icmp import (
    ADMIN_PROHIBITED,
    DEST_UNREACHABLE,
    FRAG_NEEDED,
    HOST_UNREACHABLE,
    PORT_UNREACHABLE,
    TIME_EXCEEDED,
    parse_icmp,
)
from pyvpnkit.wire.ipv4 import PROTO_ICMP, PROTO_UDP, IPv4Packet, build_ipv4, parse_ipv4
from pyvpnkit.wire.udp import UdpDatagram, build_udp, parse_udp

CFG = NetConfig()
VM = ip4("192.168.65.3")
VM2 = ip4("192.168.65.4")
REMOTE = ip4("93.184.216.34")


def vm_datagram(
    dst: bytes = REMOTE,
    dport: int = 53,
    sport: int = 40000,
    payload: bytes = b"query",
    ttl: int = 64,
    src: bytes = VM,
    ident: int = 0x1234,
) -> tuple[IPv4Packet, UdpDatagram]:
    udp = build_udp(src, dst, sport, dport, payload)
    pkt = parse_ipv4(build_ipv4(src, dst, PROTO_UDP, udp, ttl=ttl, ident=ident))
    return pkt, parse_udp(pkt.payload, pkt.src, pkt.dst)


def send(nat: UdpNat, now: float = 0.0, **kw: object) -> tuple[list[bytes], list[object]]:
    pkt, dgram = vm_datagram(**kw)  # type: ignore[arg-type]
    nat.handle(pkt, dgram, now)
    return nat.drain()


def icmp_of(packet: bytes) -> tuple[IPv4Packet, int, int, bytes, bytes]:
    """(outer IP, type, code, rest, quoted bytes) with all checksums verified."""
    ip = parse_ipv4(packet)
    assert ip.proto == PROTO_ICMP
    msg = parse_icmp(ip.payload)
    return ip, msg.type, msg.code, msg.rest, msg.payload.tobytes()


def test_flow_created_once_and_reused_for_any_destination() -> None:
    nat = UdpNat(CFG)
    packets, effects = send(nat, payload=b"one", ttl=64)
    assert packets == []
    assert effects == [UdpOpen(1, (VM, 40000)), UdpSend(1, "93.184.216.34", 53, b"one", 63)]
    other = ip4("8.8.8.8")
    _, effects = send(nat, 1.0, dst=other, dport=123, payload=b"two", ttl=10)
    assert effects == [UdpSend(1, "8.8.8.8", 123, b"two", 9)]  # full cone: same socket
    _, effects = send(nat, 2.0, sport=40001)
    assert isinstance(effects[0], UdpOpen) and effects[0].flow_id == 2
    _, effects = send(nat, 2.0, src=VM2)
    assert effects[0] == UdpOpen(3, (VM2, 40000))
    assert len(nat) == 3 and nat.flow_of(VM, 40000) == 1


def test_reply_from_remote_goes_to_vm_endpoint() -> None:
    nat = UdpNat(CFG)
    send(nat)
    nat.host_datagram(1, "93.184.216.34", 53, b"answer", 0.5)
    (packet,), effects = nat.drain()
    assert effects == []
    ip = parse_ipv4(packet)
    assert (ip.src, ip.dst, ip.proto) == (REMOTE, VM, PROTO_UDP)
    dgram = parse_udp(ip.payload, ip.src, ip.dst)  # checksum verified
    assert (dgram.src_port, dgram.dst_port, dgram.payload.tobytes()) == (53, 40000, b"answer")


def test_host_alias_is_host_loopback_both_ways() -> None:
    nat = UdpNat(CFG)
    _, effects = send(nat, dst=CFG.host_ip, dport=8080)
    assert effects[1] == UdpSend(1, "127.0.0.1", 8080, b"query", 63)
    nat.host_datagram(1, "127.0.0.1", 8080, b"hi", 0.1)
    (packet,), _ = nat.drain()
    ip = parse_ipv4(packet)
    assert ip.src == CFG.host_ip and ip.dst == VM
    assert parse_udp(ip.payload, ip.src, ip.dst).src_port == 8080
    # Other loopback addresses cannot be shown to the VM.
    nat.host_datagram(1, "127.0.0.53", 53, b"x", 0.2)
    assert nat.drain() == ([], [])


def test_host_loopback_disabled_answers_admin_prohibited() -> None:
    nat = UdpNat(replace(CFG, host_loopback=False))
    pkt, dgram = vm_datagram(dst=CFG.host_ip, dport=8080)
    nat.handle(pkt, dgram, 0.0)
    (packet,), effects = nat.drain()
    assert effects == []
    ip, typ, code, _rest, quote = icmp_of(packet)
    assert (typ, code) == (DEST_UNREACHABLE, ADMIN_PROHIBITED)
    assert ip.src == CFG.host_ip and ip.dst == VM
    assert quote == pkt.header.tobytes() + pkt.payload[:8].tobytes()
    # Datagrams from the host's loopback are not delivered either.
    send(nat)
    nat.host_datagram(1, "127.0.0.1", 53, b"x", 0.1)
    assert nat.drain() == ([], [])


def test_unassigned_subnet_address_and_gateway_refused_broadcast_dropped() -> None:
    nat = UdpNat(CFG)
    packets, effects = send(nat, dst=ip4("192.168.65.77"))
    ip, typ, code, _, _ = icmp_of(packets[0])
    assert (typ, code, ip.src) == (DEST_UNREACHABLE, HOST_UNREACHABLE, CFG.gateway_ip)
    packets, _ = send(nat, dst=CFG.gateway_ip, dport=9999)
    _, typ, code, _, _ = icmp_of(packets[0])
    assert (typ, code) == (DEST_UNREACHABLE, PORT_UNREACHABLE)
    for dst in ("255.255.255.255", "192.168.65.255", "224.0.0.251", "127.0.0.1", "0.1.2.3"):
        assert send(nat, dst=ip4(dst)) == ([], [])
    assert len(nat) == 0


def test_ttl_one_is_answered_by_the_gateway() -> None:
    nat = UdpNat(CFG)
    pkt, dgram = vm_datagram(ttl=1, dport=33434)
    nat.handle(pkt, dgram, 0.0)
    (packet,), effects = nat.drain()
    assert effects == []
    ip, typ, code, _, quote = icmp_of(packet)
    assert (typ, code, ip.src, ip.dst) == (TIME_EXCEEDED, 0, CFG.gateway_ip, VM)
    assert quote == pkt.header.tobytes() + pkt.payload[:8].tobytes()


def test_port_unreachable_quotes_the_original_datagram() -> None:
    nat = UdpNat(CFG)
    pkt, dgram = vm_datagram(dport=9, payload=b"0123456789abcdef", ident=0x4242)
    nat.handle(pkt, dgram, 0.0)
    nat.drain()
    nat.host_error(1, "port_unreachable", "93.184.216.34", "93.184.216.34", 9, 0.1)
    (packet,), _ = nat.drain()
    ip, typ, code, rest, quote = icmp_of(packet)
    assert (typ, code, rest) == (DEST_UNREACHABLE, PORT_UNREACHABLE, bytes(4))
    assert (ip.src, ip.dst) == (REMOTE, VM)
    # The IP header exactly as the VM sent it, plus the UDP header.
    assert quote == pkt.header.tobytes() + pkt.payload[:8].tobytes()
    inner = parse_ipv4(quote + bytes(64), check=True)
    assert inner.ident == 0x4242 and inner.dst == REMOTE


def test_error_for_loopback_destination_reconstructed_with_alias() -> None:
    nat = UdpNat(CFG)
    send(nat, dst=CFG.host_ip, dport=7777)
    # The runtime reports an error for a port the VM never used: reconstructed quote.
    nat.host_error(1, "port_unreachable", "127.0.0.1", "127.0.0.1", 7778, 0.1)
    (packet,), _ = nat.drain()
    ip, typ, code, _, quote = icmp_of(packet)
    assert ip.src == CFG.host_ip
    inner = parse_ipv4(quote)  # a complete 28-byte packet
    assert (inner.src, inner.dst, inner.proto) == (VM, CFG.host_ip, PROTO_UDP)
    assert quote[20:24] == (40000).to_bytes(2, "big") + (7778).to_bytes(2, "big")


def test_ttl_exceeded_comes_from_the_hop() -> None:
    nat = UdpNat(CFG)
    pkt, dgram = vm_datagram(dport=33435, ttl=3)
    nat.handle(pkt, dgram, 0.0)
    _, effects = nat.drain()
    assert effects[-1] == UdpSend(1, "93.184.216.34", 33435, b"query", 2)
    nat.host_error(1, "ttl_exceeded", "10.0.0.1", "93.184.216.34", 33435, 0.1)
    nat.host_error(1, "ttl_exceeded", None, "93.184.216.34", 33435, 0.1)
    first, second = nat.drain()[0]
    ip, typ, code, _, quote = icmp_of(first)
    assert (typ, code, ip.src) == (TIME_EXCEEDED, 0, ip4("10.0.0.1"))
    assert quote == pkt.header.tobytes() + pkt.payload[:8].tobytes()
    assert parse_ipv4(second).src == REMOTE  # no origin: from the destination


def test_frag_needed_carries_mtu_and_unknown_kinds_dropped() -> None:
    nat = UdpNat(CFG)
    send(nat)
    nat.host_error(1, "frag_needed", None, "93.184.216.34", 53, 0.1, mtu=1400)
    nat.host_error(1, "no_such_kind", None, "93.184.216.34", 53, 0.1)
    nat.host_error(99, "port_unreachable", None, "93.184.216.34", 53, 0.1)
    (packet,), _ = nat.drain()
    _, typ, code, rest, _ = icmp_of(packet)
    assert (typ, code, rest) == (DEST_UNREACHABLE, FRAG_NEEDED, b"\x00\x00\x05\x78")


def test_idle_expiry_counts_both_directions() -> None:
    nat = UdpNat(CFG, idle_timeout=60.0)
    send(nat, now=0.0)
    assert nat.next_deadline() == 60.0
    nat.host_datagram(1, "93.184.216.34", 53, b"r", 50.0)  # a reply keeps it alive
    nat.drain()
    assert nat.next_deadline() == 110.0
    nat.handle_timer(109.0)
    assert nat.drain() == ([], [])
    nat.handle_timer(110.0)
    assert nat.drain() == ([], [UdpClose(1)])
    assert len(nat) == 0 and nat.next_deadline() is None
    # Late replies for the closed flow are dropped; a new datagram opens a new flow.
    nat.host_datagram(1, "93.184.216.34", 53, b"late", 111.0)
    assert nat.drain() == ([], [])
    _, effects = send(nat, now=112.0)
    assert effects[0] == UdpOpen(2, (VM, 40000))


def test_lru_eviction_when_full() -> None:
    nat = UdpNat(CFG, max_flows=3)
    for i, port in enumerate((1000, 1001, 1002)):
        send(nat, now=float(i), sport=port)
    send(nat, now=5.0, sport=1000)  # flow 1 becomes most recently used
    _, effects = send(nat, now=6.0, sport=1003)
    assert effects[0] == UdpClose(2)  # the least recently used
    assert effects[1] == UdpOpen(4, (VM, 1003))
    assert len(nat) == 3 and nat.flow_of(VM, 1001) is None
    assert nat.next_deadline() == 2.0 + 60.0  # flow 3 is now the oldest


def test_large_reply_fragmented_to_mtu_and_reassembles() -> None:
    nat = UdpNat(CFG)
    send(nat)
    payload = bytes(range(256)) * 255 + bytes(range(187))  # 65467 bytes
    nat.host_datagram(1, "93.184.216.34", 53, payload, 1.0)
    packets, _ = nat.drain()
    assert len(packets) == 45 and all(len(p) <= 1500 for p in packets)
    r = Reassembler()
    out = [w for p in packets if (w := r.add(parse_ipv4(p), 1.0)) is not None]
    (whole,) = out
    ip = parse_ipv4(whole)
    assert parse_udp(ip.payload, ip.src, ip.dst).payload.tobytes() == payload
    # Oversized payloads cannot exist in IPv4 and are dropped.
    nat.host_datagram(1, "93.184.216.34", 53, bytes(65508), 1.0)
    assert nat.drain() == ([], [])


def test_offloading_link_gets_unsummed_replies_unless_fragmented() -> None:
    """A TAP with a virtio-net header completes UDP checksums: the NAT leaves the field
    0 (the link writes the partial sum); a reply that must be fragmented is summed."""
    asked: list[bytes] = []
    nat = UdpNat(CFG, offloads=lambda ip: asked.append(ip) is None)
    send(nat)
    nat.host_datagram(1, "93.184.216.34", 53, bytes(1472), 1.0)  # exactly the MTU
    (packet,), _ = nat.drain()
    assert asked == [VM] and len(packet) == 1500 and packet[26:28] == b"\x00\x00"
    nat.host_datagram(1, "93.184.216.34", 53, bytes(range(256)) * 6, 1.0)
    packets, _ = nat.drain()
    assert len(packets) == 2
    r = Reassembler()
    (whole,) = [w for p in packets if (w := r.add(parse_ipv4(p), 1.0)) is not None]
    ip = parse_ipv4(whole)
    udp = parse_udp(ip.payload, ip.src, ip.dst)  # verifies the full checksum
    assert ip.payload[6:8] != b"\x00\x00" and udp.payload.tobytes() == bytes(range(256)) * 6


def test_smaller_link_mtu() -> None:
    nat = UdpNat(CFG, mtu=576)
    send(nat)
    nat.host_datagram(1, "93.184.216.34", 53, bytes(2000), 1.0)
    packets, _ = nat.drain()
    assert len(packets) == 4 and max(len(p) for p in packets) <= 576


def test_invalid_inputs_dropped() -> None:
    nat = UdpNat(CFG)
    assert send(nat, sport=0) == ([], [])
    assert send(nat, dport=0) == ([], [])
    send(nat)
    nat.host_datagram(1, "not an address", 53, b"x", 0.0)
    nat.host_datagram(1, "93.184.216.34", 0, b"x", 0.0)
    nat.host_datagram(1, "192.168.65.9", 53, b"x", 0.0)  # our subnet, seen from the host
    nat.host_error(1, "port_unreachable", None, "garbage", 53, 0.0)
    assert nat.drain() == ([], [])


@pytest.mark.slow  # hypothesis: more examples than the profile
@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("vm"), st.integers(1, 5), st.integers(0, 3), st.integers(1, 255)),
            st.tuples(st.just("reply"), st.integers(0, 8), st.text(max_size=16), st.integers()),
            st.tuples(
                st.just("error"),
                st.integers(0, 8),
                st.sampled_from(["port_unreachable", "ttl_exceeded", "frag_needed", "x"]),
                st.one_of(st.none(), st.text(max_size=16), st.just("10.9.8.7")),
            ),
            st.tuples(st.just("tick"), st.floats(0, 100), st.just(0), st.just(0)),
        ),
        max_size=40,
    )
)
def test_random_event_sequences_keep_invariants(events: list[tuple[object, ...]]) -> None:
    nat = UdpNat(CFG, max_flows=4, idle_timeout=10.0)
    now = 0.0
    open_flows: set[int] = set()
    for ev in events:
        kind = ev[0]
        if kind == "vm":
            _, port, dst, ttl = ev
            pkt, dgram = vm_datagram(
                sport=int(port),  # type: ignore[call-overload]
                dst=bytes([10, 0, 0, int(dst)]),  # type: ignore[call-overload]
                ttl=int(ttl),  # type: ignore[call-overload]
            )
            nat.handle(pkt, dgram, now)
        elif kind == "reply":
            _, flow, src, port = ev
            nat.host_datagram(int(flow), str(src), int(port) % 70000, b"r", now)  # type: ignore[call-overload]
        elif kind == "error":
            _, flow, err, origin = ev
            nat.host_error(int(flow), str(err), origin, "10.0.0.1", 53, now)  # type: ignore[arg-type, call-overload]
        else:
            now += float(ev[1])  # type: ignore[arg-type]
            nat.handle_timer(now)
        packets, effects = nat.drain()
        for eff in effects:
            if isinstance(eff, UdpOpen):
                assert eff.flow_id not in open_flows
                open_flows.add(eff.flow_id)
            elif isinstance(eff, UdpClose):
                open_flows.remove(eff.flow_id)
            else:
                assert isinstance(eff, UdpSend) and eff.flow_id in open_flows
        for p in packets:
            ip = parse_ipv4(p)
            assert ip.dst == VM
        assert len(nat) == len(open_flows) <= 4
