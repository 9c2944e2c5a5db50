"""Ethernet II frames."""

from __future__ import annotations

import struct
from builtins import memoryview  # mypyc finds dataclass field types here
from dataclasses import dataclass

from pyvpnkit.wire.errors import ParseError

ETH_HEADER_LEN = 14
ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_ARP = 0x0806
ETHERTYPE_IPV6 = 0x86DD
ETHERTYPE_VLAN = 0x8100
BROADCAST = b"\xff" * 6

_HDR = struct.Struct("!6s6sH")


@dataclass(slots=True)  # not frozen: frozen __init__ costs ~3 us a packet
class EthernetFrame:
    dst: bytes
    src: bytes
    ethertype: int
    payload: memoryview


def parse_ethernet(buf: bytes | bytearray | memoryview) -> EthernetFrame:
    if len(buf) < ETH_HEADER_LEN:
        raise ParseError(f"ethernet frame too short ({len(buf)} bytes)")
    dst, src, ethertype = _HDR.unpack_from(buf)
    if ethertype < 0x0600:
        raise ParseError(f"not an Ethernet II frame (length field {ethertype})")
    return EthernetFrame(dst, src, ethertype, memoryview(buf)[ETH_HEADER_LEN:])


def build_ethernet(dst: bytes, src: bytes, ethertype: int, payload: bytes) -> bytes:
    return _HDR.pack(dst, src, ethertype) + payload


def mac_to_str(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def mac_from_str(text: str) -> bytes:
    parts = text.replace("-", ":").split(":")
    if len(parts) != 6:
        raise ValueError(f"bad MAC address {text!r}")
    return bytes(int(p, 16) for p in parts)


def is_multicast(mac: bytes) -> bool:
    return bool(mac[0] & 1)
