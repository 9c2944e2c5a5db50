"""TCP NAT: every TCP connection from a VM ends in our TCP and is relayed to a host socket.

On a SYN to a new flow we ask the runtime to connect on the host first and
answer the VM only once we know: SYN-ACK on success, RST on failure, so a
refused connection is seen at once and a black hole never stalls other flows.
Each VM may have ``max_pending_connects`` host connects in flight; a SYN
beyond that evicts the VM's oldest one (an RST for it), so a SYN flood into a
black hole holds a bounded number of sockets while a connect to a working
destination, which completes in milliseconds, still gets through.
Flow control is end to end: the window offered to the VM shrinks while the
host socket has not taken our writes, and reading from the host pauses while
the VM has not acknowledged what we sent it.
A flow the HTTP proxy serves opens with ProxyOpen instead, and its host side
is the proxy: its effects carry the Proxy* types (``Flow.side``).
"""

from __future__ import annotations

import heapq
import ipaddress
import struct
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Final, Protocol

from pyvpnkit.core.config import NetConfig
from pyvpnkit.core.effects import (
    HOST_SOCKET,
    HTTP_PROXY,
    Client,
    Effect,
    HostSide,
    ProxyOpen,
    TcpOpen,
)
from pyvpnkit.core.forwards import ForwardSources
from pyvpnkit.core.histogram import Histogram
from pyvpnkit.core.ip.family import (
    IPV4_TCP_OVERHEAD,
    IPV6_TCP_OVERHEAD,
    IpPacket,
    addr_text,
    endpoint_text,
    gateway_for,
    ip_header,
)
from pyvpnkit.core.nat.icmp_errors import build_error_kind
from pyvpnkit.core.nat.routes import route
from pyvpnkit.core.tcp import (
    Closed,
    DataReceived,
    Established,
    PeerClosed,
    Reset,
    SendSpace,
    TcpConnection,
    TcpSettings,
    TimedOut,
)
from pyvpnkit.core.tcp.settings import DEFAULTS as TCP_DEFAULTS
from pyvpnkit.wire.ipv4 import PROTO_TCP
from pyvpnkit.wire.tcp import ACK, RST, SYN, TcpSegment, build_tcp

# (vm ip, vm port, remote ip, remote port); addresses are 4 bytes (IPv4) or 16 (IPv6)
FlowKey = tuple[bytes, int, bytes, int]

# A host read is handed to the TCP machine whole; reading pauses while the
# send buffer has less room than this, which bounds memory per flow.
READ_CHUNK = 256 * 1024
# Host connects in flight per VM before a new SYN evicts the oldest.
MAX_PENDING_CONNECTS: Final = 1024


@dataclass(frozen=True)
class Redirect:
    """vpnkit --forwards rule: VM connections to dst_prefix:dst_port go to a unix socket."""

    dst_prefix: ipaddress.IPv4Network
    dst_port: int
    path: str

    def matches(self, ip: bytes, port: int) -> bool:
        return (
            port == self.dst_port and len(ip) == 4 and ipaddress.IPv4Address(ip) in self.dst_prefix
        )


class LocalService(Protocol):
    """A byte-stream service the stack itself terminates (e.g. DNS over TCP)."""

    def received(self, flow_id: int, data: bytes, now: float) -> None:
        """Bytes the VM sent."""

    def eof(self, flow_id: int, now: float) -> None:
        """The VM finished sending."""


@dataclass(slots=True)
class Flow:
    flow_id: int
    key: FlowKey
    syn: TcpSegment | None
    conn: TcpConnection | None = None
    local: LocalService | None = None
    pending: bytearray = field(default_factory=bytearray)  # host data not yet in conn
    host_eof: bool = False
    paused: bool = False
    host_open: bool = True
    connecting: bool = False  # counted in TcpNat._connecting until the host connect ends
    bytes_up: int = 0
    bytes_down: int = 0
    started: float = 0.0  # the VM's SYN (or our SYN for a port forward)
    ended: bool = False  # its summary is logged (at close, not after TIME_WAIT)
    deadline: float | None = None
    side: HostSide = HOST_SOCKET  # whom its host-side effects address (a socket, the proxy)
    via: str = ""  # where the HTTP proxy sent it, for the flow log
    forwarded: bool = False  # a port forward's connection into the VM (open_to_vm)


def rst_for(pkt: IpPacket, seg: TcpSegment) -> bytes:
    """RST answering an unacceptable segment (RFC 9293 3.10.7.1)."""
    if seg.flags & ACK:
        seq, ack, flags = seg.ack, 0, RST
    else:
        seq, ack, flags = 0, (seg.seq + seg.seg_len) & 0xFFFFFFFF, RST | ACK
    tcp = build_tcp(pkt.dst, pkt.src, seg.dst_port, seg.src_port, seq, ack, flags, 0)
    return ip_header(pkt.dst, pkt.src, PROTO_TCP, len(tcp)) + tcp


class TcpNat:
    def __init__(
        self,
        config: NetConfig,
        *,
        iss: Callable[[], int],
        local_service: Callable[[bytes, int], LocalService | None] = lambda ip, port: None,
        proxy_mode: Callable[[bytes, int], str | None] = lambda ip, port: None,
        gateway_forward: Callable[[bytes, int], tuple[str, int] | None] = lambda ip, port: None,
        offloads: Callable[[bytes], bool] = lambda ip: False,
        settings: TcpSettings = TCP_DEFAULTS,
        redirects: tuple[Redirect, ...] = (),
        max_pending_connects: int = MAX_PENDING_CONNECTS,
    ) -> None:
        self.config = config
        self._sources = ForwardSources(config)  # what a forwarded client shows the VM
        self.max_pending_connects = max_pending_connects
        # VM ip -> its flows whose host connect is in flight, oldest first
        self._connecting: dict[bytes, dict[int, Flow]] = {}
        self.redirects = redirects
        self._iss = iss
        self._local_service = local_service
        self._proxy_mode = proxy_mode
        self._gateway_forward = gateway_forward
        self._offloads = offloads  # VM address -> its link completes checksums, does TSO
        # What connections get, by address length and link offloads: the MSS for the
        # family; a link that offloads (TAP) takes packets up to the IP maximum and
        # checksums them itself. Paused host reads resume on SendSpace once READ_CHUNK
        # fits: it must fire by then.
        snd_buffer = max(settings.snd_buffer, READ_CHUNK)
        base = replace(settings, snd_buffer=snd_buffer,
                       send_space_low=max(snd_buffer // 4, READ_CHUNK))
        self._conn_settings: dict[tuple[int, bool], TcpSettings] = {}
        for size, overhead in ((4, IPV4_TCP_OVERHEAD), (16, IPV6_TCP_OVERHEAD)):
            mss = config.mtu - overhead
            self._conn_settings[size, False] = replace(base, mss=mss)
            self._conn_settings[size, True] = replace(
                base, mss=mss, checksum=False, gso_size=65535 - overhead
            )
        self.flows: dict[FlowKey, Flow] = {}
        self.by_id: dict[int, Flow] = {}
        self._next_id = 1
        self._next_port = 32767
        self._timers: list[tuple[float, int]] = []
        self._packets: list[bytes] = []
        self._effects: list[Effect] = []
        self._dirty: set[int] = set()
        self.closed_log: list[str] = []  # a summary line per finished flow, for the runtime
        self.flow_log = True  # the runtime turns it off when nobody reads closed_log
        self.connect_latency = Histogram()  # SYN to host connect, for the metrics
        self.stats = {"opened": 0, "refused": 0, "rst_sent": 0, "evicted_pending": 0,
                      "proxied": 0, "unreachable_sent": 0}

    # -- from the VM ---------------------------------------------------------

    def handle(self, pkt: IpPacket, seg: TcpSegment, now: float) -> None:
        key = (pkt.src, seg.src_port, pkt.dst, seg.dst_port)
        flow = self.flows.get(key)
        if flow is not None and flow.conn is not None and flow.conn.state == "TIME_WAIT" \
                and seg.flags & SYN and not seg.flags & ACK:
            # The VM reuses the port pair of a finished connection.
            self._forget(flow, now, reset=False)
            flow = None
        if flow is not None:
            if flow.conn is not None:
                flow.conn.handle_segment(seg, now)
                self._dirty.add(flow.flow_id)
            elif seg.flags & RST:
                # The VM gave up while we were still connecting on the host.
                self._forget(flow, now, reset=True)
            # Otherwise a retransmitted SYN while connecting: absorbed.
            return
        if seg.flags & RST:
            return
        if not seg.flags & SYN or seg.flags & ACK:
            self._reject(pkt, seg)
            return
        self._new_flow(key, pkt, seg, now)

    def _new_flow(self, key: FlowKey, pkt: IpPacket, seg: TcpSegment, now: float) -> None:
        cfg = self.config
        flow = Flow(self._next_id, key, seg, started=now)
        self._next_id += 1
        port = seg.dst_port
        forward = self._gateway_forward(pkt.dst, port)  # vpnkit's gateway forwards go first
        local = None if forward is not None else self._local_service(pkt.dst, port)
        if local is not None:
            flow.local = local
            flow.host_open = False
            self._register(flow)
            self._accept(flow, now)
            return
        # A --forwards redirect (or gvproxy's gateway API) goes to the unix socket the
        # user named, never to a host address: core/routes has nothing to judge.
        path = next((r.path for r in self.redirects if r.matches(pkt.dst, port)), None)
        host, refusal, _src = ("", None, None) if path is not None else route(cfg, pkt.dst)
        mode = None if path is not None else self._proxy_mode(pkt.dst, port)
        if forward is not None:
            host, port = forward
            refusal = None
            mode = None
        if mode is not None:
            # The HTTP proxy is this flow's host side: it accepts at once (host_connected).
            flow.side = HTTP_PROXY
            self._register(flow)
            self.stats["proxied"] += 1
            dst = addr_text(pkt.dst)
            self._effects.append(ProxyOpen(flow.flow_id, dst, seg.dst_port, mode))
            return
        if host is None:
            # A network that is not there is unreachable for TCP too (slirp4netns's
            # host loopback when disabled); other refusals answer the SYN with an RST.
            if refusal != "net_unreachable" or not self._unreachable_syn(key, seg.seq, refusal):
                self._reject(pkt, seg)
            return
        pending = self._connecting.get(pkt.src, {})
        if len(pending) >= self.max_pending_connects:
            self.stats["evicted_pending"] += 1
            oldest = pending[next(iter(pending))]
            self._refuse_syn(oldest)
            self._forget(oldest, now, reset=True)
        self._register(flow)
        self._connecting.setdefault(pkt.src, {})[flow.flow_id] = flow
        flow.connecting = True
        self.stats["opened"] += 1
        self._effects.append(TcpOpen(flow.flow_id, host, port, path))

    def _register(self, flow: Flow) -> None:
        self.flows[flow.key] = flow
        self.by_id[flow.flow_id] = flow

    def _reject(self, pkt: IpPacket, seg: TcpSegment) -> None:
        self.stats["rst_sent"] += 1
        self._packets.append(rst_for(pkt, seg))

    def _accept(self, flow: Flow, now: float) -> None:
        assert flow.syn is not None
        vm_ip, _vm_port, local_ip, _local_port = flow.key
        flow.conn = TcpConnection.accept(
            flow.syn,
            now,
            local_ip=local_ip,
            local_port=flow.syn.dst_port,
            remote_ip=vm_ip,
            remote_port=flow.syn.src_port,
            iss=self._iss(),
            settings=self._settings(vm_ip),
        )
        flow.syn = None
        self._dirty.add(flow.flow_id)

    def _settings(self, vm_ip: bytes) -> TcpSettings:
        """Connection settings for the VM's address family and link."""
        return self._conn_settings[len(vm_ip), self._offloads(vm_ip)]

    def open_to_vm(
        self, vm_ip: bytes, vm_port: int, now: float, client: Client | None = None
    ) -> int:
        """Active open into a VM for a port forward; the host socket is already connected.

        The VM sees the connection coming from ``client`` (the host peer) as
        ``forward_source`` maps it, with the client's port unless that
        four-tuple is taken (a flow of the VM's own to that address and port,
        or another client shown by the same address); without a client, or
        when the gateway stands in, from the gateway and a fresh port.
        Returns the flow id the runtime uses for the accepted socket.
        """
        gw = gateway_for(self.config, vm_ip)
        src = gw if client is None else self._sources(vm_ip, client[0])
        if src != gw and client is not None and (vm_ip, vm_port, src, client[1]) not in self.flows:
            port = client[1]
        else:
            port = self._free_port(vm_ip, vm_port, src)
        flow = Flow(self._next_id, (vm_ip, vm_port, src, port), None, started=now,
                    forwarded=True)
        self._next_id += 1
        flow.conn = TcpConnection(
            local_ip=src,
            local_port=port,
            remote_ip=vm_ip,
            remote_port=vm_port,
            iss=self._iss(),
            settings=self._settings(vm_ip),
        )
        flow.conn.connect(now)
        self._register(flow)
        self._dirty.add(flow.flow_id)
        return flow.flow_id

    def _free_port(self, vm_ip: bytes, vm_port: int, src: bytes) -> int:
        for _ in range(64):
            self._next_port = 32768 + (self._next_port - 32768 + 1) % 28232
            if (vm_ip, vm_port, src, self._next_port) not in self.flows:
                return self._next_port
        raise RuntimeError("no free gateway port for a forwarded connection")

    # -- from the host -------------------------------------------------------

    def host_connected(self, flow_id: int, now: float) -> None:
        flow = self.by_id.get(flow_id)
        if flow is not None and flow.conn is None:
            self.connect_latency.observe(now - flow.started)
            self._connect_ended(flow)
            self._accept(flow, now)

    def _connect_ended(self, flow: Flow) -> None:
        if flow.connecting:
            flow.connecting = False
            pending = self._connecting[flow.key[0]]
            del pending[flow.flow_id]
            if not pending:
                del self._connecting[flow.key[0]]

    def host_connect_failed(self, flow_id: int, now: float, kind: str | None = None) -> None:
        """Refused or timed out: the VM gets an RST at once. With an error ``kind``
        (net_unreachable, host_unreachable: see icmp_errors), an ICMP error quoting
        its SYN instead, which fails the VM's connect at once with the same errno."""
        flow = self.by_id.get(flow_id)
        if flow is None or flow.syn is None:
            return
        if kind is None or not self._unreachable(flow, kind):
            self._refuse_syn(flow)
        self.stats["refused"] += 1
        self._forget(flow, now, reset=False, host_closed=True)

    def _unreachable(self, flow: Flow, kind: str) -> bool:
        assert flow.syn is not None
        return self._unreachable_syn(flow.key, flow.syn.seq, kind)

    def _unreachable_syn(self, key: FlowKey, seq: int, kind: str) -> bool:
        """An ICMP error quoting the VM's SYN; False if ``kind`` has none for this family."""
        vm_ip, vm_port, ip, port = key
        head = struct.pack("!HHI", vm_port, port, seq)  # what the VM matches on
        original = ip_header(vm_ip, ip, PROTO_TCP, 20) + head
        err = build_error_kind(original, ip, kind)
        if err is not None:
            self.stats["unreachable_sent"] += 1
            self._packets.append(err)
        return err is not None

    def _refuse_syn(self, flow: Flow) -> None:
        """RST answering the SYN of a flow still waiting for its host connect."""
        assert flow.syn is not None
        vm_ip, vm_port, ip, port = flow.key
        ack = (flow.syn.seq + 1) & 0xFFFFFFFF
        tcp = build_tcp(ip, vm_ip, port, vm_port, 0, ack, RST | ACK, 0)
        self._packets.append(ip_header(ip, vm_ip, PROTO_TCP, len(tcp)) + tcp)

    def host_data(self, flow_id: int, data: bytes, now: float) -> None:
        flow = self.by_id.get(flow_id)
        if flow is None or flow.conn is None:
            return
        flow.bytes_down += len(data)
        if flow.pending:
            flow.pending += data
        else:
            taken = flow.conn.send(data, now)
            if taken < len(data):
                flow.pending += data[taken:]
        if not flow.paused and (flow.pending or flow.conn.send_space < READ_CHUNK):
            flow.paused = True
            self._effects.append(flow.side.pause(flow_id))
        self._dirty.add(flow_id)

    def host_eof(self, flow_id: int, now: float) -> None:
        flow = self.by_id.get(flow_id)
        if flow is None or flow.conn is None:
            return
        flow.host_eof = True
        if not flow.pending:
            flow.conn.shutdown(now)
        self._dirty.add(flow_id)

    def host_reset(self, flow_id: int, now: float) -> None:
        flow = self.by_id.get(flow_id)
        if flow is None:
            return
        flow.host_open = False
        if flow.conn is None:
            self.host_connect_failed(flow_id, now)
            return
        flow.conn.abort(now)
        self._dirty.add(flow_id)

    def host_sent(self, flow_id: int, n: int, now: float) -> bool:
        """The host socket took n more bytes: the VM may send that much more.

        True if the VM must be told (a window update): only then is a drain
        needed, which saves one per request of a request/response exchange.
        """
        flow = self.by_id.get(flow_id)
        if flow is not None and flow.conn is not None and flow.conn.consumed(n, now):
            self._dirty.add(flow_id)
            return True
        return False

    def local_send(self, flow_id: int, data: bytes, now: float) -> None:
        """A local service answers on its stream."""
        self.host_data(flow_id, data, now)

    def local_shutdown(self, flow_id: int, now: float) -> None:
        """A local service has answered everything: FIN after what it sent."""
        flow = self.by_id.get(flow_id)
        if flow is not None and flow.conn is not None:
            flow.conn.shutdown(now)

    def host_route(self, flow_id: int, via: str) -> None:
        """Where the host side took the flow (the HTTP proxy's upstreams), for the flow log."""
        flow = self.by_id.get(flow_id)
        if flow is not None:
            flow.via = via

    def forwarded_count(self) -> int:
        """Open connections of port forwards into the VMs."""
        return sum(1 for flow in self.flows.values() if flow.forwarded)

    def forget_vm(self, vm_ip: bytes, now: float) -> None:
        """The VM left the switch: close the host side of all its flows, forget them."""
        for flow in [f for f in self.flows.values() if f.key[0] == vm_ip]:
            self._forget(flow, now, reset=True)

    # -- timers and output ---------------------------------------------------

    def next_deadline(self) -> float | None:
        """Earliest flow deadline; valid after drain()."""
        while self._timers:
            when, fid = self._timers[0]
            flow = self.by_id.get(fid)
            if flow is not None and flow.deadline == when:
                return when
            heapq.heappop(self._timers)
        return None

    def handle_timer(self, now: float) -> None:
        while self._timers and self._timers[0][0] <= now:
            when, fid = heapq.heappop(self._timers)
            flow = self.by_id.get(fid)
            if flow is None or flow.deadline != when or flow.conn is None:
                continue
            flow.deadline = None
            flow.conn.handle_timer(now)
            self._dirty.add(fid)

    def drain(self, now: float) -> tuple[list[bytes], list[Effect]]:
        self._process_dirty(now)
        self._compact_timers()
        packets, effects = self._packets, self._effects
        self._packets, self._effects = [], []
        return packets, effects

    def _process_dirty(self, now: float) -> None:
        while self._dirty:
            dirty, self._dirty = self._dirty, set()
            for fid in dirty:
                flow = self.by_id.get(fid)
                if flow is not None and flow.conn is not None:
                    self._pump(flow, now)

    def _pump(self, flow: Flow, now: float) -> None:
        conn = flow.conn
        assert conn is not None
        packets, events = conn.drain()
        if packets:
            self._packets.extend(packets)
        fid = flow.flow_id
        for ev in events:
            if type(ev) is DataReceived:
                flow.bytes_up += len(ev.data)
                if flow.local is not None:
                    flow.local.received(fid, ev.data, now)
                    conn.consumed(len(ev.data), now)
                    self._dirty.add(fid)
                elif flow.host_open:
                    self._effects.append(flow.side.write(fid, ev.data))
            elif type(ev) is SendSpace:
                self._refill(flow, now)
            elif type(ev) is PeerClosed:
                if flow.local is not None:
                    flow.local.eof(fid, now)
                elif flow.host_open:
                    self._effects.append(flow.side.shutdown(fid))
            elif type(ev) in (Reset, TimedOut):
                self._close_host(flow, reset=True)
                self._log_end(flow, now, "reset" if type(ev) is Reset else "timeout")
            elif type(ev) is Closed:
                self._close_host(flow, reset=False)
                self._log_end(flow, now, "closed")
            elif type(ev) is Established:
                pass
        if conn.closed:
            self._forget(flow, now, reset=False)
            return
        deadline = conn.next_deadline()
        if deadline != flow.deadline:
            flow.deadline = deadline
            if deadline is not None:
                heapq.heappush(self._timers, (deadline, fid))

    def _compact_timers(self) -> None:
        """Drop the heap's stale entries once they outnumber the live deadlines.

        The heap deletes lazily: a flow whose deadline moves leaves its old
        entry behind, and stale entries leave only on reaching the top. A
        keepalive deadline is two hours away and moves with every segment, so
        while any flow with an earlier deadline lived they piled up without end
        (two per short connection, one per segment batch of a stream: issue
        14's RSS drift). Rebuilding keeps the heap under twice the flow count
        at amortized O(1) per push.
        """
        if len(self._timers) > 2 * len(self.by_id) + 64:
            self._timers = [(f.deadline, f.flow_id) for f in self.by_id.values()
                            if f.deadline is not None]
            heapq.heapify(self._timers)

    def _refill(self, flow: Flow, now: float) -> None:
        conn = flow.conn
        assert conn is not None
        if flow.pending:
            taken = conn.send(bytes(flow.pending), now)
            del flow.pending[:taken]
        if not flow.pending:
            if flow.host_eof:
                conn.shutdown(now)
            elif flow.paused and conn.send_space >= READ_CHUNK:
                flow.paused = False
                self._effects.append(flow.side.resume(flow.flow_id))
        self._dirty.add(flow.flow_id)

    def _close_host(self, flow: Flow, reset: bool) -> None:
        if flow.host_open:
            flow.host_open = False
            self._effects.append(flow.side.close(flow.flow_id, reset))

    def _forget(self, flow: Flow, now: float, reset: bool, host_closed: bool = False) -> None:
        self._connect_ended(flow)
        if not host_closed:
            self._close_host(flow, reset)
        if self.flows.get(flow.key) is flow:
            del self.flows[flow.key]
        if self.by_id.pop(flow.flow_id, None) is not None:
            if flow.conn is None:
                reason = "refused" if host_closed else "abandoned while connecting"
            else:
                reason = "reset" if reset else flow.conn.state.lower()
            self._log_end(flow, now, reason)
        self._dirty.discard(flow.flow_id)

    def _log_end(self, flow: Flow, now: float, reason: str) -> None:
        """One summary per flow, when the connection ends: TIME_WAIT is not its lifetime."""
        if flow.ended:
            return
        flow.ended = True
        if not self.flow_log:
            return  # formatting costs more than a short connection's segments
        vm_ip, vm_port, ip, port = flow.key
        via = f" via {flow.via}" if flow.via else ""
        self.closed_log.append(
            f"tcp {endpoint_text(vm_ip, vm_port)} -> {endpoint_text(ip, port)} "
            f"up={flow.bytes_up} down={flow.bytes_down} "
            f"duration={now - flow.started:.3f}s end={reason}{via}"
        )

    @property
    def pending_connects(self) -> int:
        """Host connects in flight, all VMs together."""
        return sum(map(len, self._connecting.values()))

    @property
    def timer_entries(self) -> int:
        """Entries in the deadline heap, stale ones included (bounded by the flow count)."""
        return len(self._timers)

    def __len__(self) -> int:
        return len(self.flows)
