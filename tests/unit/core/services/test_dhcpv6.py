"""DHCPv6 codec and server: bytes in, replies out, a fake clock."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyvpnkit.core.config import NetConfig
from pyvpnkit.core.ip.ipv6_layout import Ipv6Layout, ipv6_layout
from pyvpnkit.core.services.dhcpv6 import Dhcpv6Server, client_key
from pyvpnkit.core.switch.ippool import AddressPool
from pyvpnkit.errors import UserError
from pyvpnkit.wire import dhcpv6 as d
from pyvpnkit.wire.dhcp import decode_domain_search, encode_names
from pyvpnkit.wire.errors import ParseError

MAC = bytes.fromhex("525400000001")
MAC2 = bytes.fromhex("525400000002")
LL = ipaddress.IPv6Address("fe80::5054:ff:fe00:1").packed
LL2 = ipaddress.IPv6Address("fe80::5054:ff:fe00:2").packed
LAYOUT = Ipv6Layout()
FIRST = LAYOUT.lowest_ip
SECOND = FIRST[:15] + bytes((FIRST[15] + 1,))
DUID = d.duid_ll(MAC)
DUID_UUID = struct.pack("!H", d.DUID_UUID) + bytes(range(16))


def server(config: NetConfig | None = None, highest: bytes | None = None) -> Dhcpv6Server:
    pool = AddressPool(LAYOUT.lowest_ip, highest or LAYOUT.highest_ip)
    return Dhcpv6Server(
        config or NetConfig(search_domains=("a.internal", "b.internal")), LAYOUT, pool
    )


def ask(
    srv: Dhcpv6Server,
    mtype: int,
    *options: tuple[int, bytes],
    mac: bytes = MAC,
    src: bytes = LL,
    now: float = 0.0,
    txid: int = 0xABCDEF,
) -> d.Dhcpv6Message | None:
    reply = srv.handle(mac, src, d.build_dhcpv6(mtype, txid, options), now)
    if reply is None:
        return None
    assert (reply.src_ip, reply.dst_ip, reply.dst_mac) == (LAYOUT.link_local_ip, src, mac)
    msg = d.parse_dhcpv6(reply.payload)
    assert msg.transaction_id == txid
    return msg


def ia(iaid: int = 1, *addrs: bytes) -> tuple[int, bytes]:
    return d.OPT_IA_NA, d.encode_ia_na(iaid, 0, 0, [d.IaAddress(a, 0, 0) for a in addrs])


def addresses(msg: d.Dhcpv6Message) -> list[bytes]:
    return [a.address for x in msg.ia_nas for a in x.addresses if a.valid_lifetime]


def status(msg: d.Dhcpv6Message) -> int | None:
    v = msg.first(d.OPT_STATUS_CODE)
    return None if v is None else d.parse_status(v)[0]


# -- codec -------------------------------------------------------------------------


@given(
    st.integers(1, 11),
    st.integers(0, 0xFFFFFF),
    st.lists(st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=40)), max_size=6),
)
def test_message_round_trip(mtype: int, txid: int, opts: list[tuple[int, bytes]]) -> None:
    msg = d.parse_dhcpv6(d.build_dhcpv6(mtype, txid, opts))
    assert (msg.msg_type, msg.transaction_id, msg.options) == (mtype, txid, opts)


@given(
    st.integers(0, 0xFFFFFFFF),
    st.integers(0, 0xFFFFFFFF),
    st.lists(st.binary(min_size=16, max_size=16), max_size=3),
)
def test_ia_na_round_trip(iaid: int, t: int, addrs: list[bytes]) -> None:
    given_ = [d.IaAddress(a, t, t) for a in addrs]
    parsed = d.parse_ia_na(d.encode_ia_na(iaid, t, t, given_, status=(2, "none")))
    assert (parsed.iaid, parsed.t1, parsed.addresses, parsed.status) == (
        iaid,
        t,
        given_,
        (2, "none"),
    )


def test_duids() -> None:
    assert d.parse_duid(DUID) == d.Duid(d.DUID_LL, MAC)
    llt = struct.pack("!HHI", d.DUID_LLT, 1, 12345) + MAC
    assert d.parse_duid(llt).mac == MAC
    en = struct.pack("!HI", d.DUID_EN, 311) + b"id"
    assert d.parse_duid(en) == d.Duid(d.DUID_EN, None, enterprise=311)
    assert d.parse_duid(DUID_UUID).uuid == bytes(range(16))
    assert d.parse_duid(struct.pack("!HH", d.DUID_LL, 6) + MAC).mac is None  # not Ethernet
    for bad in (b"\x00", struct.pack("!H", d.DUID_LLT) + b"\x00", DUID_UUID[:-1]):
        with pytest.raises(ParseError):
            d.parse_duid(bad)


def test_options_accessors() -> None:
    msg = d.parse_dhcpv6(
        d.build_dhcpv6(
            d.SOLICIT,
            1,
            [
                (d.OPT_ORO, struct.pack("!HH", 23, 24)),
                (d.OPT_ELAPSED_TIME, b"\x00\x10"),
                (d.OPT_RAPID_COMMIT, b""),
                (d.OPT_CLIENTID, DUID),
            ],
        )
    )
    assert msg.requested_options == (23, 24) and msg.elapsed_time == 16
    assert msg.rapid_commit and msg.client_id == DUID and msg.server_id is None
    assert d.decode_dns_servers(bytes(32)) == [bytes(16)] * 2
    with pytest.raises(ParseError):
        d.decode_dns_servers(bytes(17))


@given(st.binary(max_size=200))
def test_garbage_only_parse_error(data: bytes) -> None:
    try:
        msg = d.parse_dhcpv6(data)
        assert len(msg.ia_nas) >= 0 and msg.elapsed_time != -1 and msg.requested_options != 1
        for _, v in msg.options:
            d.parse_duid(v)
    except ParseError:
        pass


@given(st.binary(max_size=200))
def test_server_never_raises(data: bytes) -> None:
    srv = server()
    for prefix in (b"", b"\x01\x00\x00\x01", b"\x03\x00\x00\x01"):
        srv.handle(MAC, LL, prefix + data, 0.0)


# -- server ------------------------------------------------------------------------


def test_information_request_gives_dns_and_domains() -> None:
    reply = ask(server(), d.INFORMATION_REQUEST, (d.OPT_CLIENTID, DUID))
    assert reply is not None and reply.msg_type == d.REPLY
    assert reply.client_id == DUID and reply.server_id == d.duid_ll(NetConfig().gateway_mac)
    assert reply.first(d.OPT_DNS_SERVERS) == LAYOUT.gateway_ip
    dl = reply.first(d.OPT_DOMAIN_LIST)
    assert dl is not None and decode_domain_search(dl) == ["a.internal", "b.internal"]
    assert dl == encode_names(["a.internal", "b.internal"])  # uncompressed, as RFC 8415 says
    assert not reply.ia_nas


def test_no_dns_options_without_dns() -> None:
    reply = ask(server(NetConfig(serve_dns=False)), d.INFORMATION_REQUEST)
    assert reply is not None and reply.first(d.OPT_DNS_SERVERS) is None


def test_solicit_advertise_request_reply() -> None:
    srv = server()
    adv = ask(srv, d.SOLICIT, (d.OPT_CLIENTID, DUID), ia(7))
    assert adv is not None and adv.msg_type == d.ADVERTISE
    assert adv.first(d.OPT_PREFERENCE) == b"\xff" and addresses(adv) == [FIRST]
    [x] = adv.ia_nas
    assert (x.iaid, x.t1, x.t2) == (7, 7200, 11520)
    assert (x.addresses[0].preferred_lifetime, x.addresses[0].valid_lifetime) == (14400, 86400)
    sid = adv.server_id
    assert sid is not None
    rep = ask(srv, d.REQUEST, (d.OPT_CLIENTID, DUID), (d.OPT_SERVERID, sid), ia(7, FIRST))
    assert rep is not None and rep.msg_type == d.REPLY and addresses(rep) == [FIRST]
    assert srv.pool.owner(FIRST) == "mac:52:54:00:00:00:01"


def test_rapid_commit() -> None:
    rep = ask(server(), d.SOLICIT, (d.OPT_CLIENTID, DUID), (d.OPT_RAPID_COMMIT, b""), ia())
    assert rep is not None and rep.msg_type == d.REPLY and rep.rapid_commit
    assert addresses(rep) == [FIRST]


def test_request_for_another_server_or_without_server_id_is_dropped() -> None:
    srv = server()
    assert (
        ask(srv, d.REQUEST, (d.OPT_CLIENTID, DUID), (d.OPT_SERVERID, b"\x00\x03xx"), ia()) is None
    )
    assert ask(srv, d.REQUEST, (d.OPT_CLIENTID, DUID), ia()) is None
    assert ask(srv, d.SOLICIT, ia()) is None  # no client id
    assert srv.stats["dhcpv6_malformed"] == 2


def test_stable_by_mac_across_duid_types_and_reconnects() -> None:
    srv = server()
    a = ask(srv, d.SOLICIT, (d.OPT_CLIENTID, DUID), (d.OPT_RAPID_COMMIT, b""), ia())
    b = ask(
        srv,
        d.SOLICIT,
        (d.OPT_CLIENTID, DUID_UUID),
        (d.OPT_RAPID_COMMIT, b""),
        ia(),
        mac=MAC2,
        src=LL2,
    )
    assert a is not None and b is not None
    assert addresses(a) == [FIRST] and addresses(b) == [SECOND]
    # The VM goes away and comes back with a new DUID-UUID but the same MAC.
    srv.pool.release("mac:52:54:00:00:00:01")
    again = ask(
        srv,
        d.SOLICIT,
        (d.OPT_CLIENTID, DUID_UUID[:-1] + b"\x99"),
        (d.OPT_RAPID_COMMIT, b""),
        ia(),
        now=100.0,
    )
    assert again is not None and addresses(again) == [FIRST]


def test_client_key_sources() -> None:
    assert client_key(DUID, LL2, MAC2) == "mac:52:54:00:00:00:01"  # the DUID's MAC first
    assert client_key(DUID_UUID, LL2, MAC) == "mac:52:54:00:00:00:01"  # then the frame's
    assert client_key(DUID_UUID, LL, b"") == "mac:52:54:00:00:00:01"  # then EUI-64
    assert client_key(DUID_UUID, bytes(16), b"") == "duid:" + DUID_UUID.hex()


def test_renew_rebind_keep_the_address_and_zero_stale_ones() -> None:
    srv = server()
    ask(srv, d.SOLICIT, (d.OPT_CLIENTID, DUID), (d.OPT_RAPID_COMMIT, b""), ia())
    sid = (d.OPT_SERVERID, srv.duid)
    rep = ask(srv, d.RENEW, (d.OPT_CLIENTID, DUID), sid, ia(1, FIRST), now=5000.0)
    assert rep is not None and addresses(rep) == [FIRST]
    stale = LAYOUT.highest_ip
    rep = ask(srv, d.REBIND, (d.OPT_CLIENTID, DUID), ia(1, stale, FIRST), now=6000.0)
    assert rep is not None
    [x] = rep.ia_nas
    assert {(a.address, a.valid_lifetime) for a in x.addresses} == {(FIRST, 86400), (stale, 0)}


def test_confirm() -> None:
    srv = server()
    ok = ask(srv, d.CONFIRM, (d.OPT_CLIENTID, DUID), ia(1, FIRST))
    off = ask(srv, d.CONFIRM, (d.OPT_CLIENTID, DUID), ia(1, bytes.fromhex("20010db8") + bytes(12)))
    assert ok is not None and status(ok) == d.STATUS_SUCCESS
    assert off is not None and status(off) == d.STATUS_NOT_ON_LINK
    assert ask(srv, d.CONFIRM, (d.OPT_CLIENTID, DUID), ia(1)) is None


def test_release_and_decline() -> None:
    srv = server()
    sid = (d.OPT_SERVERID, srv.duid)
    ask(srv, d.SOLICIT, (d.OPT_CLIENTID, DUID), (d.OPT_RAPID_COMMIT, b""), ia())
    rep = ask(srv, d.RELEASE, (d.OPT_CLIENTID, DUID), sid, ia(1, FIRST))
    assert rep is not None and status(rep) == d.STATUS_SUCCESS and not rep.ia_nas
    assert srv.pool.owner(FIRST) is None
    # Releasing what it does not hold gets NoBinding in the IA.
    rep = ask(srv, d.RELEASE, (d.OPT_CLIENTID, DUID), sid, ia(1, SECOND))
    assert rep is not None and rep.ia_nas[0].status == (
        d.STATUS_NO_BINDING,
        "no binding for this address",
    )
    # Decline blocks the address for an hour; the client gets another.
    ask(srv, d.SOLICIT, (d.OPT_CLIENTID, DUID), (d.OPT_RAPID_COMMIT, b""), ia())
    ask(srv, d.DECLINE, (d.OPT_CLIENTID, DUID), sid, ia(1, FIRST), now=10.0)
    assert srv.pool.is_blocked(FIRST)
    rep = ask(srv, d.SOLICIT, (d.OPT_CLIENTID, DUID), (d.OPT_RAPID_COMMIT, b""), ia(), now=20.0)
    assert rep is not None and addresses(rep) == [SECOND]
    ask(srv, d.INFORMATION_REQUEST, now=3611.0)
    assert not srv.pool.is_blocked(FIRST)


def test_exhaustion_reclaims_expired_offers() -> None:
    srv = server(highest=FIRST)
    assert addresses(
        ask(srv, d.SOLICIT, (d.OPT_CLIENTID, DUID), ia()) or d.Dhcpv6Message(0, 0, [])
    ) == [FIRST]
    full = ask(srv, d.SOLICIT, (d.OPT_CLIENTID, DUID_UUID), ia(), mac=MAC2, src=LL2, now=1.0)
    assert full is not None and full.ia_nas[0].status is not None
    assert full.ia_nas[0].status[0] == d.STATUS_NO_ADDRS_AVAIL
    later = ask(srv, d.SOLICIT, (d.OPT_CLIENTID, DUID_UUID), ia(), mac=MAC2, src=LL2, now=61.0)
    assert later is not None and addresses(later) == [FIRST]


def test_second_ia_gets_its_own_address_and_no_ia_gets_status() -> None:
    srv = server()
    rep = ask(srv, d.SOLICIT, (d.OPT_CLIENTID, DUID), (d.OPT_RAPID_COMMIT, b""), ia(1), ia(2))
    assert rep is not None and addresses(rep) == [FIRST, SECOND]
    rep = ask(srv, d.SOLICIT, (d.OPT_CLIENTID, DUID))
    assert rep is not None and status(rep) == d.STATUS_NO_ADDRS_AVAIL


def test_ipv6_layout_option() -> None:
    lay = ipv6_layout("fd00:1:2:3::/64")
    assert ipaddress.IPv6Address(lay.gateway_ip) == ipaddress.IPv6Address("fd00:1:2:3::1")
    assert ipaddress.IPv6Address(lay.host_ip) == ipaddress.IPv6Address("fd00:1:2:3::2")
    assert ipv6_layout() == Ipv6Layout()
    for bad, why in (
        ("fd00::/48", "must be a /64"),
        ("10.0.0.0/8", "IPv4"),
        ("nonsense", "CIDR"),
        ("ff02::/64", "unicast"),
    ):
        with pytest.raises(UserError, match=why):
            ipv6_layout(bad)
