"""ICMP echo NAT and ICMP error building (fake clock, byte level)."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from pyvpnkit.core.config import NetConfig, ip4
from pyvpnkit.core.ip.ipfrag import Reassembler
from pyvpnkit.core.nat.icmp_errors import (
    ERROR_KINDS,
    build_error_kind,
    build_icmp_error,
    frag_needed,
    kind_from_icmp,
    may_report,
)
from pyvpnkit.core.nat.icmp_nat import EchoIdents, IcmpClose, IcmpEchoSend, IcmpNat
from pyvpnkit.wire.icmp import (
    ADMIN_PROHIBITED,
    DEST_UNREACHABLE,
    ECHO_REPLY,
    ECHO_REQUEST,
    HOST_UNREACHABLE,
    TIME_EXCEEDED,
    IcmpMessage,
    build_icmp,
    echo_rest,
    parse_icmp,
)
from pyvpnkit.wire.ipv4 import PROTO_ICMP, PROTO_UDP, IPv4Packet, build_ipv4, parse_ipv4
from pyvpnkit.wire.udp import build_udp

CFG = NetConfig()
VM = ip4("192.168.65.3")
REMOTE = ip4("1.1.1.1")


def echo(
    ident: int = 0x77, seq: int = 1, dst: bytes = REMOTE, ttl: int = 64, payload: bytes = b"ping"
) -> tuple[IPv4Packet, IcmpMessage]:
    body = build_icmp(ECHO_REQUEST, 0, echo_rest(ident, seq), payload)
    pkt = parse_ipv4(build_ipv4(VM, dst, PROTO_ICMP, body, ttl=ttl, ident=seq))
    return pkt, parse_icmp(pkt.payload)


def parse_out(packet: bytes) -> tuple[IPv4Packet, IcmpMessage]:
    ip = parse_ipv4(packet)
    assert ip.proto == PROTO_ICMP
    return ip, parse_icmp(ip.payload)  # verifies the checksum


def test_echo_flow_per_vm_ident_and_destination() -> None:
    nat = IcmpNat(CFG)
    pkt, msg = echo(seq=1)
    nat.handle(pkt, msg, 0.0)
    assert nat.drain() == ([], [IcmpEchoSend(1, "1.1.1.1", 0x77, 1, b"ping", 63)])
    pkt, msg = echo(seq=2, ttl=5)
    nat.handle(pkt, msg, 1.0)
    assert nat.drain()[1] == [IcmpEchoSend(1, "1.1.1.1", 0x77, 2, b"ping", 4)]
    pkt, msg = echo(ident=0x78)
    nat.handle(pkt, msg, 1.0)
    pkt, msg = echo(dst=ip4("8.8.8.8"))
    nat.handle(pkt, msg, 1.0)
    assert [e.flow_id for e in nat.drain()[1]] == [2, 3]  # type: ignore[attr-defined]
    assert nat.flow_of(VM, 0x77, REMOTE) == 1 and len(nat) == 3


def test_reply_restores_vm_identifier_and_sequence() -> None:
    nat = IcmpNat(CFG)
    pkt, msg = echo(ident=0xBEEF, seq=9)
    nat.handle(pkt, msg, 0.0)
    nat.drain()
    # A ping socket's reply carries the kernel's identifier; the runtime only gives seq.
    nat.host_echo_reply(1, "1.1.1.1", 9, b"ping", 0.02)
    (packet,), effects = nat.drain()
    assert effects == []
    ip, reply = parse_out(packet)
    assert (ip.src, ip.dst) == (REMOTE, VM)
    assert (reply.type, reply.code, reply.ident, reply.seq) == (ECHO_REPLY, 0, 0xBEEF, 9)
    assert reply.payload.tobytes() == b"ping"


def test_host_alias_ping_goes_to_loopback_and_back() -> None:
    nat = IcmpNat(CFG)
    pkt, msg = echo(dst=CFG.host_ip)
    nat.handle(pkt, msg, 0.0)
    assert nat.drain()[1][0].dst_ip == "127.0.0.1"  # type: ignore[attr-defined]
    nat.host_echo_reply(1, "127.0.0.1", 1, b"ping", 0.0)
    ip, _ = parse_out(nat.drain()[0][0])
    assert ip.src == CFG.host_ip
    off = IcmpNat(replace(CFG, host_loopback=False))
    off.handle(pkt, msg, 0.0)
    (packet,), effects = off.drain()
    assert effects == []
    _, err = parse_out(packet)
    assert (err.type, err.code) == (DEST_UNREACHABLE, ADMIN_PROHIBITED)


def test_gateway_answered_locally_and_bad_destinations() -> None:
    nat = IcmpNat(CFG)
    pkt, msg = echo(dst=CFG.gateway_ip, seq=4)
    nat.handle(pkt, msg, 0.0)
    (packet,), effects = nat.drain()
    assert effects == []
    ip, reply = parse_out(packet)
    assert (ip.src, reply.type, reply.seq) == (CFG.gateway_ip, ECHO_REPLY, 4)
    pkt, msg = echo(dst=ip4("192.168.65.200"))
    nat.handle(pkt, msg, 0.0)
    ip, err = parse_out(nat.drain()[0][0])
    assert (ip.src, err.type, err.code) == (CFG.gateway_ip, DEST_UNREACHABLE, HOST_UNREACHABLE)
    for dst in ("255.255.255.255", "224.0.0.1", "127.0.0.1"):
        pkt, msg = echo(dst=ip4(dst))
        nat.handle(pkt, msg, 0.0)
    assert nat.drain() == ([], [])


def test_non_echo_messages_dropped() -> None:
    nat = IcmpNat(CFG)
    body = build_icmp(ECHO_REPLY, 0, echo_rest(1, 1), b"")
    pkt = parse_ipv4(build_ipv4(VM, REMOTE, PROTO_ICMP, body))
    nat.handle(pkt, parse_icmp(pkt.payload), 0.0)
    assert nat.drain() == ([], []) and nat.stats["drop_type"] == 1


def test_ttl_exceeded_for_traceroute_quotes_the_request() -> None:
    nat = IcmpNat(CFG)
    # Hop 1: TTL 1 expires at the gateway.
    pkt1, msg1 = echo(seq=1, ttl=1)
    nat.handle(pkt1, msg1, 0.0)
    (packet,), effects = nat.drain()
    assert effects == []
    ip, err = parse_out(packet)
    assert (ip.src, err.type, err.code) == (CFG.gateway_ip, TIME_EXCEEDED, 0)
    assert err.payload.tobytes() == pkt1.header.tobytes() + pkt1.payload[:8].tobytes()
    # Hop 2: the host sends with TTL 1 and hears from its router.
    pkt2, msg2 = echo(seq=2, ttl=2)
    nat.handle(pkt2, msg2, 0.1)
    assert nat.drain()[1][0].ttl == 1  # type: ignore[attr-defined]
    nat.host_error(1, "ttl_exceeded", "10.0.0.1", 2, 0.2)
    ip, err = parse_out(nat.drain()[0][0])
    assert (ip.src, ip.dst, err.type) == (ip4("10.0.0.1"), VM, TIME_EXCEEDED)
    quoted = err.payload.tobytes()
    assert quoted == pkt2.header.tobytes() + pkt2.payload[:8].tobytes()
    # The VM's ICMP stack matches it by the quoted id/seq.
    inner = parse_icmp(quoted[20:28], check=False)
    assert (inner.type, inner.ident, inner.seq) == (ECHO_REQUEST, 0x77, 2)


def test_error_for_unknown_seq_is_reconstructed() -> None:
    nat = IcmpNat(CFG)
    pkt, msg = echo(seq=1)
    nat.handle(pkt, msg, 0.0)
    nat.drain()
    nat.host_error(1, "host_unreachable", None, 500, 0.1)
    nat.host_error(42, "host_unreachable", None, 1, 0.1)  # unknown flow
    (packet,), _ = nat.drain()
    ip, err = parse_out(packet)
    assert ip.src == REMOTE and (err.type, err.code) == (DEST_UNREACHABLE, HOST_UNREACHABLE)
    quoted = err.payload.tobytes()
    inner_ip = parse_ipv4(quoted)
    assert (inner_ip.src, inner_ip.dst) == (VM, REMOTE)
    inner = parse_icmp(quoted[20:28])
    assert (inner.type, inner.ident, inner.seq) == (ECHO_REQUEST, 0x77, 500)


def test_idle_expiry_and_lru_eviction() -> None:
    nat = IcmpNat(CFG, idle_timeout=60.0, max_flows=2)
    for i in range(2):
        pkt, msg = echo(ident=i)
        nat.handle(pkt, msg, float(i))
    nat.host_echo_reply(1, "1.1.1.1", 1, b"", 10.0)  # flow 1 freshest now
    nat.drain()
    pkt, msg = echo(ident=5)
    nat.handle(pkt, msg, 11.0)
    assert nat.drain()[1][0] == IcmpClose(2)
    assert nat.next_deadline() == 70.0
    nat.handle_timer(70.0)
    assert nat.drain() == ([], [IcmpClose(1)])
    nat.handle_timer(71.0)
    assert nat.drain() == ([], [IcmpClose(3)])
    assert len(nat) == 0 and nat.next_deadline() is None


def test_big_echo_reply_fragmented() -> None:
    nat = IcmpNat(CFG)
    pkt, msg = echo(payload=bytes(3000))
    nat.handle(pkt, msg, 0.0)
    nat.drain()
    payload = bytes(range(200)) * 50
    nat.host_echo_reply(1, "1.1.1.1", 1, payload, 0.0)
    packets, _ = nat.drain()
    assert len(packets) == 7 and all(len(p) <= 1500 for p in packets)
    r = Reassembler()
    (whole,) = [w for p in packets if (w := r.add(parse_ipv4(p), 0.0)) is not None]
    _, reply = parse_out(whole)
    assert reply.payload.tobytes() == payload


# -- icmp_errors -----------------------------------------------------------------


def udp_original(src: bytes = VM) -> bytes:
    return build_ipv4(src, REMOTE, PROTO_UDP, build_udp(src, REMOTE, 1, 2, bytes(1000)))


def test_error_quote_is_capped_at_576_bytes() -> None:
    err = build_icmp_error(udp_original(), REMOTE, DEST_UNREACHABLE, 3)
    assert err is not None and len(err) == 576
    ip, msg = parse_out(err)
    assert msg.payload.tobytes() == udp_original()[:548]


def test_never_report_errors_fragments_or_broadcast_sources() -> None:
    error_pkt = build_icmp_error(udp_original(), REMOTE, DEST_UNREACHABLE, 3)
    assert error_pkt is not None
    assert not may_report(error_pkt)
    assert build_icmp_error(error_pkt, VM, TIME_EXCEEDED, 0) is None
    later_fragment = build_ipv4(VM, REMOTE, PROTO_UDP, bytes(16), frag_offset=8)
    assert not may_report(later_fragment)
    assert not may_report(udp_original(src=b"\x00\x00\x00\x00"))
    assert not may_report(udp_original(src=b"\xe0\x00\x00\x01"))
    assert not may_report(b"garbage")
    ping = build_ipv4(VM, REMOTE, PROTO_ICMP, build_icmp(ECHO_REQUEST, 0, bytes(4), b""))
    assert may_report(ping)


def test_kinds_roundtrip_and_frag_needed_mtu() -> None:
    for kind, (typ, code) in ERROR_KINDS.items():
        assert kind_from_icmp(typ, code) == kind
        err = build_error_kind(udp_original(), REMOTE, kind)
        assert err is not None
        _, msg = parse_out(err)
        assert (msg.type, msg.code) == (typ, code)
    assert kind_from_icmp(3, 14) == "host_unreachable"
    assert kind_from_icmp(0, 0) is None
    err = frag_needed(udp_original(), REMOTE, 1280)
    assert err is not None
    assert parse_out(err)[1].rest == b"\x00\x00\x05\x00"


@given(st.binary(max_size=120), st.integers(0, 255), st.integers(0, 255))
def test_error_builder_never_raises(original: bytes, typ: int, code: int) -> None:
    err = build_icmp_error(original, REMOTE, typ, code)
    if err is not None:
        ip, _ = parse_out(err)
        assert ip.dst == original[12:16]


def test_echo_idents_map_replies_back_per_destination() -> None:
    idents = EchoIdents(0xFFFF)
    first = idents.ident(1, "10.0.0.5")
    assert first == 0xFFFF and idents.ident(1, "10.0.0.5") == first  # stable per flow
    assert idents.ident(2, "10.0.0.6") == 0  # wraps
    assert idents.flow(first, "10.0.0.5") == 1
    assert idents.flow(first, "10.0.0.9") is None  # someone else's echo
    idents.forget(1)
    assert idents.flow(first, "10.0.0.5") is None and idents.ident(3, "10.0.0.5") == 1
