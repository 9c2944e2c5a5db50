"""IPv4 headers (RFC 791): options are skipped, fragments recognised."""

from __future__ import annotations

import struct
from builtins import memoryview  # mypyc finds dataclass field types here
from dataclasses import dataclass

from pyvpnkit.wire.checksum import internet_checksum, verify
from pyvpnkit.wire.errors import ParseError

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17

IPV4_HEADER_LEN = 20
FLAG_DF = 0x4000
FLAG_MF = 0x2000
OFFSET_MASK = 0x1FFF

_HDR = struct.Struct("!BBHHHBBH4s4s")


@dataclass(slots=True)  # not frozen: frozen __init__ costs ~3 us a packet
class IPv4Packet:
    src: bytes
    dst: bytes
    proto: int
    ttl: int
    ident: int
    tos: int
    dont_fragment: bool
    more_fragments: bool
    frag_offset: int  # in bytes
    header: memoryview  # the whole header, options included
    payload: memoryview  # trimmed to total length (Ethernet padding removed)

    @property
    def is_fragment(self) -> bool:
        return self.more_fragments or self.frag_offset != 0


def parse_ipv4(buf: bytes | bytearray | memoryview, check: bool = True) -> IPv4Packet:
    if len(buf) < IPV4_HEADER_LEN:
        raise ParseError(f"IPv4 packet too short ({len(buf)} bytes)")
    vihl, tos, total, ident, frag, ttl, proto, _csum, src, dst = _HDR.unpack_from(buf)
    if vihl >> 4 != 4:
        raise ParseError(f"IP version {vihl >> 4} is not 4")
    ihl = (vihl & 0xF) * 4
    if ihl < IPV4_HEADER_LEN:
        raise ParseError(f"IPv4 header length {ihl} too small")
    if total < ihl or total > len(buf):
        raise ParseError(f"IPv4 total length {total} does not fit {len(buf)} bytes")
    view = buf if type(buf) is memoryview else memoryview(buf)
    header = view[:ihl]
    if check and not verify(header):
        raise ParseError("IPv4 header checksum mismatch")
    return IPv4Packet(
        src,
        dst,
        proto,
        ttl,
        ident,
        tos,
        bool(frag & FLAG_DF),
        bool(frag & FLAG_MF),
        (frag & OFFSET_MASK) << 3,
        header,
        view[ihl:total],
    )


def ipv4_header(
    src: bytes,
    dst: bytes,
    proto: int,
    payload_len: int,
    *,
    ttl: int = 64,
    ident: int = 0,
    tos: int = 0,
    dont_fragment: bool = True,
    more_fragments: bool = False,
    frag_offset: int = 0,
) -> bytes:
    """A 20-byte header with its checksum filled in."""
    frag = (FLAG_DF if dont_fragment else 0) | (FLAG_MF if more_fragments else 0)
    frag |= frag_offset >> 3
    hdr = _HDR.pack(0x45, tos, IPV4_HEADER_LEN + payload_len, ident, frag, ttl, proto, 0, src, dst)
    csum = internet_checksum(hdr)
    return hdr[:10] + csum.to_bytes(2, "big") + hdr[12:]


def build_ipv4(src: bytes, dst: bytes, proto: int, payload: bytes, **kw: int | bool) -> bytes:
    return ipv4_header(src, dst, proto, len(payload), **kw) + payload  # type: ignore[arg-type]
