"""ARP responder for the addresses the stack owns (and every off-VM next hop).

The VM must be able to reach the gateway, the host alias and anything it
routes through an unusual next hop, so we answer who-has for every IPv4
address except those that belong to VMs on the switch (those VMs answer for
themselves). Replies are never learned from: a spoofed reply cannot redirect
our traffic, because our MAC table is only filled from frames the VM sends.
"""

from __future__ import annotations

from collections.abc import Callable

from pyvpnkit.wire.arp import ARP_REPLY, ARP_REQUEST, ArpPacket, build_arp, parse_arp
from pyvpnkit.wire.errors import ParseError

ZERO_IP = b"\x00\x00\x00\x00"


class ArpResponder:
    def __init__(self, our_mac: bytes, is_vm_address: Callable[[bytes], bool]) -> None:
        self.our_mac = our_mac
        self._is_vm_address = is_vm_address

    def handle(self, payload: bytes | memoryview) -> tuple[ArpPacket | None, bytes | None]:
        """Return (the parsed packet, our reply payload or None).

        Raises ParseError for malformed packets so the caller counts the drop.
        """
        pkt = parse_arp(payload)
        if pkt.op != ARP_REQUEST:
            return pkt, None
        if pkt.spa == ZERO_IP or pkt.tpa == pkt.spa:
            # Address probes (RFC 5227) and gratuitous ARP: answering would
            # make the VM think its address is taken.
            return pkt, None
        if self._is_vm_address(pkt.tpa):
            return pkt, None
        reply = build_arp(ARP_REPLY, self.our_mac, pkt.tpa, pkt.sha, pkt.spa)
        return pkt, reply


__all__ = ["ArpResponder", "ParseError"]
