"""DnsUpstream behind a real Stack and Engine, against a dnspython-based upstream
server that the test starts on 127.0.0.1 (never real resolvers)."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rrset

from pyvpnkit.core.config import NetConfig, ip4
from pyvpnkit.core.switch.stack import Stack
from pyvpnkit.core.switch.stack_settings import StackSettings
from pyvpnkit.links.base import Link
from pyvpnkit.runtime.dns_upstream import DnsUpstream, HostsFileWatcher, secure_query_id
from pyvpnkit.runtime.engine import Engine
from pyvpnkit.wire import ethernet, ipv4, tcp, udp

CFG = NetConfig()
VM_MAC = bytes.fromhex("020000000001")
VM_IP = ip4("192.168.65.3")

ZONE = {
    ("www.test.", "A"): ["www.test. 30 IN A 10.20.30.40"],
    ("test.", "MX"): ["test. 30 IN MX 10 mail.test."],
    ("big.test.", "TXT"): [f'big.test. 30 IN TXT "{i:03d}{"y" * 100}"' for i in range(20)],
}


class FakeUpstream:
    """Answers from ZONE over UDP (TC above 512 bytes without EDNS) and TCP."""

    def __init__(self) -> None:
        self.udp_queries = 0
        self.tcp_queries = 0
        self.port = 0
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.AbstractServer | None = None

    def answer(self, wire: bytes, limit: int) -> bytes:
        q = dns.message.from_wire(wire)
        r = dns.message.make_response(q, recursion_available=True)
        question = q.question[0]
        key = (question.name.to_text().lower(), dns.rdatatype.to_text(question.rdtype))
        for text in ZONE.get(key, []):
            r.answer.append(dns.rrset.from_text(*text.split(None, 4)))
        if key not in ZONE:
            r.set_rcode(dns.rcode.NXDOMAIN)
        out = r.to_wire(max_size=65535)
        if len(out) > limit:
            r.answer = []
            r.flags |= dns.flags.TC
            out = r.to_wire()
        return out

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        outer = self

        class Udp(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                outer._udp = transport  # type: ignore[assignment]

            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                outer.udp_queries += 1
                q = dns.message.from_wire(data)
                limit = q.payload if q.edns >= 0 else 512
                assert outer._udp is not None
                outer._udp.sendto(outer.answer(data, limit), addr)

        async def tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.tcp_queries += 1
            size = int.from_bytes(await reader.readexactly(2), "big")
            reply = self.answer(await reader.readexactly(size), 65535)
            writer.write(len(reply).to_bytes(2, "big") + reply)
            await writer.drain()
            writer.close()

        for _ in range(20):  # same port for UDP and TCP
            tcp_sock = socket.socket()
            tcp_sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp_sock.bind(("127.0.0.1", 0))
            port = tcp_sock.getsockname()[1]
            udp_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                udp_sock.bind(("127.0.0.1", port))
            except OSError:
                tcp_sock.close()
                udp_sock.close()
                continue
            self.port = port
            self._tcp = await asyncio.start_server(tcp, sock=tcp_sock)
            await loop.create_datagram_endpoint(Udp, sock=udp_sock)
            return
        raise RuntimeError("no free port pair")

    def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()


def closed_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


def run(
    body: Callable[[FakeUpstream], Awaitable[None]],
) -> None:
    async def main() -> None:
        upstream = FakeUpstream()
        await upstream.start()
        try:
            await asyncio.wait_for(body(upstream), 10)
        finally:
            upstream.close()

    asyncio.run(main())


class Vm(Link):
    """A VM on a Stack and Engine whose upstream DNS executor is DnsUpstream: the
    path a Service runs. Queries go in as frames; answers are read off the frames."""

    def __init__(
        self, upstreams: list[tuple[str, int]], resend_interval: float = 1.0, timeout: float = 5.0
    ) -> None:
        self.name, self.mtu, self.mac = "vm", 1500, None
        self.udp_answers: asyncio.Queue[bytes] = asyncio.Queue()
        self.segments: asyncio.Queue[tcp.TcpSegment] = asyncio.Queue()
        self.stack = Stack(CFG, StackSettings(dns_timeout=timeout), dns_upstreams=upstreams,
                           dns_query_id=secure_query_id)
        self.stack.dns.forwarder.resend_interval = resend_interval
        self.engine = Engine(self.stack)
        self.engine.add_executor(DnsUpstream(self.engine.loop, self.stack.dns, self.engine.wake))
        self.engine.link_opened(self)

    def send_frame(self, frame: bytes) -> None:
        pkt = ipv4.parse_ipv4(ethernet.parse_ethernet(frame).payload)
        if pkt.proto == ipv4.PROTO_UDP:
            self.udp_answers.put_nowait(bytes(udp.parse_udp(pkt.payload, pkt.src, pkt.dst).payload))
        elif pkt.proto == ipv4.PROTO_TCP:
            self.segments.put_nowait(tcp.parse_tcp(pkt.payload, pkt.src, pkt.dst))

    def close(self) -> None:
        pass

    def _send(self, proto: int, payload: bytes) -> None:
        packet = ipv4.build_ipv4(VM_IP, CFG.dns_ip, proto, payload)
        self.engine.frame_received(self, ethernet.build_ethernet(
            CFG.gateway_mac, VM_MAC, ethernet.ETHERTYPE_IPV4, packet))

    async def query_udp(self, message: dns.message.Message) -> dns.message.Message:
        self._send(ipv4.PROTO_UDP, udp.build_udp(VM_IP, CFG.dns_ip, 5353, 53, message.to_wire()))
        return dns.message.from_wire(await self.udp_answers.get())

    async def query_tcp(self, message: dns.message.Message) -> bytes:
        """One query over a TCP connection to the gateway's port 53; the raw answer."""
        seg = tcp.build_tcp(VM_IP, CFG.dns_ip, 40000, 53, 1000, 0, tcp.SYN, 64240)
        self._send(ipv4.PROTO_TCP, seg)
        synack = await self.segments.get()
        assert synack.flags & tcp.SYN
        wire = message.to_wire()
        seg = tcp.build_tcp(VM_IP, CFG.dns_ip, 40000, 53, 1001, (synack.seq + 1) & 0xFFFFFFFF,
                            tcp.ACK | tcp.PSH, 64240, payload=len(wire).to_bytes(2, "big") + wire)
        self._send(ipv4.PROTO_TCP, seg)
        data = b""
        while len(data) < 2 or len(data) < 2 + int.from_bytes(data[:2], "big"):
            data += bytes((await self.segments.get()).payload)
        return data[2:]


def test_udp_queries_forwarded_answered_and_truncated() -> None:
    async def body(up: FakeUpstream) -> None:
        vm = Vm([("127.0.0.1", up.port)])
        try:
            for name, rdtype, expect in [
                ("www.test", "A", "10.20.30.40"),
                ("test", "MX", "10 mail.test."),
                ("host.docker.internal", "A", "192.168.65.2"),
            ]:
                q = dns.message.make_query(name, rdtype)
                r = await vm.query_udp(q)
                assert r.id == q.id
                assert r.answer[0][0].to_text() == expect
            r = await vm.query_udp(dns.message.make_query("nope.test", "A"))
            assert r.rcode() == dns.rcode.NXDOMAIN
            # > 512 bytes: the upstream says TC, and so do we; the client would retry on TCP.
            r = await vm.query_udp(dns.message.make_query("big.test", "TXT"))
            assert r.flags & dns.flags.TC and r.answer == []
            assert up.udp_queries == 4 and up.tcp_queries == 0
        finally:
            vm.engine.close()

    run(body)


def test_tcp_query_forwarded_over_tcp_in_full() -> None:
    async def body(up: FakeUpstream) -> None:
        vm = Vm([("127.0.0.1", up.port)])
        try:
            data = await vm.query_tcp(dns.message.make_query("big.test", "TXT", id=4242))
            r = dns.message.from_wire(data)
            assert r.id == 4242 and len(r.answer[0]) == 20 and len(data) > 2000
            assert up.tcp_queries == 1 and up.udp_queries == 0
        finally:
            vm.engine.close()

    run(body)


def test_port_unreachable_fails_over_at_once() -> None:
    async def body(up: FakeUpstream) -> None:
        # A resend interval of 3 s proves the failover came from the ICMP error.
        dead = ("127.0.0.1", closed_port())
        vm = Vm([dead, ("127.0.0.1", up.port)], resend_interval=3.0)
        try:
            start = time.monotonic()
            r = await vm.query_udp(dns.message.make_query("www.test", "A"))
            assert time.monotonic() - start < 1.5
            assert r.answer[0][0].to_text() == "10.20.30.40"
        finally:
            vm.engine.close()

    run(body)


def test_silent_server_then_resend_to_next() -> None:
    async def body(up: FakeUpstream) -> None:
        silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        silent.bind(("127.0.0.1", 0))
        vm = Vm([silent.getsockname(), ("127.0.0.1", up.port)], resend_interval=0.2)
        try:
            start = time.monotonic()
            r = await vm.query_udp(dns.message.make_query("www.test", "A"))
            assert 0.15 < time.monotonic() - start < 2.0
            assert r.rcode() == dns.rcode.NOERROR
        finally:
            vm.engine.close()
            silent.close()

    run(body)


def test_tcp_refused_everywhere_is_quick_servfail() -> None:
    async def body(up: FakeUpstream) -> None:
        port = closed_port()  # nothing listens on TCP there either
        vm = Vm([("127.0.0.1", port)], resend_interval=3.0)
        try:
            start = time.monotonic()
            data = await vm.query_tcp(dns.message.make_query("www.test", "A"))
            assert time.monotonic() - start < 1.5
            assert dns.message.from_wire(data).rcode() == dns.rcode.SERVFAIL
        finally:
            vm.engine.close()

    run(body)


def test_overall_timeout_servfail_from_timer() -> None:
    async def body(up: FakeUpstream) -> None:
        silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        silent.bind(("127.0.0.1", 0))
        vm = Vm([silent.getsockname()], resend_interval=0.1, timeout=0.5)
        try:
            r = await vm.query_udp(dns.message.make_query("www.test", "A"))
            assert r.rcode() == dns.rcode.SERVFAIL
            assert vm.stack.dns.next_deadline() is None
        finally:
            vm.engine.close()
            silent.close()

    run(body)


def test_hosts_file_watcher(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    path.write_text("10.0.0.1 a.example\n")
    loaded: list[str] = []
    watcher = HostsFileWatcher(str(path), loaded.append, min_interval=1.0)
    assert watcher.check(100.0) and loaded == ["10.0.0.1 a.example\n"]
    assert not watcher.check(100.5)
    assert not watcher.check(101.0)  # unchanged
    path.write_text("10.0.0.2 b.example\n")
    os.utime(path, ns=(1, 1))  # a different mtime even on coarse clocks
    assert not watcher.check(101.5)  # checked at most once a second
    assert watcher.check(102.0) and loaded[-1] == "10.0.0.2 b.example\n"
    path.unlink()
    assert watcher.check(103.0) and loaded[-1] == ""


def test_hosts_file_answers_without_upstream(tmp_path: Path) -> None:
    async def body(up: FakeUpstream) -> None:
        path = tmp_path / "hosts"
        path.write_text("10.7.7.7 local.test\n")
        vm = Vm([("127.0.0.1", up.port)])
        HostsFileWatcher(str(path), vm.stack.dns.load_hosts).check(0.0)  # as the Service does
        try:
            r = await vm.query_udp(dns.message.make_query("local.test", "A"))
            assert r.answer[0][0].to_text() == "10.7.7.7"
            assert up.udp_queries == 0
        finally:
            vm.engine.close()

    run(body)
