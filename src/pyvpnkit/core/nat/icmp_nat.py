"""ICMP echo NAT: pings from VMs become host ICMP sockets.

Unprivileged ping sockets pick their own identifier, so the runtime keeps one
socket per flow and reports replies by flow; we put back the VM's identifier.
Errors for a flow (TTL exceeded at a hop, unreachable) are re-quoted with the
VM's original echo request so ``ping`` and ``traceroute -I`` in the VM match them.
IPv6 echo (ICMPv6 128/129, 16-byte addresses) takes the same path.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from pyvpnkit.core.config import NetConfig
from pyvpnkit.core.effects import IcmpClose, IcmpEchoSend
from pyvpnkit.core.ip.family import IpPacket, gateway_for, hop_limit, ip_header, quote
from pyvpnkit.core.nat.routes import route
from pyvpnkit.core.nat.udp_nat import NatBase, NatFlow
from pyvpnkit.core.switch.outbox import Outbox
from pyvpnkit.wire import icmp as icmpw
from pyvpnkit.wire import icmpv6 as icmp6
from pyvpnkit.wire.ipv4 import PROTO_ICMP
from pyvpnkit.wire.ipv6 import NH_ICMPV6

MAX_ECHO_PAYLOAD = 65535 - 20 - 8
ICMP_REQUEST, ICMP_REPLY = 0, 1  # for _echo, either family
_REQUESTS_PER_FLOW = 64  # quoted requests kept per flow, by sequence number


@dataclass(slots=True)
class _EchoFlow(NatFlow):
    ident: int = 0
    dst: bytes = b""  # as the VM addressed it
    # seq -> the VM's IP header + ICMP echo header
    requests: OrderedDict[int, bytes] = field(default_factory=OrderedDict)


class IcmpNat(NatBase):
    def __init__(
        self,
        config: NetConfig,
        *,
        idle_timeout: float = 60.0,
        max_flows: int = 1024,
        mtu: int | None = None,
        outbox: Outbox | None = None,
    ) -> None:
        mtu = config.mtu if mtu is None else mtu
        super().__init__(config, idle_timeout, max_flows, mtu, outbox)
        self._by_key: dict[tuple[bytes, int, bytes], _EchoFlow] = {}

    def flow_of(self, vm_ip: bytes, ident: int, dst: bytes) -> int | None:
        flow = self._by_key.get((vm_ip, ident, dst))
        return None if flow is None else flow.flow_id

    def handle(
        self, pkt: IpPacket, msg: icmpw.IcmpMessage | icmp6.Icmpv6Message, now: float
    ) -> None:
        """An ICMP (or ICMPv6) message from a VM to an address outside the stack."""
        if isinstance(msg, icmpw.IcmpMessage):
            request, payload = icmpw.ECHO_REQUEST, msg.payload
        else:
            request, payload = icmp6.ECHO_REQUEST, msg.body
        if msg.type != request or msg.code != 0 or pkt.is_fragment:
            self.stats["drop_type"] += 1
            return
        original = quote(pkt)
        if pkt.dst == gateway_for(self.config, pkt.src):
            self._send(self._echo(pkt.dst, pkt.src, ICMP_REPLY, msg.rest, payload))
            return
        host, refusal, err_src = route(self.config, pkt.dst)
        if refusal is not None and err_src is not None:
            self._emit_error(original, err_src, refusal)
            return
        if host is None:
            self.stats["drop_destination"] += 1
            return
        ttl = hop_limit(pkt)
        if ttl <= 1:
            self._emit_error(original, gateway_for(self.config, pkt.src), "ttl_exceeded")
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
        self._box.effects.append(
            IcmpEchoSend(flow.flow_id, host, msg.ident, msg.seq, payload.tobytes(), ttl - 1)
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
        if (
            src is None or len(src) != len(flow.vm_ip) or not 0 <= seq <= 0xFFFF
            or len(payload) > MAX_ECHO_PAYLOAD
        ):
            self.stats["drop_host_reply"] += 1
            return
        self._touch(flow, now)
        rest = icmpw.echo_rest(flow.ident, seq)
        self._send(self._echo(src, flow.vm_ip, ICMP_REPLY, rest, payload))

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
            rest = icmpw.echo_rest(flow.ident, seq)
            original = self._echo(flow.vm_ip, flow.dst, ICMP_REQUEST, rest, b"")
        self._emit_error(original, self._error_source(origin_ip, flow.dst), kind)

    def _echo(
        self, src: bytes, dst: bytes, kind: int, rest: bytes, payload: bytes | memoryview
    ) -> bytes:
        """An echo request (kind 0) or reply (kind 1) packet in the family of ``src``."""
        if len(src) == 16:
            typ = icmp6.ECHO_REPLY if kind == ICMP_REPLY else icmp6.ECHO_REQUEST
            body = icmp6.build_icmpv6(src, dst, typ, 0, rest, payload)
            proto = NH_ICMPV6
        else:
            typ = icmpw.ECHO_REPLY if kind == ICMP_REPLY else icmpw.ECHO_REQUEST
            body = icmpw.build_icmp(typ, 0, rest, payload)
            proto = PROTO_ICMP
        header = ip_header(
            src, dst, proto, len(body), ident=self._next_ip_ident(), dont_fragment=False
        )
        return header + body

    def _close(self, flow: NatFlow) -> None:
        assert isinstance(flow, _EchoFlow)
        del self._flows[flow.flow_id]
        del self._by_key[(flow.vm_ip, flow.ident, flow.dst)]
        self._box.effects.append(IcmpClose(flow.flow_id))


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

