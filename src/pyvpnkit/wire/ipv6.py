"""IPv6 headers (RFC 8200): the fixed header, extension-header walking, Fragment headers.

Parsing walks the extension-header chain to the upper-layer protocol so callers
never see hop-by-hop, routing, destination-options or AH headers. The walk stops
at a Fragment header that is not atomic (the rest is fragment data, for
core/ip6frag.py), at ESP (encrypted: nothing more to read) and at No Next
Header. TCP, UDP and ICMPv6 checksums use ``checksum.pseudo_header_sum`` with
16-byte addresses: its word sum equals RFC 8200's pseudo-header for any payload
length below 65536, which is every length without a jumbogram.
"""

from __future__ import annotations

import struct
from builtins import memoryview  # mypyc finds dataclass field types here
from dataclasses import dataclass

from pyvpnkit.wire.errors import ParseError

IPV6_HEADER_LEN = 40
MIN_MTU = 1280  # RFC 8200: every link carries 1280 bytes

NH_HOPOPTS = 0
NH_TCP = 6
NH_UDP = 17
NH_ROUTING = 43
NH_FRAGMENT = 44
NH_ESP = 50
NH_AH = 51
NH_ICMPV6 = 58
NH_NONE = 59
NH_DSTOPTS = 60

# Headers the walk steps over, all "next header, length in 8-byte units minus one".
_SKIPPED = frozenset((NH_HOPOPTS, NH_ROUTING, NH_DSTOPTS))

UNSPECIFIED = bytes(16)
ALL_NODES = bytes.fromhex("ff020000000000000000000000000001")
ALL_ROUTERS = bytes.fromhex("ff020000000000000000000000000002")
LINK_LOCAL_PREFIX = bytes.fromhex("fe80000000000000")

_HDR = struct.Struct("!IHBB16s16s")
_FRAG = struct.Struct("!BBHI")
FRAGMENT_HEADER_LEN = 8


@dataclass(slots=True)
class FragmentHeader:
    next_header: int  # of the fragmentable part
    offset: int  # in bytes
    more: bool
    ident: int
    start: int  # where the Fragment header begins in the packet
    link: int  # where the next-header byte naming it is (6: the fixed header's)


@dataclass(slots=True)  # not frozen: frozen __init__ costs ~3 us a packet
class IPv6Packet:
    src: bytes
    dst: bytes
    traffic_class: int
    flow_label: int
    hop_limit: int
    proto: int  # upper layer; NH_FRAGMENT for a non-atomic fragment, NH_ESP, NH_NONE
    header: memoryview  # fixed header + every extension header walked
    payload: memoryview  # what follows ``header``, trimmed to the payload length
    fragment: FragmentHeader | None  # set for atomic fragments too

    @property
    def is_fragment(self) -> bool:
        """True when the payload is fragment data to reassemble (not an atomic fragment)."""
        return self.proto == NH_FRAGMENT


def parse_ipv6(buf: bytes | bytearray | memoryview) -> IPv6Packet:
    if len(buf) < IPV6_HEADER_LEN:
        raise ParseError(f"IPv6 packet too short ({len(buf)} bytes)")
    vtf, plen, nh, hops, src, dst = _HDR.unpack_from(buf)
    if vtf >> 28 != 6:
        raise ParseError(f"IP version {vtf >> 28} is not 6")
    end = IPV6_HEADER_LEN + plen
    if end > len(buf):
        raise ParseError(f"IPv6 payload length {plen} does not fit {len(buf)} bytes")
    if plen == 0 and nh == NH_HOPOPTS:
        raise ParseError("IPv6 jumbograms are not supported")
    view = (buf if type(buf) is memoryview else memoryview(buf))[:end]
    pos, link, frag = IPV6_HEADER_LEN, 6, None
    while True:
        if nh in _SKIPPED or nh == NH_AH:
            if nh == NH_HOPOPTS and pos != IPV6_HEADER_LEN:
                raise ParseError("IPv6 hop-by-hop options not first")
            if pos + 2 > end:
                raise ParseError(f"IPv6 extension header {nh} truncated")
            size = (view[pos + 1] + 2) * 4 if nh == NH_AH else (view[pos + 1] + 1) * 8
            if pos + size > end:
                raise ParseError(f"IPv6 extension header {nh} ({size} bytes) truncated")
            link, nh, pos = pos, view[pos], pos + size
        elif nh == NH_FRAGMENT:
            if pos + FRAGMENT_HEADER_LEN > end:
                raise ParseError("IPv6 fragment header truncated")
            inner, _res, offm, ident = _FRAG.unpack_from(view, pos)
            frag = FragmentHeader(inner, offm & 0xFFF8, bool(offm & 1), ident, pos, link)
            link, pos = pos, pos + FRAGMENT_HEADER_LEN
            if frag.offset or frag.more:
                break  # the rest is fragment data
            nh = inner  # atomic fragment (RFC 6946): a whole packet, keep walking
        else:
            break
    return IPv6Packet(
        src, dst, (vtf >> 20) & 0xFF, vtf & 0xFFFFF, hops, nh, view[:pos], view[pos:], frag
    )


def ipv6_header(
    src: bytes,
    dst: bytes,
    next_header: int,
    payload_len: int,
    *,
    hop_limit: int = 64,
    traffic_class: int = 0,
    flow_label: int = 0,
) -> bytes:
    vtf = (6 << 28) | (traffic_class << 20) | flow_label
    return _HDR.pack(vtf, payload_len, next_header, hop_limit, src, dst)


def build_ipv6(
    src: bytes, dst: bytes, next_header: int, payload: bytes, *, hop_limit: int = 64
) -> bytes:
    return ipv6_header(src, dst, next_header, len(payload), hop_limit=hop_limit) + payload


def fragment_header(next_header: int, offset: int, more: bool, ident: int) -> bytes:
    return _FRAG.pack(next_header, 0, (offset & 0xFFF8) | int(more), ident)


def solicited_node(addr: bytes) -> bytes:
    """ff02::1:ffXX:XXXX, the multicast group NS for ``addr`` goes to (RFC 4291)."""
    return bytes.fromhex("ff0200000000000000000001ff") + addr[13:]


def multicast_mac(addr: bytes) -> bytes:
    """33:33 and the low 32 bits: the Ethernet address of an IPv6 multicast group (RFC 2464)."""
    return b"\x33\x33" + addr[12:]


def is_multicast(addr: bytes) -> bool:
    return addr[0] == 0xFF


def is_link_local(addr: bytes) -> bool:
    return addr[0] == 0xFE and addr[1] & 0xC0 == 0x80


def interface_id(mac: bytes) -> bytes:
    """The modified EUI-64 interface identifier of a MAC (RFC 4291 appendix A)."""
    return bytes((mac[0] ^ 0x02,)) + mac[1:3] + b"\xff\xfe" + mac[3:6]


def mac_from_interface_id(iid: bytes) -> bytes | None:
    """The MAC an EUI-64 interface identifier was made from, or None when it is not one."""
    if iid[3:5] != b"\xff\xfe":
        return None
    return bytes((iid[0] ^ 0x02,)) + iid[1:3] + iid[5:8]
