"""ICMP error messages about packets a VM sent (RFC 792, RFC 1812 4.3.2).

The NATs learn about failures from host sockets (errno, IP_RECVERR) and must
turn them back into the ICMP the VM's own stack understands: its kernel
matches an error to a socket by the quoted IP header and first transport
bytes, which is how ``ping``, ``traceroute`` and ECONNREFUSED on connected
UDP sockets work inside the VM.
"""

from __future__ import annotations

import errno
import struct

from pyvpnkit.wire import icmp as icmpw
from pyvpnkit.wire import icmpv6 as icmp6
from pyvpnkit.wire.ipv4 import OFFSET_MASK, PROTO_ICMP, ipv4_header
from pyvpnkit.wire.ipv6 import NH_FRAGMENT, NH_ICMPV6, build_ipv6

# RFC 1812: quote as much as fits in a 576-byte error datagram.
MAX_ERROR_LEN = 576
_MAX_QUOTE = MAX_ERROR_LEN - 20 - 8

# Error kinds the runtime reports, as (ICMP type, code).
ERROR_KINDS: dict[str, tuple[int, int]] = {
    "net_unreachable": (icmpw.DEST_UNREACHABLE, icmpw.NET_UNREACHABLE),
    "host_unreachable": (icmpw.DEST_UNREACHABLE, icmpw.HOST_UNREACHABLE),
    "proto_unreachable": (icmpw.DEST_UNREACHABLE, icmpw.PROTO_UNREACHABLE),
    "port_unreachable": (icmpw.DEST_UNREACHABLE, icmpw.PORT_UNREACHABLE),
    "frag_needed": (icmpw.DEST_UNREACHABLE, icmpw.FRAG_NEEDED),
    "source_route_failed": (icmpw.DEST_UNREACHABLE, 5),
    "net_unknown": (icmpw.DEST_UNREACHABLE, 6),
    "host_unknown": (icmpw.DEST_UNREACHABLE, 7),
    "net_prohibited": (icmpw.DEST_UNREACHABLE, 9),
    "host_prohibited": (icmpw.DEST_UNREACHABLE, 10),
    "admin_prohibited": (icmpw.DEST_UNREACHABLE, icmpw.ADMIN_PROHIBITED),
    "ttl_exceeded": (icmpw.TIME_EXCEEDED, 0),
    "reassembly_timeout": (icmpw.TIME_EXCEEDED, 1),
}
_KIND_OF = {v: k for k, v in ERROR_KINDS.items()}

# The same kinds in ICMPv6 (RFC 4443); IPv6 has no "fragmentation needed": Packet Too Big.
ERROR_KINDS6: dict[str, tuple[int, int]] = {
    "net_unreachable": (icmp6.DEST_UNREACHABLE, icmp6.NO_ROUTE),
    "host_unreachable": (icmp6.DEST_UNREACHABLE, icmp6.ADDRESS_UNREACHABLE),
    "proto_unreachable": (icmp6.PARAMETER_PROBLEM, icmp6.UNRECOGNIZED_NEXT_HEADER),
    "port_unreachable": (icmp6.DEST_UNREACHABLE, icmp6.PORT_UNREACHABLE),
    "frag_needed": (icmp6.PACKET_TOO_BIG, 0),
    "source_route_failed": (icmp6.DEST_UNREACHABLE, icmp6.NO_ROUTE),
    "net_unknown": (icmp6.DEST_UNREACHABLE, icmp6.NO_ROUTE),
    "host_unknown": (icmp6.DEST_UNREACHABLE, icmp6.ADDRESS_UNREACHABLE),
    "net_prohibited": (icmp6.DEST_UNREACHABLE, icmp6.ADMIN_PROHIBITED),
    "host_prohibited": (icmp6.DEST_UNREACHABLE, icmp6.ADMIN_PROHIBITED),
    "admin_prohibited": (icmp6.DEST_UNREACHABLE, icmp6.ADMIN_PROHIBITED),
    "ttl_exceeded": (icmp6.TIME_EXCEEDED, icmp6.HOP_LIMIT_EXCEEDED),
    "reassembly_timeout": (icmp6.TIME_EXCEEDED, icmp6.REASSEMBLY_TIME_EXCEEDED),
}
_KIND_OF6 = {
    (icmp6.DEST_UNREACHABLE, icmp6.NO_ROUTE): "net_unreachable",
    (icmp6.DEST_UNREACHABLE, icmp6.ADMIN_PROHIBITED): "admin_prohibited",
    (icmp6.DEST_UNREACHABLE, icmp6.ADDRESS_UNREACHABLE): "host_unreachable",
    (icmp6.DEST_UNREACHABLE, icmp6.PORT_UNREACHABLE): "port_unreachable",
    (icmp6.PACKET_TOO_BIG, 0): "frag_needed",
    (icmp6.PARAMETER_PROBLEM, icmp6.UNRECOGNIZED_NEXT_HEADER): "proto_unreachable",
}

_ERROR_TYPES = frozenset({icmpw.DEST_UNREACHABLE, icmpw.TIME_EXCEEDED, 4, 5, 12})


def kind_from_icmp(typ: int, code: int) -> str | None:
    """The NAT error kind for an ICMP (type, code) the host received, or None."""
    kind = _KIND_OF.get((typ, code))
    if kind is None and typ == icmpw.DEST_UNREACHABLE:
        return "host_unreachable"  # other codes (TOS, precedence...) mean the same to a VM
    if kind is None and typ == icmpw.TIME_EXCEEDED:
        return "ttl_exceeded"
    return kind


def kind_from_icmp6(typ: int, code: int) -> str | None:
    """The NAT error kind for an ICMPv6 (type, code) the host received, or None."""
    kind = _KIND_OF6.get((typ, code))
    if kind is None and typ == icmp6.DEST_UNREACHABLE:
        return "host_unreachable"
    if kind is None and typ == icmp6.TIME_EXCEEDED:
        return "ttl_exceeded" if code == 0 else "reassembly_timeout"
    return kind


# What a VM hears when a host sendto() fails with this errno (others: silence, as a
# lost datagram). A firewall's REJECT shows as EPERM/EACCES.
_SEND_ERRNO_KINDS = {
    errno.ENETUNREACH: "net_unreachable",
    errno.EHOSTUNREACH: "host_unreachable",
    errno.EACCES: "admin_prohibited",
    errno.EPERM: "admin_prohibited",
}


def kind_from_send_errno(code: int | None) -> str | None:
    """The NAT error kind for a failed host sendto(), or None to drop quietly."""
    return _SEND_ERRNO_KINDS.get(code or 0)


def _is_unicast(addr: bytes) -> bool:
    first = addr[0]
    return addr != b"\xff\xff\xff\xff" and first != 0 and not 224 <= first <= 239


def may_report(original: bytes) -> bool:
    """RFC 1812 4.3.2.7: never answer errors with errors, nor non-first fragments,
    nor packets from non-unicast sources."""
    if len(original) < 20 or original[0] >> 4 != 4:
        return False
    ihl = (original[0] & 0xF) * 4
    if ihl < 20 or len(original) < ihl:
        return False
    frag = struct.unpack_from("!H", original, 6)[0]
    if frag & OFFSET_MASK:
        return False
    if not _is_unicast(original[12:16]):
        return False
    if original[9] == PROTO_ICMP:
        if len(original) <= ihl:
            return False
        icmp_type = original[ihl]
        if icmp_type in _ERROR_TYPES or icmp_type > 18:
            return False
    return True


def build_icmp_error(
    original: bytes,
    src: bytes,
    typ: int,
    code: int,
    *,
    next_hop_mtu: int = 0,
    ttl: int = 64,
    ident: int = 0,
) -> bytes | None:
    """An IPv4 packet from ``src`` to ``original``'s source quoting ``original``.

    ``original`` is the offending IPv4 packet (at least its header and 8 bytes
    of payload). Returns None when RFC 1812 forbids answering it.
    """
    if not may_report(original):
        return None
    rest = (
        struct.pack("!HH", 0, next_hop_mtu & 0xFFFF) if typ == icmpw.DEST_UNREACHABLE else bytes(4)
    )
    body = icmpw.build_icmp(typ, code, rest, original[:_MAX_QUOTE])
    header = ipv4_header(src, original[12:16], PROTO_ICMP, len(body), ttl=ttl, ident=ident)
    return header + body


def may_report6(original: bytes) -> bool:
    """RFC 4443 2.4(e): no errors about errors, non-first fragments or non-unicast sources.

    ``original`` starts with the fixed IPv6 header; its next-header byte names
    the upper layer (the NATs quote packets without extension headers).
    """
    if len(original) < 40 or original[0] >> 4 != 6:
        return False
    src = original[8:24]
    if src[0] == 0xFF or not any(src):
        return False
    nh = original[6]
    if nh == NH_FRAGMENT:
        return len(original) >= 44 and int.from_bytes(original[42:44], "big") & 0xFFF8 == 0
    return not (nh == NH_ICMPV6 and len(original) > 40 and original[40] < 128)


def build_icmp6_error(
    original: bytes, src: bytes, typ: int, code: int, *, mtu: int = 0
) -> bytes | None:
    """An IPv6 packet from ``src`` to ``original``'s source quoting ``original``."""
    if not may_report6(original):
        return None
    dst = original[8:24]
    if typ == icmp6.PACKET_TOO_BIG:
        rest = mtu.to_bytes(4, "big")
    elif typ == icmp6.PARAMETER_PROBLEM:
        rest = (6).to_bytes(4, "big")  # points at the next-header byte
    else:
        rest = bytes(4)
    body = icmp6.build_icmpv6(src, dst, typ, code, rest, icmp6.error_quote(original))
    return build_ipv6(src, dst, NH_ICMPV6, body)


def build_error_kind(
    original: bytes, src: bytes, kind: str, *, mtu: int | None = None, ident: int = 0
) -> bytes | None:
    """Like :func:`build_icmp_error` for a runtime error ``kind`` (see ERROR_KINDS);
    ICMPv6 when ``original`` is an IPv6 packet."""
    if original[:1] and original[0] >> 4 == 6:
        typecode6 = ERROR_KINDS6.get(kind)
        if typecode6 is None:
            return None
        pmtu = mtu if kind == "frag_needed" and mtu is not None and mtu >= 1280 else 1280
        return build_icmp6_error(original, src, *typecode6, mtu=pmtu)
    typecode = ERROR_KINDS.get(kind)
    if typecode is None:
        return None
    typ, code = typecode
    hop_mtu = mtu if (kind == "frag_needed" and mtu is not None and 68 <= mtu <= 0xFFFF) else 0
    return build_icmp_error(original, src, typ, code, next_hop_mtu=hop_mtu, ident=ident)


def dest_unreachable(original: bytes, src: bytes, code: int) -> bytes | None:
    return build_icmp_error(original, src, icmpw.DEST_UNREACHABLE, code)


def time_exceeded(original: bytes, src: bytes, code: int = 0) -> bytes | None:
    return build_icmp_error(original, src, icmpw.TIME_EXCEEDED, code)


def frag_needed(original: bytes, src: bytes, mtu: int) -> bytes | None:
    return build_icmp_error(
        original, src, icmpw.DEST_UNREACHABLE, icmpw.FRAG_NEEDED, next_hop_mtu=mtu
    )


__all__ = [
    "ERROR_KINDS",
    "ERROR_KINDS6",
    "build_icmp6_error",
    "kind_from_icmp6",
    "may_report6",
    "MAX_ERROR_LEN",
    "build_error_kind",
    "build_icmp_error",
    "dest_unreachable",
    "frag_needed",
    "kind_from_icmp",
    "may_report",
    "time_exceeded",
]
