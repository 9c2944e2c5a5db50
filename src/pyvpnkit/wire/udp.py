"""UDP datagrams (RFC 768) with the IPv4 pseudo-header checksum.

Builders sum each datagram with one ``int.from_bytes`` of the payload and one
of the addresses, reduced modulo 0xFFFF (see checksum.py): the NAT builds one
reply per host datagram, so a sum costs a couple of C calls, not a call chain.
"""

from __future__ import annotations

import struct
from builtins import memoryview  # mypyc finds dataclass field types here
from dataclasses import dataclass

from pyvpnkit.wire.checksum import pseudo_header_sum, verify
from pyvpnkit.wire.errors import ParseError
from pyvpnkit.wire.ipv4 import PROTO_UDP

UDP_HEADER_LEN = 8
_HDR = struct.Struct("!HHHH")
_IPV4_UDP = struct.Struct("!BBHHHBBH4s4sHHHH")  # a 20-byte IPv4 header, then UDP's
_PIECE = 2048  # bytes summed per int.from_bytes in a large payload (even)


@dataclass(slots=True)  # not frozen: frozen __init__ costs ~3 us a packet
class UdpDatagram:
    src_port: int
    dst_port: int
    payload: memoryview


def parse_udp(
    buf: bytes | bytearray | memoryview, src: bytes, dst: bytes, check: bool = True
) -> UdpDatagram:
    if len(buf) < UDP_HEADER_LEN:
        raise ParseError(f"UDP datagram too short ({len(buf)} bytes)")
    sport, dport, length, csum = _HDR.unpack_from(buf)
    if length < UDP_HEADER_LEN or length > len(buf):
        raise ParseError(f"UDP length {length} does not fit {len(buf)} bytes")
    view = memoryview(buf)[:length]
    if check and csum != 0 and not verify(view, pseudo_header_sum(src, dst, PROTO_UDP, length)):
        raise ParseError("UDP checksum mismatch")
    return UdpDatagram(sport, dport, view[UDP_HEADER_LEN:])


def _payload_sum(payload: bytes | memoryview) -> int:
    """The payload's 16-bit words (a zero byte padding an odd length), as one
    integer congruent to their sum mod 0xFFFF.

    Reducing a 64 KB integer mod 0xFFFF costs a division per 30-bit digit
    (~100 us); 2 KB pieces added first leave one 2 KB integer to reduce (~60 us
    in all). Each piece ends an even number of bytes before the padded end, so
    its weight 2**(8*distance) is 1 mod 0xFFFF.
    """
    n = len(payload)
    if n <= _PIECE:
        body = int.from_bytes(payload, "big")
        return body << 8 if n & 1 else body
    view = memoryview(payload)
    last = (n - 1) // _PIECE * _PIECE
    body = int.from_bytes(view[last:], "big")
    if n & 1:
        body <<= 8
    for at in range(0, last, _PIECE):
        body += int.from_bytes(view[at : at + _PIECE], "big")
    return body


def _sum(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes | memoryview) -> int:
    """Pseudo-header (either family: same word sum), UDP header and payload, mod 0xFFFF."""
    length = UDP_HEADER_LEN + len(payload)
    addresses = int.from_bytes(src + dst, "big")
    return (addresses + _payload_sum(payload) + PROTO_UDP + 2 * length + sport + dport) % 0xFFFF


def build_udp(
    src: bytes, dst: bytes, sport: int, dport: int, payload: bytes | memoryview,
    checksum: bool = True,
) -> bytes:
    """A UDP datagram; without ``checksum`` its field is 0, for a link that fills it in."""
    # ~sum is never 0 here: a sum of 0 (mod 0xFFFF) goes out as all ones, since
    # a zero checksum means "no checksum" in UDP.
    csum = ~_sum(src, dst, sport, dport, payload) & 0xFFFF if checksum else 0
    return _HDR.pack(sport, dport, UDP_HEADER_LEN + len(payload), csum) + payload


def build_ipv4_udp(
    src: bytes, dst: bytes, sport: int, dport: int, payload: bytes | memoryview,
    ident: int = 0, ttl: int = 64, udp_checksum: bool = True,
) -> bytes:
    """An IPv4 packet (DF clear, no options) carrying one UDP datagram, both checksums set.

    Without ``udp_checksum`` the UDP checksum field is 0: for a link that
    fills it in (a TAP with a virtio-net header), summing the payload is waste.
    """
    length = UDP_HEADER_LEN + len(payload)
    total = 20 + length
    words = 0x4500 + total + ident + (ttl << 8) + PROTO_UDP + int.from_bytes(src + dst, "big")
    csum = ~_sum(src, dst, sport, dport, payload) & 0xFFFF if udp_checksum else 0
    return _IPV4_UDP.pack(
        0x45, 0, total, ident, 0, ttl, PROTO_UDP, ~(words % 0xFFFF) & 0xFFFF, src, dst,
        sport, dport, length, csum,
    ) + payload
