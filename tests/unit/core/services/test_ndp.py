"""NDP responder: bytes in, packets out, a fake clock and an injected rng."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyvpnkit.core.config import NetConfig
from pyvpnkit.core.ip.ipv6_layout import Ipv6Layout
from pyvpnkit.core.services.ndp import NdpResponder, NdpSend
from pyvpnkit.wire import icmpv6, ipv6
from pyvpnkit.wire.errors import ParseError

VM_MAC = bytes.fromhex("525400000001")
VM2_MAC = bytes.fromhex("525400000002")
LAYOUT = Ipv6Layout()
GW, ALIAS, LL = LAYOUT.gateway_ip, LAYOUT.host_ip, LAYOUT.link_local_ip
VM_LL = ipaddress.IPv6Address("fe80::5054:ff:fe00:1").packed
VM_IP = ipaddress.IPv6Address("fd42:7076:6b69:0:5054:ff:fe00:1").packed
CONFIG = NetConfig(search_domains=("example.internal",))


def responder(config: NetConfig = CONFIG, rng: float = 0.5) -> NdpResponder:
    return NdpResponder(config, LAYOUT, 0.0, rng=lambda: rng)


def send(
    ndp: NdpResponder,
    src: bytes,
    dst: bytes,
    msg: bytes,
    *,
    mac: bytes = VM_MAC,
    hops: int = 255,
    now: float = 1.0,
) -> list[NdpSend]:
    pkt = ipv6.parse_ipv6(ipv6.build_ipv6(src, dst, ipv6.NH_ICMPV6, msg, hop_limit=hops))
    ndp.handle(mac, pkt, icmpv6.parse_icmpv6(pkt.payload, src, dst), now)
    return ndp.drain()


def decode(out: NdpSend) -> tuple[ipv6.IPv6Packet, icmpv6.NdpMessage]:
    pkt = ipv6.parse_ipv6(out.packet)
    assert pkt.hop_limit == 255
    msg = icmpv6.parse_ndp(icmpv6.parse_icmpv6(pkt.payload, pkt.src, pkt.dst))
    assert msg is not None
    return pkt, msg


def ns(src: bytes, target: bytes, lladdr: bytes | None = VM_MAC) -> bytes:
    opts = icmpv6.encode_options(source_lladdr=lladdr) if lladdr else b""
    return icmpv6.build_ns(src, ipv6.solicited_node(target), target, opts)


@pytest.mark.parametrize("target", [GW, LL, ALIAS])
def test_answers_ns_for_our_addresses(target: bytes) -> None:
    ndp = responder()
    [out] = send(ndp, VM_LL, ipv6.solicited_node(target), ns(VM_LL, target))
    pkt, na = decode(out)
    assert out.dst_mac == VM_MAC and pkt.src == target and pkt.dst == VM_LL
    assert isinstance(na, icmpv6.NeighborAdvertisement)
    assert (na.target, na.router, na.solicited, na.override) == (target, True, True, True)
    assert na.options.target_lladdr == CONFIG.gateway_mac
    assert ndp.neighbors.lookup(VM_LL) == VM_MAC


def test_alias_not_ours_without_host_loopback() -> None:
    ndp = responder(NetConfig(host_loopback=False))
    assert send(ndp, VM_LL, ipv6.solicited_node(ALIAS), ns(VM_LL, ALIAS)) == []


def test_never_answers_for_a_vm_address() -> None:
    ndp = responder()
    send(
        ndp,
        VM_IP,
        ipv6.ALL_NODES,
        icmpv6.build_na(
            VM_IP,
            ipv6.ALL_NODES,
            VM_IP,
            override=True,
            options=icmpv6.encode_options(target_lladdr=VM_MAC),
        ),
    )
    assert ndp.neighbors.lookup(VM_IP) == VM_MAC
    other_ll = ipaddress.IPv6Address("fe80::2").packed
    assert (
        send(ndp, other_ll, ipv6.solicited_node(VM_IP), ns(other_ll, VM_IP, VM2_MAC), mac=VM2_MAC)
        == []
    )
    assert ndp.stats["ns_not_ours"] == 1


def test_dad_probe_for_our_address_is_defended_to_all_nodes() -> None:
    ndp = responder()
    [out] = send(ndp, ipv6.UNSPECIFIED, ipv6.solicited_node(GW), ns(ipv6.UNSPECIFIED, GW, None))
    pkt, na = decode(out)
    assert out.dst_mac == bytes.fromhex("333300000001") and pkt.dst == ipv6.ALL_NODES
    assert isinstance(na, icmpv6.NeighborAdvertisement)
    assert na.target == GW and not na.solicited and na.override
    assert ndp.stats["dad_defended"] == 1


def test_dad_probe_for_other_address_is_silent_and_claims_only_free_addresses() -> None:
    ndp = responder()
    probe = ns(ipv6.UNSPECIFIED, VM_IP, None)
    assert send(ndp, ipv6.UNSPECIFIED, ipv6.solicited_node(VM_IP), probe) == []
    assert ndp.neighbors.lookup(VM_IP) == VM_MAC
    # A second VM probing the same address does not take it over.
    assert send(ndp, ipv6.UNSPECIFIED, ipv6.solicited_node(VM_IP), probe, mac=VM2_MAC) == []
    assert ndp.neighbors.lookup(VM_IP) == VM_MAC
    ndp.neighbors.forget_mac(VM_MAC)
    assert ndp.neighbors.lookup(VM_IP) is None


def test_dad_probe_with_lladdr_and_low_hop_limit_rejected() -> None:
    ndp = responder()
    with pytest.raises(ParseError):
        send(ndp, ipv6.UNSPECIFIED, ipv6.solicited_node(GW), ns(ipv6.UNSPECIFIED, GW))
    with pytest.raises(ParseError):
        send(ndp, VM_LL, ipv6.solicited_node(GW), ns(VM_LL, GW), hops=64)
    with pytest.raises(ParseError):
        send(ndp, VM_LL, ipv6.ALL_NODES, ns(VM_LL, ipv6.ALL_NODES))


def test_na_claiming_our_address_is_ignored() -> None:
    ndp = responder()
    send(ndp, VM_LL, ipv6.ALL_NODES, icmpv6.build_na(VM_LL, ipv6.ALL_NODES, GW, override=True))
    assert ndp.neighbors.lookup(GW) is None and ndp.stats["na_conflict"] == 1
    assert not ndp.neighbors.learn(LL, VM_MAC)


def test_rs_gets_unicast_ra_with_everything() -> None:
    ndp = responder()
    rs = icmpv6.build_rs(VM_LL, ipv6.ALL_ROUTERS, icmpv6.encode_options(source_lladdr=VM_MAC))
    [out] = send(ndp, VM_LL, ipv6.ALL_ROUTERS, rs)
    pkt, ra = decode(out)
    assert out.dst_mac == VM_MAC and pkt.src == LL and pkt.dst == VM_LL
    assert isinstance(ra, icmpv6.RouterAdvertisement)
    assert ra.managed and ra.other and ra.router_lifetime == 1800
    [prefix] = ra.options.prefixes
    assert (prefix.prefix, prefix.length, prefix.on_link, prefix.autonomous) == (
        LAYOUT.prefix,
        64,
        True,
        True,
    )
    assert ra.options.mtu == 1500 and ra.options.source_lladdr == CONFIG.gateway_mac
    assert ra.options.rdnss == (1800, (GW,))
    assert ra.options.dnssl == (1800, ("example.internal",))


def test_ra_flags_follow_dhcpv6_and_dns() -> None:
    layout = Ipv6Layout(dhcpv6=False)
    ndp = NdpResponder(NetConfig(serve_dns=False), layout, 0.0, rng=lambda: 0.0)
    ndp.handle_timer(0.0)
    [out] = ndp.drain()
    _, ra = decode(out)
    assert isinstance(ra, icmpv6.RouterAdvertisement)
    assert not ra.managed and not ra.other
    assert ra.options.rdnss is None and ra.options.dnssl is None


def test_rs_from_unspecified_gets_rate_limited_multicast() -> None:
    ndp = responder()
    rs = icmpv6.build_rs(ipv6.UNSPECIFIED, ipv6.ALL_ROUTERS)
    [out] = send(ndp, ipv6.UNSPECIFIED, ipv6.ALL_ROUTERS, rs, now=10.0)
    assert decode(out)[0].dst == ipv6.ALL_NODES
    assert send(ndp, ipv6.UNSPECIFIED, ipv6.ALL_ROUTERS, rs, now=11.0) == []
    assert ndp.next_deadline() == 13.0
    ndp.handle_timer(13.0)
    assert len(ndp.drain()) == 1


def test_periodic_ras_fast_at_first_then_jittered() -> None:
    ndp = responder(rng=0.5)
    times = []
    now = 0.0
    for _ in range(5):
        now = ndp.next_deadline()
        ndp.handle_timer(now - 0.001)
        assert ndp.drain() == []
        ndp.handle_timer(now)
        [out] = ndp.drain()
        assert out.dst_mac == bytes.fromhex("333300000001")
        times.append(now)
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    # The first three intervals capped at 16 s (as radvd does), then uniform in [200, 600].
    assert times[0] == 0.0 and gaps == [16.0, 16.0, 16.0, 400.0]


def test_mld_ignored_and_counted() -> None:
    ndp = responder()
    report = icmpv6.build_icmpv6(
        VM_LL,
        bytes.fromhex("ff020000000000000000000000000016"),
        icmpv6.MLD2_REPORT,
        0,
        bytes(4),
        bytes(20),
    )
    assert send(ndp, VM_LL, bytes.fromhex("ff020000000000000000000000000016"), report, hops=1) == []
    assert ndp.stats["mld_ignored"] == 1


def test_vm_ra_ignored_and_non_ndp_rejected() -> None:
    ndp = responder()
    assert send(ndp, VM_LL, ipv6.ALL_NODES, icmpv6.build_ra(VM_LL, ipv6.ALL_NODES)) == []
    assert ndp.stats["ra_from_vm_ignored"] == 1
    with pytest.raises(ParseError):
        send(ndp, VM_LL, GW, icmpv6.build_icmpv6(VM_LL, GW, icmpv6.ECHO_REQUEST, 0, bytes(4)))


@given(
    st.sampled_from(sorted(icmpv6.NDP_TYPES | icmpv6.MLD_TYPES)),
    st.sampled_from([VM_LL, ipv6.UNSPECIFIED]),
    st.binary(min_size=4, max_size=4),
    st.binary(max_size=120),
)
def test_garbage_only_parse_error(t: int, src: bytes, rest: bytes, body: bytes) -> None:
    ndp = responder()
    try:
        send(ndp, src, ipv6.ALL_NODES, icmpv6.build_icmpv6(src, ipv6.ALL_NODES, t, 0, rest, body))
    except ParseError:
        pass


def test_neighbor_table_is_bounded_per_mac_and_overall() -> None:
    from pyvpnkit.core.services.ndp import MAX_ADDRESSES_PER_MAC, MAX_NEIGHBORS, NeighborTable

    table = NeighborTable(frozenset())
    prefix = ipaddress.IPv6Address("fd42:7076:6b69::").packed[:8]
    mac = bytes.fromhex("020000000001")
    addrs = [prefix + i.to_bytes(8, "big") for i in range(1, 101)]
    for a in addrs:
        assert table.learn(a, mac)
    assert table.addresses_of(mac) == addrs[-MAX_ADDRESSES_PER_MAC:]  # the newest kept
    for i in range(MAX_NEIGHBORS + 50):  # many MACs, one address each
        table.learn(prefix + (1000 + i).to_bytes(8, "big"), i.to_bytes(6, "big"))
    assert len(table.items()) == MAX_NEIGHBORS
