"""What differs between IPv4 and IPv6 for the NATs, chosen by address length.

Flows carry their addresses as 4 or 16 bytes; these helpers let one code path
build headers, print endpoints and cut oversized packets for either family.
"""

from __future__ import annotations

import ipaddress

from pyvpnkit.core.config import NetConfig
from pyvpnkit.core.ip.ipfrag import fragment_ipv4
from pyvpnkit.wire.ipv4 import IPv4Packet, ipv4_header
from pyvpnkit.wire.ipv6 import (
    IPV6_HEADER_LEN,
    NH_FRAGMENT,
    IPv6Packet,
    fragment_header,
    ipv6_header,
)

IpPacket = IPv4Packet | IPv6Packet

IPV4_TCP_OVERHEAD = 40  # IPv4 + TCP headers: MSS = MTU - this
IPV6_TCP_OVERHEAD = 60


def ip_header(
    src: bytes, dst: bytes, proto: int, payload_len: int, *, ident: int = 0,
    dont_fragment: bool = True, ttl: int = 64,
) -> bytes:
    """An IPv4 or IPv6 header (by the address length) for ``payload_len`` bytes of ``proto``."""
    if len(src) == 16:
        return ipv6_header(src, dst, proto, payload_len, hop_limit=ttl)
    return ipv4_header(
        src, dst, proto, payload_len, ident=ident, dont_fragment=dont_fragment, ttl=ttl
    )


def gateway_for(config: NetConfig, vm_ip: bytes) -> bytes:
    """The stack's own address in the family of ``vm_ip``: first hop, forwards' source."""
    v6 = config.ipv6
    return v6.gateway_ip if len(vm_ip) == 16 and v6 is not None else config.gateway_ip


def hop_limit(pkt: IpPacket) -> int:
    return pkt.ttl if isinstance(pkt, IPv4Packet) else pkt.hop_limit


def quote(pkt: IpPacket) -> bytes:
    """The offending packet's header and first 8 payload bytes, for ICMP errors."""
    return pkt.header.tobytes() + pkt.payload[:8].tobytes()


def addr_text(addr: bytes) -> str:
    return str(ipaddress.ip_address(addr))


def endpoint_text(addr: bytes, port: int) -> str:
    """``1.2.3.4:80`` or ``[fd42::1]:80``."""
    text = addr_text(addr)
    return f"[{text}]:{port}" if len(addr) == 16 else f"{text}:{port}"


def fragment_ipv6(packet: bytes, mtu: int, ident: int) -> list[bytes]:
    """Cut an IPv6 packet (fixed header only, no extension headers) into Fragment-header
    pieces of at most ``mtu`` bytes; routers send Packet Too Big, but we are the source."""
    src, dst, next_header = packet[8:24], packet[24:40], packet[6]
    body = memoryview(packet)[IPV6_HEADER_LEN:]
    step = (mtu - IPV6_HEADER_LEN - 8) & ~7
    out = []
    for offset in range(0, len(body), step):
        chunk = body[offset : offset + step]
        more = offset + step < len(body)
        frag = fragment_header(next_header, offset, more, ident)
        out.append(
            ipv6_header(src, dst, NH_FRAGMENT, 8 + len(chunk), hop_limit=packet[7]) + frag
            + chunk.tobytes()
        )
    return out


def fragment(packet: bytes, mtu: int, ident: int) -> list[bytes]:
    """Packets of at most ``mtu`` bytes carrying ``packet``, for either family."""
    if len(packet) <= mtu:
        return [packet]
    if packet[0] >> 4 == 6:
        return fragment_ipv6(packet, mtu, ident)
    return fragment_ipv4(packet, mtu)
