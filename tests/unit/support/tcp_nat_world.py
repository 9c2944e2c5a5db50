"""Helpers for the TCP NAT tests: a fake host, VM connections and a fake clock.

The VM side is our own sans-I/O TCP (as tests/integration/vmclient.py uses
it): its packets are parsed from bytes and fed to the NAT, the NAT's packets
are parsed back and fed to it. The host side executes the NAT's effects the
way runtime/host_tcp.py does (every byte the "kernel" takes is reported with
``host_sent``; reads stop while paused), with a kernel whose send buffer can
be held full to exercise flow control.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from pyvpnkit.core.config import NetConfig, ip4
from pyvpnkit.core.effects import (
    TcpCloseHost,
    TcpOpen,
    TcpPauseReading,
    TcpResumeReading,
    TcpShutdown,
    TcpWrite,
)
from pyvpnkit.core.nat.tcp_nat import TcpNat
from pyvpnkit.core.tcp import DataReceived, Established, TcpConnection, TcpEvent, TcpSettings
from pyvpnkit.wire.ipv4 import PROTO_TCP, IPv4Packet, build_ipv4, parse_ipv4
from pyvpnkit.wire.ipv6 import IPv6Packet, parse_ipv6
from pyvpnkit.wire.tcp import ACK, SYN, TcpSegment, build_tcp, parse_tcp

CFG = NetConfig()
VM = ip4("192.168.65.3")
VM2 = ip4("192.168.65.4")
REMOTE = ip4("203.0.113.5")
VM_TCP = TcpSettings(keepalive=None, delayed_ack=0.0)  # the VM's TCP: no keepalive, ACKs at once
SETTINGS = frozenset(f.name for f in fields(TcpSettings))


def parse_ip(raw: bytes) -> IPv4Packet | IPv6Packet:
    """IPv4 or IPv6, by the version nibble."""
    return parse_ipv6(raw) if raw[0] >> 4 == 6 else parse_ipv4(raw)


@dataclass
class HostSocket:
    """What the runtime keeps per flow (runtime/host_tcp.py's _HostConn), plus what it got."""

    open: TcpOpen
    connected: bool = False
    received: bytearray = field(default_factory=bytearray)  # written by the NAT, taken
    wbuf: bytearray = field(default_factory=bytearray)  # written, not yet taken
    paused: bool = False
    shut: bool = False  # shutdown(SHUT_WR) done
    shutdown_after_flush: bool = False
    closed: bool | None = None  # None while open, else whether it was reset


class FakeHost:
    """Executes the NAT's effects like runtime/host_tcp.py, against a scripted kernel."""

    def __init__(self, nat: TcpNat) -> None:
        self.nat = nat
        self.socks: dict[int, HostSocket] = {}
        self.kernel_full = False  # sends are not taken until flush()

    def execute(self, effects: list[object], now: float) -> None:
        for eff in effects:
            if isinstance(eff, TcpOpen):
                self.socks[eff.flow_id] = HostSocket(eff)
                continue
            sock = self.socks[eff.flow_id]  # type: ignore[attr-defined]
            assert sock.closed is None, f"{eff} after close"
            if isinstance(eff, TcpWrite):
                assert not sock.shut
                if self.kernel_full or sock.wbuf:
                    sock.wbuf += eff.data
                else:
                    sock.received += eff.data
                    self.nat.host_sent(eff.flow_id, len(eff.data), now)
            elif isinstance(eff, TcpShutdown):
                if sock.wbuf:
                    sock.shutdown_after_flush = True
                else:
                    sock.shut = True
            elif isinstance(eff, TcpCloseHost):
                sock.closed = eff.reset
            elif isinstance(eff, TcpPauseReading):
                sock.paused = True
            elif isinstance(eff, TcpResumeReading):
                sock.paused = False
            else:
                raise AssertionError(f"unexpected effect {eff}")

    def flush(self, fid: int, now: float) -> None:
        """The kernel takes what was waiting (the socket became writable)."""
        sock = self.socks[fid]
        n = len(sock.wbuf)
        sock.received += sock.wbuf
        sock.wbuf.clear()
        if sock.shutdown_after_flush:
            sock.shut = True
        self.nat.host_sent(fid, n, now)


@dataclass(eq=False)
class Vm:
    """One connection of the VM, driven by our own TCP."""

    conn: TcpConnection
    key: tuple[bytes, int, bytes, int]  # (VM address, VM port, peer address, peer port)
    consume: bool = True  # hand received bytes to the application at once
    online: bool = True  # False: packets to it are lost
    received: bytearray = field(default_factory=bytearray)
    events: list[TcpEvent] = field(default_factory=list)


class World:
    """A NAT, a fake host and VM connections, passing bytes until nothing moves."""

    def __init__(self, **nat_kw: Any) -> None:
        """``nat_kw``: TcpNat's keywords, or fields of the TcpSettings it gets."""
        self.now = 100.0
        self.iss = 7000
        settings = {k: nat_kw.pop(k) for k in list(nat_kw) if k in SETTINGS}
        self.nat = TcpNat(CFG, iss=self._next_iss, settings=TcpSettings(**settings), **nat_kw)
        self.host = FakeHost(self.nat)
        self.vms: list[Vm] = []
        self.stray: list[TcpSegment] = []  # NAT packets no VM connection owns

    def _next_iss(self) -> int:
        self.iss += 100000
        return self.iss

    def connect(
        self, dst: bytes = REMOTE, port: int = 80, sport: int = 40000, src: bytes = VM,
        iss: int = 1000, **kw: Any,
    ) -> Vm:
        """A VM connection; ``kw``: TcpSettings fields for the VM's side."""
        conn = TcpConnection(
            local_ip=src, local_port=sport, remote_ip=dst, remote_port=port, iss=iss,
            settings=replace(VM_TCP, **kw),
        )
        conn.connect(self.now)
        return self._add(conn, (src, sport, dst, port))

    def accept(self, syn_pkt: bytes) -> Vm:
        """The VM accepts a connection the NAT opens into it (a port forward)."""
        ip = parse_ip(syn_pkt)
        seg = parse_tcp(ip.payload, ip.src, ip.dst)
        assert seg.flags & SYN and not seg.flags & ACK
        key = (ip.dst, seg.dst_port, ip.src, seg.src_port)
        conn = TcpConnection.accept(
            seg, self.now, local_ip=ip.dst, local_port=seg.dst_port, remote_ip=ip.src,
            remote_port=seg.src_port, iss=3000, settings=VM_TCP,
        )  # fmt: skip
        return self._add(conn, key)

    def _add(self, conn: TcpConnection, key: tuple[bytes, int, bytes, int]) -> Vm:
        vm = Vm(conn, key)
        self.vms.append(vm)
        self.run()
        return vm

    def feed(self, raw: bytes) -> None:
        """One IP packet from a VM into the NAT."""
        ip = parse_ip(raw)
        self.nat.handle(ip, parse_tcp(ip.payload, ip.src, ip.dst), self.now)

    def send_raw(
        self, flags: int, seq: int = 1, ack: int = 0, dst: bytes = REMOTE, port: int = 80,
        sport: int = 40000, payload: bytes = b"",
    ) -> list[TcpSegment]:  # fmt: skip
        """A hand-made segment from the VM; returns the NAT's answers that no VM owns."""
        tcp = build_tcp(VM, dst, sport, port, seq, ack, flags, 65535, b"", payload)
        self.feed(build_ipv4(VM, dst, PROTO_TCP, tcp))
        self.stray.clear()
        self.run()
        return list(self.stray)

    def _deliver(self, raw: bytes) -> None:
        ip = parse_ip(raw)
        seg = parse_tcp(ip.payload, ip.src, ip.dst)
        key = (ip.dst, seg.dst_port, ip.src, seg.src_port)
        for vm in self.vms:
            if vm.key == key and not vm.conn.closed:
                if vm.online:
                    vm.conn.handle_segment(seg, self.now)
                return
        self.stray.append(seg)

    def run(self) -> None:
        """The runtime's loop: drain the VMs and the NAT, execute effects, until quiet."""
        for _ in range(10000):
            moved = False
            for vm in self.vms:
                packets, events = vm.conn.drain()
                for ev in events:
                    vm.events.append(ev)  # type: ignore[arg-type]
                    if isinstance(ev, DataReceived):
                        vm.received += ev.data
                        if vm.consume:
                            vm.conn.consumed(len(ev.data), self.now)
                for p in packets:
                    self.feed(p)
                moved = moved or bool(packets or events)
            packets, effects = self.nat.drain(self.now)
            for p in packets:
                self._deliver(p)
            self.host.execute(effects, self.now)
            if not (moved or packets or effects):
                return
        raise AssertionError("the world never settled")

    def advance(self, seconds: float) -> None:
        """Let the fake clock run, firing every timer that falls due on the way."""
        end = self.now + seconds
        while True:
            due = [self.nat.next_deadline()] + [vm.conn.next_deadline() for vm in self.vms]
            times = [d for d in due if d is not None and d <= end]
            if not times:
                break
            self.now = max(self.now, min(times))
            self.nat.handle_timer(self.now)
            for vm in self.vms:
                vm.conn.handle_timer(self.now)
            self.run()
        self.now = end

    def host_connected(self, fid: int) -> None:
        self.host.socks[fid].connected = True
        self.nat.host_connected(fid, self.now)
        self.run()

    def host_read(self, fid: int, data: bytes) -> None:
        """The host socket delivered ``data`` (the runtime reads only while not paused)."""
        sock = self.host.socks[fid]
        assert sock.connected and not sock.paused and sock.closed is None
        self.nat.host_data(fid, data, self.now)
        self.run()

    def only_flow(self) -> int:
        (fid,) = self.nat.by_id
        return fid

    def established(self, **kw: Any) -> tuple[Vm, int]:
        vm = self.connect(**kw)
        fid = self.only_flow()
        self.host_connected(fid)
        assert vm.conn.state == "ESTABLISHED" and vm.events == [Established()]
        return vm, fid
