"""Internet checksum (RFC 1071).

Summing 16-bit words in a Python loop is slow; reading the whole buffer as one
big integer and reducing it modulo 0xFFFF gives the same one's-complement sum
(2**16 == 1 mod 0xFFFF) at C speed.
"""

from __future__ import annotations

import struct

Buffer = bytes | bytearray | memoryview


def ones_sum(data: Buffer, initial: int = 0) -> int:
    """One's-complement sum of ``data`` (padded to even length), folded to 16 bits."""
    if len(data) & 1:
        data = bytes(data) + b"\x00"
    total = int.from_bytes(data, "big") % 0xFFFF + initial
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    # The modulo maps a sum of 0xFFFF to 0; both are "zero" in one's complement,
    # but a buffer of all-ones words must fold to 0xFFFF to match RFC 1071.
    return total


def internet_checksum(data: Buffer, initial: int = 0) -> int:
    """Checksum field value for ``data``: the complement of its one's-complement sum."""
    return (~ones_sum(data, initial)) & 0xFFFF


def pseudo_header_sum(src: bytes, dst: bytes, proto: int, length: int) -> int:
    """Partial sum of the pseudo-header used by TCP, UDP and ICMPv6 checksums.

    Family-neutral: with 4-byte addresses it is RFC 9293's IPv4 pseudo-header;
    with 16-byte ones it has the same word sum as RFC 8200's (the 32-bit length
    and the zero-padded next header add the same words), for lengths < 65536.
    """
    return ones_sum(src + dst + struct.pack("!HH", proto, length))


def verify(data: Buffer, initial: int = 0) -> bool:
    """True when ``data`` (including its checksum field) sums to all ones."""
    s = ones_sum(data, initial)
    return s == 0xFFFF or s == 0
