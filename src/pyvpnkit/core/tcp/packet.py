"""Builds the IPv4+TCP or IPv6+TCP packets of one connection with little per-packet work.

The output is byte-for-byte what ``ipv4_header(...) + build_tcp(...)`` gives,
but the parts that never change (addresses, ports, the pseudo-header and IP
header sums) are summed once per connection, the payload is copied once (into
the final packet), and the payload sum folds the big integer in halves before
the final modulo, which is cheaper than one modulo of the whole integer.
"""

from __future__ import annotations

import struct

from pyvpnkit.wire.ipv4 import FLAG_DF, PROTO_TCP

_IP = struct.Struct("!BBHHHBBH4s4s")
_IP6 = struct.Struct("!IHBB16s16s")
_TCP = struct.Struct("!HHIIBBHHH")
_MASKS: dict[int, int] = {}


def raw_sum(data: bytes | bytearray | memoryview) -> int:
    """``data`` (zero-padded to even length) as a big-endian integer, modulo 0xFFFF.

    2**16 == 1 (mod 0xFFFF), so this is the one's-complement sum of its 16-bit
    words, in [0, 0xFFFE]; folding at multiples of 16 bits keeps that invariant.
    """
    x = int.from_bytes(data, "big")
    bits = len(data) << 3
    if bits & 8:
        x <<= 8
        bits += 8
    while bits > 8192:
        h = (bits >> 5) << 4
        mask = _MASKS.get(h)
        if mask is None:
            mask = _MASKS[h] = (1 << h) - 1
        x = (x >> h) + (x & mask)
        bits = bits - h + 1
    return x % 0xFFFF


class PacketBuilder:
    __slots__ = ("_src", "_dst", "_ports", "_ph", "_ip_sum", "_v6", "checksum")

    def __init__(
        self, src: bytes, dst: bytes, sport: int, dport: int, checksum: bool = True
    ) -> None:
        self._src = src
        self._dst = dst
        self._ports = (sport, dport)
        self.checksum = checksum
        # The pseudo-header word sum is the same shape for both families (RFC 8200 8.1).
        self._ph = raw_sum(src + dst + struct.pack("!HH", PROTO_TCP, 0))
        self._v6 = len(src) == 16
        self._ip_sum = raw_sum(_IP.pack(0x45, 0, 0, 0, FLAG_DF, 64, PROTO_TCP, 0, src, dst))

    def build(
        self,
        seq: int,
        ack: int,
        flags: int,
        window: int,
        options: bytes = b"",
        payload: bytes | bytearray | memoryview = b"",
    ) -> bytes:
        """One complete IPv4 or IPv6 packet; ``options`` must be a multiple of 4 bytes long."""
        hlen = 20 + len(options)
        tcp_len = hlen + len(payload)
        sport, dport = self._ports
        hdr = _TCP.pack(sport, dport, seq, ack, hlen << 2, flags, window, 0, 0)
        if options:
            hdr += options
        if self.checksum:
            s = (raw_sum(hdr) + raw_sum(payload)) % 0xFFFF + (self._ph + tcp_len) % 0xFFFF
            s = (s & 0xFFFF) + (s >> 16)
            s = (s & 0xFFFF) + (s >> 16)
            csum = ~s & 0xFFFF
            hdr = hdr[:16] + csum.to_bytes(2, "big") + hdr[18:]
        if self._v6:
            ip = _IP6.pack(0x60000000, tcp_len, PROTO_TCP, 64, self._src, self._dst)
            return b"".join((ip, hdr, payload)) if payload else ip + hdr
        total = 20 + tcp_len
        ip_csum = ~((self._ip_sum + total) % 0xFFFF) & 0xFFFF
        ip = _IP.pack(0x45, 0, total, 0, FLAG_DF, 64, PROTO_TCP, ip_csum, self._src, self._dst)
        if payload:
            return b"".join((ip, hdr, payload))
        return ip + hdr
