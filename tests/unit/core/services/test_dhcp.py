"""DHCP codec and server, driven with hand-built client messages and a fake clock."""

from __future__ import annotations

import io
import struct

import dns.name
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvpnkit.core.config import NetConfig, ip4
from pyvpnkit.core.services.dhcp import BROADCAST_IP, DhcpReply, DhcpServer, client_key
from pyvpnkit.core.switch.ippool import AddressPool
from pyvpnkit.wire.dhcp import (
    BOOTREPLY,
    BOOTREQUEST,
    DHCPACK,
    DHCPDECLINE,
    DHCPDISCOVER,
    DHCPINFORM,
    DHCPNAK,
    DHCPOFFER,
    DHCPRELEASE,
    DHCPREQUEST,
    FLAG_BROADCAST,
    MAGIC_COOKIE,
    DhcpMessage,
    build_dhcp,
    decode_domain_search,
    encode_domain_search,
    parse_dhcp,
)
from pyvpnkit.wire.errors import ParseError

GW = ip4("192.168.65.1")
MAC1 = bytes.fromhex("020000000001")
MAC2 = bytes.fromhex("020000000002")
MAC3 = bytes.fromhex("020000000003")
BCAST_MAC = b"\xff" * 6
ZERO = b"\x00" * 4


def vm(last: int) -> bytes:
    return bytes((192, 168, 65, last))


def opt(code: int, value: bytes) -> bytes:
    return bytes((code, len(value))) + value


def client_msg(
    mtype: int,
    mac: bytes = MAC1,
    *,
    xid: int = 0x12345678,
    flags: int = 0,
    ciaddr: bytes = ZERO,
    giaddr: bytes = ZERO,
    requested: bytes | None = None,
    server_id: bytes | None = None,
    client_id: bytes | None = b"",
    hostname: bytes | None = b"vm1",
    op: int = BOOTREQUEST,
    htype: int = 1,
    hlen: int = 6,
) -> bytes:
    """A message laid out the way busybox udhcpc sends it (built by hand, not by the codec).

    ``client_id=b""`` means udhcpc's default, type 1 + MAC; None leaves it out.
    """
    hdr = struct.pack(
        "!BBBBIHH4s4s4s4s16s64s128s",
        op, htype, hlen, 0, xid, 0, flags, ciaddr, ZERO, ZERO, giaddr, mac, b"", b"",
    )  # fmt: skip
    opts = opt(53, bytes((mtype,)))
    if client_id is not None:
        opts += opt(61, client_id or b"\x01" + mac)
    if requested is not None:
        opts += opt(50, requested)
    if server_id is not None:
        opts += opt(54, server_id)
    opts += opt(57, struct.pack("!H", 576))
    opts += opt(55, bytes([1, 3, 6, 12, 15, 28, 42, 119]))
    if hostname is not None:
        opts += opt(12, hostname)
    opts += opt(60, b"udhcp 1.36.1")
    return (hdr + MAGIC_COOKIE + opts + b"\xff").ljust(300, b"\x00")


def make_server(**cfg: object) -> DhcpServer:
    config = NetConfig(**cfg)  # type: ignore[arg-type]
    pool = AddressPool(config.lowest_ip, config.highest_ip, (config.gateway_ip, config.host_ip))
    return DhcpServer(config, pool)


def handle(server: DhcpServer, data: bytes, now: float = 100.0) -> tuple[DhcpMessage, DhcpReply]:
    reply = server.handle(data, now)
    assert reply is not None
    return parse_dhcp(reply.payload), reply


def lease(server: DhcpServer, mac: bytes, now: float = 100.0) -> bytes:
    offer, _ = handle(server, client_msg(DHCPDISCOVER, mac), now)
    req = client_msg(DHCPREQUEST, mac, requested=offer.yiaddr, server_id=GW)
    ack, _ = handle(server, req, now)
    assert ack.message_type == DHCPACK
    return ack.yiaddr


# Options of an OFFER for the default config, laid out by hand (byte-exact).
NET_OPTIONS = (
    "3304" "00093a80"  # 51 lease time 604800
    "3a04" "00049d40"  # 58 T1 302400
    "3b04" "00081330"  # 59 T2 529200
    "0104" "ffffff00"  # 1 mask
    "0304" "c0a84101"  # 3 router
    "0604" "c0a84101"  # 6 DNS
    "0f0b" + b"localdomain".hex() +  # 15 domain
    "1a02" "05dc"  # 26 MTU 1500
    "1c04" "c0a841ff"  # 28 broadcast
    "2a04" "c0a84101"  # 42 NTP
)  # fmt: skip


# -- server ------------------------------------------------------------------


def test_discover_gets_offer_with_exact_options() -> None:
    server = make_server()
    reply = server.handle(client_msg(DHCPDISCOVER), 100.0)
    assert reply is not None
    raw = reply.payload
    assert len(raw) >= 300
    assert raw[:4] == bytes((BOOTREPLY, 1, 6, 0))
    assert raw[4:8] == bytes.fromhex("12345678")
    assert raw[16:20] == vm(3)  # yiaddr: the first VM address
    assert raw[28:44] == MAC1 + b"\x00" * 10
    assert raw[236:240] == MAGIC_COOKIE
    expected = "3501" "02" "3604" "c0a84101" + NET_OPTIONS + "3d07" "01" + MAC1.hex()  # fmt: skip
    end = 240 + len(expected) // 2
    assert raw[240:end].hex() == expected
    assert raw[end] == 0xFF
    assert set(raw[end + 1 :]) <= {0}
    # Unicast to the offered address: flags had no broadcast bit (RFC 2131 4.1).
    assert (reply.dst_ip, reply.dst_mac) == (vm(3), MAC1)


def test_offer_broadcast_when_client_asks() -> None:
    server = make_server()
    msg, reply = handle(server, client_msg(DHCPDISCOVER, flags=FLAG_BROADCAST))
    assert (reply.dst_ip, reply.dst_mac) == (BROADCAST_IP, BCAST_MAC)
    assert msg.flags == FLAG_BROADCAST


def test_request_selecting_gets_ack() -> None:
    server = make_server()
    offer, _ = handle(server, client_msg(DHCPDISCOVER))
    ack, reply = handle(server, client_msg(DHCPREQUEST, requested=vm(3), server_id=GW))
    assert ack.message_type == DHCPACK
    assert ack.yiaddr == vm(3) and ack.xid == 0x12345678
    assert ack.options == offer.options | {53: bytes((DHCPACK,))}
    assert (reply.dst_ip, reply.dst_mac) == (vm(3), MAC1)
    assert server.pool.owner(vm(3)) == "mac:02:00:00:00:00:01"


def test_second_mac_gets_next_address() -> None:
    server = make_server()
    assert lease(server, MAC1) == vm(3)
    assert lease(server, MAC2) == vm(4)
    assert lease(server, MAC1) == vm(3)


def test_wrong_requested_ip_gets_nak() -> None:
    server = make_server()
    handle(server, client_msg(DHCPDISCOVER))
    nak, reply = handle(server, client_msg(DHCPREQUEST, requested=vm(9), server_id=GW))
    assert nak.message_type == DHCPNAK
    assert nak.yiaddr == ZERO and nak.ciaddr == ZERO
    assert set(nak.options) == {53, 54, 56, 61}
    assert (reply.dst_ip, reply.dst_mac) == (BROADCAST_IP, BCAST_MAC)
    # Off-subnet address (e.g. a lease from another network): NAK too.
    nak, _ = handle(server, client_msg(DHCPREQUEST, requested=ip4("10.0.0.5")))
    assert nak.message_type == DHCPNAK


def test_request_for_another_server_is_ignored() -> None:
    server = make_server()
    handle(server, client_msg(DHCPDISCOVER))
    req = client_msg(DHCPREQUEST, requested=vm(3), server_id=ip4("192.168.65.99"))
    assert server.handle(req, 100.0) is None


def test_init_reboot_keeps_a_free_address_and_naks_a_taken_one() -> None:
    server = make_server()
    ack, _ = handle(server, client_msg(DHCPREQUEST, MAC1, requested=vm(9)))
    assert (ack.message_type, ack.yiaddr) == (DHCPACK, vm(9))
    nak, _ = handle(server, client_msg(DHCPREQUEST, MAC2, requested=vm(9)))
    assert nak.message_type == DHCPNAK
    assert lease(server, MAC2) == vm(3)  # back to DISCOVER: gets a free one


def test_renewing_is_unicast_to_ciaddr() -> None:
    server = make_server()
    lease(server, MAC1)
    ack, reply = handle(server, client_msg(DHCPREQUEST, ciaddr=vm(3)), 5000.0)
    assert (ack.message_type, ack.yiaddr, ack.ciaddr) == (DHCPACK, vm(3), vm(3))
    assert (reply.dst_ip, reply.dst_mac) == (vm(3), MAC1)
    # Rebinding with an address this client does not hold: NAK.
    nak, _ = handle(server, client_msg(DHCPREQUEST, MAC2, ciaddr=vm(3)), 5000.0)
    assert nak.message_type == DHCPNAK


def test_inform_gets_ack_without_lease() -> None:
    server = make_server()
    ack, reply = handle(server, client_msg(DHCPINFORM, ciaddr=vm(50)))
    assert ack.message_type == DHCPACK
    assert ack.yiaddr == ZERO and ack.ciaddr == vm(50)
    assert not {51, 58, 59} & set(ack.options)
    assert {1, 3, 6, 26, 54} <= set(ack.options)
    assert (reply.dst_ip, reply.dst_mac) == (vm(50), MAC1)
    assert server.pool.leases() == {}


def test_release_then_same_mac_gets_same_address() -> None:
    server = make_server()
    assert lease(server, MAC1) == vm(3)
    rel = client_msg(DHCPRELEASE, ciaddr=vm(3), server_id=GW)
    assert server.handle(rel, 200.0) is None
    assert server.pool.lookup("mac:02:00:00:00:00:01") is None
    assert lease(server, MAC2, 300.0) == vm(4)  # .3 stays remembered for MAC1
    assert lease(server, MAC1, 400.0) == vm(3)


def test_release_of_someone_elses_address_is_ignored() -> None:
    server = make_server()
    lease(server, MAC1)
    assert server.handle(client_msg(DHCPRELEASE, MAC2, ciaddr=vm(3)), 200.0) is None
    assert server.pool.owner(vm(3)) == "mac:02:00:00:00:00:01"


def test_decline_moves_client_and_blocks_address_for_a_while() -> None:
    server = make_server()
    assert lease(server, MAC1) == vm(3)
    dec = client_msg(DHCPDECLINE, requested=vm(3), server_id=GW)
    assert server.handle(dec, 200.0) is None
    assert lease(server, MAC1, 210.0) == vm(4)
    assert lease(server, MAC2, 220.0) == vm(5)  # .3 is not handed out
    # After the hold time the address is usable again.
    assert lease(server, MAC3, 200.0 + server.decline_hold) == vm(3)


def test_decline_by_non_holder_is_ignored() -> None:
    server = make_server()
    lease(server, MAC1)
    server.handle(client_msg(DHCPDECLINE, MAC2, requested=vm(3)), 200.0)
    assert server.pool.owner(vm(3)) == "mac:02:00:00:00:00:01"


def test_pool_exhaustion_gives_no_offer_until_an_offer_expires() -> None:
    server = make_server(lowest_ip=vm(3), highest_ip=vm(4))
    assert lease(server, MAC1) == vm(3)
    offer, _ = handle(server, client_msg(DHCPDISCOVER, MAC2))  # offered, never requested
    assert offer.yiaddr == vm(4)
    assert server.handle(client_msg(DHCPDISCOVER, MAC3), 101.0) is None
    assert server.stats["no_address"] == 1  # counted: the service logs it
    # The unanswered offer is reclaimed once its hold has passed; the ACKed lease is not.
    offer, _ = handle(server, client_msg(DHCPDISCOVER, MAC3), 100.0 + server.offer_hold)
    assert offer.yiaddr == vm(4)
    assert server.pool.owner(vm(3)) == "mac:02:00:00:00:00:01"


def test_expired_lease_is_reclaimed_only_when_pool_runs_dry() -> None:
    server = make_server(lowest_ip=vm(3), highest_ip=vm(3), lease_time=1000)
    assert lease(server, MAC1, 0.0) == vm(3)
    assert server.handle(client_msg(DHCPDISCOVER, MAC2), 999.0) is None
    offer, _ = handle(server, client_msg(DHCPDISCOVER, MAC2), 1000.0)
    assert offer.yiaddr == vm(3)


def test_client_id_keys_the_client() -> None:
    server = make_server()
    cid = b"\xff\x00\x00\x00\x01" + b"\x00\x02" + bytes(8)  # RFC 4361 style
    offer, _ = handle(server, client_msg(DHCPDISCOVER, MAC1, client_id=cid))
    assert offer.options[61] == cid
    again, _ = handle(server, client_msg(DHCPDISCOVER, MAC2, client_id=cid))
    assert again.yiaddr == offer.yiaddr == vm(3)
    assert server.pool.owner(vm(3)) == "cid:" + cid.hex()
    # Without a client id (dhclient's default), chaddr keys it, same form as type-1 ids.
    msg = parse_dhcp(client_msg(DHCPDISCOVER, MAC2, client_id=None))
    assert client_key(msg) == "mac:02:00:00:00:00:02"
    assert client_key(parse_dhcp(client_msg(DHCPDISCOVER, MAC2))) == "mac:02:00:00:00:00:02"


def test_key_override() -> None:
    server = make_server()
    reply = server.handle(client_msg(DHCPDISCOVER), 1.0, key="uuid:abc")
    assert reply is not None
    assert server.pool.owner(vm(3)) == "uuid:abc"


@pytest.mark.parametrize(
    "data",
    [
        client_msg(DHCPDISCOVER, op=BOOTREPLY),
        client_msg(DHCPDISCOVER, htype=6),
        client_msg(DHCPDISCOVER, hlen=16),
        client_msg(DHCPDISCOVER, giaddr=ip4("10.1.1.1")),
        client_msg(DHCPOFFER),
        client_msg(DHCPREQUEST),  # no requested IP, no ciaddr
        client_msg(DHCPDISCOVER)[:239],
        b"",
    ],
)
def test_ignored_messages(data: bytes) -> None:
    server = make_server()
    assert server.handle(data, 1.0) is None
    assert server.pool.leases() == {}


def test_search_domains_in_offer() -> None:
    server = make_server(search_domains=("corp.example.com", "example.com"), domain="")
    offer, _ = handle(server, client_msg(DHCPDISCOVER))
    assert 15 not in offer.options
    assert offer.options[119] == (
        b"\x04corp\x07example\x03com\x00" + b"\xc0\x05"  # second name points at "example"
    )
    assert decode_domain_search(offer.options[119]) == ["corp.example.com", "example.com"]


def test_search_option_absent_when_empty_and_bad_domain_rejected_early() -> None:
    offer, _ = handle(make_server(), client_msg(DHCPDISCOVER))
    assert 119 not in offer.options
    with pytest.raises(ValueError):
        make_server(search_domains=("a" * 64 + ".com",))


# -- codec -------------------------------------------------------------------


def test_parse_udhcpc_discover() -> None:
    msg = parse_dhcp(client_msg(DHCPDISCOVER, requested=vm(7)))
    assert (msg.op, msg.htype, msg.hlen, msg.xid) == (BOOTREQUEST, 1, 6, 0x12345678)
    assert msg.hwaddr == MAC1 and msg.chaddr == MAC1 + bytes(10)
    assert msg.message_type == DHCPDISCOVER
    assert msg.requested_ip == vm(7)
    assert msg.server_id is None
    assert msg.client_id == b"\x01" + MAC1
    assert msg.param_request_list == (1, 3, 6, 12, 15, 28, 42, 119)
    assert msg.hostname == "vm1"
    assert msg.options[60] == b"udhcp 1.36.1"


def test_parse_errors() -> None:
    good = client_msg(DHCPDISCOVER)
    with pytest.raises(ParseError, match="too short"):
        parse_dhcp(good[:200])
    with pytest.raises(ParseError, match="cookie"):
        parse_dhcp(good[:236] + b"\x00\x00\x00\x00" + good[240:])
    with pytest.raises(ParseError, match="op"):
        parse_dhcp(b"\x07" + good[1:])
    with pytest.raises(ParseError, match="overruns"):
        parse_dhcp(good[:240] + b"\x0c\x20abc")
    with pytest.raises(ParseError, match="truncated"):
        parse_dhcp(good[:240] + b"\x35")


def test_parse_tolerates_missing_end_and_reads_overloaded_fields() -> None:
    good = client_msg(DHCPDISCOVER)
    assert parse_dhcp(good[:240] + b"\x35\x01\x01").message_type == DHCPDISCOVER
    file_opts = opt(12, b"fromfile").ljust(128, b"\xff")
    sname_opts = opt(60, b"fromsname").ljust(64, b"\x00")
    data = good[:44] + sname_opts + file_opts + MAGIC_COOKIE + b"\x34\x01\x03\x0c\x02ab\xff"
    msg = parse_dhcp(data)
    assert msg.options[12] == b"abfromfile"  # repeated options concatenate (RFC 3396)
    assert msg.options[60] == b"fromsname"


def test_long_option_is_split_and_rejoined() -> None:
    value = bytes(range(256)) * 2 + b"xyz"  # 515 bytes
    msg = DhcpMessage(op=BOOTREPLY, xid=1, chaddr=bytes(16), options={119: value, 53: b"\x05"})
    raw = build_dhcp(msg)
    assert raw[240:242] == b"\x77\xff" and raw[240 + 257 : 242 + 257] == b"\x77\xff"
    assert raw[240 + 514 : 242 + 514] == b"\x77\x05"
    assert parse_dhcp(raw) == msg


def test_build_rejects_bad_fields() -> None:
    with pytest.raises(ValueError):
        build_dhcp(DhcpMessage(op=1, xid=1, chaddr=bytes(17)))
    with pytest.raises(ValueError):
        build_dhcp(DhcpMessage(op=1, xid=1, chaddr=bytes(16), ciaddr=b"\x01"))
    with pytest.raises(ValueError):
        build_dhcp(DhcpMessage(op=1, xid=1, chaddr=bytes(16), options={255: b"x"}))


def test_domain_search_rfc3397_example() -> None:
    wire = encode_domain_search(["eng.apple.com.", "marketing.apple.com."])
    assert wire == bytes.fromhex("03656e67056170706c6503636f6d00096d61726b6574696e67c004")


@pytest.mark.parametrize("name", ["example.com", "a.b.c.d.example.org.", "xn--bcher-kva.ch", "x"])
def test_domain_search_single_name_matches_dnspython(name: str) -> None:
    assert encode_domain_search([name]) == dns.name.from_text(name).to_wire()


def test_domain_search_idna() -> None:
    assert encode_domain_search(["bücher.ch"]) == dns.name.from_text("xn--bcher-kva.ch").to_wire()


LABEL = st.text(alphabet="abcXYZ019-", min_size=1, max_size=12)
NAME = st.lists(LABEL, min_size=1, max_size=5).map(".".join)


@given(st.lists(NAME, min_size=1, max_size=8))
def test_domain_search_compression_matches_dnspython(names: list[str]) -> None:
    wire = encode_domain_search(names)
    # dnspython compresses against offsets in the file it writes to (RFC 3397:
    # offsets into the concatenated option value).
    f = io.BytesIO()
    compress: dict[dns.name.Name, int] = {}
    for n in names:
        dns.name.from_text(n).to_wire(f, compress)
    assert wire == f.getvalue()
    # And an independent decoder follows the pointers back to the same names.
    pos = 0
    for n in names:
        decoded, used = dns.name.from_wire(wire, pos)
        assert decoded == dns.name.from_text(n)
        pos += used
    assert pos == len(wire)
    assert [x.lower() for x in decode_domain_search(wire)] == [n.lower() for n in names]


def test_decode_domain_search_rejects_loops_and_truncation() -> None:
    for bad in (b"\xc0\x00", b"\x03ab", b"\x01a", b"\x01a\x00\xc0", b"\x01a\x00\x80"):
        with pytest.raises(ParseError):
            decode_domain_search(bad)


# -- properties --------------------------------------------------------------

IP = st.binary(min_size=4, max_size=4)
OPTIONS = st.dictionaries(
    st.integers(min_value=1, max_value=254), st.binary(max_size=600), max_size=8
)
MESSAGES = st.builds(
    DhcpMessage,
    op=st.sampled_from([BOOTREQUEST, BOOTREPLY]),
    xid=st.integers(0, 2**32 - 1),
    chaddr=st.binary(min_size=16, max_size=16),
    htype=st.integers(0, 255),
    hlen=st.integers(0, 255),
    hops=st.integers(0, 255),
    secs=st.integers(0, 65535),
    flags=st.integers(0, 65535),
    ciaddr=IP,
    yiaddr=IP,
    siaddr=IP,
    giaddr=IP,
    options=OPTIONS,
)


@given(MESSAGES)
def test_build_parse_round_trip(msg: DhcpMessage) -> None:
    raw = build_dhcp(msg)
    assert len(raw) >= 300
    assert parse_dhcp(raw) == msg


@given(st.binary(max_size=700))
def test_garbage_parse_raises_only_parse_error(data: bytes) -> None:
    try:
        parse_dhcp(data)
    except ParseError:
        pass


def _mutate(base: bytes, cuts: list[tuple[int, int]], length: int) -> bytes:
    buf = bytearray(base)
    for pos, val in cuts:
        buf[pos % len(buf)] = val
    return bytes(buf[:length])


REQUESTS = st.builds(
    client_msg,
    st.integers(0, 9),
    st.sampled_from([MAC1, MAC2]),
    flags=st.sampled_from([0, FLAG_BROADCAST]),
    ciaddr=st.sampled_from([ZERO, vm(3), vm(4), ip4("10.0.0.1")]),
    requested=st.none() | st.sampled_from([vm(3), vm(4), vm(254), ip4("8.8.8.8"), b"\x01"]),
    server_id=st.none() | st.sampled_from([GW, vm(9), b"xy"]),
    client_id=st.none() | st.sampled_from([b"", b"\x01", b"\x00abc"]),
    hostname=st.none() | st.binary(max_size=20),
)


@pytest.mark.slow  # hypothesis: more examples than the profile
@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            REQUESTS,
            st.binary(max_size=400),
            st.builds(
                _mutate,
                REQUESTS,
                st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=6),
                st.integers(0, 400),
            ),
        ),
        max_size=12,
    )
)
def test_server_never_raises(datagrams: list[bytes]) -> None:
    server = make_server(lowest_ip=vm(3), highest_ip=vm(5))
    now = 0.0
    for data in datagrams:
        now += 30.0
        reply = server.handle(data, now)
        if reply is not None:
            parsed = parse_dhcp(reply.payload)
            assert parsed.op == BOOTREPLY
            assert parsed.message_type in (DHCPOFFER, DHCPACK, DHCPNAK)
            assert len(reply.dst_ip) == 4 and len(reply.dst_mac) == 6
    for addr in server.pool.leases().values():
        assert vm(3) <= addr <= vm(5)
