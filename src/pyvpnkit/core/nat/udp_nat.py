"""UDP NAT: VM datagrams to outside addresses become host UDP sockets.

Like vpnkit, each VM endpoint (ip, port) gets one host socket that talks to any
destination (full cone), so protocols that learn their public address (STUN,
QUIC migration, DNS to several servers) keep working. The host alias
(config.host_ip) stands for the host's 127.0.0.1 in both directions.

The runtime reports socket errors (IP_RECVERR) back with :meth:`host_error`;
they become ICMP errors quoting what the VM sent, so its sockets see
ECONNREFUSED and its traceroute sees every hop. IPv6 flows (16-byte VM
addresses) take the same path with AF_INET6 host sockets and ICMPv6 errors;
the IPv6 alias stands for the host's [::1].
"""

from __future__ import annotations

import ipaddress
from abc import abstractmethod
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from pyvpnkit.core.config import NetConfig
from pyvpnkit.core.effects import Effect, UdpClose, UdpOpen, UdpSend
from pyvpnkit.core.ip.family import IpPacket, fragment, gateway_for, hop_limit, ip_header, quote
from pyvpnkit.core.nat.icmp_errors import build_error_kind
from pyvpnkit.core.nat.idleflows import IdleFlows
from pyvpnkit.core.nat.routes import HOST_LOOPBACK, host_view, is_routable, route
from pyvpnkit.core.switch.outbox import Outbox
from pyvpnkit.wire.ipv4 import PROTO_UDP
from pyvpnkit.wire.udp import UdpDatagram, build_ipv4_udp, build_udp

MAX_UDP_PAYLOAD = 65507  # 65535 - IPv4 header - UDP header
MAX_UDP6_PAYLOAD = 65527  # 65535 - UDP header: the IPv6 payload length excludes its header
_ORIGINALS_PER_FLOW = 16  # quoted headers kept per flow, by destination
_ADDR_CACHE = 4096
# A flow is forgotten after this long idle; beyond this many, the least recently used goes.
IDLE_TIMEOUT: Final = 60.0
MAX_FLOWS: Final = 4096


@dataclass(slots=True)
class NatFlow:
    flow_id: int
    vm_ip: bytes
    last: float


@dataclass(slots=True)
class _UdpFlow(NatFlow):
    vm_port: int = 0
    # (dst as the VM saw it, dst port) -> IP header + UDP header it last sent
    originals: OrderedDict[tuple[bytes, int], bytes] = field(default_factory=OrderedDict)
    # rewritten destinations it used: (host ip, port) -> (address, port) the VM sent to
    intercepts: dict[tuple[str, int], tuple[bytes, int]] | None = None


class NatBase(IdleFlows[NatFlow]):
    """Flow table with idle expiry and LRU eviction, shared by the UDP and ICMP NATs."""

    def __init__(
        self, config: NetConfig, idle_timeout: float, max_flows: int, mtu: int,
        outbox: Outbox | None = None,
    ) -> None:
        self.config = config
        self.idle_timeout = idle_timeout
        self.max_flows = max_flows
        self.mtu = mtu
        self.stats: Counter[str] = Counter()
        self._flows: OrderedDict[int, NatFlow] = OrderedDict()  # least recently used first
        self._next_id = 1
        self._ip_ident = 0
        self._box = outbox if outbox is not None else Outbox()
        self._addr_cache: dict[str, bytes | None] = {}

    def drain(self) -> tuple[list[bytes], list[Effect]]:
        """IP packets for VMs and effects for the runtime, since the last drain
        (of the whole outbox, when it is shared)."""
        return self._box.take()

    @property
    def ipv6_flows(self) -> int:
        """How many of the flows are IPv6 (for /stats)."""
        return sum(len(f.vm_ip) == 16 for f in self._flows.values())

    def forget_vm(self, vm_ip: bytes) -> None:
        """The VM left the switch: release every flow it had."""
        for flow in [f for f in self._flows.values() if f.vm_ip == vm_ip]:
            self._close(flow)

    # -- helpers for subclasses ------------------------------------------------

    @property
    def opened(self) -> int:
        """Flows made so far: ids count up from 1 and are never reused."""
        return self._next_id - 1

    def _allocate_id(self) -> int:
        self._make_room()
        flow_id = self._next_id
        self._next_id += 1
        return flow_id

    def _touch(self, flow: NatFlow, now: float) -> None:
        self._touch_flow(flow.flow_id, flow, now)

    def _drop(self, flow: NatFlow) -> None:
        self._close(flow)

    @abstractmethod
    def _close(self, flow: NatFlow) -> None:
        """Forget ``flow`` and tell the runtime to release its socket."""

    def _next_ip_ident(self) -> int:
        self._ip_ident = (self._ip_ident + 1) & 0xFFFF
        return self._ip_ident

    def _vm_view(self, host_addr: str) -> bytes | None:
        """The address the VM sees for a host-side address, or None to drop.

        127.0.0.1 (or ::1) is shown as the host alias; other host-side addresses
        that would make no sense to the VM (loopback, link-local, ours) are refused.
        """
        cached = self._addr_cache.get(host_addr, b"")
        if cached != b"":
            return cached
        view: bytes | None
        try:
            addr = ipaddress.ip_address(host_addr.partition("%")[0])
        except ValueError:
            view = None
        else:
            view = host_view(self.config, addr)
        if len(self._addr_cache) >= _ADDR_CACHE:
            self._addr_cache.clear()
        self._addr_cache[host_addr] = view
        return view

    def _error_source(self, origin_ip: str | None, fallback: bytes) -> bytes:
        if origin_ip:
            view = self._vm_view(origin_ip)
            if view is not None:
                return view
        return fallback

    def _emit_error(self, original: bytes, src: bytes, kind: str, mtu: int | None = None) -> None:
        err = build_error_kind(original, src, kind, mtu=mtu, ident=self._next_ip_ident())
        if err is None:
            self.stats["error_not_sent"] += 1
        else:
            self.stats[f"icmp_{kind}"] += 1
            self._box.packets.append(err)

    def _send(self, packet: bytes) -> None:
        if len(packet) <= self.mtu:
            self._box.packets.append(packet)
        else:
            self._box.packets.extend(fragment(packet, self.mtu, self._next_ip_ident()))


class UdpNat(NatBase):
    def __init__(
        self,
        config: NetConfig,
        *,
        idle_timeout: float = IDLE_TIMEOUT,
        max_flows: int = MAX_FLOWS,
        mtu: int | None = None,
        outbox: Outbox | None = None,
        offloads: Callable[[bytes], bool] = lambda ip: False,
    ) -> None:
        mtu = config.mtu if mtu is None else mtu
        super().__init__(config, idle_timeout, max_flows, mtu, outbox)
        # Whether the VM's link completes UDP checksums (a TAP with a virtio-net
        # header): then replies that need no fragmenting go out unsummed.
        self._offloads = offloads
        self._by_endpoint: dict[tuple[bytes, int], _UdpFlow] = {}
        self._routes: dict[bytes, tuple[str | None, str | None, bytes | None]] = {}

    def flow_of(self, vm_ip: bytes, vm_port: int) -> int | None:
        flow = self._by_endpoint.get((vm_ip, vm_port))
        return None if flow is None else flow.flow_id

    def has_sent(self, vm_ip: bytes, vm_port: int, dst: bytes, dst_port: int) -> bool:
        """True if the VM's socket vm_ip:vm_port sent to dst:dst_port lately (among
        the destinations its flow remembers): the NAT's half of a four-tuple."""
        flow = self._by_endpoint.get((vm_ip, vm_port))
        return flow is not None and (dst, dst_port) in flow.originals

    def handle(
        self, pkt: IpPacket, dgram: UdpDatagram, now: float,
        forward: tuple[str, int] | None = None,
    ) -> None:
        """A (reassembled) datagram from a VM to an address outside the stack. With
        ``forward`` (host address, port) its destination was rewritten (vpnkit's gateway
        forwards, gvproxy's NAT table): answers from there come from where the VM sent."""
        if pkt.is_fragment or dgram.src_port == 0 or dgram.dst_port == 0:
            self.stats["drop_invalid"] += 1
            return
        dst = pkt.dst
        dst_port = dgram.dst_port
        routed = self._routes.get(dst) if forward is None else (forward[0], None, None)
        if routed is None:
            routed = route(self.config, dst)  # a pure function of the address: cached
            if len(self._routes) >= _ADDR_CACHE:
                self._routes.clear()
            self._routes[dst] = routed
        host, refusal, err_src = routed
        original = quote(pkt)
        if refusal is not None and err_src is not None:
            self._emit_error(original, err_src, refusal)
            return
        if host is None:
            self.stats["drop_destination"] += 1
            return
        ttl = hop_limit(pkt)
        if ttl <= 1:
            # We are the VM's first hop: this is what makes hop 1 of traceroute.
            self._emit_error(original, gateway_for(self.config, pkt.src), "ttl_exceeded")
            return
        key = (pkt.src, dgram.src_port)
        flow = self._by_endpoint.get(key)
        if flow is None:
            flow = _UdpFlow(self._allocate_id(), pkt.src, now, dgram.src_port)
            self._flows[flow.flow_id] = flow
            self._by_endpoint[key] = flow
            self._box.effects.append(UdpOpen(flow.flow_id, key))
        else:
            flow.last = now
            self._flows.move_to_end(flow.flow_id)
        originals = flow.originals
        dst_key = (dst, dgram.dst_port)
        if dst_key in originals:
            originals.move_to_end(dst_key)
        elif len(originals) >= _ORIGINALS_PER_FLOW:
            originals.popitem(last=False)
        originals[dst_key] = original
        if forward is not None:
            dst_port = forward[1]
            if flow.intercepts is None:
                flow.intercepts = {}
            elif len(flow.intercepts) >= _ORIGINALS_PER_FLOW and forward not in flow.intercepts:
                del flow.intercepts[next(iter(flow.intercepts))]  # bounded as originals are
            flow.intercepts[forward] = (dst, dgram.dst_port)
        self._box.effects.append(
            UdpSend(flow.flow_id, host, dst_port, dgram.payload.tobytes(), ttl - 1)
        )

    def host_datagram(
        self, flow_id: int, src_ip: str, src_port: int, payload: bytes | memoryview, now: float
    ) -> None:
        """A datagram the flow's host socket received from (src_ip, src_port).

        ``payload`` may be a view of the caller's buffer: it is copied, not kept.
        The per-reply path of every UDP exchange: lookups, the touch and the
        IPv4 build are inline (one call builds both headers and checksums).
        """
        flow = self._flows.get(flow_id)
        if not isinstance(flow, _UdpFlow):
            self.stats["drop_unknown_flow"] += 1
            return
        src: bytes | None
        if flow.intercepts is not None and (src_ip, src_port) in flow.intercepts:
            src, src_port = flow.intercepts[(src_ip, src_port)]
        else:
            src = self._addr_cache.get(src_ip, b"")
            if src == b"":
                src = self._vm_view(src_ip)
        vm_ip = flow.vm_ip
        v4 = len(vm_ip) == 4
        if (
            src is None or len(src) != len(vm_ip) or not 0 < src_port <= 0xFFFF
            or len(payload) > (MAX_UDP_PAYLOAD if v4 else MAX_UDP6_PAYLOAD)
        ):
            self.stats["drop_host_datagram"] += 1
            return
        flow.last = now
        self._flows.move_to_end(flow_id)
        self._ip_ident = ident = (self._ip_ident + 1) & 0xFFFF
        # A fragment cannot carry a partial checksum: those datagrams are summed here.
        summed = len(payload) + (28 if v4 else 48) > self.mtu or not self._offloads(vm_ip)
        if v4:
            packet = build_ipv4_udp(src, vm_ip, src_port, flow.vm_port, payload, ident,
                                    udp_checksum=summed)
        else:
            udp = build_udp(src, vm_ip, src_port, flow.vm_port, payload, summed)
            packet = ip_header(src, vm_ip, PROTO_UDP, len(udp)) + udp
        if len(packet) <= self.mtu:
            self._box.packets.append(packet)
        else:
            self._box.packets.extend(fragment(packet, self.mtu, self._next_ip_ident()))

    def host_error(
        self,
        flow_id: int,
        kind: str,
        origin_ip: str | None,
        dst_ip: str,
        dst_port: int,
        now: float,
        *,
        mtu: int | None = None,
    ) -> None:
        """The host socket learned that a datagram to (dst_ip, dst_port) failed.

        The ICMP error comes from ``origin_ip`` (the router or host that
        reported it, so traceroute shows each hop) or else from the destination.
        """
        flow = self._flows.get(flow_id)
        if not isinstance(flow, _UdpFlow):
            self.stats["drop_unknown_flow"] += 1
            return
        dst = self._vm_view(dst_ip)
        if dst is None or len(dst) != len(flow.vm_ip) or not 0 <= dst_port <= 0xFFFF:
            self.stats["drop_host_error"] += 1
            return
        original = flow.originals.get((dst, dst_port))
        if original is None:
            # Only the addresses and ports matter to the VM's socket lookup.
            udp = (
                flow.vm_port.to_bytes(2, "big") + dst_port.to_bytes(2, "big") + b"\x00\x08\x00\x00"
            )
            original = ip_header(flow.vm_ip, dst, PROTO_UDP, 8, dont_fragment=False) + udp
        self._emit_error(original, self._error_source(origin_ip, dst), kind, mtu)

    def _close(self, flow: NatFlow) -> None:
        assert isinstance(flow, _UdpFlow)
        del self._flows[flow.flow_id]
        del self._by_endpoint[(flow.vm_ip, flow.vm_port)]
        self._box.effects.append(UdpClose(flow.flow_id))


__all__ = [
    "HOST_LOOPBACK",
    "MAX_UDP_PAYLOAD",
    "NatBase",
    "NatFlow",
    "UdpClose",
    "UdpNat",
    "UdpOpen",
    "UdpSend",
    "is_routable",
    "route",
]
