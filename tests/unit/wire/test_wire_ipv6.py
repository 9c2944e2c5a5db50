"""IPv6 and ICMPv6/NDP codecs: round trips, extension headers, checksums, garbage."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyvpnkit.wire import icmpv6, ipv6, tcp, udp
from pyvpnkit.wire.checksum import internet_checksum, ones_sum, pseudo_header_sum
from pyvpnkit.wire.errors import ParseError

ip6 = st.binary(min_size=16, max_size=16)
mac = st.binary(min_size=6, max_size=6)
A = bytes.fromhex("fd000000000000000000000000000003")
B = bytes.fromhex("fd000000000000000000000000000001")


def ext(nh: int, body: bytes) -> bytes:
    """An extension header of the 8-byte-unit kind with ``body`` after its two bytes."""
    assert (len(body) + 2) % 8 == 0
    return bytes((nh, (len(body) + 2) // 8 - 1)) + body


@given(
    ip6,
    ip6,
    st.integers(0, 255),
    st.integers(0, 255),
    st.integers(0, 0xFFFFF),
    st.binary(max_size=200),
)
def test_ipv6_round_trip(
    src: bytes, dst: bytes, nh: int, hops: int, flow: int, payload: bytes
) -> None:
    if nh in (0, 43, 44, 51, 60):
        nh = ipv6.NH_UDP
    raw = (
        ipv6.ipv6_header(
            src, dst, nh, len(payload), hop_limit=hops, flow_label=flow, traffic_class=0x2E
        )
        + payload
        + b"pad"
    )
    pkt = ipv6.parse_ipv6(raw)
    assert (pkt.src, pkt.dst, pkt.proto, pkt.hop_limit, pkt.flow_label, pkt.traffic_class) == (
        src,
        dst,
        nh,
        hops,
        flow,
        0x2E,
    )
    assert bytes(pkt.payload) == payload and len(pkt.header) == 40 and pkt.fragment is None


def test_extension_headers_are_walked() -> None:
    body = b"upper layer"
    chain = (
        ext(ipv6.NH_ROUTING, bytes(6))  # hop-by-hop
        + ext(ipv6.NH_DSTOPTS, bytes(14))  # routing, two units
        + ext(ipv6.NH_AH, bytes(6))  # destination options
        + bytes((ipv6.NH_TCP, 1))
        + bytes(10)  # AH: (1 + 2) * 4 = 12 bytes
    )
    raw = ipv6.build_ipv6(A, B, ipv6.NH_HOPOPTS, chain + body)
    pkt = ipv6.parse_ipv6(raw)
    assert pkt.proto == ipv6.NH_TCP
    assert len(pkt.header) == 40 + len(chain)
    assert bytes(pkt.payload) == body


@pytest.mark.parametrize("nh", [ipv6.NH_ESP, ipv6.NH_NONE])
def test_walk_stops_at_esp_and_no_next_header(nh: int) -> None:
    raw = ipv6.build_ipv6(A, B, ipv6.NH_DSTOPTS, ext(nh, bytes(6)) + b"opaque")
    pkt = ipv6.parse_ipv6(raw)
    assert pkt.proto == nh and bytes(pkt.payload) == b"opaque"


def test_hop_by_hop_only_first() -> None:
    raw = ipv6.build_ipv6(A, B, ipv6.NH_DSTOPTS, ext(ipv6.NH_HOPOPTS, bytes(6)) + bytes(8))
    with pytest.raises(ParseError):
        ipv6.parse_ipv6(raw)


def test_fragment_header_stops_the_walk() -> None:
    frag = ipv6.fragment_header(ipv6.NH_UDP, 1448, True, 0xDEADBEEF)
    raw = ipv6.build_ipv6(A, B, ipv6.NH_DSTOPTS, ext(ipv6.NH_FRAGMENT, bytes(6)) + frag + b"x" * 8)
    pkt = ipv6.parse_ipv6(raw)
    assert pkt.proto == ipv6.NH_FRAGMENT and pkt.is_fragment
    f = pkt.fragment
    assert f is not None
    assert (f.next_header, f.offset, f.more, f.ident, f.start, f.link) == (
        ipv6.NH_UDP,
        1448,
        True,
        0xDEADBEEF,
        48,
        40,
    )
    assert bytes(pkt.payload) == b"x" * 8


def test_atomic_fragment_is_walked_through() -> None:
    frag = ipv6.fragment_header(ipv6.NH_UDP, 0, False, 7)
    pkt = ipv6.parse_ipv6(ipv6.build_ipv6(A, B, ipv6.NH_FRAGMENT, frag + b"datagram"))
    assert pkt.proto == ipv6.NH_UDP and bytes(pkt.payload) == b"datagram"
    assert pkt.fragment is not None and pkt.fragment.ident == 7


def test_truncations_raise_parse_error() -> None:
    good = ipv6.build_ipv6(A, B, ipv6.NH_DSTOPTS, ext(ipv6.NH_UDP, bytes(14)))
    for n in range(len(good)):
        with pytest.raises(ParseError):
            ipv6.parse_ipv6(good[:n])
    bad_len = bytearray(good)
    bad_len[41] = 5  # the options header now claims 48 bytes
    with pytest.raises(ParseError):
        ipv6.parse_ipv6(bad_len)
    with pytest.raises(ParseError):
        ipv6.parse_ipv6(b"\x45" + good[1:])


@given(st.binary(max_size=300))
def test_ipv6_garbage_only_parse_error(data: bytes) -> None:
    for raw in (data, b"\x60" + data[1:]):
        try:
            pkt = ipv6.parse_ipv6(raw)
        except ParseError:
            continue
        assert len(pkt.header) + len(pkt.payload) <= len(raw)


@given(st.binary(max_size=120))
def test_ipv6_ext_chain_garbage(chain: bytes) -> None:
    for nh in (0, 43, 44, 51, 60):
        raw = ipv6.build_ipv6(A, B, nh, chain)
        try:
            ipv6.parse_ipv6(raw)
        except ParseError:
            pass


def reference_pseudo_sum(src: bytes, dst: bytes, nh: int, length: int) -> int:
    """RFC 8200 section 8.1, laid out literally."""
    return ones_sum(src + dst + struct.pack("!I3xB", length, nh))


@given(ip6, ip6, st.integers(0, 255), st.integers(0, 0xFFFF))
def test_pseudo_header_sum_is_family_neutral(src: bytes, dst: bytes, nh: int, n: int) -> None:
    assert (
        pseudo_header_sum(src, dst, nh, n) % 0xFFFF
        == reference_pseudo_sum(src, dst, nh, n) % 0xFFFF
    )


@given(ip6, ip6, st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.binary(max_size=100))
def test_udp_over_ipv6(src: bytes, dst: bytes, sp: int, dp: int, payload: bytes) -> None:
    raw = udp.build_udp(src, dst, sp, dp, payload)
    assert internet_checksum(raw, reference_pseudo_sum(src, dst, 17, len(raw))) in (0, 0xFFFF)
    d = udp.parse_udp(raw, src, dst)
    assert (d.src_port, d.dst_port, bytes(d.payload)) == (sp, dp, payload)
    with pytest.raises(ParseError):
        udp.parse_udp(raw, src[:15] + bytes((src[15] ^ 1,)), dst)


def test_tcp_over_ipv6_checksum() -> None:
    seg = tcp.build_tcp(A, B, 1000, 80, 1, 0, tcp.SYN, 65535)
    assert internet_checksum(seg, reference_pseudo_sum(A, B, 6, len(seg))) in (0, 0xFFFF)
    assert tcp.parse_tcp(seg, A, B).flags == tcp.SYN


def test_multicast_mapping_and_eui64() -> None:
    addr = bytes.fromhex("fd000000000000000211223344556677")
    assert ipv6.solicited_node(addr).hex() == "ff0200000000000000000001ff556677"
    assert ipv6.multicast_mac(ipv6.solicited_node(addr)).hex() == "3333ff556677"
    m = bytes.fromhex("525400123456")
    iid = ipv6.interface_id(m)
    assert iid.hex() == "505400fffe123456"
    assert ipv6.mac_from_interface_id(iid) == m
    assert ipv6.mac_from_interface_id(bytes(8)) is None
    assert ipv6.is_link_local(bytes.fromhex("fe80") + bytes(14))
    assert not ipv6.is_link_local(A) and ipv6.is_multicast(ipv6.ALL_NODES)


# -- ICMPv6 ----------------------------------------------------------------------


@given(
    ip6,
    ip6,
    st.integers(0, 255),
    st.integers(0, 255),
    st.binary(min_size=4, max_size=4),
    st.binary(max_size=200),
)
def test_icmpv6_round_trip(
    src: bytes, dst: bytes, t: int, c: int, rest: bytes, body: bytes
) -> None:
    raw = icmpv6.build_icmpv6(src, dst, t, c, rest, body)
    assert internet_checksum(raw, reference_pseudo_sum(src, dst, 58, len(raw))) in (0, 0xFFFF)
    m = icmpv6.parse_icmpv6(raw, src, dst)
    assert (m.type, m.code, m.rest, bytes(m.body)) == (t, c, rest, body)


def test_icmpv6_checksum_covers_addresses() -> None:
    raw = icmpv6.build_icmpv6(A, B, icmpv6.ECHO_REQUEST, 0, icmpv6.echo_rest(1, 2), b"ping")
    m = icmpv6.parse_icmpv6(raw, A, B)
    assert (m.ident, m.seq) == (1, 2)
    with pytest.raises(ParseError):
        icmpv6.parse_icmpv6(raw, B, A[:15] + b"\x04")
    assert icmpv6.parse_icmpv6(raw, B, A[:15] + b"\x04", check=False).type == 128
    with pytest.raises(ParseError):
        icmpv6.parse_icmpv6(raw[:7], A, B)


def test_error_messages() -> None:
    invoking = ipv6.build_ipv6(A, B, ipv6.NH_UDP, bytes(3000))
    quote = icmpv6.error_quote(invoking)
    ptb = icmpv6.build_icmpv6(B, A, icmpv6.PACKET_TOO_BIG, 0, struct.pack("!I", 1400), quote)
    assert len(ptb) + 40 == ipv6.MIN_MTU
    m = icmpv6.parse_icmpv6(ptb, B, A)
    assert m.u32 == 1400 and bytes(m.body[:40]) == invoking[:40]


def test_router_advertisement_round_trip() -> None:
    prefix = icmpv6.PrefixInfo(bytes.fromhex("fd00") + bytes(14), 64, True, True, 86400, 14400)
    opts = icmpv6.encode_options(
        source_lladdr=b"\xf6\x16\x36\xbc\xf9\xc6",
        prefixes=[prefix],
        mtu=1500,
        rdnss=(600, [B]),
        dnssl=(600, ["localdomain", "example.internal"]),
    )
    assert len(opts) % 8 == 0
    raw = icmpv6.build_ra(
        B, ipv6.ALL_NODES, managed=True, other=True, router_lifetime=1800, options=opts
    )
    ra = icmpv6.parse_ndp(icmpv6.parse_icmpv6(raw, B, ipv6.ALL_NODES))
    assert isinstance(ra, icmpv6.RouterAdvertisement)
    assert (ra.hop_limit, ra.managed, ra.other, ra.router_lifetime) == (64, True, True, 1800)
    o = ra.options
    assert o.source_lladdr == b"\xf6\x16\x36\xbc\xf9\xc6" and o.prefixes == [prefix]
    assert o.mtu == 1500 and o.rdnss == (600, (B,))
    assert o.dnssl == (600, ("localdomain", "example.internal"))


@given(ip6, mac, st.booleans(), st.booleans(), st.booleans())
def test_neighbor_messages_round_trip(target: bytes, m: bytes, r: bool, s: bool, o: bool) -> None:
    ns = icmpv6.parse_ndp(
        icmpv6.parse_icmpv6(
            icmpv6.build_ns(A, B, target, icmpv6.encode_options(source_lladdr=m)), A, B
        )
    )
    assert isinstance(ns, icmpv6.NeighborSolicitation)
    assert (ns.target, ns.options.source_lladdr) == (target, m)
    na = icmpv6.parse_ndp(
        icmpv6.parse_icmpv6(
            icmpv6.build_na(
                B,
                A,
                target,
                router=r,
                solicited=s,
                override=o,
                options=icmpv6.encode_options(target_lladdr=m),
            ),
            B,
            A,
        )
    )
    assert isinstance(na, icmpv6.NeighborAdvertisement)
    assert (na.target, na.router, na.solicited, na.override, na.options.target_lladdr) == (
        target,
        r,
        s,
        o,
        m,
    )
    rs = icmpv6.parse_ndp(
        icmpv6.parse_icmpv6(icmpv6.build_rs(A, ipv6.ALL_ROUTERS), A, ipv6.ALL_ROUTERS)
    )
    assert isinstance(rs, icmpv6.RouterSolicitation) and rs.options.source_lladdr is None


def test_ndp_rejects_zero_length_option_and_bad_code() -> None:
    raw = icmpv6.build_ns(A, B, B, b"\x01\x00" + bytes(6))
    with pytest.raises(ParseError):
        icmpv6.parse_ndp(icmpv6.parse_icmpv6(raw, A, B))
    raw = icmpv6.build_icmpv6(A, B, icmpv6.ROUTER_SOLICITATION, 1, bytes(4))
    with pytest.raises(ParseError):
        icmpv6.parse_ndp(icmpv6.parse_icmpv6(raw, A, B))
    echo = icmpv6.build_icmpv6(A, B, icmpv6.ECHO_REQUEST, 0, bytes(4))
    assert icmpv6.parse_ndp(icmpv6.parse_icmpv6(echo, A, B)) is None


@given(
    st.sampled_from(sorted(icmpv6.NDP_TYPES)),
    st.binary(min_size=4, max_size=4),
    st.binary(max_size=200),
)
def test_ndp_garbage_only_parse_error(t: int, rest: bytes, body: bytes) -> None:
    msg = icmpv6.parse_icmpv6(icmpv6.build_icmpv6(A, B, t, 0, rest, body), A, B)
    try:
        icmpv6.parse_ndp(msg)
    except ParseError:
        pass


@given(st.binary(max_size=120))
def test_ndp_option_garbage(data: bytes) -> None:
    for kind in (1, 3, 5, 25, 31):
        try:
            icmpv6.parse_options(memoryview(bytes((kind,)) + data))
        except ParseError:
            pass
