"""IPv6 fragment reassembly (RFC 8200 4.5), with the IPv4 reassembler's bounds and expiry.

Only the header handling differs from IPv4, so this subclasses ipfrag's
FragmentReassembly: fragments are keyed by (src, dst, identification); the whole
packet is the unfragmentable part of fragment zero (the headers before its
Fragment header) with the Fragment header removed, the next-header byte that
named it set to the fragmentable part's first header, and the payload length
recomputed. Overlaps discard the datagram (RFC 5722). Atomic fragments never
get here: parse_ipv6 walks through them.

IPv6 routers never fragment, so there is no fragment_ipv6: packets too big for
a VM's link get ICMPv6 Packet Too Big instead (phase B's NAT).
"""

from __future__ import annotations

import struct
from typing import ClassVar

from pyvpnkit.core.ip.ipfrag import FragmentReassembly
from pyvpnkit.wire.icmpv6 import REASSEMBLY_TIME_EXCEEDED, TIME_EXCEEDED, build_icmpv6, error_quote
from pyvpnkit.wire.ipv6 import IPV6_HEADER_LEN, NH_FRAGMENT, NH_ICMPV6, IPv6Packet, build_ipv6

_Key = tuple[bytes, bytes, int, int]


class Ipv6Reassembler(FragmentReassembly):
    max_datagram: ClassVar[int] = IPV6_HEADER_LEN + 0xFFFF  # the payload length field is 16 bits

    def add(self, pkt: IPv6Packet, now: float) -> bytes | None:
        """Store one fragment; return the whole IPv6 packet once it is complete.

        A packet that needs no reassembly (proto is not NH_FRAGMENT) comes back whole.
        """
        frag = pkt.fragment
        if pkt.proto != NH_FRAGMENT or frag is None:
            return pkt.header.tobytes() + pkt.payload.tobytes()
        key = (pkt.src, pkt.dst, NH_FRAGMENT, frag.ident)
        header: bytes | memoryview = pkt.header[: frag.start]
        if frag.offset == 0:  # the next-header byte naming the Fragment header names its content
            first = bytearray(header)
            first[frag.link] = frag.next_header
            header = bytes(first)
        return self._add(key, frag.offset, frag.more, pkt.payload, header, now)

    def _whole_header(self, header: bytes, payload_len: int) -> bytes:
        hdr = bytearray(header)
        struct.pack_into("!H", hdr, 4, len(hdr) - IPV6_HEADER_LEN + payload_len)
        return bytes(hdr)

    def _timeout_error(self, key: _Key, quote: bytes) -> bytes | None:
        """ICMPv6 time exceeded (reassembly) from the address the VM was talking to."""
        vm, peer = key[0], key[1]
        msg = build_icmpv6(
            peer, vm, TIME_EXCEEDED, REASSEMBLY_TIME_EXCEEDED, bytes(4), error_quote(quote)
        )
        return build_ipv6(peer, vm, NH_ICMPV6, msg)
