"""ICMPv6 (RFC 4443) and Neighbor Discovery (RFC 4861, RFC 8106) messages.

Unlike ICMPv4, the checksum covers the IPv6 pseudo-header, so parse and build
take the source and destination. NDP messages are parsed into one dataclass per
message with their options decoded; unknown options are skipped, as RFC 4861
requires, and an option of length zero is an error (it would loop forever).
"""

from __future__ import annotations

import struct
from builtins import memoryview  # mypyc finds dataclass field types here
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from pyvpnkit.wire.checksum import internet_checksum, pseudo_header_sum, verify
from pyvpnkit.wire.dhcp import decode_domain_search, encode_names
from pyvpnkit.wire.errors import ParseError
from pyvpnkit.wire.ipv6 import IPV6_HEADER_LEN, MIN_MTU, NH_ICMPV6

DEST_UNREACHABLE = 1
PACKET_TOO_BIG = 2
TIME_EXCEEDED = 3
PARAMETER_PROBLEM = 4
ECHO_REQUEST = 128
ECHO_REPLY = 129
MLD_QUERY = 130
MLD_REPORT = 131
MLD_DONE = 132
ROUTER_SOLICITATION = 133
ROUTER_ADVERTISEMENT = 134
NEIGHBOR_SOLICITATION = 135
NEIGHBOR_ADVERTISEMENT = 136
REDIRECT = 137
MLD2_REPORT = 143
MLD_TYPES = frozenset((MLD_QUERY, MLD_REPORT, MLD_DONE, MLD2_REPORT))
NDP_TYPES = frozenset(
    (ROUTER_SOLICITATION, ROUTER_ADVERTISEMENT, NEIGHBOR_SOLICITATION, NEIGHBOR_ADVERTISEMENT)
)

# Destination-unreachable codes.
NO_ROUTE = 0
ADMIN_PROHIBITED = 1
ADDRESS_UNREACHABLE = 3
PORT_UNREACHABLE = 4
# Time-exceeded codes.
HOP_LIMIT_EXCEEDED = 0
REASSEMBLY_TIME_EXCEEDED = 1
# Parameter-problem codes.
ERRONEOUS_HEADER = 0
UNRECOGNIZED_NEXT_HEADER = 1

OPT_SOURCE_LLADDR = 1
OPT_TARGET_LLADDR = 2
OPT_PREFIX_INFO = 3
OPT_MTU = 5
OPT_RDNSS = 25
OPT_DNSSL = 31

RA_MANAGED = 0x80
RA_OTHER = 0x40
NA_ROUTER = 0x80000000
NA_SOLICITED = 0x40000000
NA_OVERRIDE = 0x20000000
PREFIX_ON_LINK = 0x80
PREFIX_AUTONOMOUS = 0x40

_HDR = struct.Struct("!BBH4s")
_RA = struct.Struct("!BBHII")
_PREFIX = struct.Struct("!BBIII16s")
_U32 = struct.Struct("!I")


@dataclass(slots=True)  # not frozen: frozen __init__ costs ~3 us a packet
class Icmpv6Message:
    type: int
    code: int
    rest: bytes  # the 4 bytes after the checksum (id/seq for echo, MTU for packet too big)
    body: memoryview  # what follows them

    @property
    def ident(self) -> int:
        return int.from_bytes(self.rest[:2], "big")

    @property
    def seq(self) -> int:
        return int.from_bytes(self.rest[2:], "big")

    @property
    def u32(self) -> int:
        """The MTU of packet too big, the pointer of parameter problem."""
        return int.from_bytes(self.rest, "big")


def parse_icmpv6(
    buf: bytes | bytearray | memoryview, src: bytes, dst: bytes, check: bool = True
) -> Icmpv6Message:
    if len(buf) < 8:
        raise ParseError(f"ICMPv6 message too short ({len(buf)} bytes)")
    if check and not verify(buf, pseudo_header_sum(src, dst, NH_ICMPV6, len(buf))):
        raise ParseError("ICMPv6 checksum mismatch")
    typ, code, _csum, rest = _HDR.unpack_from(buf)
    return Icmpv6Message(typ, code, rest, memoryview(buf)[8:])


def build_icmpv6(
    src: bytes, dst: bytes, typ: int, code: int, rest: bytes, body: bytes | memoryview = b""
) -> bytes:
    msg = _HDR.pack(typ, code, 0, rest) + bytes(body)
    csum = internet_checksum(msg, pseudo_header_sum(src, dst, NH_ICMPV6, len(msg)))
    return msg[:2] + csum.to_bytes(2, "big") + msg[4:]


def echo_rest(ident: int, seq: int) -> bytes:
    return struct.pack("!HH", ident, seq)


def error_quote(packet: bytes | memoryview) -> bytes:
    """As much of the invoking packet as fits an error in the minimum MTU (RFC 4443 2.4)."""
    return bytes(packet[: MIN_MTU - IPV6_HEADER_LEN - 8])


# -- Neighbor Discovery ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PrefixInfo:
    prefix: bytes  # 16 bytes
    length: int
    on_link: bool = True
    autonomous: bool = True
    valid_lifetime: int = 0xFFFFFFFF
    preferred_lifetime: int = 0xFFFFFFFF


@dataclass(slots=True)
class NdpOptions:
    source_lladdr: bytes | None = None
    target_lladdr: bytes | None = None
    prefixes: list[PrefixInfo] = field(default_factory=list)
    mtu: int | None = None
    rdnss: tuple[int, tuple[bytes, ...]] | None = None  # (lifetime, servers)
    dnssl: tuple[int, tuple[str, ...]] | None = None  # (lifetime, domains)


@dataclass(slots=True)
class RouterSolicitation:
    options: NdpOptions


@dataclass(slots=True)
class RouterAdvertisement:
    hop_limit: int
    managed: bool
    other: bool
    router_lifetime: int
    reachable_time: int
    retrans_timer: int
    options: NdpOptions


@dataclass(slots=True)
class NeighborSolicitation:
    target: bytes
    options: NdpOptions


@dataclass(slots=True)
class NeighborAdvertisement:
    target: bytes
    router: bool
    solicited: bool
    override: bool
    options: NdpOptions


NdpMessage = RouterSolicitation | RouterAdvertisement | NeighborSolicitation | NeighborAdvertisement


def parse_ndp(msg: Icmpv6Message) -> NdpMessage | None:
    """The NDP message ``msg`` carries; None when it is another ICMPv6 type.

    Code 0 is required (RFC 4861 6.1, 7.1); the IPv6 hop-limit-255 check is the
    caller's, since only it sees the IP header.
    """
    typ, body, rest = msg.type, msg.body, msg.rest
    if typ not in NDP_TYPES:
        return None
    if msg.code != 0:
        raise ParseError(f"NDP message type {typ} with code {msg.code}")
    if typ == ROUTER_SOLICITATION:
        return RouterSolicitation(parse_options(body))
    if typ == ROUTER_ADVERTISEMENT:
        if len(body) < 8:
            raise ParseError("router advertisement truncated")
        hops, flags, lifetime = rest[0], rest[1], int.from_bytes(rest[2:], "big")
        reachable, retrans = struct.unpack_from("!II", body)
        return RouterAdvertisement(
            hops,
            bool(flags & RA_MANAGED),
            bool(flags & RA_OTHER),
            lifetime,
            reachable,
            retrans,
            parse_options(body[8:]),
        )
    if len(body) < 16:
        raise ParseError("neighbor discovery target truncated")
    target = bytes(body[:16])
    options = parse_options(body[16:])
    if typ == NEIGHBOR_SOLICITATION:
        return NeighborSolicitation(target, options)
    flags = _U32.unpack(rest)[0]
    return NeighborAdvertisement(
        target,
        bool(flags & NA_ROUTER),
        bool(flags & NA_SOLICITED),
        bool(flags & NA_OVERRIDE),
        options,
    )


def parse_options(data: memoryview) -> NdpOptions:
    opts = NdpOptions()
    pos, end = 0, len(data)
    while pos < end:
        if pos + 2 > end:
            raise ParseError("NDP option truncated")
        kind, units = data[pos], data[pos + 1]
        size = units * 8
        if size == 0 or pos + size > end:
            raise ParseError(f"NDP option {kind} with bad length {units}")
        value = data[pos + 2 : pos + size]
        if kind in (OPT_SOURCE_LLADDR, OPT_TARGET_LLADDR):
            mac = bytes(value[:6])
            if kind == OPT_SOURCE_LLADDR:
                opts.source_lladdr = mac
            else:
                opts.target_lladdr = mac
        elif kind == OPT_PREFIX_INFO:
            if units != 4:
                raise ParseError(f"prefix information option with length {units}")
            plen, flags, valid, preferred, _res, prefix = _PREFIX.unpack_from(value)
            opts.prefixes.append(
                PrefixInfo(
                    prefix,
                    plen,
                    bool(flags & PREFIX_ON_LINK),
                    bool(flags & PREFIX_AUTONOMOUS),
                    valid,
                    preferred,
                )
            )
        elif kind == OPT_MTU:
            opts.mtu = _U32.unpack_from(value, 2)[0]
        elif kind == OPT_RDNSS:
            if units < 3 or units % 2 == 0:
                raise ParseError(f"RDNSS option with length {units}")
            addrs = bytes(value[6:])
            servers = tuple(addrs[i : i + 16] for i in range(0, len(addrs), 16))
            opts.rdnss = (_U32.unpack_from(value, 2)[0], servers)
        elif kind == OPT_DNSSL:
            if units < 2:
                raise ParseError(f"DNSSL option with length {units}")
            names = decode_domain_search(bytes(value[6:]).rstrip(b"\x00") + b"\x00")
            opts.dnssl = (_U32.unpack_from(value, 2)[0], tuple(n for n in names if n))
        pos += size
    return opts


def _option(kind: int, value: bytes) -> bytes:
    """A TLV padded with zeros to a multiple of 8 bytes."""
    size = -(-(len(value) + 2) // 8) * 8
    return bytes((kind, size // 8)) + value + bytes(size - 2 - len(value))


def encode_options(
    *,
    source_lladdr: bytes | None = None,
    target_lladdr: bytes | None = None,
    prefixes: Iterable[PrefixInfo] = (),
    mtu: int | None = None,
    rdnss: tuple[int, Sequence[bytes]] | None = None,
    dnssl: tuple[int, Sequence[str]] | None = None,
) -> bytes:
    out = bytearray()
    if source_lladdr is not None:
        out += _option(OPT_SOURCE_LLADDR, source_lladdr)
    if target_lladdr is not None:
        out += _option(OPT_TARGET_LLADDR, target_lladdr)
    for p in prefixes:
        flags = (PREFIX_ON_LINK if p.on_link else 0) | (PREFIX_AUTONOMOUS if p.autonomous else 0)
        out += _option(
            OPT_PREFIX_INFO,
            _PREFIX.pack(p.length, flags, p.valid_lifetime, p.preferred_lifetime, 0, p.prefix),
        )
    if mtu is not None:
        out += _option(OPT_MTU, b"\x00\x00" + _U32.pack(mtu))
    if rdnss is not None and rdnss[1]:
        out += _option(OPT_RDNSS, b"\x00\x00" + _U32.pack(rdnss[0]) + b"".join(rdnss[1]))
    if dnssl is not None and dnssl[1]:
        out += _option(OPT_DNSSL, b"\x00\x00" + _U32.pack(dnssl[0]) + encode_names(dnssl[1]))
    return bytes(out)


def build_rs(src: bytes, dst: bytes, options: bytes = b"") -> bytes:
    return build_icmpv6(src, dst, ROUTER_SOLICITATION, 0, bytes(4), options)


def build_ra(
    src: bytes,
    dst: bytes,
    *,
    hop_limit: int = 64,
    managed: bool = False,
    other: bool = False,
    router_lifetime: int = 1800,
    reachable_time: int = 0,
    retrans_timer: int = 0,
    options: bytes = b"",
) -> bytes:
    flags = (RA_MANAGED if managed else 0) | (RA_OTHER if other else 0)
    rest = struct.pack("!BBH", hop_limit, flags, router_lifetime)
    body = struct.pack("!II", reachable_time, retrans_timer) + options
    return build_icmpv6(src, dst, ROUTER_ADVERTISEMENT, 0, rest, body)


def build_ns(src: bytes, dst: bytes, target: bytes, options: bytes = b"") -> bytes:
    return build_icmpv6(src, dst, NEIGHBOR_SOLICITATION, 0, bytes(4), target + options)


def build_na(
    src: bytes,
    dst: bytes,
    target: bytes,
    *,
    router: bool = False,
    solicited: bool = False,
    override: bool = False,
    options: bytes = b"",
) -> bytes:
    flags = (
        (NA_ROUTER if router else 0)
        | (NA_SOLICITED if solicited else 0)
        | (NA_OVERRIDE if override else 0)
    )
    return build_icmpv6(src, dst, NEIGHBOR_ADVERTISEMENT, 0, _U32.pack(flags), target + options)
