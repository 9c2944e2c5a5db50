"""Codec round trips, checksums against a reference, and garbage that must only raise ParseError."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyvpnkit.wire import arp, ethernet, icmp, ipv4, tcp, udp
from pyvpnkit.wire.checksum import internet_checksum, verify
from pyvpnkit.wire.errors import ParseError

ip4 = st.binary(min_size=4, max_size=4)
mac = st.binary(min_size=6, max_size=6)
port = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)


def reference_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


@given(st.binary(max_size=2000))
def test_checksum_matches_reference(data: bytes) -> None:
    ours, ref = internet_checksum(data), reference_checksum(data)
    # 0x0000 and 0xFFFF are the same number in one's complement.
    assert ours == ref or {ours, ref} == {0, 0xFFFF}


@given(st.binary(min_size=2, max_size=2000).filter(lambda d: len(d) % 2 == 0))
def test_checksum_verifies(data: bytes) -> None:
    csum = internet_checksum(data)
    assert verify(data + csum.to_bytes(2, "big"))


@given(mac, mac, st.integers(0x0600, 0xFFFF), st.binary(max_size=100))
def test_ethernet_round_trip(dst: bytes, src: bytes, etype: int, payload: bytes) -> None:
    frame = ethernet.parse_ethernet(ethernet.build_ethernet(dst, src, etype, payload))
    assert (frame.dst, frame.src, frame.ethertype, bytes(frame.payload)) == (
        dst,
        src,
        etype,
        payload,
    )


def test_ethernet_rejects_short_and_8023() -> None:
    with pytest.raises(ParseError):
        ethernet.parse_ethernet(b"\x00" * 13)
    with pytest.raises(ParseError):
        ethernet.parse_ethernet(b"\x00" * 12 + b"\x00\x40" + b"\x00" * 64)


def test_mac_text() -> None:
    assert ethernet.mac_from_str("f6:16:36:bc:f9:c6") == bytes.fromhex("f61636bcf9c6")
    assert ethernet.mac_to_str(bytes.fromhex("f61636bcf9c6")) == "f6:16:36:bc:f9:c6"


@given(st.sampled_from([arp.ARP_REQUEST, arp.ARP_REPLY]), mac, ip4, mac, ip4)
def test_arp_round_trip(op: int, sha: bytes, spa: bytes, tha: bytes, tpa: bytes) -> None:
    pkt = arp.parse_arp(arp.build_arp(op, sha, spa, tha, tpa))
    assert pkt == arp.ArpPacket(op, sha, spa, tha, tpa)


def test_arp_rejects_other_protocols() -> None:
    good = arp.build_arp(1, b"\x01" * 6, b"\x02" * 4, b"\x00" * 6, b"\x03" * 4)
    with pytest.raises(ParseError):
        arp.parse_arp(b"\x00\x06" + good[2:])  # IEEE 802 hardware type
    with pytest.raises(ParseError):
        arp.parse_arp(good[:27])
    with pytest.raises(ParseError):
        arp.parse_arp(good[:6] + b"\x00\x09" + good[8:])


@given(
    ip4,
    ip4,
    st.integers(0, 255),
    st.binary(max_size=1500),
    st.integers(0, 255),
    port,
    st.booleans(),
    st.booleans(),
    st.integers(0, 0x1FFF),
)
def test_ipv4_round_trip(src, dst, proto, payload, ttl, ident, df, mf, off8) -> None:
    raw = ipv4.build_ipv4(
        src,
        dst,
        proto,
        payload,
        ttl=ttl,
        ident=ident,
        dont_fragment=df,
        more_fragments=mf,
        frag_offset=off8 * 8,
    )
    pkt = ipv4.parse_ipv4(raw + b"\x00" * 6)  # Ethernet padding is trimmed
    assert (pkt.src, pkt.dst, pkt.proto, pkt.ttl, pkt.ident) == (src, dst, proto, ttl, ident)
    assert (pkt.dont_fragment, pkt.more_fragments, pkt.frag_offset) == (df, mf, off8 * 8)
    assert bytes(pkt.payload) == payload
    assert pkt.is_fragment == (mf or off8 != 0)


def test_ipv4_options_skipped_and_bad_checksum() -> None:
    payload = b"hello"
    hdr = bytearray(ipv4.ipv4_header(b"\x0a\0\0\x01", b"\x0a\0\0\x02", 17, len(payload) + 4))
    hdr[0] = 0x46  # one word of options
    hdr[10:12] = b"\0\0"
    raw = bytes(hdr) + b"\x01\x01\x01\x00" + payload
    raw = raw[:10] + internet_checksum(raw[:24]).to_bytes(2, "big") + raw[12:]
    assert bytes(ipv4.parse_ipv4(raw).payload) == payload
    corrupt = raw[:8] + bytes([raw[8] ^ 1]) + raw[9:]
    with pytest.raises(ParseError, match="checksum"):
        ipv4.parse_ipv4(corrupt)
    with pytest.raises(ParseError):
        ipv4.parse_ipv4(raw[:22])  # total length beyond the buffer
    with pytest.raises(ParseError):
        ipv4.parse_ipv4(b"\x65" + raw[1:])  # IPv6 version nibble


@given(
    st.integers(0, 255),
    st.integers(0, 255),
    st.binary(min_size=4, max_size=4),
    st.binary(max_size=600),
)
def test_icmp_round_trip(typ: int, code: int, rest: bytes, payload: bytes) -> None:
    msg = icmp.parse_icmp(icmp.build_icmp(typ, code, rest, payload))
    assert (msg.type, msg.code, msg.rest, bytes(msg.payload)) == (typ, code, rest, payload)


def test_icmp_echo_fields_and_bad_checksum() -> None:
    raw = icmp.build_icmp(icmp.ECHO_REQUEST, 0, icmp.echo_rest(0x1234, 7), b"ping")
    msg = icmp.parse_icmp(raw)
    assert (msg.ident, msg.seq) == (0x1234, 7)
    with pytest.raises(ParseError):
        icmp.parse_icmp(raw[:-1] + b"X")


@given(ip4, ip4, port, port, st.binary(max_size=1500))
def test_udp_round_trip(src, dst, sport, dport, payload) -> None:
    raw = udp.build_udp(src, dst, sport, dport, payload)
    d = udp.parse_udp(raw, src, dst)
    assert (d.src_port, d.dst_port, bytes(d.payload)) == (sport, dport, payload)
    assert raw[6:8] != b"\x00\x00"


def _reference_udp(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes) -> bytes:
    """RFC 768 word by word: the builders' modular sums must give the same field."""
    length = 8 + len(payload)
    data = src + dst + struct.pack("!HHHHHH", 17, length, sport, dport, length, 0) + payload
    csum = internet_checksum(data + b"\0" * (len(data) & 1))
    return struct.pack("!HHHH", sport, dport, length, csum or 0xFFFF) + payload


ip6 = st.binary(min_size=16, max_size=16)


@given(ip4 | ip6, port, port, st.binary(max_size=1500) | st.binary(min_size=2040, max_size=9000),
       st.data())
def test_udp_checksum_matches_rfc768(src, sport, dport, payload, data) -> None:
    dst = data.draw(st.binary(min_size=len(src), max_size=len(src)))
    assert udp.build_udp(src, dst, sport, dport, payload) == _reference_udp(
        src, dst, sport, dport, payload
    )


@given(ip4, ip4, port, port, st.binary(max_size=1500), st.integers(0, 0xFFFF), st.integers(1, 255))
def test_ipv4_udp_is_ipv4_header_plus_udp(src, dst, sport, dport, payload, ident, ttl) -> None:
    packet = udp.build_ipv4_udp(src, dst, sport, dport, memoryview(payload), ident, ttl)
    udp_part = _reference_udp(src, dst, sport, dport, payload)
    header = ipv4.ipv4_header(
        src, dst, ipv4.PROTO_UDP, len(udp_part), ident=ident, ttl=ttl, dont_fragment=False
    )
    assert packet == header + udp_part
    assert ipv4.parse_ipv4(packet).payload.tobytes() == udp_part


@pytest.mark.parametrize("size", [2047, 2048, 2049, 4096, 4097, 65507])
def test_udp_checksum_of_large_payloads_summed_in_pieces(size: int) -> None:
    payload = bytes((i * 7 + size) & 0xFF for i in range(size))
    src, dst = b"\x0a\0\0\x01", b"\xcb\0\x71\x02"
    assert udp.build_udp(src, dst, 53, 40000, payload) == _reference_udp(
        src, dst, 53, 40000, payload
    )


def test_udp_checksum_summing_to_zero_goes_out_as_all_ones() -> None:
    # The words sum to 0xFFFF: the checksum would be 0, which UDP reads as "none".
    src, dst = b"\0\0\0\0", b"\0\0\0\0"
    payload = (0xFFFF - 17 - 2 * 10 - 1 - 2).to_bytes(2, "big")
    raw = udp.build_udp(src, dst, 1, 2, payload)
    assert raw[6:8] == b"\xff\xff" == _reference_udp(src, dst, 1, 2, payload)[6:8]
    assert udp.parse_udp(raw, src, dst).payload.tobytes() == payload


def test_udp_bad_checksum_and_zero_checksum() -> None:
    src, dst = b"\x0a\0\0\x01", b"\x0a\0\0\x02"
    raw = udp.build_udp(src, dst, 1, 2, b"data")
    with pytest.raises(ParseError, match="checksum"):
        udp.parse_udp(raw[:-1] + b"X", src, dst)
    no_csum = raw[:6] + b"\0\0" + raw[8:-1] + b"X"
    assert bytes(udp.parse_udp(no_csum, src, dst).payload) == b"datX"
    with pytest.raises(ParseError):
        udp.parse_udp(raw[:4] + b"\x00\x40" + raw[6:], src, dst)


options = st.builds(
    tcp.TcpOptions,
    mss=st.none() | st.integers(0, 0xFFFF),
    wscale=st.none() | st.integers(0, 14),
    sack_permitted=st.booleans(),
    timestamps=st.none() | st.tuples(u32, u32),
    sack_blocks=st.lists(st.tuples(u32, u32), max_size=1).map(tuple),  # 2 may not fit in 40 bytes
)


@given(ip4, ip4, port, port, u32, u32, st.integers(0, 255), port, options, st.binary(max_size=1500))
def test_tcp_round_trip(src, dst, sport, dport, seq, ack, flags, window, opts, payload) -> None:
    raw = tcp.build_tcp(
        src, dst, sport, dport, seq, ack, flags, window, tcp.encode_options(opts), payload
    )
    seg = tcp.parse_tcp(raw, src, dst)
    assert (seg.src_port, seg.dst_port, seg.seq, seg.ack, seg.flags, seg.window) == (
        sport,
        dport,
        seq,
        ack,
        flags,
        window,
    )
    assert seg.options == opts
    assert bytes(seg.payload) == payload


def test_tcp_seg_len_and_errors() -> None:
    src, dst = b"\x0a\0\0\x01", b"\x0a\0\0\x02"
    raw = tcp.build_tcp(src, dst, 1, 2, 100, 0, tcp.SYN | tcp.FIN, 10, b"", b"abc")
    assert tcp.parse_tcp(raw, src, dst).seg_len == 5
    with pytest.raises(ParseError, match="checksum"):
        tcp.parse_tcp(raw[:-1] + b"X", src, dst)
    with pytest.raises(ParseError):
        tcp.parse_tcp(raw[:12] + b"\xf0" + raw[13:], src, dst, check=False)  # offset 60 > length
    bad_opt = tcp.build_tcp(src, dst, 1, 2, 0, 0, tcp.SYN, 0, b"\x02\x09\x00\x00")
    with pytest.raises(ParseError):
        tcp.parse_tcp(bad_opt, src, dst)


@given(st.binary(max_size=200))
def test_garbage_only_raises_parse_error(data: bytes) -> None:
    src, dst = b"\x0a\0\0\x01", b"\x0a\0\0\x02"
    for parse in (
        ethernet.parse_ethernet,
        arp.parse_arp,
        ipv4.parse_ipv4,
        icmp.parse_icmp,
        lambda d: udp.parse_udp(d, src, dst),
        lambda d: tcp.parse_tcp(d, src, dst, check=False),
    ):
        try:
            parse(data)
        except ParseError:
            pass


def test_echo_report_reply_and_quoted_error() -> None:
    a, b = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 5])
    reply = ipv4.build_ipv4(b, a, ipv4.PROTO_ICMP,
                            icmp.build_icmp(icmp.ECHO_REPLY, 0, icmp.echo_rest(7, 9), b"hi"))
    got = icmp.parse_echo_report(memoryview(reply))
    assert (got.type, got.ident, got.seq, bytes(got.payload), got.quoted_dst) == (
        icmp.ECHO_REPLY, 7, 9, b"hi", None)
    request = ipv4.build_ipv4(a, b, ipv4.PROTO_ICMP,
                              icmp.build_icmp(icmp.ECHO_REQUEST, 0, icmp.echo_rest(7, 10), b""))
    error = ipv4.build_ipv4(bytes([192, 0, 2, 1]), a, ipv4.PROTO_ICMP,
                            icmp.build_icmp(icmp.TIME_EXCEEDED, 0, bytes(4), request[:28]))
    got = icmp.parse_echo_report(memoryview(error))
    assert (got.type, got.ident, got.seq, got.quoted_dst) == (icmp.TIME_EXCEEDED, 7, 10, b)
    with pytest.raises(ParseError):  # an error that quotes a reply, not our request
        icmp.parse_echo_report(memoryview(error[:28] + reply[:28]))


@given(st.binary(max_size=80))
def test_echo_report_raises_only_parse_error(data: bytes) -> None:
    try:
        icmp.parse_echo_report(memoryview(data))
    except ParseError:
        pass
