"""Errors while executing effects cost one flow, are counted, and the batch goes on.

The engine runs a real stack and real host sockets on loopback; failures the
kernel gives under pressure (EMFILE, ENOBUFS, ECONNRESET, EPIPE) are injected
into the executor, and every flow of the batch is checked.
"""

from __future__ import annotations

import asyncio
import errno
import random
import socket
from collections.abc import Callable
from typing import Any

import pytest

from pyvpnkit.core.config import NetConfig, ip4
from pyvpnkit.core.switch.stack import Stack
from pyvpnkit.core.switch.stack_settings import StackSettings
from pyvpnkit.links.base import Link
from pyvpnkit.runtime.engine import Engine
from pyvpnkit.runtime.host_tcp import HostTcp
from pyvpnkit.runtime.host_udp import HostUdp
from pyvpnkit.runtime.limits import DescriptorBudget
from pyvpnkit.wire import arp, ethernet, icmp, ipv4, tcp, udp

CFG = NetConfig(ipv6=None)  # IPv4 only: no router advertisements among the frames
VM_MAC = bytes.fromhex("020000000001")
VM_IP = ip4("192.168.65.3")
HOST = ip4("192.168.65.2")


class VmLink(Link):
    """Collects what the engine sends to the VM."""

    def __init__(self) -> None:
        self.name, self.mtu, self.mac = "vm", 1500, None
        self.frames: list[bytes] = []

    def send_frame(self, frame: bytes) -> None:
        self.frames.append(frame)

    def close(self) -> None:
        pass

    def tcp_to(self, port: int) -> list[tcp.TcpSegment]:
        out = []
        for frame in self.frames:
            pkt = ipv4.parse_ipv4(ethernet.parse_ethernet(frame).payload)
            if pkt.proto == ipv4.PROTO_TCP:
                seg = tcp.parse_tcp(pkt.payload, pkt.src, pkt.dst)
                if seg.dst_port == port:
                    out.append(seg)
        return out

    def icmp_errors(self) -> list[icmp.IcmpMessage]:
        out = []
        for frame in self.frames:
            pkt = ipv4.parse_ipv4(ethernet.parse_ethernet(frame).payload)
            if pkt.proto == ipv4.PROTO_ICMP:
                out.append(icmp.parse_icmp(pkt.payload))
        return out


def frame(proto: int, payload: bytes, dst: bytes = HOST) -> bytes:
    packet = ipv4.build_ipv4(VM_IP, dst, proto, payload)
    return ethernet.build_ethernet(CFG.gateway_mac, VM_MAC, ethernet.ETHERTYPE_IPV4, packet)


def syn(sport: int, port: int) -> bytes:
    return frame(ipv4.PROTO_TCP, tcp.build_tcp(VM_IP, HOST, sport, port, 1000, 0, tcp.SYN, 64240))


def ack_with(sport: int, port: int, synack: tcp.TcpSegment, data: bytes) -> bytes:
    seg = tcp.build_tcp(
        VM_IP, HOST, sport, port, 1001, (synack.seq + 1) & 0xFFFFFFFF,
        tcp.ACK | tcp.PSH, 64240, payload=data,
    )
    return frame(ipv4.PROTO_TCP, seg)


def tcp_of(engine: Engine) -> HostTcp:
    (host_tcp,) = (e for e in engine.executors if isinstance(e, HostTcp))
    return host_tcp


def run(body: Callable[[Engine, VmLink, socket.socket], Any]) -> None:
    async def main() -> None:
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        server.setblocking(False)
        engine = Engine(Stack(CFG, rng=random.Random(1)))
        engine.add_executor(HostTcp(engine.loop, engine.stack.tcp, engine.wake,
                                    settle=engine.settle))
        vm = VmLink()
        engine.link_opened(vm)
        try:
            await body(engine, vm, server)
        finally:
            engine.close()
            server.close()

    asyncio.run(main())


def test_socket_exhaustion_refuses_new_flows_with_rst(monkeypatch: pytest.MonkeyPatch) -> None:
    async def body(engine: Engine, vm: VmLink, server: socket.socket) -> None:
        port = server.getsockname()[1]
        real = socket.socket
        failures = iter([errno.EMFILE, errno.ENOBUFS, errno.ENFILE])

        def flaky(*args: Any, **kwargs: Any) -> socket.socket:
            code = next(failures, None)
            if code is not None:
                raise OSError(code, "injected")
            return real(*args, **kwargs)

        # The host connection's socket() fails (HostTcp may be compiled: not patched itself).
        monkeypatch.setattr("pyvpnkit.runtime.nonblocking.socket.socket", flaky)
        for sport in (40001, 40002, 40003, 40004):  # one batch: four SYNs
            engine.frame_received(vm, syn(sport, port))
        engine.flush()
        for sport in (40001, 40002, 40003):
            (rst,) = vm.tcp_to(sport)
            assert rst.flags & tcp.RST and rst.ack == 1001
        (synack,) = vm.tcp_to(40004)
        assert synack.flags == tcp.SYN | tcp.ACK  # the last flow of the batch is served
        budget = tcp_of(engine).budget
        assert budget.stats["tcp_refused"] == 3 and budget.in_use == 1
        assert budget.stats["refused_emfile"] == budget.stats["refused_enobufs"] == 1

    run(body)


def test_budget_refuses_beyond_capacity_and_recovers() -> None:
    async def body(engine: Engine, vm: VmLink, server: socket.socket) -> None:
        port = server.getsockname()[1]
        budget = DescriptorBudget(2, asyncio.get_running_loop().time)
        tcp_of(engine).budget = budget
        for sport in (40001, 40002, 40003):
            engine.frame_received(vm, syn(sport, port))
        engine.flush()
        assert [s.flags for s in vm.tcp_to(40003)] == [tcp.RST | tcp.ACK]
        assert budget.in_use == 2 and budget.stats["refused_budget"] == 1
        # The VM aborts one flow: its descriptor comes back and a new flow is served.
        (synack,) = vm.tcp_to(40001)
        rst = tcp.build_tcp(VM_IP, HOST, 40001, port, 1001, 0, tcp.RST, 0)
        engine.frame_received(vm, frame(ipv4.PROTO_TCP, rst))
        engine.flush()
        assert budget.in_use == 1
        engine.frame_received(vm, syn(40005, port))
        engine.flush()
        assert vm.tcp_to(40005)[0].flags == tcp.SYN | tcp.ACK

    run(body)


def test_an_effect_that_raises_costs_its_flow_only() -> None:
    """A write handler raising mid-batch (a bug, not an OSError it handles itself):
    that flow is reset, the next write still happens."""

    async def body(engine: Engine, vm: VmLink, server: socket.socket) -> None:
        port = server.getsockname()[1]
        for sport in (40001, 40002):
            engine.frame_received(vm, syn(sport, port))
        engine.flush()
        synacks = {sport: vm.tcp_to(sport)[0] for sport in (40001, 40002)}
        peers = {}
        for _ in range(2):
            peer, addr = server.accept()
            peers[addr[1]] = peer

        class Raising(socket.socket):
            def send(self, data: Any, flags: int = 0) -> int:
                raise ValueError("injected")

        # Flow 40001's host socket raises on send: the same descriptor, so the loop's
        # reader stays right (HostTcp may be compiled: not patched itself).
        conn = next(c for c in tcp_of(engine).conns.values()
                    if engine.stack.tcp.by_id[c.fid].key[1] == 40001)
        conn.sock = Raising(fileno=conn.sock.detach())
        vm.frames.clear()
        for sport in (40001, 40002):  # one batch: data on both flows
            engine.frame_received(vm, ack_with(sport, port, synacks[sport], b"hello"))
        engine.flush()
        assert engine.stats["effect_errors"] == 1
        assert any(s.flags & tcp.RST for s in vm.tcp_to(40001))
        assert not any(s.flags & tcp.RST for s in vm.tcp_to(40002))
        assert len(tcp_of(engine).conns) == 1 and tcp_of(engine).budget.in_use == 1
        received = b""
        for peer in peers.values():
            peer.settimeout(0.5)
            try:
                received += peer.recv(100)
            except (TimeoutError, ConnectionResetError):
                pass
            peer.close()
        assert received == b"hello"  # the second flow's write went through

    run(body)


def test_udp_without_a_socket_gets_icmp_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    async def body(engine: Engine, vm: VmLink, server: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        host_udp = HostUdp(loop, engine.stack.udp, engine.wake,
                           budget=DescriptorBudget(1 << 20, loop.time))
        engine.add_executor(host_udp)

        def no_socket(*_a: object) -> socket.socket:
            raise OSError(errno.EMFILE, "injected")

        monkeypatch.setattr("pyvpnkit.runtime.host_udp.socket.socket", no_socket)
        dgram = udp.build_udp(VM_IP, HOST, 5000, 5353, b"q")
        engine.frame_received(vm, frame(ipv4.PROTO_UDP, dgram))
        engine.flush()
        (err,) = vm.icmp_errors()
        assert (err.type, err.code) == (icmp.DEST_UNREACHABLE, icmp.HOST_UNREACHABLE)
        assert host_udp.budget.stats["udp_refused"] >= 1 and host_udp.budget.in_use == 0
        host_udp.close()

    run(body)


def test_a_send_error_costs_one_frame() -> None:
    async def body(engine: Engine, vm: VmLink, server: socket.socket) -> None:
        sent: list[bytes] = []

        def send_frame(f: bytes) -> None:
            if not sent:
                sent.append(b"")
                raise OSError(errno.ENOBUFS, "injected")
            sent.append(f)

        vm.send_frame = send_frame  # type: ignore[method-assign]
        port = server.getsockname()[1]
        for sport in (40001, 40002):
            engine.frame_received(vm, syn(sport, port))
        engine.flush()
        assert engine.stats["send_errors"] == 1 and len(sent) == 2

    run(body)


@pytest.mark.parametrize("cap", [1, 2])
def test_pending_connects_beyond_the_cap_evict_the_oldest(cap: int) -> None:
    stack = Stack(CFG, StackSettings(max_pending_connects=cap), rng=random.Random(1))
    sports = list(range(40001, 40002 + cap))
    for sport in sports:
        stack.receive(1, syn(sport, 9), 0.0)
    frames, effects = stack.drain(0.0)
    opens = [e for e in effects if type(e).__name__ == "TcpOpen"]
    closes = [e for e in effects if type(e).__name__ == "TcpCloseHost"]
    assert len(opens) == cap + 1 and [c.flow_id for c in closes] == [opens[0].flow_id]
    (rst,) = frames
    pkt = ipv4.parse_ipv4(ethernet.parse_ethernet(rst[1]).payload)
    seg = tcp.parse_tcp(pkt.payload, pkt.src, pkt.dst)
    assert seg.dst_port == 40001 and seg.flags & tcp.RST
    assert stack.tcp.pending_connects == cap and stack.tcp.stats["evicted_pending"] == 1
    stack.tcp.host_connected(opens[1].flow_id, 0.1)
    stack.tcp.host_connect_failed(opens[-1].flow_id, 0.1)
    assert stack.tcp.pending_connects == 0


def test_connect_timeout_resets_the_vm() -> None:
    """A host connect that never completes (a full accept queue drops SYNs) ends in an RST."""

    async def body(engine: Engine, vm: VmLink, server: socket.socket) -> None:
        full = socket.socket()
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        port = full.getsockname()[1]
        fillers = [socket.socket() for _ in range(3)]
        for f in fillers:
            f.setblocking(False)
            f.connect_ex(("127.0.0.1", port))
        await asyncio.sleep(0.1)
        tcp_of(engine).connect_timeout = 0.3
        loop = asyncio.get_running_loop()
        t = loop.time()
        engine.frame_received(vm, syn(40001, port))
        engine.flush()
        while not vm.tcp_to(40001) and loop.time() - t < 3:
            await asyncio.sleep(0.02)
        (rst,) = vm.tcp_to(40001)
        assert rst.flags & tcp.RST and 0.25 < loop.time() - t < 1.5
        assert tcp_of(engine).budget.in_use == 0
        for f in [*fillers, full]:
            f.close()

    run(body)


def test_host_socket_error_mid_stream_resets_the_vm() -> None:
    async def body(engine: Engine, vm: VmLink, server: socket.socket) -> None:
        port = server.getsockname()[1]
        engine.frame_received(vm, syn(40001, port))
        engine.flush()
        (synack,) = vm.tcp_to(40001)
        engine.frame_received(vm, ack_with(40001, port, synack, b"hello"))
        engine.flush()
        peer, _ = server.accept()
        assert peer.recv(5) == b"hello"
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        peer.close()  # an RST from the host side: recv() fails with ECONNRESET
        loop = asyncio.get_running_loop()
        t = loop.time()
        while not any(s.flags & tcp.RST for s in vm.tcp_to(40001)) and loop.time() - t < 2:
            await asyncio.sleep(0.01)
        assert any(s.flags & tcp.RST for s in vm.tcp_to(40001))
        assert tcp_of(engine).conns == {} and tcp_of(engine).budget.in_use == 0

    run(body)


@pytest.mark.parametrize("framing_name", ["qemu", "u16le"])
def test_runts_on_a_stream_link_are_counted_drops(framing_name: str) -> None:
    from pyvpnkit.links.stream import StreamLink
    from pyvpnkit.wire.framing import QEMU, U16LE

    framing = QEMU if framing_name == "qemu" else U16LE

    async def body(engine: Engine, vm: VmLink, server: socket.socket) -> None:
        link = StreamLink(engine, 1500, "stream", framing)
        engine.link_opened(link)
        before = engine.stack.stats["drop_malformed"]
        arp_req = ethernet.build_ethernet(
            ethernet.BROADCAST, VM_MAC, ethernet.ETHERTYPE_ARP,
            arp.build_arp(
                1, VM_MAC, VM_IP, b"\0" * 6, CFG.gateway_ip),
        )
        runts = b"".join(framing.header.pack(n) + b"r" * n for n in (0, 1, 13))
        link.frames_from(runts + framing.encode(arp_req))
        assert engine.stack.stats["drop_malformed"] - before == 3
        assert not link.closed and engine.stack.stats["frames_in"] >= 4

    run(body)
