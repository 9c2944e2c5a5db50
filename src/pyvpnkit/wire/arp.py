"""ARP for IPv4 over Ethernet (RFC 826)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pyvpnkit.wire.errors import ParseError

ARP_REQUEST = 1
ARP_REPLY = 2
ARP_LEN = 28

_ARP = struct.Struct("!HHBBH6s4s6s4s")


@dataclass(frozen=True, slots=True)
class ArpPacket:
    op: int
    sha: bytes
    spa: bytes
    tha: bytes
    tpa: bytes


def parse_arp(buf: bytes | bytearray | memoryview) -> ArpPacket:
    if len(buf) < ARP_LEN:
        raise ParseError(f"ARP packet too short ({len(buf)} bytes)")
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = _ARP.unpack_from(buf)
    if htype != 1 or ptype != 0x0800 or hlen != 6 or plen != 4:
        raise ParseError("ARP for something other than IPv4 over Ethernet")
    if op not in (ARP_REQUEST, ARP_REPLY):
        raise ParseError(f"unknown ARP op {op}")
    return ArpPacket(op, sha, spa, tha, tpa)


def build_arp(op: int, sha: bytes, spa: bytes, tha: bytes, tpa: bytes) -> bytes:
    return _ARP.pack(1, 0x0800, 6, 4, op, sha, spa, tha, tpa)
