"""The control API and the Forwarder behind it, with real loopback sockets and a fake VM link.

The stack and engine are the real ones; the "VM" is a Link that records the
frames the stack sends and lets the test inject the VM's answers.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from pyvpnkit.api.client import ApiClient, ApiError
from pyvpnkit.api.commands import dispatch
from pyvpnkit.api.server import FrameCounter, make_app, start_api
from pyvpnkit.app.extras import start_service_extras
from pyvpnkit.app.options import Options
from pyvpnkit.core.config import NetConfig, ip4
from pyvpnkit.core.switch.ippool import mac_key
from pyvpnkit.core.switch.stack import Stack
from pyvpnkit.frontends import cli
from pyvpnkit.links.base import Link
from pyvpnkit.runtime.engine import Engine
from pyvpnkit.runtime.forwarder import (
    Forwarder,
    ForwardError,
    _bind_error,
    parse_publish,
    split_host_port,
)
from pyvpnkit.runtime.host_tcp import HostTcp
from pyvpnkit.runtime.port_expiry import PortExpiry
from pyvpnkit.wire.ethernet import ETHERTYPE_IPV4, build_ethernet, parse_ethernet
from pyvpnkit.wire.ipv4 import PROTO_TCP, PROTO_UDP, build_ipv4, parse_ipv4
from pyvpnkit.wire.tcp import ACK, RST, SYN, build_tcp, parse_tcp
from pyvpnkit.wire.udp import build_udp, parse_udp

CFG = NetConfig()
GW = CFG.gateway_ip
ALIAS = CFG.host_ip  # where a loopback client appears to the VM
VM = ip4("192.168.65.3")
VM_MAC = bytes.fromhex("020000000003")


class FakeVm(Link):
    def __init__(self) -> None:
        self.name = "fake-vm"
        self.mtu = 1500
        self.mac = None
        self.frames: list[bytes] = []
        self.answer: Callable[[bytes], None] | None = None  # the VM's reply, at once

    def send_frame(self, frame: bytes) -> None:
        self.frames.append(frame)
        if self.answer is not None:
            self.answer(frame)

    def close(self) -> None:
        pass

    def packets(self, proto: int) -> list[Any]:
        out = []
        for frame in self.frames:
            eth = parse_ethernet(frame)
            if eth.ethertype == ETHERTYPE_IPV4:
                pkt = parse_ipv4(eth.payload)
                if pkt.proto == proto:
                    out.append(pkt)
        return out


class Env:
    def __init__(self) -> None:
        self.stack = Stack(CFG)
        self.engine = Engine(self.stack)
        self.vm = FakeVm()
        self.engine.link_opened(self.vm)
        self.host_tcp = HostTcp(self.engine.loop, self.stack.tcp, self.engine.wake,
                                settle=self.engine.settle)
        self.engine.add_executor(self.host_tcp)
        self.forwarder = Forwarder(self.engine, self.stack, self.host_tcp)
        self.engine.add_executor(self.forwarder)

    def from_vm(self, ip_packet: bytes) -> None:
        frame = build_ethernet(CFG.gateway_mac, VM_MAC, ETHERTYPE_IPV4, ip_packet)
        self.engine.frame_received(self.vm, frame)

    def announce_vm(self) -> None:
        self.from_vm(build_ipv4(VM, GW, PROTO_UDP, build_udp(VM, GW, 9999, 9, b"")))
        assert VM in self.stack.vms


async def wait_until(pred: Callable[[], object], timeout: float = 3.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        if loop.time() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


def run(test: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an async test with an Env and an aiohttp test client on a fresh loop."""

    def wrapper(*args: Any, **kw: Any) -> None:
        async def main() -> None:
            env = Env()
            client = TestClient(TestServer(make_app(env.forwarder, env.stack)))
            await client.start_server()
            try:
                await test(env, client, *args, **kw)
            finally:
                await client.close()
                env.forwarder.close()
                env.engine.close()

        asyncio.run(main())

    wrapper.__name__ = test.__name__
    return wrapper


# -- parsing -------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec,expected",
    [
        ("8080:80", ("127.0.0.1:8080", ":80", "tcp")),
        ("8080:80/udp", ("127.0.0.1:8080", ":80", "udp")),
        ("0.0.0.0:53:5353/UDP", ("0.0.0.0:53", ":5353", "udp")),
        ("[::1]:8080:80", ("[::1]:8080", ":80", "tcp")),
        ("10.1.2.3:1:65535/tcp", ("10.1.2.3:1", ":65535", "tcp")),
    ],
)
def test_parse_publish(spec: str, expected: tuple[str, str, str]) -> None:
    assert parse_publish(spec) == expected


@pytest.mark.parametrize(
    "spec", ["80", "8080:80/sctp", "a:b", "0:80", "8080:70000", "1.2.3:80:80", "[::1:80:80",
             "host:80:80", "1:2:3:4"]
)
def test_parse_publish_rejects(spec: str) -> None:
    with pytest.raises(ValueError, match="publish"):
        parse_publish(spec)


def test_split_host_port() -> None:
    assert split_host_port("127.0.0.1:80", "x") == ("127.0.0.1", 80)
    assert split_host_port(":80", "x") == ("", 80)
    assert split_host_port("[0:0::1]:0", "x") == ("::1", 0)
    for bad in ["", "127.0.0.1", "::1:80", "1.2.3.4:65536", "name:80", "[1.2.3.4]:8", "1.2.3.4:-1"]:
        with pytest.raises(ForwardError):
            split_host_port(bad, "x")


def test_bind_errors_use_docker_wording() -> None:
    def err(code: int) -> ForwardError:
        return _bind_error(OSError(code, os.strerror(code)), "tcp", "0.0.0.0:80")

    assert str(err(errno.EADDRINUSE)) == "Bind for 0.0.0.0:80 failed: port is already allocated"
    assert err(errno.EADDRINUSE).status == 409
    assert str(err(errno.EADDRNOTAVAIL)).endswith("bind: cannot assign requested address")
    assert str(err(errno.EACCES)).endswith("bind: permission denied")
    assert err(errno.EPERM).status == 403


# -- forwarding through the stack ---------------------------------------------


async def expose(
    client: TestClient, local: str, remote: str, protocol: str = "tcp", **extra: Any
) -> Any:
    resp = await client.post(
        "/services/forwarder/expose",
        json={"local": local, "remote": remote, "protocol": protocol, **extra},
    )
    assert resp.status == 200, await resp.text()
    return await resp.json()


def syn_to_vm(env: Env, port: int) -> list[Any]:
    out = []
    for pkt in env.vm.packets(PROTO_TCP):
        seg = parse_tcp(pkt.payload, pkt.src, pkt.dst)
        if seg.flags & SYN and seg.dst_port == port:
            out.append((pkt, seg))
    return out


@run
async def test_tcp_forward_opens_a_connection_into_the_vm(env: Env, client: TestClient) -> None:
    env.announce_vm()
    info = await expose(client, "127.0.0.1:0", "192.168.65.3:80")
    host, port = split_host_port(info["local"], "local")
    assert host == "127.0.0.1" and port > 0
    assert info == {"local": f"127.0.0.1:{port}", "remote": "192.168.65.3:80", "protocol": "tcp"}
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, ("127.0.0.1", port))
        await wait_until(lambda: syn_to_vm(env, 80))
        ((pkt, seg),) = syn_to_vm(env, 80)
        # A loopback client appears as the host alias, with its own port.
        assert (pkt.src, pkt.dst) == (ALIAS, VM) and seg.src_port == sock.getsockname()[1]
        # The VM refuses: the host client sees the connection reset.
        rst = build_tcp(VM, ALIAS, 80, seg.src_port, 0, seg.seq + 1, RST | ACK, 0)
        env.from_vm(build_ipv4(VM, ALIAS, PROTO_TCP, rst))
        with pytest.raises(ConnectionResetError):
            data = await asyncio.wait_for(loop.sock_recv(sock, 10), 3)
            assert data == b""  # an orderly close would also be wrong: we want a reset
            raise AssertionError("no reset")
    finally:
        sock.close()
    stats = await (await client.get("/stats")).json()
    assert stats["connections"]["tcp_refused"] == 0
    assert stats["frames_in"] >= 2 and stats["vms"] == {"192.168.65.3": VM_MAC.hex(":")}


@run
async def test_a_clients_first_bytes_ride_with_the_handshakes_ack(
    env: Env, client: TestClient
) -> None:
    """Bytes a client sent before we accepted it leave with our ACK of the VM's SYN-ACK,
    even when that SYN-ACK comes back at once (no bare ACK first); the accepted socket
    has TCP_NODELAY from its listener."""
    env.announce_vm()
    info = await expose(client, "127.0.0.1:0", ":82")
    _h, port = split_host_port(info["local"], "local")

    def syn_ack(frame: bytes) -> None:
        pkt = parse_ipv4(parse_ethernet(frame).payload)
        seg = parse_tcp(pkt.payload, pkt.src, pkt.dst)
        if seg.flags & SYN:
            answer = build_tcp(VM, pkt.src, 82, seg.src_port, 1000, seg.seq + 1, SYN | ACK,
                               65535)
            env.from_vm(build_ipv4(VM, pkt.src, PROTO_TCP, answer))

    env.vm.answer = syn_ack
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"hello")  # before the loop runs again: before the accept
        await wait_until(lambda: len(env.vm.packets(PROTO_TCP)) >= 2)
        await asyncio.sleep(0.05)  # a bare ACK and the data would both be out by now
        segs = [parse_tcp(p.payload, p.src, p.dst) for p in env.vm.packets(PROTO_TCP)]
        assert [(s.flags & ACK, bytes(s.payload)) for s in segs[1:]] == [(ACK, b"hello")]
        (conn,) = env.host_tcp.conns.values()
        assert conn.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


@run
async def test_forward_source_off_comes_from_the_gateway(env: Env, client: TestClient) -> None:
    env.announce_vm()
    resp = await client.post("/services/forwarder/expose", json={
        "local": "127.0.0.1:0", "remote": ":81", "forward_source": "no"})
    assert resp.status == 400 and "forward_source" in await resp.text()
    info = await expose(client, "127.0.0.1:0", ":81", forward_source=False)
    assert info["forward_source"] is False
    listed = await (await client.get("/services/forwarder/all")).json()
    assert listed == [info]
    _h, port = split_host_port(info["local"], "local")
    loop = asyncio.get_running_loop()
    with socket.socket() as sock:
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        await wait_until(lambda: syn_to_vm(env, 81))
        ((pkt, seg),) = syn_to_vm(env, 81)
        assert pkt.src == GW and 32768 <= seg.src_port <= 60999


@run
async def test_loopback_forward_also_listens_on_ipv6(env: Env, client: TestClient) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    env.announce_vm()
    info = await expose(client, "127.0.0.1:0", ":443")
    _h, port = split_host_port(info["local"], "local")
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET6) as sock:
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, ("::1", port))
        except OSError as exc:
            pytest.skip(f"no ::1 here: {exc}")
        await wait_until(lambda: syn_to_vm(env, 443))
    await client.post("/services/forwarder/unexpose", json={"local": info["local"]})
    with socket.socket(socket.AF_INET6) as sock:
        assert sock.connect_ex(("::1", port)) == errno.ECONNREFUSED


@run
async def test_first_vm_is_used_for_an_empty_remote_ip(env: Env, client: TestClient) -> None:
    info = await expose(client, "127.0.0.1:0", ":8080")
    assert info["remote"] == "192.168.65.3:8080"  # no VM yet: the first address
    env.stack.pool.allocate("mac:" + VM_MAC.hex(":"), VM)
    env.stack.macs[VM_MAC] = 1  # as if the VM had sent an IPv6 ND frame
    loop = asyncio.get_running_loop()
    _h, port = split_host_port(info["local"], "local")
    with socket.socket() as sock:
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        # The VM never sent IPv4, but its lease and MAC are known: the SYN is routed.
        await wait_until(lambda: syn_to_vm(env, 8080))
    assert VM in env.stack.vms


@run
async def test_udp_forward_round_trip(env: Env, client: TestClient) -> None:
    env.announce_vm()
    info = await expose(client, "127.0.0.1:0", ":5353", "udp")
    _h, port = split_host_port(info["local"], "local")
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.bind(("127.0.0.1", 0))
        sock.sendto(b"question", ("127.0.0.1", port))

        def datagrams() -> list[Any]:
            return [(p, d) for p in env.vm.packets(PROTO_UDP)
                    if (d := parse_udp(p.payload, p.src, p.dst)).dst_port == 5353]

        await wait_until(datagrams)
        ((pkt, dgram),) = datagrams()
        assert (pkt.src, dgram.src_port) == (ALIAS, sock.getsockname()[1])
        assert bytes(dgram.payload) == b"question"
        answer = build_udp(VM, ALIAS, 5353, dgram.src_port, b"answer")
        env.from_vm(build_ipv4(VM, ALIAS, PROTO_UDP, answer))
        data, addr = await asyncio.wait_for(loop.sock_recvfrom(sock, 100), 3)
        assert (data, addr) == (b"answer", ("127.0.0.1", port))
    resp = await client.post("/services/forwarder/unexpose",
                             json={"local": info["local"], "protocol": "udp"})
    assert resp.status == 200
    assert len(env.stack.udp_forward) == 0 and not env.stack.udp_forward.listeners


def test_unix_forward_and_stale_socket(tmp_path: Path) -> None:
    run(unix_forward_and_stale_socket)(tmp_path)


async def unix_forward_and_stale_socket(env: Env, client: TestClient, tmp_path: Path) -> None:
    env.announce_vm()
    path = tmp_path / "fwd.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # a file nobody listens on: replaced
    info = await expose(client, str(path), "192.168.65.3:22", "unix")
    assert info["local"] == str(path) and stat.S_ISSOCK(path.stat().st_mode)
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.setblocking(False)
        await loop.sock_connect(sock, str(path))
        await wait_until(lambda: syn_to_vm(env, 22))
    # A live socket or another kind of file is never replaced.
    resp = await client.post("/services/forwarder/expose",
                             json={"local": str(path), "remote": ":22", "protocol": "unix"})
    assert resp.status == 409 and "already exposed" in await resp.text()
    other = tmp_path / "plain"
    other.write_text("x")
    resp = await client.post("/services/forwarder/expose",
                             json={"local": str(other), "remote": ":22", "protocol": "unix"})
    assert resp.status == 409 and "not a socket" in await resp.text()
    assert other.read_text() == "x"
    resp = await client.post("/services/forwarder/unexpose",
                             json={"local": str(path), "protocol": "unix"})
    assert resp.status == 200 and not path.exists()


@run
async def test_bind_conflicts_and_duplicates(env: Env, client: TestClient) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        resp = await client.post("/services/forwarder/expose",
                                 json={"local": f"127.0.0.1:{port}", "remote": ":80"})
        assert resp.status == 409
        assert await resp.text() == f"Bind for 127.0.0.1:{port} failed: port is already allocated\n"
    info = await expose(client, "127.0.0.1:0", ":80")
    resp = await client.post("/services/forwarder/expose",
                             json={"local": info["local"], "remote": ":81"})
    assert resp.status == 409 and "already exposed" in await resp.text()
    # Same port, other protocol: a separate forward.
    await expose(client, info["local"], ":80", "udp")
    resp = await client.post("/services/forwarder/expose",
                             json={"local": "192.0.2.1:0", "remote": ":80"})
    assert resp.status == 400 and "cannot assign requested address" in await resp.text()
    listed = await (await client.get("/services/forwarder/all")).json()
    assert sorted(f["protocol"] for f in listed) == ["tcp", "udp"]


@run
async def test_unexpose_closes_the_port(env: Env, client: TestClient) -> None:
    info = await expose(client, "127.0.0.1:0", ":80")
    _h, port = split_host_port(info["local"], "local")
    resp = await client.post("/services/forwarder/unexpose", json={"local": info["local"]})
    assert resp.status == 200
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) == errno.ECONNREFUSED
    resp = await client.post("/services/forwarder/unexpose", json={"local": info["local"]})
    assert resp.status == 404 and "not exposed" in await resp.text()
    assert await (await client.get("/services/forwarder/all")).json() == []


@pytest.mark.parametrize(
    "body,status,reason",
    [
        (b"{not json", 400, "malformed JSON"),
        (b"[1, 2]", 400, "must be an object"),
        (b'{"remote": ":80"}', 400, '"local" is required'),
        (b'{"local": 8080, "remote": ":80"}', 400, '"local" is required'),
        (b'{"local": "127.0.0.1:0", "remote": ":80", "protocol": "sctp"}', 400, "bad protocol"),
        (b'{"local": "127.0.0.1:0", "remote": "10.0.0.1:80"}', 400, "not a VM address"),
        (b'{"local": "127.0.0.1:0", "remote": "192.168.65.1:80"}', 400, "not a VM address"),
        (b'{"local": "127.0.0.1:0", "remote": ":0"}', 400, "port must be 1-65535"),
        (b'{"local": "localhost:80", "remote": ":80"}', 400, "not an IP address"),
        (b"\xff\xfe", 400, "malformed JSON"),
        (b"x" * 70000, 413, ""),
    ],
)
def test_bad_requests_get_4xx_and_the_service_keeps_going(
    body: bytes, status: int, reason: str
) -> None:
    @run
    async def check(env: Env, client: TestClient) -> None:
        resp = await client.post("/services/forwarder/expose", data=body)
        assert resp.status == status
        assert reason in await resp.text()
        info = await expose(client, "127.0.0.1:0", ":80")
        assert info["protocol"] == "tcp"

    check()


@run
async def test_routes_methods_and_leases(env: Env, client: TestClient) -> None:
    assert (await client.get("/nope")).status == 404
    assert (await client.get("/services/forwarder/expose")).status == 405
    assert (await client.post("/stats")).status == 405
    assert await (await client.get("/leases")).json() == {}
    env.announce_vm()
    env.stack.pool.allocate("mac:02:00:00:00:00:09", ip4("192.168.65.9"))
    assert await (await client.get("/leases")).json() == {
        "192.168.65.3": VM_MAC.hex(":"),
        "192.168.65.9": "02:00:00:00:00:09",
    }
    stats = await (await client.get("/stats")).json()
    assert stats["drops"] == {}
    assert stats["flows"] == {"tcp": 0, "udp": 0, "icmp": 0, "udp_forward": 0, "tcp_ipv6": 0,
                              "udp_ipv6": 0, "icmp_ipv6": 0}
    assert stats["tables"] == {"tcp_timers": 0, "tcp_pending_connects": 0, "dns_pending": 0}
    env.from_vm(b"\x45" + bytes(10))  # garbage: counted, not fatal
    stats = await (await client.get("/stats")).json()
    assert stats["drops"]["malformed"] == 1


def test_internal_errors_are_500_and_not_fatal() -> None:
    class Broken:
        calls = 0

        def expose(self, local: str, remote: str, protocol: str = "tcp",
                   forward_source: bool | None = None) -> dict[str, str | bool]:
            self.calls += 1
            raise RuntimeError("boom")

        def unexpose(self, local: str, protocol: str = "tcp") -> None:
            raise ForwardError("nope", 404)

        def list(self) -> list[dict[str, str | bool]]:
            return [{"local": "a", "remote": "b", "protocol": "tcp"}]

    async def main() -> None:
        fake = Broken()
        client = TestClient(TestServer(make_app(fake, Stack(CFG))))
        await client.start_server()
        try:
            resp = await client.post("/services/forwarder/expose",
                                     json={"local": "1.2.3.4:1", "remote": ":1"})
            assert resp.status == 500 and "boom" in await resp.text()
            assert (await client.get("/services/forwarder/all")).status == 200
            resp = await client.post("/services/forwarder/unexpose", json={"local": "x"})
            assert resp.status == 404
            assert fake.calls == 1
        finally:
            await client.close()

    asyncio.run(main())


# -- the real API socket, the blocking client and the CLI ----------------------


def test_unix_api_socket_client_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "api.sock"
    url = f"unix://{path}"
    parser = cli.make_parser()

    def cli_run(*argv: str) -> tuple[int | None, str, str]:
        code = dispatch(parser.parse_args(list(argv)))
        out, err = capsys.readouterr()
        return code, out, err

    async def main() -> None:
        env = Env()
        env.announce_vm()
        counter = FrameCounter()
        env.engine.frame_taps.append(counter.tap)
        path.write_bytes(b"")  # not a socket: refused
        with pytest.raises(OSError, match="not a socket"):
            await start_api(url, make_app(env.forwarder, env.stack))
        path.unlink()
        server = await start_api(url, make_app(env.forwarder, env.stack, counter=counter))
        try:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            api = ApiClient(url)
            info = await asyncio.to_thread(api.expose, "127.0.0.1:0", ":80")
            assert info["remote"] == "192.168.65.3:80"
            assert await asyncio.to_thread(api.forwards) == [info]
            with pytest.raises(ApiError) as exc:
                await asyncio.to_thread(api.unexpose, "127.0.0.1:1")
            assert exc.value.status == 404
            code, out, _ = await asyncio.to_thread(cli_run, "forwards", "--api", url)
            assert code == 0 and info["local"] in out and "192.168.65.3:80" in out
            code, out, _ = await asyncio.to_thread(
                cli_run, "expose", "--api", url, "--protocol", "udp", "127.0.0.1:0", ":53"
            )
            assert code == 0 and out.startswith("udp 127.0.0.1:")
            code, out, _ = await asyncio.to_thread(cli_run, "stats", "--api", url)
            stats = json.loads(out)
            assert code == 0 and stats["bytes_out"] == counter.bytes_out > 0
            code, out, _ = await asyncio.to_thread(cli_run, "leases", "--api", url)
            assert json.loads(out) == {"192.168.65.3": VM_MAC.hex(":")}
            code, _, err = await asyncio.to_thread(
                cli_run, "unexpose", "--api", url, info["local"], "--protocol", "udp"
            )
            assert code == 1 and "is not exposed" in err
            code, _, _ = await asyncio.to_thread(cli_run, "unexpose", "--api", url, info["local"])
            assert code == 0
        finally:
            await server.close()
            env.forwarder.close()
            env.engine.close()
        assert not path.exists()
        code, _, err = await asyncio.to_thread(cli_run, "forwards", "--api", url)
        assert code == 1 and "cannot reach the API" in err

    asyncio.run(main())


def test_tcp_api_url() -> None:
    async def main() -> None:
        env = Env()
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        server = await start_api(f"tcp://127.0.0.1:{port}", make_app(env.forwarder, env.stack))
        try:
            api = ApiClient(f"tcp://127.0.0.1:{port}")
            assert await asyncio.to_thread(api.leases) == {}
        finally:
            await server.close()
            env.engine.close()
        with pytest.raises(ValueError):
            await start_api("http://x", make_app(env.forwarder, env.stack))

    asyncio.run(main())


def test_service_extras_publish_and_failure() -> None:
    async def main() -> None:
        env = Env()
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            publish = (("127.0.0.1:0", ":80", "tcp"), ("127.0.0.1:0", ":53", "udp"))
            stop = asyncio.Event()
            extras = await start_service_extras(env.engine, env.stack, env.host_tcp,
                                                Options(publish=publish), stop.set)
            assert extras.error is None and len(extras.forwarder.list()) == 2
            assert not stop.is_set()
            await extras.aclose()
            assert extras.forwarder.list() == []
            taken_port = Options(publish=((f"127.0.0.1:{port}", ":80", "tcp"),))
            extras = await start_service_extras(env.engine, env.stack, env.host_tcp, taken_port,
                                                stop.set)
            assert extras.error == f"Bind for 127.0.0.1:{port} failed: port is already allocated"
            assert stop.is_set() and extras.forwarder.list() == []
        env.engine.close()

    asyncio.run(main())


def test_cli_publish_option_is_validated(capsys: pytest.CaptureFixture[str]) -> None:
    args = cli.make_parser().parse_args(["exec", "-p", "8080:80", "-p", "1.2.3.4:53:53/udp",
                                         "--api", "unix:///tmp/x.sock", "--", "true"])
    assert args.publish == [("127.0.0.1:8080", ":80", "tcp"), ("1.2.3.4:53", ":53", "udp")]
    assert args.api == "unix:///tmp/x.sock"
    with pytest.raises(SystemExit):
        cli.make_parser().parse_args(["exec", "-p", "80", "--", "true"])
    with pytest.raises(SystemExit):
        cli.make_parser().parse_args(["run", "--api", "http://x", "--tap", "t"])
    assert dispatch(argparse.Namespace(command="exec")) is None


@run
async def test_allowed_bind_addresses_and_backlog(env: Env, client: TestClient) -> None:
    fwd = Forwarder(env.engine, env.stack, env.host_tcp, backlog=3,
                    allowed_binds=("127.0.0.1",))
    try:
        with pytest.raises(ForwardError, match="not among --allowed-bind-addresses 127.0.0.1"):
            fwd.expose("0.0.0.0:0", ":80")
        info = fwd.expose("127.0.0.1:0", ":80")
        assert fwd.backlog == 3 and info["local"].startswith("127.0.0.1:")
    finally:
        fwd.close()


class ClosingVm(FakeVm):
    """A VM link that reports its close to the engine, as real links do."""

    def __init__(self, engine: Engine) -> None:
        super().__init__()
        self.engine = engine
        self.closed = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.engine.link_closed(self)


def test_port_max_idle_time_closes_quiet_vm_links() -> None:
    async def main() -> None:
        env = Env()
        quiet, busy = ClosingVm(env.engine), ClosingVm(env.engine)
        quiet.mac = VM_MAC
        env.engine.link_opened(quiet)
        env.engine.link_opened(busy)
        env.stack.pool.allocate(mac_key(VM_MAC), VM)
        expiry = PortExpiry(env.engine, 0.5)  # swept every 0.25 s
        try:
            for _ in range(30):  # 1.5 s: the busy link sends, the quiet one does not
                env.engine.frame_received(busy, b"\xff" * 6 + VM_MAC + b"\x08\x06" + bytes(28))
                await asyncio.sleep(0.05)
            assert quiet.closed and not busy.closed and env.engine.link_id(busy) is not None
            assert env.stack.pool.owner(VM) is None  # its VIF's lease ended
        finally:
            expiry.close()
            env.engine.close()

    asyncio.run(main())
