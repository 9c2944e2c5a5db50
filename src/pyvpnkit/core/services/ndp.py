"""Neighbor Discovery for the virtual router: NS/NA, RS/RA, periodic RAs, a neighbor table.

The stack owns a few IPv6 addresses (the gateway's in the prefix, fe80::1, the
host alias's when host loopback is on) and answers Neighbor Solicitations for
those only: a VM answers for its own addresses, and answering for an address we
do not own would hijack it. Duplicate address detection (RFC 4862 5.4) is an NS
from :: : for one of our addresses we defend it with an NA to all-nodes; for
anything else we stay silent, or the VM would think its address is taken.

Router Solicitations get an RA at once, unicast to a source that has an
address, multicast (rate-limited to one per MIN_DELAY_BETWEEN_RAS) to one that
sends from ::. Unsolicited RAs go out every [max/3, max] seconds, the first
three at most 16 s apart (RFC 4861 6.2.4), the jitter drawn from an injected
rng so tests are exact.

The neighbor table maps VM addresses to MACs, learned from NS/NA and DAD probes
and from any source address the switch reports. A DAD probe claims only an
address no one holds; other evidence replaces an entry (a VM restarted with a
new MAC must not be locked out). Addresses of the stack are never learned.
MLD reports and queries are dropped and counted: the switch floods multicast.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from pyvpnkit.core.config import NetConfig
from pyvpnkit.core.ip.ipv6_layout import Ipv6Layout
from pyvpnkit.wire.errors import ParseError
from pyvpnkit.wire.icmpv6 import (
    MLD_TYPES,
    Icmpv6Message,
    NeighborAdvertisement,
    NeighborSolicitation,
    PrefixInfo,
    RouterAdvertisement,
    RouterSolicitation,
    build_na,
    build_ra,
    encode_options,
    parse_ndp,
)
from pyvpnkit.wire.ipv6 import (
    ALL_NODES,
    NH_ICMPV6,
    UNSPECIFIED,
    IPv6Packet,
    build_ipv6,
    is_multicast,
    multicast_mac,
)

NDP_HOP_LIMIT = 255  # RFC 4861: anything less crossed a router and is forged
MAX_INITIAL_RTR_ADVERTISEMENTS = 3
MAX_INITIAL_RTR_ADVERT_INTERVAL = 16.0
MIN_DELAY_BETWEEN_RAS = 3.0
# A VM has a few IPv6 addresses (link-local, SLAAC, temporary, DHCPv6); one that
# sends from thousands must not grow the table (and the DNS names built from it)
# without bound: past these, the oldest entry of that MAC, or overall, goes.
MAX_ADDRESSES_PER_MAC = 16
MAX_NEIGHBORS = 4096


@dataclass(frozen=True, slots=True)
class NdpSend:
    """An IPv6 packet (hop limit 255) to put in an Ethernet frame to ``dst_mac``."""

    dst_mac: bytes
    packet: bytes


class NeighborTable:
    """VM IPv6 addresses -> MACs; the switch's routing table for IPv6."""

    def __init__(self, ours: frozenset[bytes]) -> None:
        self._ours = ours
        self._macs: dict[bytes, bytes] = {}

    def learn(self, addr: bytes, mac: bytes, *, tentative: bool = False) -> bool:
        """Record that ``addr`` is at ``mac``; True when the table changed.

        ``tentative`` (a DAD probe) claims only a free address.
        """
        if addr in self._ours or addr == UNSPECIFIED or is_multicast(addr):
            return False
        old = self._macs.get(addr)
        if old == mac or (tentative and old is not None):
            return False
        if old is None:
            held = self.addresses_of(mac)
            if len(held) >= MAX_ADDRESSES_PER_MAC:
                del self._macs[held[0]]
            elif len(self._macs) >= MAX_NEIGHBORS:
                del self._macs[next(iter(self._macs))]
        self._macs[addr] = mac
        return True

    def lookup(self, addr: bytes) -> bytes | None:
        return self._macs.get(addr)

    def addresses_of(self, mac: bytes) -> list[bytes]:
        return [a for a, m in self._macs.items() if m == mac]

    def forget_mac(self, mac: bytes) -> None:
        """A VM's link went away: its addresses may come back under another MAC."""
        for a in self.addresses_of(mac):
            del self._macs[a]

    def items(self) -> list[tuple[bytes, bytes]]:
        return list(self._macs.items())

    def __len__(self) -> int:
        return len(self._macs)


class NdpResponder:
    def __init__(
        self,
        config: NetConfig,
        layout: Ipv6Layout,
        now: float,
        *,
        rng: Callable[[], float],
    ) -> None:
        self.layout = layout
        self.mac = config.gateway_mac
        self.rng = rng  # uniform in [0, 1)
        ours = {layout.gateway_ip, layout.link_local_ip, layout.dns_ip}
        if config.host_loopback:
            ours.add(layout.host_ip)
        self.addresses = frozenset(ours)
        self.neighbors = NeighborTable(self.addresses)
        self.stats: Counter[str] = Counter()
        self._out: list[NdpSend] = []
        self._initial_left = MAX_INITIAL_RTR_ADVERTISEMENTS
        self._last_multicast_ra = -MIN_DELAY_BETWEEN_RAS
        self._next_ra = now  # the first RA goes out at start
        domains = config.search_domains or ((config.domain,) if config.domain else ())
        life = 3 * int(layout.ra_max_interval)  # RFC 8106: at least 3 x MaxRtrAdvInterval
        self._ra_options = encode_options(
            source_lladdr=self.mac,
            prefixes=[
                PrefixInfo(
                    layout.prefix,
                    layout.subnet.prefixlen,
                    True,
                    True,
                    layout.valid_lifetime,
                    layout.preferred_lifetime,
                )
            ],
            mtu=config.mtu,
            rdnss=(life, [layout.dns_ip]) if config.serve_dns else None,
            dnssl=(life, domains) if config.serve_dns else None,
        )

    def is_ours(self, addr: bytes) -> bool:
        return addr in self.addresses

    def handle(self, src_mac: bytes, pkt: IPv6Packet, msg: Icmpv6Message, now: float) -> None:
        """One NDP or MLD message from a VM. Raises ParseError for the caller to count."""
        if msg.type in MLD_TYPES:
            self.stats["mld_ignored"] += 1
            return
        ndp = parse_ndp(msg)
        if ndp is None:
            raise ParseError(f"ICMPv6 type {msg.type} is not NDP")
        if pkt.hop_limit != NDP_HOP_LIMIT:
            raise ParseError(f"NDP message with hop limit {pkt.hop_limit}")
        if isinstance(ndp, NeighborSolicitation):
            self._solicitation(src_mac, pkt, ndp)
        elif isinstance(ndp, NeighborAdvertisement):
            self._advertisement(src_mac, ndp)
        elif isinstance(ndp, RouterSolicitation):
            self._router_solicitation(src_mac, pkt, ndp, now)
        elif isinstance(ndp, RouterAdvertisement):
            self.stats["ra_from_vm_ignored"] += 1  # we are the only router

    def _solicitation(self, src_mac: bytes, pkt: IPv6Packet, ns: NeighborSolicitation) -> None:
        target = ns.target
        if is_multicast(target):
            raise ParseError("neighbor solicitation for a multicast address")
        if pkt.src == UNSPECIFIED:
            if ns.options.source_lladdr is not None:
                raise ParseError("DAD probe with a source link-layer address")
            if target in self.addresses:
                self.stats["dad_defended"] += 1
                self._send_na(target, ALL_NODES, multicast_mac(ALL_NODES), solicited=False)
            else:
                self.stats["dad_probe"] += 1
                self.neighbors.learn(target, src_mac, tentative=True)
            return
        mac = ns.options.source_lladdr or src_mac
        self.neighbors.learn(pkt.src, mac)
        if target in self.addresses:
            self.stats["ns_answered"] += 1
            self._send_na(target, pkt.src, mac, solicited=True)
        else:
            self.stats["ns_not_ours"] += 1

    def _advertisement(self, src_mac: bytes, na: NeighborAdvertisement) -> None:
        if na.target in self.addresses:
            self.stats["na_conflict"] += 1  # a VM claims one of our addresses: keep it
            return
        self.neighbors.learn(na.target, na.options.target_lladdr or src_mac)

    def _router_solicitation(
        self, src_mac: bytes, pkt: IPv6Packet, rs: RouterSolicitation, now: float
    ) -> None:
        if pkt.src == UNSPECIFIED:
            if rs.options.source_lladdr is not None:
                raise ParseError("router solicitation from :: with a link-layer address")
            if now - self._last_multicast_ra >= MIN_DELAY_BETWEEN_RAS:
                self._multicast_ra(now)
            else:  # rate limit: the scheduled RA comes a little earlier instead
                self._next_ra = min(self._next_ra, self._last_multicast_ra + MIN_DELAY_BETWEEN_RAS)
            return
        mac = rs.options.source_lladdr or src_mac
        self.neighbors.learn(pkt.src, mac)
        self.stats["ra_unicast"] += 1
        self._out.append(NdpSend(mac, self._ra(pkt.src)))

    def _send_na(self, target: bytes, dst: bytes, dst_mac: bytes, *, solicited: bool) -> None:
        na = build_na(
            target,
            dst,
            target,
            router=True,
            solicited=solicited,
            override=True,
            options=encode_options(target_lladdr=self.mac),
        )
        packet = build_ipv6(target, dst, NH_ICMPV6, na, hop_limit=NDP_HOP_LIMIT)
        self._out.append(NdpSend(dst_mac, packet))

    def _ra(self, dst: bytes) -> bytes:
        src = self.layout.link_local_ip
        ra = build_ra(
            src,
            dst,
            managed=self.layout.dhcpv6,
            other=self.layout.dhcpv6,
            router_lifetime=self.layout.router_lifetime,
            options=self._ra_options,
        )
        return build_ipv6(src, dst, NH_ICMPV6, ra, hop_limit=NDP_HOP_LIMIT)

    def _multicast_ra(self, now: float) -> None:
        self.stats["ra_multicast"] += 1
        self._out.append(NdpSend(multicast_mac(ALL_NODES), self._ra(ALL_NODES)))
        self._last_multicast_ra = now
        top = self.layout.ra_max_interval
        interval = top / 3 + self.rng() * (top - top / 3)
        if self._initial_left > 0:
            self._initial_left -= 1
            interval = min(interval, MAX_INITIAL_RTR_ADVERT_INTERVAL)
        self._next_ra = now + interval

    # -- timers and output -------------------------------------------------------

    def next_deadline(self) -> float:
        return self._next_ra

    def handle_timer(self, now: float) -> None:
        if now >= self._next_ra:
            self._multicast_ra(now)

    def drain(self) -> list[NdpSend]:
        out, self._out = self._out, []
        return out
