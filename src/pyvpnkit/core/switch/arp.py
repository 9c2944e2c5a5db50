"""ARP responder for the addresses the stack owns (and every off-VM next hop).

The VM must be able to reach the gateway, the host alias and anything it
routes through an unusual next hop, so we answer who-has for every IPv4
address except those that belong to VMs on the switch (those VMs answer for
themselves). Address probes (sender 0.0.0.0) are answered only for the
stack's own addresses, so a VM learns that the gateway's address is taken.
Replies are never learned from: a spoofed reply cannot redirect
our traffic, because our MAC table is only filled from frames the VM sends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from pyvpnkit.wire.arp import ARP_REPLY, ARP_REQUEST, ArpPacket, build_arp, parse_arp
from pyvpnkit.wire.errors import ParseError

ZERO_IP = b"\x00\x00\x00\x00"


class ArpResponder:
    def __init__(
        self,
        our_mac: bytes,
        is_vm_address: Callable[[bytes], bool],
        own: Iterable[bytes] = (),
    ) -> None:
        """`own`: the stack's own addresses (gateway, host alias, DNS), defended against probes."""
        self.our_mac = our_mac
        self._is_vm_address = is_vm_address
        self._own = frozenset(own)
        self.defended = 0  # probes answered: a VM tried to take one of our addresses

    def handle(self, payload: bytes | memoryview) -> tuple[ArpPacket | None, bytes | None]:
        """Return (the parsed packet, our reply payload or None).

        Raises ParseError for malformed packets so the caller counts the drop.
        """
        pkt = parse_arp(payload)
        if pkt.op != ARP_REQUEST:
            return pkt, None
        if pkt.spa == ZERO_IP and pkt.tpa in self._own:
            # A probe (RFC 5227) for an address we hold: say it is taken, as Linux
            # defends its own (the reply's target address is the probe's 0.0.0.0).
            self.defended += 1
            return pkt, build_arp(ARP_REPLY, self.our_mac, pkt.tpa, pkt.sha, ZERO_IP)
        if pkt.spa == ZERO_IP or pkt.tpa == pkt.spa:
            # Other probes and gratuitous ARP: answering would make the VM
            # think its address is taken.
            return pkt, None
        if self._is_vm_address(pkt.tpa):
            return pkt, None
        reply = build_arp(ARP_REPLY, self.our_mac, pkt.tpa, pkt.sha, pkt.spa)
        return pkt, reply


__all__ = ["ArpResponder", "ParseError"]
