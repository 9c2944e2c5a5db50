"""HostWatch: resolv.conf followed into the DNS server, route errors by errno,
connections of a vanished source address reset, late wake-ups counted."""

from __future__ import annotations

import asyncio
import errno
import socket
import time
from pathlib import Path
from typing import Any

from pyvpnkit.core.config import NetConfig
from pyvpnkit.core.dns.upstreams import HostUpstreams
from pyvpnkit.core.nat.tcp_nat import TcpNat
from pyvpnkit.runtime.host_tcp import HostTcp, _HostConn
from pyvpnkit.runtime.hostwatch import HostWatch, RouteErrors, is_local_address


class FakeDns:
    def __init__(self) -> None:
        self.lists: list[list[tuple[str, int]]] = []

    def set_upstreams(self, upstreams: list[tuple[str, int]]) -> None:
        self.lists.append(list(upstreams))


class FakeTcp:
    def __init__(self) -> None:
        self.checks = 0

    def reset_vanished_sources(self, is_local: Any) -> int:
        self.checks += 1
        return 0


def test_route_errors_count_only_no_route_errnos() -> None:
    routes = RouteErrors()
    for err in (errno.ENETUNREACH, errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ECONNREFUSED,
                None, errno.EADDRNOTAVAIL):
        routes.note(err)
    assert routes.counts == {"ENETUNREACH": 2, "EHOSTUNREACH": 1, "EADDRNOTAVAIL": 1}


def test_is_local_address() -> None:
    assert is_local_address(("127.0.0.1", 0))
    assert not is_local_address(("192.0.2.123", 0))  # TEST-NET-1: never this machine's


def test_follows_resolv_conf_and_counts_a_late_wake_up(tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 10.0.0.1\n")
    upstreams = HostUpstreams()
    upstreams.update(resolv.read_text(), time.monotonic())
    dns, tcp = FakeDns(), FakeTcp()
    watch = HostWatch(dns, upstreams, str(resolv), tcp, RouteErrors())

    async def scenario() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        watch.start(loop)
        await asyncio.sleep(0.1)
        assert dns.lists == []  # the text read at start-up: nothing new
        resolv.write_text("nameserver 10.8.0.1\nsearch vpn.example\n")
        await asyncio.sleep(0.3)
        time.sleep(3.2)  # the loop does not run, as under SIGSTOP
        await asyncio.sleep(1.2)
        return watch.stats()

    try:
        stats = asyncio.run(scenario())
    finally:
        watch.close()
    assert dns.lists == [[("10.8.0.1", 53)]]
    assert stats["dns"]["upstreams"] == ["10.8.0.1#53"] and stats["dns"]["reloads"] == 1
    assert stats["dns"]["search"] == ["vpn.example"]
    assert stats["clock"]["catch_ups"] == 1 and 2.0 < stats["clock"]["longest_stop_s"] < 4, stats
    assert tcp.checks >= 2


def test_connections_of_a_vanished_source_address_are_reset() -> None:
    async def scenario() -> tuple[int, RouteErrors, HostTcp, list[socket.socket]]:
        loop = asyncio.get_running_loop()
        # A real NAT without flows (HostTcp may be compiled: it takes a TcpNat, no fake);
        # what a reset does to the VM's side is the NAT's test.
        tcp = HostTcp(loop, TcpNat(NetConfig(), iss=lambda: 0), lambda: None,
                      route_errors=(routes := RouteErrors()))
        server = socket.create_server(("127.0.0.1", 0))
        socks = [socket.create_connection(server.getsockname()) for _ in range(2)]
        for fid, sock in enumerate(socks, 1):
            tcp.conns[fid] = _HostConn(fid, sock, connected=True)
        assert tcp.reset_vanished_sources(lambda addr: True) == 0
        asked: list[tuple[Any, ...]] = []

        def gone(addr: tuple[Any, ...]) -> bool:
            asked.append(addr)
            return False

        n = tcp.reset_vanished_sources(gone)
        server.close()
        assert asked == [("127.0.0.1", 0)]  # once per distinct address
        return n, routes, tcp, socks

    n, routes, tcp, socks = asyncio.run(scenario())
    assert n == 2 and not tcp.conns
    assert all(sock.fileno() == -1 for sock in socks)  # closed
    assert routes.counts == {"EADDRNOTAVAIL": 2}
