"""The switch's IPv6 side: NDP, DHCPv6, echo and DNS for our addresses, routing to VMs.

The stack hands every 0x86DD frame here. Fragments are reassembled first, then
the source is checked as the IPv4 side does: the stack's own addresses, an
address another MAC holds (learned, or leased by DHCPv6) are refused; anything
else in the prefix or link-local is learned into the NDP neighbor table, which
is the routing table for packets to VMs. Packets for the stack's services
(NDP and MLD, DHCPv6 on 547, echo to the gateway, fe80::1 and the alias, DNS on
the gateway's :53 over UDP) are answered here; everything else is the data
plane's (``Stack.ipv6_transport``). Multicast frames were already flooded to
the other links by the Ethernet switch; here they only feed our services.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from typing import Protocol

from pyvpnkit.core.config import NetConfig
from pyvpnkit.core.dns import DnsServer
from pyvpnkit.core.dns.server import truncate_reply
from pyvpnkit.core.ip.ip6frag import Ipv6Reassembler
from pyvpnkit.core.ip.ipv6_layout import Ipv6Layout
from pyvpnkit.core.services.dhcpv6 import Dhcpv6Server
from pyvpnkit.core.services.ndp import NDP_HOP_LIMIT, NdpResponder
from pyvpnkit.core.switch.ippool import AddressPool, key_mac, mac_key
from pyvpnkit.wire import icmpv6 as icmp6
from pyvpnkit.wire.dhcpv6 import ALL_SERVERS, CLIENT_PORT, SERVER_PORT
from pyvpnkit.wire.ethernet import ETHERTYPE_IPV6
from pyvpnkit.wire.ipv6 import (
    IPV6_HEADER_LEN,
    NH_ICMPV6,
    NH_UDP,
    UNSPECIFIED,
    IPv6Packet,
    build_ipv6,
    is_link_local,
    is_multicast,
    multicast_mac,
    parse_ipv6,
    solicited_node,
)
from pyvpnkit.wire.udp import build_udp, parse_udp

DNS_PORT = 53
SOLICIT_INTERVAL = 1.0  # RFC 4861 RETRANS_TIMER: one NS a second per unknown address
MAX_SOLICITED = 1024
_LOCAL_TYPES = icmp6.NDP_TYPES | icmp6.MLD_TYPES
_ETHERTYPE = ETHERTYPE_IPV6.to_bytes(2, "big")


class Switch(Protocol):
    """What this module uses of core.stack.Stack (which imports this module)."""

    config: NetConfig
    stats: Counter[str]
    macs: dict[bytes, int]
    dns: DnsServer

    @property
    def vms(self) -> Mapping[bytes, object]: ...

    @property
    def check_checksums(self) -> bool: ...

    @property
    def drained_at(self) -> float: ...

    def emit(self, link: int, frame: bytes) -> None: ...

    def ipv6_transport(self, link: int, src_mac: bytes, pkt: IPv6Packet, now: float) -> None: ...


class Ipv6Switch:
    """One stack's IPv6: built only when ``config.ipv6`` is set."""

    def __init__(self, stack: Switch, layout: Ipv6Layout, rng: Callable[[], float]) -> None:
        self._stack = stack
        self.layout = layout
        cfg = stack.config
        self.stats: Counter[str] = Counter()
        self.ndp = NdpResponder(cfg, layout, 0.0, rng=rng)  # the first RA at the first timer
        self.neighbors = self.ndp.neighbors
        self.pool = AddressPool(layout.lowest_ip, layout.highest_ip)
        self.dhcp = Dhcpv6Server(cfg, layout, self.pool)
        self.frag = Ipv6Reassembler()
        self._echo = {layout.gateway_ip, layout.link_local_ip, layout.host_ip, layout.dns_ip}
        self._dhcp_dst = {ALL_SERVERS, layout.gateway_ip, layout.link_local_ip, layout.dns_ip}
        self._eth_src = cfg.gateway_mac + _ETHERTYPE
        self._solicited: dict[bytes, float] = {}  # address -> when we last sent an NS for it

    # -- VMs -----------------------------------------------------------------

    def add_vm(self, mac: bytes, ip: bytes) -> None:
        """A namespace configured with a static address: hold it in the pool, route to it."""
        self.pool.allocate(mac_key(mac), ip)
        if self.neighbors.learn(ip, mac):
            self._names_changed()

    def forget_macs(self, macs: list[bytes]) -> None:
        for mac in macs:
            self.neighbors.forget_mac(mac)
        self._names_changed()

    def vm_addresses(self) -> list[bytes]:
        """The VMs' addresses in the prefix (for the DNS names of VMs)."""
        return [a for a, _mac in self.neighbors.items() if self.layout.in_subnet(a)]

    def _names_changed(self) -> None:
        self._stack.dns.set_vm_addresses([*self._stack.vms, *self.vm_addresses()])

    def _learn(self, mac: bytes, src: bytes) -> bool:
        """Note ``src`` lives behind ``mac``; False for a spoofed source (as IPv4's _learn)."""
        held = self.neighbors.lookup(src)
        if held == mac:
            return True
        if held is not None or self.ndp.is_ours(src) or src in self._echo:
            return False
        if not is_link_local(src):
            if not self.layout.in_subnet(src):
                return True  # routed from behind the VM: nothing to learn, nothing to steal
            owner = self.pool.owner(src)
            if owner is not None and key_mac(owner) not in (None, mac):
                return False
        self.neighbors.learn(src, mac)
        self._names_changed()
        return True

    # -- frames in -----------------------------------------------------------

    def receive(self, link: int, src_mac: bytes, data: memoryview, now: float) -> None:
        """One IPv6 packet from a VM; raises ParseError for the stack to count."""
        pkt = parse_ipv6(data)
        self.stats["packets_in"] += 1
        if pkt.src != UNSPECIFIED and not self._learn(src_mac, pkt.src):
            self._stack.stats["drop_spoofed_source"] += 1
            return
        if pkt.is_fragment:
            whole = self.frag.add(pkt, now)
            if whole is None:
                return
            pkt = parse_ipv6(whole)
        dst = pkt.dst
        proto = pkt.proto
        if proto == NH_ICMPV6 and self._icmpv6(src_mac, pkt, now):
            return
        if proto == NH_UDP and self._udp(link, src_mac, pkt, now):
            return
        if is_multicast(dst):
            self.stats["drop_multicast"] += 1  # flooded already; no service of ours
        elif dst != pkt.src and self.neighbors.lookup(dst) is not None:
            self.route(pkt.header.tobytes() + pkt.payload.tobytes())  # VM to VM via us
        else:
            self._stack.ipv6_transport(link, src_mac, pkt, now)

    def _icmpv6(self, src_mac: bytes, pkt: IPv6Packet, now: float) -> bool:
        """NDP, MLD and echo to our addresses; True when handled here."""
        typ = pkt.payload[0] if pkt.payload else -1
        if typ in _LOCAL_TYPES:
            before = len(self.neighbors)
            msg = icmp6.parse_icmpv6(pkt.payload, pkt.src, pkt.dst)
            self.ndp.handle(src_mac, pkt, msg, now)
            if len(self.neighbors) != before:
                self._names_changed()
            self._send_ndp()
            return True
        if typ != icmp6.ECHO_REQUEST or pkt.dst not in self._echo:
            return False
        msg = icmp6.parse_icmpv6(pkt.payload, pkt.src, pkt.dst)
        self.stats["echo_answered"] += 1
        reply = icmp6.build_icmpv6(pkt.dst, pkt.src, icmp6.ECHO_REPLY, 0, msg.rest, msg.body)
        self.route(build_ipv6(pkt.dst, pkt.src, NH_ICMPV6, reply))
        return True

    def _udp(self, link: int, src_mac: bytes, pkt: IPv6Packet, now: float) -> bool:
        """DHCPv6 and DNS; True when handled here."""
        dst = pkt.dst
        if dst not in self._dhcp_dst:
            return False
        dgram = parse_udp(pkt.payload, pkt.src, dst, self._stack.check_checksums)
        if dgram.dst_port == SERVER_PORT:
            reply = self.dhcp.handle(src_mac, pkt.src, dgram.payload, now)
            if reply is not None:
                udp = build_udp(reply.src_ip, reply.dst_ip, SERVER_PORT, CLIENT_PORT, reply.payload)
                packet = build_ipv6(reply.src_ip, reply.dst_ip, NH_UDP, udp)
                self._stack.emit(link, reply.dst_mac + self._eth_src + packet)
            return True
        if dgram.dst_port == DNS_PORT and dst == self.layout.dns_ip:
            if not self._stack.config.serve_dns:
                return False
            self._stack.dns.handle_query(dgram.payload, (pkt.src, dgram.src_port), "udp", now)
            return True
        return False

    # -- frames out ----------------------------------------------------------

    def dns_reply(self, vm_ip: bytes, vm_port: int, data: bytes) -> None:
        src = self.layout.dns_ip
        room = self._stack.config.mtu - IPV6_HEADER_LEN - 8  # the server sized it for IPv4
        if len(data) > room:
            data = truncate_reply(data, room, None)  # TC: the client asks again over TCP
        self.route(build_ipv6(src, vm_ip, NH_UDP, build_udp(src, vm_ip, DNS_PORT, vm_port, data)))

    def route(self, packet: bytes) -> None:
        """Send an IPv6 packet to the VM that holds its destination (multicast: every link)."""
        dst = packet[24:40]
        stack = self._stack
        if dst[0] == 0xFF:
            self._flood(multicast_mac(dst), packet)
            return
        mac = self.neighbors.lookup(dst)
        if mac is None:
            owner = self.pool.owner(dst)
            mac = key_mac(owner) if owner is not None else None
        link = stack.macs.get(mac) if mac is not None else None
        if mac is None or link is None:
            stack.stats["drop_no_route"] += 1
            self._solicit(dst)
            return
        # Over the MTU goes out as is, as IPv4's DF packets: TCP's GSO super-segments.
        stack.emit(link, mac + self._eth_src + packet)

    def _solicit(self, dst: bytes) -> None:
        """Ask the link who holds ``dst`` (a VM that never spoke): its NA teaches us the MAC."""
        now = self._stack.drained_at
        if now - self._solicited.get(dst, -SOLICIT_INTERVAL) < SOLICIT_INTERVAL:
            return
        if not (self.layout.in_subnet(dst) or is_link_local(dst)):
            return
        if len(self._solicited) >= MAX_SOLICITED:
            self._solicited.clear()
        self._solicited[dst] = now
        src = self.layout.link_local_ip
        group = solicited_node(dst)
        options = icmp6.encode_options(source_lladdr=self._stack.config.gateway_mac)
        ns = icmp6.build_ns(src, group, dst, options)
        self.stats["ns_sent"] += 1
        self._flood(multicast_mac(group), build_ipv6(src, group, NH_ICMPV6, ns,
                                                     hop_limit=NDP_HOP_LIMIT))

    def _flood(self, dst_mac: bytes, packet: bytes) -> None:
        frame = dst_mac + self._eth_src + packet
        for link in set(self._stack.macs.values()):
            self._stack.emit(link, frame)

    def _send_ndp(self) -> None:
        for send in self.ndp.drain():
            if send.dst_mac[0] & 1:
                self._flood(send.dst_mac, send.packet)
                continue
            link = self._stack.macs.get(send.dst_mac)
            if link is None:
                self._stack.stats["drop_no_route"] += 1
            else:
                self._stack.emit(link, send.dst_mac + self._eth_src + send.packet)

    def drain(self) -> None:
        """Move what the timers produced (RAs, reassembly errors) into the stack's frames."""
        self._send_ndp()
        packets, _effects = self.frag.drain()
        for p in packets:
            self.route(p)

    # -- timers --------------------------------------------------------------

    def next_deadline(self) -> float | None:
        frag = self.frag.next_deadline()
        ra = self.ndp.next_deadline()
        return ra if frag is None else min(ra, frag)

    def handle_timer(self, now: float) -> None:
        self.ndp.handle_timer(now)
        self.frag.handle_timer(now)
