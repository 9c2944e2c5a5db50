"""ICMP echo NAT: pings from VMs become host ICMP sockets.

Unprivileged ping sockets pick their own identifier, so the runtime keeps one
socket per flow and reports replies by flow; we put back the VM's identifier.
Errors for a flow (TTL exceeded at a hop, unreachable) are re-quoted with the
VM's original echo request so ``ping`` and ``traceroute -I`` in the VM match them.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from pyvpnkit.core.config import NetConfig
from pyvpnkit.core.effects import IcmpClose, IcmpEchoSend
from pyvpnkit.core.routes import route
from pyvpnkit.core.udp_nat import NatBase, NatFlow
from pyvpnkit.wire import icmp as icmpw
from pyvpnkit.wire.ipv4 import PROTO_ICMP, IPv4Packet, ipv4_header

MAX_ECHO_PAYLOAD = 65535 - 20 - 8
_REQUESTS_PER_FLOW = 64  # quoted requests kept per flow, by sequence number


@dataclass(slots=True)
class _EchoFlow(NatFlow):
    ident: int = 0
    dst: bytes = b""  # as the VM addressed it
    # seq -> the VM's IPv4 header + ICMP echo header
    requests: OrderedDict[int, bytes] = field(default_factory=OrderedDict)


class IcmpNat(NatBase):
    def __init__(
        self,
        config: NetConfig,
        *,
        idle_timeout: float = 60.0,
        max_flows: int = 1024,
        mtu: int | None = None,
    ) -> None:
        super().__init__(config, idle_timeout, max_flows, config.mtu if mtu is None else mtu)
        self._by_key: dict[tuple[bytes, int, bytes], _EchoFlow] = {}

    def flow_of(self, vm_ip: bytes, ident: int, dst: bytes) -> int | None:
        flow = self._by_key.get((vm_ip, ident, dst))
        return None if flow is None else flow.flow_id

    def handle(self, pkt: IPv4Packet, msg: icmpw.IcmpMessage, now: float) -> None:
        """An ICMP message from a VM to an address outside the stack."""
        if msg.type != icmpw.ECHO_REQUEST or msg.code != 0 or pkt.is_fragment:
            self.stats["drop_type"] += 1
            return
        original = pkt.header.tobytes() + pkt.payload[:8].tobytes()
        if pkt.dst == self.config.gateway_ip:
            reply = icmpw.build_icmp(icmpw.ECHO_REPLY, 0, msg.rest, msg.payload)
            self._send(self._ip(pkt.dst, pkt.src, reply))
            return
        host, refusal, err_src = route(self.config, pkt.dst)
        if refusal is not None and err_src is not None:
            self._emit_error(original, err_src, refusal)
            return
        if host is None:
            self.stats["drop_destination"] += 1
            return
        if pkt.ttl <= 1:
            self._emit_error(original, self.config.gateway_ip, "ttl_exceeded")
            return
        key = (pkt.src, msg.ident, pkt.dst)
        flow = self._by_key.get(key)
        if flow is None:
            flow = _EchoFlow(self._allocate_id(), pkt.src, now, msg.ident, pkt.dst)
            self._flows[flow.flow_id] = flow
            self._by_key[key] = flow
        else:
            self._touch(flow, now)
        requests = flow.requests
        requests[msg.seq] = original
        requests.move_to_end(msg.seq)
        if len(requests) > _REQUESTS_PER_FLOW:
            requests.popitem(last=False)
        self._effects.append(
            IcmpEchoSend(flow.flow_id, host, msg.ident, msg.seq, msg.payload.tobytes(), pkt.ttl - 1)
        )

    def host_echo_reply(
        self, flow_id: int, src_ip: str, seq: int, payload: bytes, now: float
    ) -> None:
        """The flow's host socket got an echo reply: give it the VM's id and seq."""
        flow = self._flows.get(flow_id)
        if not isinstance(flow, _EchoFlow):
            self.stats["drop_unknown_flow"] += 1
            return
        src = self._vm_view(src_ip)
        if src is None or not 0 <= seq <= 0xFFFF or len(payload) > MAX_ECHO_PAYLOAD:
            self.stats["drop_host_reply"] += 1
            return
        self._touch(flow, now)
        reply = icmpw.build_icmp(icmpw.ECHO_REPLY, 0, icmpw.echo_rest(flow.ident, seq), payload)
        self._send(self._ip(src, flow.vm_ip, reply))

    def host_error(
        self, flow_id: int, kind: str, origin_ip: str | None, seq: int, now: float
    ) -> None:
        """An ICMP error about the flow's request ``seq``, reported by ``origin_ip``."""
        flow = self._flows.get(flow_id)
        if not isinstance(flow, _EchoFlow) or not 0 <= seq <= 0xFFFF:
            self.stats["drop_unknown_flow"] += 1
            return
        original = flow.requests.get(seq)
        if original is None:
            echo = icmpw.build_icmp(icmpw.ECHO_REQUEST, 0, icmpw.echo_rest(flow.ident, seq), b"")
            original = ipv4_header(flow.vm_ip, flow.dst, PROTO_ICMP, len(echo)) + echo
        self._emit_error(original, self._error_source(origin_ip, flow.dst), kind)

    def _ip(self, src: bytes, dst: bytes, body: bytes) -> bytes:
        header = ipv4_header(
            src, dst, PROTO_ICMP, len(body), ident=self._next_ip_ident(), dont_fragment=False
        )
        return header + body

    def _close(self, flow: NatFlow) -> None:
        assert isinstance(flow, _EchoFlow)
        del self._flows[flow.flow_id]
        del self._by_key[(flow.vm_ip, flow.ident, flow.dst)]
        self._effects.append(IcmpClose(flow.flow_id))


__all__ = ["MAX_ECHO_PAYLOAD", "IcmpClose", "IcmpEchoSend", "IcmpNat"]


class EchoIdents:
    """Raw-socket mode's own NAT: one host echo identifier per flow, so that a
    reply (or an error quoting our request) finds its flow; checked against the
    flow's destination, as any host process may use the same identifier."""

    def __init__(self, first: int) -> None:
        self._ident_of: dict[int, int] = {}  # flow id -> our identifier
        self._flow_of: dict[int, tuple[int, str]] = {}  # our identifier -> (flow, dst)
        self._next = first & 0xFFFF

    def ident(self, flow_id: int, dst: str) -> int | None:
        """The flow's identifier (a new one on first use), or None when all 65536 are taken."""
        ident = self._ident_of.get(flow_id)
        if ident is not None:
            return ident
        if len(self._flow_of) >= 0x10000:
            return None
        ident = self._next
        while ident in self._flow_of:
            ident = (ident + 1) & 0xFFFF
        self._next = (ident + 1) & 0xFFFF
        self._ident_of[flow_id] = ident
        self._flow_of[ident] = (flow_id, dst)
        return ident

    def flow(self, ident: int, dst: str) -> int | None:
        """The flow that sent echoes with ``ident`` to ``dst``, if any."""
        entry = self._flow_of.get(ident)
        return entry[0] if entry is not None and entry[1] == dst else None

    def forget(self, flow_id: int) -> None:
        ident = self._ident_of.pop(flow_id, None)
        if ident is not None:
            self._flow_of.pop(ident, None)

    def clear(self) -> None:
        self._ident_of.clear()
        self._flow_of.clear()

