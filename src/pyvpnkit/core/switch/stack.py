"""The virtual switch: dispatches VM frames to the services and the NATs.

All machines report IP packets for VMs; the switch routes them by
destination address to the right link and adds the Ethernet header. It is the
only place that knows about links, MAC addresses and which VM lives where.
IPv6 frames go to ``stack6.Ipv6Switch`` (NDP, DHCPv6, local services, routing).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Final

from pyvpnkit.core.conditions import Conditions
from pyvpnkit.core.config import NetConfig
from pyvpnkit.core.dns import DnsAnswer, DnsServer
from pyvpnkit.core.dns.tcpframing import DnsTcpDecoder, encode_tcp_message
from pyvpnkit.core.effects import Effect, HostResolve, UpstreamQuery
from pyvpnkit.core.http_proxy.config import ProxyConfig
from pyvpnkit.core.ip.family import quote
from pyvpnkit.core.ip.ipfrag import Reassembler, fragment_ipv4
from pyvpnkit.core.nat.gateway_forwards import GatewayForwards
from pyvpnkit.core.nat.icmp_errors import build_error_kind
from pyvpnkit.core.nat.icmp_nat import IcmpNat
from pyvpnkit.core.nat.routes import HOST_LOOPBACKS, nat_target, route
from pyvpnkit.core.nat.tcp_nat import LocalService, TcpNat
from pyvpnkit.core.nat.udp_forward import UdpForwarder
from pyvpnkit.core.nat.udp_nat import UdpNat
from pyvpnkit.core.services.dhcp import DhcpServer
from pyvpnkit.core.switch.arp import ArpResponder
from pyvpnkit.core.switch.ippool import AddressPool, key_mac, mac_for_uuid, mac_key
from pyvpnkit.core.switch.outbox import Outbox
from pyvpnkit.core.switch.stack6 import Ipv6Switch
from pyvpnkit.core.switch.stack_settings import StackSettings
from pyvpnkit.wire import icmp as icmpw
from pyvpnkit.wire import icmpv6 as icmp6
from pyvpnkit.wire.errors import ParseError
from pyvpnkit.wire.ethernet import (
    BROADCAST,
    ETHERTYPE_ARP,
    ETHERTYPE_IPV4,
    ETHERTYPE_IPV6,
    build_ethernet,
    is_multicast,
    parse_ethernet,
)
from pyvpnkit.wire.icmp import build_icmp, parse_icmp
from pyvpnkit.wire.ipv4 import PROTO_ICMP, PROTO_TCP, PROTO_UDP, IPv4Packet, ipv4_header, parse_ipv4
from pyvpnkit.wire.ipv6 import NH_ICMPV6, IPv6Packet
from pyvpnkit.wire.tcp import parse_tcp
from pyvpnkit.wire.udp import build_ipv4_udp, parse_udp

LIMITED_BROADCAST = b"\xff\xff\xff\xff"
DHCP_SERVER_PORT = 67
DHCP_CLIENT_PORT = 68
DNS_PORT = 53
EXPLICIT_PROXY_PORT = 3128  # vpnkit's: VMs set HTTP(S)_PROXY=http://<gateway>:3128


# The switch's MAC table, as a hardware switch bounds its own: a VM that sends from
# random source MACs must not grow it (and every flood, which walks it) without end.
MAX_MACS = 4096
DEFAULTS: Final = StackSettings()

@dataclass(slots=True)
class Vm:
    ip: bytes
    link: int
    mac: bytes
    eth_header: bytes  # prebuilt: VM MAC, gateway MAC, IPv4
    # IPv4 traffic, read by the metrics at scrape time
    packets_in: int = 0
    bytes_in: int = 0
    packets_out: int = 0
    bytes_out: int = 0


class _DnsOverTcp:
    """DNS on the gateway's TCP port 53: length-prefixed, pipelined queries."""

    def __init__(self, stack: Stack) -> None:
        self._stack = stack
        self._decoders: dict[int, DnsTcpDecoder] = {}

    def received(self, flow_id: int, data: bytes, now: float) -> None:
        decoder = self._decoders.setdefault(flow_id, DnsTcpDecoder())
        for message in decoder.feed(data):
            self._stack.dns.handle_query(message, ("tcp", flow_id), "tcp", now)

    def eof(self, flow_id: int, now: float) -> None:
        self._decoders.pop(flow_id, None)
        self._stack.tcp.local_shutdown(flow_id, now)


class Stack:
    """Everything the VMs see, as one sans-I/O machine.

    Feed frames with :meth:`receive`, host events with the NAT objects'
    methods, then call :meth:`drain` for (link, frame) pairs and effects.
    """

    def __init__(
        self,
        config: NetConfig,
        settings: StackSettings = DEFAULTS,
        *,
        dns_upstreams: list[tuple[str, int]] | None = None,
        hosts_text: str = "",
        rng: random.Random | None = None,
        dns_query_id: Callable[[], int] | None = None,
    ) -> None:
        self.config = config
        self._rng = rng or random.Random()
        self._verify = settings.verify_checksums
        self._check = settings.verify_checksums  # for the frame being handled
        self._partial = False  # the frame being handled came from a local kernel (NEEDS_CSUM)
        self._offload_links: set[int] = set()  # links that checksum and segment TCP for us
        self.stats: Counter[str] = Counter()
        self.pool = AddressPool(
            config.lowest_ip,
            config.highest_ip,
            reserved=(config.gateway_ip, config.host_ip, config.dns_ip, *config.virtual_ips,
                      *(vip for vip, _host in config.nat)),
        )
        self.vms: dict[bytes, Vm] = {}
        self.macs: dict[bytes, int] = {}  # VM MAC -> link, learned from frames
        self.arp = ArpResponder(config.gateway_mac, self._is_vm_address,
                                own=(config.gateway_ip, config.host_ip, config.dns_ip))
        self.dhcp = DhcpServer(config, self.pool)
        self.dns = DnsServer(
            config, dns_upstreams or [], hosts_text, new_id=dns_query_id,
            mode=settings.dns_mode, timeout=settings.dns_timeout, cache_size=settings.dns_cache,
        )
        self._dns_tcp = _DnsOverTcp(self)
        self.http_proxy = ProxyConfig()  # the runtime swaps in the configured one
        self.gateway_forwards = GatewayForwards()  # vpnkit's; the runtime fills it
        self.tcp = TcpNat(
            config,
            iss=lambda: self._rng.getrandbits(32),
            local_service=self._local_service,
            proxy_mode=self._proxy_mode,
            gateway_forward=self._gateway_forward_tcp,
            offloads=self._offloads,
            settings=settings.tcp,
            redirects=settings.redirects,
            max_pending_connects=settings.max_pending_connects,
        )
        # The UDP and ICMP NATs, the forwarder and the reassembler put what they make
        # here: a drain takes it in one swap.
        self._box = box = Outbox()
        self.udp = UdpNat(
            config, idle_timeout=settings.udp_idle_timeout, max_flows=settings.udp_max_flows,
            outbox=box, offloads=self._offloads,
        )
        self._subnet_broadcast = config.subnet.broadcast_address.packed  # checked per datagram
        self.udp_forward = UdpForwarder(config, outbox=box, nat_peer=self.udp.has_sent)
        self.icmp = IcmpNat(config, outbox=box)
        self.frag = Reassembler(outbox=box)
        self.last_error = ""
        self._frames: list[tuple[int, bytes]] = []
        self._effects: list[Effect] = []
        self.v6 = Ipv6Switch(self, config.ipv6, self._rng.random) if config.ipv6 else None
        self.conditions = Conditions(config, self._rng)  # rules between the VMs and the rest

    # -- settings and questions from the runtime ----------------------------

    def log_flows(self, enabled: bool) -> None:
        """Whether closed TCP flows leave a line in ``tcp.closed_log`` (off: nobody logs it)."""
        self.tcp.flow_log = enabled

    def set_http_proxy(self, config: ProxyConfig) -> None:
        """The proxy configuration new VM connections are sorted by (transparent ports)."""
        self.http_proxy = config

    def vif_lease(self, uuid: str, preferred_ip: bytes | None) -> tuple[bytes, bytes]:
        """A vpnkit VIF's MAC (configured, or derived from its UUID) and address.

        The address is the preferred one if free (else PoolError), or the MAC's lease.
        """
        mac = self.config.uuid_macs.get(uuid) or mac_for_uuid(uuid)
        return mac, self.pool.allocate(mac_key(mac), preferred_ip, strict=preferred_ip is not None)

    # -- what the IPv6 side uses (stack6.Switch) ---------------------------------

    def emit(self, link: int, frame: bytes) -> None:
        """A frame for ``link``, out with the next drain."""
        self._frames.append((link, frame))

    @property
    def check_checksums(self) -> bool:
        """Whether the frame being handled gets its checksums verified."""
        return self._check

    @property
    def drained_at(self) -> float:
        """The time of the last drain: what timer-made output is stamped with."""
        return self._now

    # -- links and VMs -------------------------------------------------------

    def link_opened(self, link: int, offloads: bool) -> None:
        """A new link; ``offloads``: it completes TCP and UDP checksums and cuts TCP
        super-segments (TAP)."""
        if offloads:
            self._offload_links.add(link)

    def _offloads(self, ip: bytes) -> bool:
        """Whether the link of the VM at ``ip`` (either family) offloads TCP and UDP for us."""
        if not self._offload_links:
            return False
        if len(ip) == 4:
            vm = self.vms.get(ip)
            return vm is not None and vm.link in self._offload_links
        mac = self.v6.neighbors.lookup(ip) if self.v6 is not None else None
        return mac is not None and self.macs.get(mac) in self._offload_links

    def link_closed(self, link: int, now: float) -> None:
        """Forget the VMs behind a link; their addresses stay bound to their MAC."""
        self._offload_links.discard(link)
        for ip in [ip for ip, vm in self.vms.items() if vm.link == link]:
            del self.vms[ip]
            self._forget_flows(ip, now)
        gone = [m for m, lk in self.macs.items() if lk == link]
        for mac in gone:
            del self.macs[mac]
        if self.v6 is not None:
            for mac in gone:
                for ip6 in self.v6.neighbors.addresses_of(mac):
                    self._forget_flows(ip6, now)
            self.v6.forget_macs(gone)  # also tells DNS
        else:
            self.dns.set_vm_addresses(list(self.vms))

    def _forget_flows(self, ip: bytes, now: float) -> None:
        """Close the NAT flows of a VM address (either family) that left the switch."""
        self.tcp.forget_vm(ip, now)
        self.udp.forget_vm(ip)
        self.icmp.forget_vm(ip)

    def _is_vm_address(self, ip: bytes) -> bool:
        # A leased address is a VM's even before it sends its first IP packet:
        # answering ARP for it would pull other VMs' traffic for it into the NAT.
        return ip in self.vms or self.pool.owner(ip) is not None

    def add_vm(self, link: int, mac: bytes, ip: bytes) -> None:
        """Know a VM before it speaks (a namespace configured with a static address)."""
        self.macs[mac] = link
        self._learn(link, mac, ip)

    def _vm_from_lease(self, ip: bytes) -> Vm | None:
        """A VM that has a lease but sent no IPv4 yet (e.g. only listens): route by its MAC."""
        owner = self.pool.owner(ip)
        mac = key_mac(owner) if owner is not None else None
        if mac is None:
            return None
        link = self.macs.get(mac)
        if link is None:
            return None
        self._learn(link, mac, ip)
        return self.vms.get(ip)

    def _learn(self, link: int, mac: bytes, ip: bytes, size: int = 0) -> bool:
        """Note that ``ip`` lives behind ``mac`` on ``link``; False for a spoofed source.

        An address leased to another MAC, or in use by another VM, cannot be
        taken over by sending from it.
        """
        vm = self.vms.get(ip)
        if vm is not None:
            if vm.mac != mac:
                return False
            if vm.link == link:
                if size:
                    vm.packets_in += 1
                    vm.bytes_in += size
                return True
        elif ip in (self.config.gateway_ip, self.config.host_ip, self.config.dns_ip):
            return False
        elif not self.config.in_subnet(ip):
            return True  # routed from behind the VM: nothing to learn, nothing to steal
        else:
            owner = self.pool.owner(ip)
            if owner is not None and key_mac(owner) not in (None, mac):
                return False
        self.vms[ip] = Vm(ip, link, mac, mac + self.config.gateway_mac + b"\x08\x00")
        v6 = self.v6.vm_addresses() if self.v6 is not None else []
        self.dns.set_vm_addresses([*self.vms, *v6])
        return True

    # -- frames in -----------------------------------------------------------

    def receive(
        self, link: int, frame: bytes | memoryview, now: float, checksum_partial: bool = False
    ) -> None:
        """Handle one Ethernet frame from a VM link. Never raises for bad input.

        ``checksum_partial``: the link says the L4 checksum was left for the
        receiver to compute (virtio-net NEEDS_CSUM from a local kernel), so
        there is no complete checksum to verify in this frame.
        """
        self.stats["frames_in"] += 1
        self.stats["bytes_in"] += len(frame)
        cond = self.conditions
        if cond.busy and not cond.outbound(link, frame, now, checksum_partial):
            return
        self._admit(link, frame, now, checksum_partial)

    def _admit(
        self, link: int, frame: bytes | memoryview, now: float, checksum_partial: bool
    ) -> None:
        self._check = self._verify and not checksum_partial
        self._partial = checksum_partial
        try:
            self._receive(link, frame, now)
        except ParseError as exc:
            self.stats["drop_malformed"] += 1
            self.last_error = str(exc)
        except Exception as exc:  # noqa: BLE001 - a bug must cost one frame, not the link
            self.stats["drop_internal_error"] += 1
            self.last_error = f"internal error: {exc!r}"

    def _receive(self, link: int, frame: bytes | memoryview, now: float) -> None:
        eth = parse_ethernet(frame)
        if not is_multicast(eth.src) and self.macs.get(eth.src) != link:
            if eth.src not in self.macs and len(self.macs) >= MAX_MACS:
                del self.macs[next(iter(self.macs))]  # the oldest; relearned when it speaks
                self.stats["mac_evicted"] += 1
            self.macs[eth.src] = link
        if eth.dst != self.config.gateway_mac:
            self._forward(link, eth.dst, frame)
            # Broadcasts are ours too, and IPv6 multicast (33:33:..: NDP, DHCPv6).
            if eth.dst != BROADCAST and not (eth.dst[:2] == b"\x33\x33" and self.v6 is not None):
                return
        if eth.ethertype == ETHERTYPE_IPV4:
            # A zero header checksum means "left to offload" (vpnkit's Go vmnet client,
            # used by rootlesskit, sends its DHCP DISCOVER so); a wrong non-zero one is damage.
            # A frame with a partial L4 sum (NEEDS_CSUM) was built by the local kernel,
            # whose IP header sums are right: not summed again, per packet.
            payload = eth.payload
            check = not self._partial and len(payload) >= 12 and (payload[10] or payload[11]) != 0
            self._ipv4(link, eth.src, parse_ipv4(payload, check=check), now)
        elif eth.ethertype == ETHERTYPE_ARP:
            _pkt, reply = self.arp.handle(eth.payload)
            if reply is not None:
                self._frames.append(
                    (link, build_ethernet(eth.src, self.config.gateway_mac, ETHERTYPE_ARP, reply))
                )
        elif eth.ethertype == ETHERTYPE_IPV6 and self.v6 is not None:
            self.v6.receive(link, eth.src, eth.payload, now)
        else:
            self.stats["drop_ethertype"] += 1

    def ipv6_transport(self, link: int, src_mac: bytes, pkt: IPv6Packet, now: float) -> None:
        """An IPv6 packet (reassembled) that is not for the stack's own services: the NATs."""
        if pkt.is_fragment:
            self.stats["drop_ipv6_fragment"] += 1
            return
        proto = pkt.proto
        if proto == PROTO_TCP:
            self.tcp.handle(pkt, parse_tcp(pkt.payload, pkt.src, pkt.dst, self._check), now)
        elif proto == PROTO_UDP:
            dgram = parse_udp(pkt.payload, pkt.src, pkt.dst, self._check)
            if self.udp_forward and self.udp_forward.owns(
                    pkt.src, dgram.src_port, pkt.dst, dgram.dst_port):
                self.udp_forward.handle(pkt, dgram, now)
            else:
                self.udp.handle(pkt, dgram, now)
        elif proto == NH_ICMPV6:
            msg = icmp6.parse_icmpv6(pkt.payload, pkt.src, pkt.dst, self._check)
            if msg.type == icmp6.ECHO_REQUEST:
                self.icmp.handle(pkt, msg, now)
            else:
                self.stats["drop_icmpv6_type"] += 1
        else:
            self.stats["drop_ipv6_proto"] += 1
            err = build_error_kind(quote(pkt), pkt.dst, "proto_unreachable")
            if err is not None:
                self._route(err)

    def _forward(self, link: int, dst: bytes, frame: bytes | memoryview) -> None:
        """Switch frames between VMs: flood broadcasts, deliver known unicast."""
        if is_multicast(dst):
            data = bytes(frame)
            for other in set(self.macs.values()):
                if other != link:
                    self._frames.append((other, data))
            return
        target = self.macs.get(dst)
        if target is not None and target != link:
            self._frames.append((target, bytes(frame)))
        else:
            self.stats["drop_unknown_mac"] += 1

    def _ipv4(self, link: int, src_mac: bytes, pkt: IPv4Packet, now: float) -> None:
        cfg = self.config
        if pkt.src != b"\x00\x00\x00\x00" and not self._learn(
            link, src_mac, pkt.src, len(pkt.header) + len(pkt.payload)
        ):
            self.stats["drop_spoofed_source"] += 1
            return
        if pkt.is_fragment:
            whole = self.frag.add(pkt, now)
            if whole is None:
                return
            pkt = parse_ipv4(whole)
        dst = pkt.dst
        proto = pkt.proto
        if dst in self.vms and dst != pkt.src:
            # Another VM reached through the gateway: route it, no NAT.
            self._route(pkt.header.tobytes() + pkt.payload.tobytes())
            return
        if proto == PROTO_TCP:
            self.tcp.handle(pkt, parse_tcp(pkt.payload, pkt.src, dst, self._check), now)
        elif proto == PROTO_UDP:
            dgram = parse_udp(pkt.payload, pkt.src, dst, self._check)
            if dgram.dst_port == DHCP_SERVER_PORT and dst in (cfg.gateway_ip, LIMITED_BROADCAST):
                self._dhcp(link, dgram.payload, now)
            elif dst == cfg.gateway_ip and self.gateway_forwards and (
                    forward := self.gateway_forwards.lookup("udp", dgram.dst_port)):
                self.udp.handle(pkt, dgram, now, forward)
            elif cfg.nat and (host := nat_target(cfg, dst)) is not None:
                self.udp.handle(pkt, dgram, now, (host, dgram.dst_port))  # answers from dst
            elif dst == cfg.dns_ip and dgram.dst_port == DNS_PORT and cfg.serve_dns:
                self.dns.handle_query(dgram.payload, (pkt.src, dgram.src_port), "udp", now)
            elif self.udp_forward and self.udp_forward.owns(
                    pkt.src, dgram.src_port, dst, dgram.dst_port):
                self.udp_forward.handle(pkt, dgram, now)
            elif dst == cfg.gateway_ip and dst != cfg.host_ip:
                self._unreachable(pkt, icmpw.PORT_UNREACHABLE)
            elif dst == LIMITED_BROADCAST or dst == self._subnet_broadcast:
                self.stats["drop_broadcast"] += 1
            else:
                self.udp.handle(pkt, dgram, now)
        elif proto == PROTO_ICMP:
            msg = parse_icmp(pkt.payload, self._check)
            if msg.type != icmpw.ECHO_REQUEST:
                self.stats["drop_icmp_type"] += 1
            elif dst in (cfg.gateway_ip, cfg.host_ip, cfg.dns_ip) or dst in cfg.virtual_ips:
                reply = build_icmp(icmpw.ECHO_REPLY, 0, msg.rest, msg.payload)
                self._route(ipv4_header(dst, pkt.src, PROTO_ICMP, len(reply)) + reply)
            else:
                self.icmp.handle(pkt, msg, now)
        else:
            self._unreachable(pkt, icmpw.PROTO_UNREACHABLE)

    def _unreachable(self, pkt: IPv4Packet, code: int) -> None:
        quote = pkt.header.tobytes() + pkt.payload[:8].tobytes()
        body = build_icmp(icmpw.DEST_UNREACHABLE, code, b"\x00" * 4, quote)
        self._route(ipv4_header(pkt.dst, pkt.src, PROTO_ICMP, len(body)) + body)

    def _dhcp(self, link: int, payload: memoryview, now: float) -> None:
        reply = self.dhcp.handle(payload, now)
        if reply is None:
            return
        cfg = self.config
        packet = build_ipv4_udp(
            cfg.gateway_ip, reply.dst_ip, DHCP_SERVER_PORT, DHCP_CLIENT_PORT, reply.payload
        )
        self._frames.append(
            (link, build_ethernet(reply.dst_mac, cfg.gateway_mac, ETHERTYPE_IPV4, packet))
        )

    def _local_service(self, ip: bytes, port: int) -> LocalService | None:
        cfg = self.config
        ours = ip == cfg.dns_ip or (cfg.ipv6 is not None and ip == cfg.ipv6.dns_ip)
        return self._dns_tcp if ours and port == DNS_PORT and cfg.serve_dns else None

    # -- frames out ----------------------------------------------------------

    def _gateway_forward_tcp(self, ip: bytes, port: int) -> tuple[str, int] | None:
        """Where a VM connection to ip:port goes under vpnkit's gateway forwards, if anywhere."""
        if ip != self.config.gateway_ip or not self.gateway_forwards:
            return None
        return self.gateway_forwards.lookup("tcp", port)

    def _proxy_mode(self, ip: bytes, port: int) -> str | None:
        """Which VM connections the HTTP proxy serves: the gateway's proxy port, and
        transparent HTTP(S) ports of outside addresses when an upstream or allow list is set."""
        cfg = self.config
        if ip == cfg.gateway_ip and port == EXPLICIT_PROXY_PORT:
            # slirp4netns's gateway is the host's loopback: its 3128 is the host's.
            return "explicit" if ip != cfg.host_ip else None
        host = route(cfg, ip)[0]
        if host is None or host in HOST_LOOPBACKS:  # the host alias, either family: never
            return None
        return self.http_proxy.transparent_mode(port)

    def _route(self, packet: bytes) -> None:
        """Send an IP packet to the VM that owns its destination address."""
        if packet[0] >> 4 == 6:
            if self.v6 is not None:
                self.v6.route(packet)
            return
        vm = self.vms.get(packet[16:20])
        if vm is None:
            vm = self._vm_from_lease(packet[16:20])
            if vm is None:
                self.stats["drop_no_route"] += 1
                return
        vm.packets_out += 1
        vm.bytes_out += len(packet)
        if len(packet) > self.config.mtu:
            for part in fragment_ipv4(packet, self.config.mtu):
                self._frames.append((vm.link, vm.eth_header + part))
            return
        self._frames.append((vm.link, vm.eth_header + packet))

    def _dns_answers(self, effects: list[DnsAnswer | UpstreamQuery | HostResolve]) -> None:
        for eff in effects:
            if not isinstance(eff, DnsAnswer):
                self._effects.append(eff)
                continue
            if self.conditions.wants_names:
                self.conditions.dns_answer(eff.data)
            client: Hashable = eff.client
            if eff.transport == "tcp":
                assert isinstance(client, tuple)
                self.tcp.local_send(client[1], encode_tcp_message(eff.data), self._now)
            else:
                assert isinstance(client, tuple)
                vm_ip, vm_port = client
                if len(vm_ip) == 16:
                    assert self.v6 is not None
                    self.v6.dns_reply(vm_ip, vm_port, eff.data)
                    continue
                self._route(build_ipv4_udp(self.config.dns_ip, vm_ip, DNS_PORT, vm_port, eff.data))

    _now = 0.0

    def drain(self, now: float) -> tuple[list[tuple[int, bytes]], list[Effect]]:
        """Frames for links and effects for the runtime, produced since the last drain."""
        self._now = now
        cond = self.conditions
        if cond.busy:
            for link, frame, partial in cond.due_out():
                self._admit(link, frame, now, partial)
        self._dns_answers(self.dns.drain())
        box = self._box
        if box.packets or box.effects:
            packets, effects = box.take()
            for p in packets:
                self._route(p)
            self._effects.extend(effects)
        for _ in range(2):
            # DNS over TCP answers built-in names while the TCP drain runs;
            # a second round sends those answers without waiting for a wake-up.
            packets, effects = self.tcp.drain(now)
            for p in packets:
                self._route(p)
            self._effects.extend(effects)
            answers = self.dns.drain()
            if not answers:
                break
            self._dns_answers(answers)
        if self.v6 is not None:
            self.v6.drain()
        frames, eff = self._frames, self._effects
        self._frames, self._effects = [], []
        if cond.busy:
            frames = cond.inbound(frames, now)
        self.stats["frames_out"] += len(frames)
        return frames, eff

    def next_deadline(self) -> float | None:
        """The earliest deadline of any machine. Asked after every flush, so each
        machine is called by its own type (a native call when compiled), not
        through a list of protocol objects (a generic call each: 2x the cost)."""
        best = _earlier(self.tcp.next_deadline(), self.udp.next_deadline())
        best = _earlier(best, self.icmp.next_deadline())
        best = _earlier(best, self.dns.next_deadline())
        best = _earlier(best, self.frag.next_deadline())
        best = _earlier(best, self.udp_forward.next_deadline())
        best = _earlier(best, self.conditions.next_deadline())
        if self.v6 is not None:
            best = _earlier(best, self.v6.next_deadline())
        return best

    def handle_timer(self, now: float) -> None:
        self.tcp.handle_timer(now)
        self.udp.handle_timer(now)
        self.icmp.handle_timer(now)
        self.dns.handle_timer(now)
        self.frag.handle_timer(now)
        self.udp_forward.handle_timer(now)
        self.conditions.handle_timer(now)
        if self.v6 is not None:
            self.v6.handle_timer(now)


def _earlier(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None or a <= b:
        return a
    return b


__all__ = ["Stack", "Vm"]
