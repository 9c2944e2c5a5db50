"""DnsUpstream / DnsService on a real asyncio loop against a dnspython-based
upstream server that the test starts on 127.0.0.1 (never real resolvers)."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import dns.asyncquery
import dns.flags
import dns.message
import dns.rcode
import dns.rrset

from pyvpnkit.core.config import NetConfig
from pyvpnkit.core.dns import DnsAnswer, DnsServer
from pyvpnkit.runtime.dns_upstream import DnsService, HostsFileWatcher, secure_query_id

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


def service_for(
    upstreams: list[tuple[str, int]], **kw: float
) -> tuple[DnsService, asyncio.Queue[DnsAnswer]]:
    answers: asyncio.Queue[DnsAnswer] = asyncio.Queue()
    server = DnsServer(NetConfig(), upstreams, new_id=secure_query_id, **kw)  # type: ignore[arg-type]
    return DnsService(server, answers.put_nowait), answers


def test_udp_loop_through_host_socket() -> None:
    async def body(up: FakeUpstream) -> None:
        service, _ = service_for([("127.0.0.1", up.port)])
        host, port = await service.serve_udp("127.0.0.1", 0)
        try:
            for name, rdtype, expect in [
                ("www.test", "A", "10.20.30.40"),
                ("test", "MX", "10 mail.test."),
                ("host.docker.internal", "A", "192.168.65.2"),
            ]:
                q = dns.message.make_query(name, rdtype)
                r = await dns.asyncquery.udp(q, host, port=port, timeout=3)
                assert r.id == q.id
                assert r.answer[0][0].to_text() == expect
            r = await dns.asyncquery.udp(
                dns.message.make_query("nope.test", "A"), host, port=port, timeout=3
            )
            assert r.rcode() == dns.rcode.NXDOMAIN
            # > 512 bytes: the upstream says TC, and so do we; the client would retry on TCP.
            r = await dns.asyncquery.udp(
                dns.message.make_query("big.test", "TXT"),
                host,
                port=port,
                timeout=3,
                raise_on_truncation=False,
            )
            assert r.flags & dns.flags.TC and r.answer == []
            assert up.udp_queries == 4 and up.tcp_queries == 0
        finally:
            service.close()

    run(body)


def test_tcp_query_forwarded_over_tcp_in_full() -> None:
    async def body(up: FakeUpstream) -> None:
        service, answers = service_for([("127.0.0.1", up.port)])
        try:
            q = dns.message.make_query("big.test", "TXT", id=4242)
            service.query(q.to_wire(), "flow-1", "tcp")
            answer = await answers.get()
            assert (answer.client, answer.transport) == ("flow-1", "tcp")
            r = dns.message.from_wire(answer.data)
            assert r.id == 4242 and len(r.answer[0]) == 20 and len(answer.data) > 2000
            assert up.tcp_queries == 1 and up.udp_queries == 0
        finally:
            service.close()

    run(body)


def test_port_unreachable_fails_over_at_once() -> None:
    async def body(up: FakeUpstream) -> None:
        # A resend interval of 3 s proves the failover came from the ICMP error.
        dead = ("127.0.0.1", closed_port())
        service, answers = service_for([dead, ("127.0.0.1", up.port)], resend_interval=3.0)
        try:
            start = time.monotonic()
            service.query(dns.message.make_query("www.test", "A").to_wire(), "vm", "udp")
            answer = await answers.get()
            assert time.monotonic() - start < 1.5
            assert dns.message.from_wire(answer.data).answer[0][0].to_text() == "10.20.30.40"
        finally:
            service.close()

    run(body)


def test_silent_server_then_resend_to_next() -> None:
    async def body(up: FakeUpstream) -> None:
        silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        silent.bind(("127.0.0.1", 0))
        service, answers = service_for(
            [silent.getsockname(), ("127.0.0.1", up.port)], resend_interval=0.2
        )
        try:
            start = time.monotonic()
            service.query(dns.message.make_query("www.test", "A").to_wire(), "vm", "udp")
            answer = await answers.get()
            assert 0.15 < time.monotonic() - start < 2.0
            assert dns.message.from_wire(answer.data).rcode() == dns.rcode.NOERROR
        finally:
            service.close()
            silent.close()

    run(body)


def test_tcp_refused_everywhere_is_quick_servfail() -> None:
    async def body(up: FakeUpstream) -> None:
        port = closed_port()  # nothing listens on TCP there either
        service, answers = service_for([("127.0.0.1", port)], resend_interval=3.0)
        try:
            start = time.monotonic()
            service.query(dns.message.make_query("www.test", "A").to_wire(), "f", "tcp")
            answer = await answers.get()
            assert time.monotonic() - start < 1.5
            assert dns.message.from_wire(answer.data).rcode() == dns.rcode.SERVFAIL
        finally:
            service.close()

    run(body)


def test_overall_timeout_servfail_from_timer() -> None:
    async def body(up: FakeUpstream) -> None:
        silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        silent.bind(("127.0.0.1", 0))
        service, answers = service_for([silent.getsockname()], resend_interval=0.1, timeout=0.5)
        try:
            service.query(dns.message.make_query("www.test", "A").to_wire(), "vm", "udp")
            answer = await answers.get()
            assert dns.message.from_wire(answer.data).rcode() == dns.rcode.SERVFAIL
            assert service.server.next_deadline() is None
        finally:
            service.close()
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


def test_service_reloads_hosts_on_query(tmp_path: Path) -> None:
    async def body(up: FakeUpstream) -> None:
        path = tmp_path / "hosts"
        path.write_text("10.7.7.7 local.test\n")
        answers: asyncio.Queue[DnsAnswer] = asyncio.Queue()
        server = DnsServer(NetConfig(), [("127.0.0.1", up.port)])
        service = DnsService(server, answers.put_nowait, hosts_path=str(path))
        try:
            service.query(dns.message.make_query("local.test", "A").to_wire(), "vm", "udp")
            r = dns.message.from_wire((await answers.get()).data)
            assert r.answer[0][0].to_text() == "10.7.7.7"
            assert up.udp_queries == 0
        finally:
            service.close()

    run(body)
