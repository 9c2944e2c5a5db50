"""UDP port forwarding into VMs: host datagrams on a published port reach a VM port.

Each (listener, host client) pair is a flow with its own gateway port, so the
VM sees one stable peer per client and its replies find the right client.
The ports come from 61000-65535, above the range TCP forwards use
(32768-60999), so the two never collide. Flows are only a mapping (the host
socket belongs to the listener), so expiry needs no effect: idle flows and
the least recently used ones beyond ``max_flows`` are simply forgotten.
Datagrams only go into a VM (core/forwards.vm_target names it) and back to
the host client that sent them, so core/routes has nothing to judge here.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass

from pyvpnkit.core.config import NetConfig
from pyvpnkit.core.effects import Client, Effect, UdpForwardReply
from pyvpnkit.core.idleflows import IdleFlows
from pyvpnkit.core.ipfrag import fragment_ipv4
from pyvpnkit.core.outbox import Outbox
from pyvpnkit.wire.ipv4 import IPv4Packet
from pyvpnkit.wire.udp import UdpDatagram, build_ipv4_udp

PORT_FIRST = 61000
PORT_LAST = 65535
MAX_UDP_PAYLOAD = 65507  # 65535 - IPv4 header - UDP header



@dataclass(slots=True)
class _Flow:
    gw_port: int
    listener_id: int
    client: Client
    vm_ip: bytes
    vm_port: int
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
    ) -> None:
        first, last = port_range
        if not 0 < first <= last <= 0xFFFF:
            raise ValueError(f"bad gateway port range {first}-{last}")
        self.config = config
        self.idle_timeout = idle_timeout
        self.max_flows = min(max_flows, last - first + 1)
        self._first = first
        self._span = last - first + 1
        self._cursor = 0
        self.stats: Counter[str] = Counter()
        self.listeners: dict[int, tuple[bytes, int]] = {}
        self._flows: OrderedDict[int, _Flow] = OrderedDict()  # by gateway port, LRU first
        self._by_client: dict[tuple[int, Client], _Flow] = {}
        self._ip_ident = 0
        self._box = outbox if outbox is not None else Outbox()

    # -- listeners -----------------------------------------------------------

    def add(self, listener_id: int, vm_ip: bytes, vm_port: int) -> None:
        """Forward listener ``listener_id`` to (vm_ip, vm_port); re-adding retargets it."""
        if len(vm_ip) != 4 or not 0 < vm_port <= 0xFFFF:
            raise ValueError(f"bad VM endpoint {vm_ip!r}:{vm_port}")
        old = self.listeners.get(listener_id)
        if old is not None and old != (vm_ip, vm_port):
            self._drop_flows(listener_id)
        self.listeners[listener_id] = (vm_ip, vm_port)

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
        if len(payload) > MAX_UDP_PAYLOAD:
            self.stats["drop_too_big"] += 1
            return
        key = (listener_id, client)
        flow = self._by_client.get(key)
        if flow is None:
            flow = self._new_flow(listener_id, client, target, now)
        else:
            self._touch_flow(flow.gw_port, flow, now)
        gw = self.config.gateway_ip
        self._ip_ident = (self._ip_ident + 1) & 0xFFFF
        packet = build_ipv4_udp(
            gw, flow.vm_ip, flow.gw_port, flow.vm_port, payload, ident=self._ip_ident
        )
        self.stats["to_vm"] += 1
        if len(packet) <= self.config.mtu:
            self._box.packets.append(packet)
        else:
            self._box.packets.extend(fragment_ipv4(packet, self.config.mtu))

    def _new_flow(
        self, listener_id: int, client: Client, target: tuple[bytes, int], now: float
    ) -> _Flow:
        self._make_room()
        while True:  # a free port exists: fewer flows than ports
            port = self._first + self._cursor
            self._cursor = (self._cursor + 1) % self._span
            if port not in self._flows:
                break
        flow = _Flow(port, listener_id, client, target[0], target[1], now)
        self._flows[port] = flow
        self._by_client[(listener_id, client)] = flow
        return flow

    # -- from the VM ---------------------------------------------------------

    def owns(self, gw_port: int) -> bool:
        """True if VM datagrams to gateway:``gw_port`` are replies for a forward."""
        return gw_port in self._flows

    def handle(self, pkt: IPv4Packet, dgram: UdpDatagram, now: float) -> None:
        """A VM datagram to the gateway port of a flow: relay it to the host client."""
        flow = self._flows.get(dgram.dst_port)
        if flow is None:
            self.stats["drop_no_flow"] += 1
            return
        if pkt.src != flow.vm_ip or dgram.src_port != flow.vm_port:
            # Like a connected socket: only the forward's target may answer.
            self.stats["drop_wrong_source"] += 1
            return
        self._touch_flow(flow.gw_port, flow, now)
        self.stats["to_host"] += 1
        self._box.effects.append(
            UdpForwardReply(flow.listener_id, flow.client, dgram.payload.tobytes())
        )

    # -- timers and output ---------------------------------------------------

    def drain(self) -> tuple[list[bytes], list[Effect]]:
        """IPv4 packets for VMs and UdpForwardReply effects, since the last drain."""
        return self._box.take()

    def _drop(self, flow: _Flow) -> None:
        del self._flows[flow.gw_port]
        del self._by_client[(flow.listener_id, flow.client)]


__all__ = ["MAX_UDP_PAYLOAD", "PORT_FIRST", "PORT_LAST", "UdpForwardReply", "UdpForwarder"]
