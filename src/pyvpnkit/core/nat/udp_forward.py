"""UDP port forwarding into VMs: host datagrams on a published port reach a VM port.

Each (listener, host client) pair is a flow. Its source, as the VM sees it,
is the client's address and port where ``forward_source`` keeps it, else the
gateway with a port of its own from 61000-65535 (above the range TCP
forwards use, 32768-60999). Flows are found from the VM's side by their
four-tuple (VM address and port, source address and port), so a VM reply to
a client's address is the forward's while the VM's own datagrams to other
addresses stay the NAT's. A source the VM's socket has itself been sending
to through the NAT (``nat_peer``) would make the two ambiguous: the flow then
keeps the client's address with another port, as Linux's NAT remaps a port
on a clash. Flows are only a mapping (the host socket belongs to the
listener), so expiry needs no effect: idle flows and the least recently used
ones beyond ``max_flows`` are simply forgotten. Datagrams only go into a VM
(core/forwards.vm_target names it) and back to the host client that sent
them, so core/routes has nothing to judge here.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from pyvpnkit.core.config import NetConfig
from pyvpnkit.core.effects import Client, Effect, UdpForwardReply
from pyvpnkit.core.forwards import ForwardSources
from pyvpnkit.core.ip.family import IpPacket, fragment, gateway_for, ip_header
from pyvpnkit.core.nat.idleflows import IdleFlows
from pyvpnkit.core.switch.outbox import Outbox
from pyvpnkit.wire.ipv4 import PROTO_UDP
from pyvpnkit.wire.udp import UdpDatagram, build_ipv4_udp, build_udp

PORT_FIRST = 61000
PORT_LAST = 65535
MAX_UDP_PAYLOAD = 65507  # 65535 - IPv4 header - UDP header
MAX_UDP6_PAYLOAD = 65527  # 65535 - UDP header: the IPv6 payload length excludes its header

# (vm ip, vm port, source ip, source port): the flow as the VM's datagrams name it
FlowKey = tuple[bytes, int, bytes, int]


@dataclass(slots=True)
class _Flow:
    key: FlowKey
    listener_id: int
    client: Client
    last: float


class UdpForwarder(IdleFlows[_Flow]):
    """Sans-I/O table of UDP forwards and their per-client flows."""

    def __init__(
        self,
        config: NetConfig,
        *,
        idle_timeout: float = 60.0,
        max_flows: int = 4096,
        port_range: tuple[int, int] = (PORT_FIRST, PORT_LAST),
        outbox: Outbox | None = None,
        nat_peer: Callable[[bytes, int, bytes, int], bool] = lambda *_: False,
    ) -> None:
        first, last = port_range
        if not 0 < first <= last <= 0xFFFF:
            raise ValueError(f"bad gateway port range {first}-{last}")
        self.config = config
        self._sources = ForwardSources(config)
        self.idle_timeout = idle_timeout
        self.max_flows = min(max_flows, last - first + 1)  # so a free port always exists
        self._first = first
        self._span = last - first + 1
        self._cursor = 0
        self._nat_peer = nat_peer
        self.stats: Counter[str] = Counter()
        # listener -> (vm ip, vm port, keep the client's address)
        self.listeners: dict[int, tuple[bytes, int, bool]] = {}
        self._flows: OrderedDict[FlowKey, _Flow] = OrderedDict()  # LRU first
        self._by_client: dict[tuple[int, Client], _Flow] = {}
        self._ip_ident = 0
        self._box = outbox if outbox is not None else Outbox()

    # -- listeners -----------------------------------------------------------

    def add(
        self, listener_id: int, vm_ip: bytes, vm_port: int, keep_source: bool = False
    ) -> None:
        """Forward listener ``listener_id`` to (vm_ip, vm_port), an IPv4 or IPv6 VM address;
        re-adding retargets it. With ``keep_source`` the VM sees each client's address
        (``forward_source``).
        """
        if len(vm_ip) not in (4, 16) or not 0 < vm_port <= 0xFFFF:
            raise ValueError(f"bad VM endpoint {vm_ip!r}:{vm_port}")
        target = (vm_ip, vm_port, keep_source)
        old = self.listeners.get(listener_id)
        if old is not None and old != target:
            self._drop_flows(listener_id)
        self.listeners[listener_id] = target

    def remove(self, listener_id: int) -> None:
        if self.listeners.pop(listener_id, None) is not None:
            self._drop_flows(listener_id)

    def _drop_flows(self, listener_id: int) -> None:
        for flow in [f for f in self._flows.values() if f.listener_id == listener_id]:
            self._drop(flow)

    # -- from the host -------------------------------------------------------

    def host_datagram(
        self, listener_id: int, client: Client, payload: bytes, now: float
    ) -> None:
        """A datagram a host client sent to the listener: queue it for the VM."""
        target = self.listeners.get(listener_id)
        if target is None:
            self.stats["drop_unknown_listener"] += 1
            return
        if len(payload) > (MAX_UDP_PAYLOAD if len(target[0]) == 4 else MAX_UDP6_PAYLOAD):
            self.stats["drop_too_big"] += 1
            return
        flow = self._by_client.get((listener_id, client))
        if flow is None:
            flow = self._new_flow(listener_id, client, target, now)
        else:
            self._touch_flow(flow.key, flow, now)
        vm_ip, vm_port, src, src_port = flow.key
        self._ip_ident = ident = (self._ip_ident + 1) & 0xFFFF
        if len(vm_ip) == 4:
            packet = build_ipv4_udp(src, vm_ip, src_port, vm_port, payload, ident=ident)
        else:
            udp = build_udp(src, vm_ip, src_port, vm_port, payload)
            packet = ip_header(src, vm_ip, PROTO_UDP, len(udp)) + udp
        self.stats["to_vm"] += 1
        if len(packet) <= self.config.mtu:
            self._box.packets.append(packet)
        else:
            self._box.packets.extend(fragment(packet, self.config.mtu, ident))

    def _new_flow(
        self, listener_id: int, client: Client, target: tuple[bytes, int, bool], now: float
    ) -> _Flow:
        self._make_room()
        vm_ip, vm_port, keep_source = target
        gw = gateway_for(self.config, vm_ip)
        src = self._sources(vm_ip, client[0]) if keep_source else gw
        key = (vm_ip, vm_port, src, client[1])
        if src == gw or key in self._flows or self._nat_peer(*key):
            self.stats["source_port_changed" if src != gw else "from_gateway"] += 1
            key = self._free_key(vm_ip, vm_port, src)
        flow = _Flow(key, listener_id, client, now)
        self._flows[key] = flow
        self._by_client[(listener_id, client)] = flow
        return flow

    def _free_key(self, vm_ip: bytes, vm_port: int, src: bytes) -> FlowKey:
        """A four-tuple with a port of the range no flow holds; one the NAT's socket
        has not sent to if there is such (there are fewer flows than ports)."""
        fallback = None
        for _ in range(self._span):
            port = self._first + self._cursor
            self._cursor = (self._cursor + 1) % self._span
            key = (vm_ip, vm_port, src, port)
            if key not in self._flows:
                if not self._nat_peer(*key):
                    return key
                fallback = fallback or key
        assert fallback is not None
        return fallback

    # -- from the VM ---------------------------------------------------------

    def owns(self, vm_ip: bytes, vm_port: int, dst_ip: bytes, dst_port: int) -> bool:
        """True if a VM datagram from vm_ip:vm_port to dst_ip:dst_port answers a forward."""
        return (vm_ip, vm_port, dst_ip, dst_port) in self._flows

    def handle(self, pkt: IpPacket, dgram: UdpDatagram, now: float) -> None:
        """A VM datagram to the source of a flow: relay it to the host client."""
        key = (pkt.src, dgram.src_port, pkt.dst, dgram.dst_port)
        flow = self._flows.get(key)
        if flow is None:
            self.stats["drop_no_flow"] += 1
            return
        self._touch_flow(key, flow, now)
        self.stats["to_host"] += 1
        self._box.effects.append(
            UdpForwardReply(flow.listener_id, flow.client, dgram.payload.tobytes())
        )

    # -- timers and output ---------------------------------------------------

    def drain(self) -> tuple[list[bytes], list[Effect]]:
        """IPv4 packets for VMs and UdpForwardReply effects, since the last drain."""
        return self._box.take()

    def _drop(self, flow: _Flow) -> None:
        del self._flows[flow.key]
        del self._by_client[(flow.listener_id, flow.client)]


__all__ = ["MAX_UDP6_PAYLOAD", "MAX_UDP_PAYLOAD", "PORT_FIRST", "PORT_LAST", "UdpForwardReply",
           "UdpForwarder"]
