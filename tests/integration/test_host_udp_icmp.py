"""Host socket adapters for the UDP and ICMP NATs, against real sockets (needs root).

Traffic stays on 127.0.0.1, or inside network namespaces the test makes
itself with ``unshare -n`` (a "router" namespace behind a veth, for TTL
exceeded and unreachable errors reported by another hop).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import shutil
import socket
import struct
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, cast

import pytest

from pyvpnkit.core.config import NetConfig, ip4
from pyvpnkit.core.ip.ipfrag import Reassembler
from pyvpnkit.core.nat.icmp_nat import IcmpEchoSend, IcmpNat
from pyvpnkit.core.nat.udp_nat import UdpClose, UdpNat
from pyvpnkit.runtime.errqueue import (
    SO_EE_ORIGIN_ICMP,
    SO_EE_ORIGIN_LOCAL,
    parse_extended_err,
)
from pyvpnkit.runtime.host_icmp import HostIcmp, choose_mode, ping_group_range
from pyvpnkit.runtime.host_udp import HostUdp
from pyvpnkit.wire.icmp import (
    DEST_UNREACHABLE,
    ECHO_REPLY,
    ECHO_REQUEST,
    PORT_UNREACHABLE,
    TIME_EXCEEDED,
    build_icmp,
    echo_rest,
    parse_icmp,
)
from pyvpnkit.wire.ipv4 import PROTO_ICMP, PROTO_UDP, build_ipv4, parse_ipv4
from pyvpnkit.wire.udp import build_udp, parse_udp

CFG = NetConfig()
VM = ip4("192.168.65.3")
SRC = str(Path(__file__).resolve().parents[2] / "src")
IP_RECVTTL = 12


class Harness:
    """Drains a NAT into its runtime adapter, like the lead's loop does."""

    def __init__(self, nat: UdpNat | IcmpNat, make: Callable[..., Any], **kw: Any) -> None:
        self.nat = nat
        self.woken = asyncio.Event()
        self.runtime = make(asyncio.get_running_loop(), nat, self.woken.set, **kw)
        self.packets: list[bytes] = []

    def pump(self) -> None:
        packets, effects = self.nat.drain()
        self.packets.extend(packets)
        for eff in effects:
            self.runtime.execute(eff)  # as the engine does

    async def wait_packets(self, count: int, timeout: float = 3.0) -> list[bytes]:
        self.pump()
        async with asyncio.timeout(timeout):
            while len(self.packets) < count:
                await self.woken.wait()
                self.woken.clear()
                self.pump()
        return self.packets


def vm_udp(dst: bytes, dport: int, payload: bytes, sport: int = 40000, ttl: int = 64) -> Any:
    udp = build_udp(VM, dst, sport, dport, payload)
    pkt = parse_ipv4(build_ipv4(VM, dst, PROTO_UDP, udp, ttl=ttl))
    return pkt, parse_udp(pkt.payload, pkt.src, pkt.dst)


def vm_ping(dst: bytes, ident: int, seq: int, ttl: int = 64, payload: bytes = b"abc") -> Any:
    body = build_icmp(ECHO_REQUEST, 0, echo_rest(ident, seq), payload)
    pkt = parse_ipv4(build_ipv4(VM, dst, PROTO_ICMP, body, ttl=ttl))
    return pkt, parse_icmp(pkt.payload)


class EchoServer(asyncio.DatagramProtocol):
    """Echoes every datagram back to its sender (on 127.0.0.1)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data, addr)


@contextlib.asynccontextmanager
async def echo_server() -> AsyncIterator[int]:
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        EchoServer, local_addr=("127.0.0.1", 0)
    )
    try:
        yield transport.get_extra_info("sockname")[1]
    finally:
        transport.close()


def asyncio_test(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test body on a fresh loop (pytest-asyncio is not installed)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kw: Any) -> None:
        asyncio.run(asyncio.wait_for(fn(*args, **kw), 20))

    return wrapper


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# -- errqueue parsing -----------------------------------------------------------


def test_parse_extended_err_icmp_and_local() -> None:
    offender = struct.pack("=HH4s8x", socket.AF_INET, 0, socket.inet_aton("10.0.0.1"))
    icmp = struct.pack("=IBBBBII", 111, SO_EE_ORIGIN_ICMP, 11, 0, 0, 0, 0) + offender
    err = parse_extended_err(icmp, b"data", ("1.2.3.4", 33434))
    assert err is not None
    assert (err.kind, err.offender, err.dst, err.mtu) == (
        "ttl_exceeded",
        "10.0.0.1",
        ("1.2.3.4", 33434),
        None,
    )
    local = struct.pack("=IBBBBII", 90, SO_EE_ORIGIN_LOCAL, 0, 0, 0, 1400, 0) + bytes(16)
    err = parse_extended_err(local)
    assert err is not None and (err.kind, err.mtu, err.offender) == ("frag_needed", 1400, None)
    assert parse_extended_err(b"short") is None


# -- HostUdp on 127.0.0.1 ---------------------------------------------------------


@asyncio_test
async def test_udp_round_trip_through_host_alias() -> None:
    async with echo_server() as port:
        h = Harness(UdpNat(CFG), HostUdp)
        pkt, dgram = vm_udp(CFG.host_ip, port, b"hello host")
        h.nat.handle(pkt, dgram, 0.0)
        (packet,) = await h.wait_packets(1)
        ip = parse_ipv4(packet)
        assert (ip.src, ip.dst) == (CFG.host_ip, VM)
        reply = parse_udp(ip.payload, ip.src, ip.dst)
        assert (reply.src_port, reply.dst_port, reply.payload.tobytes()) == (
            port,
            40000,
            b"hello host",
        )
        assert len(h.runtime) == 1
        h.runtime.close()


@asyncio_test
async def test_udp_ttl_set_on_host_socket() -> None:
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.setsockopt(socket.SOL_IP, IP_RECVTTL, 1)
    server.bind(("127.0.0.1", 0))
    server.settimeout(3)
    h = Harness(UdpNat(CFG), HostUdp)
    try:
        for ttl in (6, 6, 64):
            pkt, dgram = vm_udp(CFG.host_ip, server.getsockname()[1], b"t", ttl=ttl)
            h.nat.handle(pkt, dgram, 0.0)
            h.pump()
            _data, anc, _flags, _addr = await asyncio.to_thread(
                server.recvmsg, 100, socket.CMSG_SPACE(4)
            )
            (level, kind, value), *_ = anc
            assert (level, kind) == (socket.SOL_IP, 2)  # IP_TTL
            assert struct.unpack("=i", value)[0] == ttl - 1
    finally:
        server.close()
        h.runtime.close()


@asyncio_test
async def test_udp_closed_port_gives_port_unreachable() -> None:
    port = free_udp_port()
    h = Harness(UdpNat(CFG), HostUdp)
    pkt, dgram = vm_udp(CFG.host_ip, port, b"anyone?")
    h.nat.handle(pkt, dgram, 0.0)
    (packet,) = await h.wait_packets(1)
    ip = parse_ipv4(packet)
    msg = parse_icmp(ip.payload)
    assert (ip.src, ip.dst) == (CFG.host_ip, VM)
    assert (msg.type, msg.code) == (DEST_UNREACHABLE, PORT_UNREACHABLE)
    assert msg.payload.tobytes() == pkt.header.tobytes() + pkt.payload[:8].tobytes()
    h.runtime.close()


@asyncio_test
async def test_udp_pending_error_does_not_eat_the_next_datagram() -> None:
    async with echo_server() as port:
        """An ICMP error pending on the socket (sk_err) must not make the next sendto fail."""
        h = Harness(UdpNat(CFG), HostUdp)
        closed = free_udp_port()
        for dport, data in ((closed, b"lost"), (port, b"kept")):
            pkt, dgram = vm_udp(CFG.host_ip, dport, data)
            h.nat.handle(pkt, dgram, 0.0)
            h.pump()  # no await in between: the reader has not run yet
        packets = await h.wait_packets(2)
        kinds = set()
        for p in packets:
            ip = parse_ipv4(p)
            if ip.proto == PROTO_ICMP:
                kinds.add(("icmp", parse_icmp(ip.payload).code))
            else:
                kinds.add(("udp", parse_udp(ip.payload, ip.src, ip.dst).payload.tobytes()))
        assert kinds == {("icmp", PORT_UNREACHABLE), ("udp", b"kept")}
        h.runtime.close()


@asyncio_test
async def test_udp_large_reply_fragmented_for_the_vm() -> None:
    async with echo_server() as port:
        h = Harness(UdpNat(CFG), HostUdp)
        payload = os.urandom(60000)
        pkt, dgram = vm_udp(CFG.host_ip, port, payload)
        h.nat.handle(pkt, dgram, 0.0)
        packets = await h.wait_packets(41)
        assert all(len(p) <= CFG.mtu for p in packets)
        r = Reassembler()
        (whole,) = [w for p in packets if (w := r.add(parse_ipv4(p), 0.0)) is not None]
        ip = parse_ipv4(whole)
        assert parse_udp(ip.payload, ip.src, ip.dst).payload.tobytes() == payload
        h.runtime.close()


@asyncio_test
async def test_udp_close_releases_the_socket() -> None:
    async with echo_server() as port:
        h = Harness(UdpNat(CFG, idle_timeout=1.0), HostUdp)
        pkt, dgram = vm_udp(CFG.host_ip, port, b"x")
        h.nat.handle(pkt, dgram, 0.0)
        h.pump()
        fd = h.runtime._socks[1].sock.fileno()
        h.nat.handle_timer(10.0)
        packets, effects = h.nat.drain()
        assert effects == [UdpClose(1)]
        h.runtime.execute(effects[0])
        assert len(h.runtime) == 0
        with pytest.raises(OSError):
            os.fstat(fd)


# -- HostIcmp on 127.0.0.1 --------------------------------------------------------


def test_ping_group_range_read() -> None:
    rng = ping_group_range()
    assert rng is not None and len(rng) == 2
    assert ping_group_range("/nonexistent") is None


@pytest.mark.skipif(os.geteuid() != 0, reason="raw ICMP sockets need root")
@asyncio_test
async def test_icmp_raw_socket_pings_loopback() -> None:
    h = Harness(IcmpNat(CFG), HostIcmp, mode="raw")
    assert h.runtime.mode == "raw"
    for seq in (1, 2):
        pkt, msg = vm_ping(CFG.host_ip, 0x4242, seq, payload=b"payload-%d" % seq)
        h.nat.handle(pkt, msg, 0.0)
    packets = await h.wait_packets(2)
    got = []
    for p in packets:
        ip = parse_ipv4(p)
        reply = parse_icmp(ip.payload)
        assert (ip.src, ip.dst, reply.type, reply.ident) == (CFG.host_ip, VM, ECHO_REPLY, 0x4242)
        got.append((reply.seq, reply.payload.tobytes()))
    assert sorted(got) == [(1, b"payload-1"), (2, b"payload-2")]
    h.runtime.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="raw ICMP sockets need root")
@asyncio_test
async def test_icmp_raw_error_mapped_by_quoted_identifier() -> None:
    h = Harness(IcmpNat(CFG), HostIcmp, mode="raw")
    remote = ip4("198.51.100.7")
    pkt, msg = vm_ping(remote, 0x99, 5, ttl=3)
    h.nat.handle(pkt, msg, 0.0)
    effects = h.nat.drain()[1]
    assert isinstance(effects[0], IcmpEchoSend)
    ident = h.runtime._idents.ident(effects[0].flow_id, effects[0].dst_ip)  # as the raw socket
    # What a router two hops away sends back (fed to the parser, not the network).
    ours = build_icmp(ECHO_REQUEST, 0, echo_rest(ident, 5), b"abc")
    quoted = build_ipv4(ip4("10.0.0.5"), remote, PROTO_ICMP, ours, ttl=1)[:28]
    err = build_ipv4(
        ip4("10.0.0.1"), ip4("10.0.0.5"), PROTO_ICMP, build_icmp(TIME_EXCEEDED, 0, bytes(4), quoted)
    )
    h.runtime._buf[: len(err)] = err
    assert h.runtime._raw_packet(len(err), "10.0.0.1", 0.0)
    (packet,), _ = h.nat.drain()
    ip = parse_ipv4(packet)
    out = parse_icmp(ip.payload)
    assert (ip.src, out.type) == (ip4("10.0.0.1"), TIME_EXCEEDED)
    inner = parse_icmp(out.payload[20:28], check=False)
    assert (inner.ident, inner.seq) == (0x99, 5)  # the VM's own identifier again
    # Unknown identifiers and truncated packets are ignored.
    assert not h.runtime._raw_packet(20, "10.0.0.1", 0.0)
    h.runtime.close()


@asyncio_test
async def test_icmp_disabled_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    h = Harness(IcmpNat(CFG), HostIcmp)
    h.runtime.mode = None  # what choose_mode returns without permission
    with caplog.at_level(logging.WARNING, logger="pyvpnkit.runtime.host_icmp"):
        for seq in (1, 2, 3):
            pkt, msg = vm_ping(ip4("198.51.100.7"), 1, seq)
            h.nat.handle(pkt, msg, 0.0)
            h.pump()
    warnings = [r for r in caplog.records if "ping_group_range" in r.getMessage()]
    assert len(warnings) == 1
    assert h.packets == [] and h.runtime.stats["echo_dropped"] == 3
    h.runtime.close()


# -- namespaces made by the test: ping sockets, a router that reports errors -------

NETNS_SCRIPT = textwrap.dedent(
    r"""
    import asyncio, json, os, subprocess, sys, time
    sys.path.insert(0, SRC)
    from pyvpnkit.core.config import NetConfig, ip4
    from pyvpnkit.core.nat.icmp_nat import IcmpNat
    from pyvpnkit.core.nat.udp_nat import UdpNat
    from pyvpnkit.runtime.host_icmp import HostIcmp
    from pyvpnkit.runtime.host_udp import HostUdp
    from pyvpnkit.wire.icmp import build_icmp, echo_rest, parse_icmp
    from pyvpnkit.wire.ipv4 import build_ipv4, parse_ipv4
    from pyvpnkit.wire.udp import build_udp, parse_udp

    def run(*a):
        subprocess.run(a, check=True, capture_output=True)

    # This namespace: lo, ping sockets allowed, a veth to a router namespace.
    run("ip", "link", "set", "lo", "up")
    with open("/proc/sys/net/ipv4/ping_group_range", "w") as f:
        f.write("0 2147483647")
    router = subprocess.Popen(["unshare", "-n", "sleep", "30"])
    me = os.readlink("/proc/self/ns/net")
    ns_path = f"/proc/{router.pid}/ns/net"
    while os.path.exists(ns_path) and os.readlink(ns_path) == me:
        time.sleep(0.01)
    try:
        def rt(*a):
            run("nsenter", "-t", str(router.pid), "-n", *a)
        run("ip", "link", "add", "va", "type", "veth",
            "peer", "name", "vb", "netns", str(router.pid))
        run("ip", "addr", "add", "10.77.0.1/24", "dev", "va")
        run("ip", "link", "set", "va", "up")
        run("ip", "route", "add", "default", "via", "10.77.0.2")
        run("ip", "route", "add", "prohibit", "192.0.2.0/24")
        rt("ip", "link", "set", "lo", "up")
        rt("ip", "addr", "add", "10.77.0.2/24", "dev", "vb")
        rt("ip", "link", "set", "vb", "up")
        rt("sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward")
        # No ICMP rate limit in the router: it reports errors for many probes at once.
        rt("sh", "-c", "echo 0 > /proc/sys/net/ipv4/icmp_ratemask")
        rt("ip", "route", "add", "unreachable", "198.51.100.0/24")
        rt("ip", "route", "add", "default", "via", "10.77.0.99")

        CFG = NetConfig()
        VM = ip4("192.168.65.3")
        results = {}

        async def collect(nat, runtime_cls, feed, count, **kw):
            woken = asyncio.Event()
            rt_ = runtime_cls(asyncio.get_running_loop(), nat, woken.set, **kw)
            packets = []
            def pump():
                p, effects = nat.drain()
                packets.extend(p)
                for e in effects:
                    rt_.execute(e)
            feed(nat)
            pump()
            try:
                async with asyncio.timeout(5):
                    while len(packets) < count:
                        await woken.wait()
                        woken.clear()
                        pump()
            except TimeoutError:
                pass
            rt_.close()
            out = []
            for p in packets:
                ip = parse_ipv4(p)
                msg = parse_icmp(ip.payload) if ip.proto == 1 else None
                entry = {"src": ".".join(map(str, ip.src)), "proto": ip.proto}
                if msg is not None:
                    entry.update(type=msg.type, code=msg.code, ident=msg.ident, seq=msg.seq,
                                 quote=msg.payload.tobytes().hex())
                out.append(entry)
            return rt_.mode if hasattr(rt_, "mode") else None, out

        def ping(dst, seq, ttl=64, ident=0x5151):
            def feed(nat):
                body = build_icmp(8, 0, echo_rest(ident, seq), b"xyz")
                pkt = parse_ipv4(build_ipv4(VM, ip4(dst), 1, body, ttl=ttl))
                nat.handle(pkt, parse_icmp(pkt.payload), 0.0)
            return feed

        def udp(dst, port, ttl=64):
            def feed(nat):
                u = build_udp(VM, ip4(dst), 40000, port, b"probe")
                pkt = parse_ipv4(build_ipv4(VM, ip4(dst), 17, u, ttl=ttl))
                nat.handle(pkt, parse_udp(pkt.payload, pkt.src, pkt.dst), 0.0)
            return feed

        async def main():
            def icmp(feed, mode):
                return collect(IcmpNat(CFG), HostIcmp, feed, 1, mode=mode)
            for m in ("ping", "raw"):
                results[m + "_loopback"] = await icmp(ping("192.168.65.2", 1), m)
                results[m + "_ttl"] = await icmp(ping("203.0.113.9", 2, ttl=2), m)
                results[m + "_unreach"] = await icmp(ping("198.51.100.9", 3), m)
            results["ping_prohibit"] = await icmp(ping("192.0.2.1", 4), "ping")
            for name, feed in (
                ("udp_ttl", udp("203.0.113.9", 33434, ttl=2)),
                ("udp_unreach", udp("198.51.100.9", 33435)),
                ("udp_prohibit", udp("192.0.2.1", 33436)),
            ):
                results[name] = await collect(UdpNat(CFG), HostUdp, feed, 1)

        asyncio.run(main())
        print(json.dumps(results))
    finally:
        router.kill()
        router.wait()
    """
)


@pytest.fixture(scope="module")
def netns_results() -> dict[str, Any]:
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("nsenter") is None:
        pytest.skip("needs root, unshare and nsenter for private network namespaces")
    proc = subprocess.run(
        ["unshare", "-n", sys.executable, "-c", f"SRC = {SRC!r}\n" + NETNS_SCRIPT],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    results: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return results


@pytest.mark.parametrize("mode", ["ping", "raw"])
def test_netns_icmp_echo_and_errors(netns_results: dict[str, Any], mode: str) -> None:
    used, (reply,) = netns_results[f"{mode}_loopback"]
    assert used == mode
    assert reply == reply | {"src": "192.168.65.2", "type": 0, "ident": 0x5151, "seq": 1}
    # traceroute -I, hop 2: the router says TTL exceeded, quoting the VM's request.
    _, (err,) = netns_results[f"{mode}_ttl"]
    assert err == err | {"src": "10.77.0.2", "type": 11, "code": 0}
    quote = bytes.fromhex(err["quote"])
    assert quote[12:20] == VM + ip4("203.0.113.9")
    inner = parse_icmp(quote[20:28], check=False)
    assert (inner.type, inner.ident, inner.seq) == (ECHO_REQUEST, 0x5151, 2)
    _, (unreach,) = netns_results[f"{mode}_unreach"]
    assert unreach == unreach | {"src": "10.77.0.2", "type": 3, "code": 1}


def test_netns_local_send_errors(netns_results: dict[str, Any]) -> None:
    _, (err,) = netns_results["ping_prohibit"]
    assert err == err | {"src": "192.0.2.1", "type": 3, "code": 13}
    _, (err,) = netns_results["udp_prohibit"]
    assert err == err | {"src": "192.0.2.1", "type": 3, "code": 13}


def test_netns_udp_errors_from_router(netns_results: dict[str, Any]) -> None:
    _, (err,) = netns_results["udp_ttl"]
    assert err == err | {"src": "10.77.0.2", "type": 11, "code": 0}
    quote = bytes.fromhex(err["quote"])
    assert quote[12:20] == VM + ip4("203.0.113.9")
    assert quote[20:24] == struct.pack("!HH", 40000, 33434)
    _, (err,) = netns_results["udp_unreach"]
    assert err == err | {"src": "10.77.0.2", "type": 3, "code": 1}


def test_choose_mode_matches_permissions() -> None:
    mode = choose_mode()
    if os.geteuid() == 0:
        assert mode in ("ping", "raw")
    assert choose_mode("raw") in (None, "raw")
