"""ICMPv4 messages (RFC 792)."""

from __future__ import annotations

import struct
from builtins import memoryview  # mypyc finds dataclass field types here
from dataclasses import dataclass

from pyvpnkit.wire.checksum import internet_checksum, verify
from pyvpnkit.wire.errors import ParseError
from pyvpnkit.wire.ipv4 import PROTO_ICMP

ECHO_REPLY = 0
DEST_UNREACHABLE = 3
ECHO_REQUEST = 8
TIME_EXCEEDED = 11

# Destination-unreachable codes.
NET_UNREACHABLE = 0
HOST_UNREACHABLE = 1
PROTO_UNREACHABLE = 2
PORT_UNREACHABLE = 3
FRAG_NEEDED = 4
ADMIN_PROHIBITED = 13

_HDR = struct.Struct("!BBH4s")


@dataclass(slots=True)  # not frozen: frozen __init__ costs ~3 us a packet
class IcmpMessage:
    type: int
    code: int
    rest: bytes  # the 4 bytes after the checksum (id/seq for echo)
    payload: memoryview

    @property
    def ident(self) -> int:
        return int.from_bytes(self.rest[:2], "big")

    @property
    def seq(self) -> int:
        return int.from_bytes(self.rest[2:], "big")


def parse_icmp(buf: bytes | bytearray | memoryview, check: bool = True) -> IcmpMessage:
    if len(buf) < 8:
        raise ParseError(f"ICMP message too short ({len(buf)} bytes)")
    if check and not verify(buf):
        raise ParseError("ICMP checksum mismatch")
    typ, code, _csum, rest = _HDR.unpack_from(buf)
    return IcmpMessage(typ, code, rest, memoryview(buf)[8:])


def build_icmp(typ: int, code: int, rest: bytes, payload: bytes | memoryview) -> bytes:
    body = _HDR.pack(typ, code, 0, rest) + bytes(payload)
    csum = internet_checksum(body)
    return body[:2] + csum.to_bytes(2, "big") + body[4:]


def echo_rest(ident: int, seq: int) -> bytes:
    return struct.pack("!HH", ident, seq)


@dataclass(slots=True)
class EchoReport:
    """An IPv4 packet a raw ICMP socket delivered about an echo: a reply, or an error
    quoting our request (then ``quoted_dst`` is where that request went)."""

    type: int
    code: int
    ident: int
    seq: int
    payload: memoryview  # the reply's data (empty for an error)
    quoted_dst: bytes | None


def parse_echo_report(packet: memoryview) -> EchoReport:
    """Parse IPv4 + ICMP as read from a raw socket; ParseError unless it concerns an echo."""
    n = len(packet)
    if n < 28:
        raise ParseError(f"ICMP packet too short ({n} bytes)")
    ihl = (packet[0] & 0xF) * 4
    if n < ihl + 8:
        raise ParseError("ICMP header cut short")
    typ, code = packet[ihl], packet[ihl + 1]
    if typ == ECHO_REPLY:
        ident, seq = struct.unpack_from("!HH", packet, ihl + 4)
        return EchoReport(typ, code, ident, seq, packet[ihl + 8 :], None)
    inner = ihl + 8  # the quoted packet: our echo request
    if n < inner + 20:
        raise ParseError("no quoted IPv4 header")
    quoted = inner + (packet[inner] & 0xF) * 4
    if packet[inner + 9] != PROTO_ICMP or n < quoted + 8 or packet[quoted] != ECHO_REQUEST:
        raise ParseError("the quoted packet is not an echo request")
    ident, seq = struct.unpack_from("!HH", packet, quoted + 4)
    return EchoReport(typ, code, ident, seq, packet[0:0], bytes(packet[inner + 16 : inner + 20]))
