"""Running the drop-in: gvproxy's settings on pyvpnkit's one Service, plus gvproxy's extras.

The stack, the VM listeners, the port forwarder and the pid file are the
ordinary `pyvpnkit run` service. Added here, once links are up: the zones
and static leases, the stack's forwards (-ssh-port), the -listen and
-services API endpoints (with /tunnel and /connect), the forwarder API on the
gateway's port 80 inside the network, -notification and -forward-sock.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import shutil
import tempfile
from typing import Any

from pyvpnkit.app.options import Options, parse_dns_server, parse_mac
from pyvpnkit.app.service import Service
from pyvpnkit.core.config import NetConfig, network_layout
from pyvpnkit.core.nat.tcp_nat import Redirect
from pyvpnkit.core.switch.ippool import PoolError, mac_key
from pyvpnkit.errors import UserError
from pyvpnkit.frontends.gvproxy.config import ConfigError, Settings
from pyvpnkit.frontends.gvproxy.front import Front, detach_socket, http_error
from pyvpnkit.frontends.gvproxy.notify import HYPERVISOR_ERROR, READY, Notifier
from pyvpnkit.frontends.gvproxy.sshfwd import SshSocketForward
from pyvpnkit.links.stream import StreamLink
from pyvpnkit.links.url import ListenURLError, parse_listen_url
from pyvpnkit.runtime.capabilities import capabilities
from pyvpnkit.runtime.forwarder import ForwardError
from pyvpnkit.wire.framing import QEMU, U16LE

log = logging.getLogger("pyvpnkit.frontends.gvproxy")

LINK_LOCAL = ipaddress.IPv4Network("169.254.0.0/16")  # cloud metadata, unless allowed
LEVELS = {"trace": "debug", "debug": "debug", "info": "info", "warn": "warning",
          "warning": "warning", "error": "error", "fatal": "error", "panic": "error"}


def pool_bounds(s: Settings) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]:
    """The largest run of addresses around deviceIP holding neither the gateway nor the alias."""
    low = s.subnet.network_address + 1
    high = s.subnet.broadcast_address - 1
    for ip in (s.gateway_ip, s.host_ip):
        if ip < s.device_ip:
            low = max(low, ip + 1)
        else:
            high = min(high, ip - 1)
    return low, high


def service_options(s: Settings) -> Options:
    """gvproxy's listeners, DNS and capture as Options; a bad value is a ConfigError naming
    the flag that gives it."""
    listeners = []
    for kind, url in s.interfaces.items():
        if kind == "stdio":  # any value turns it on, as in gvproxy
            url = "stdio"
        try:
            parse_listen_url(url, kind)
        except ListenURLError as exc:
            raise ConfigError(f"-listen-{kind}: {exc}") from None
        listeners.append((kind, url))
    servers = []
    for server in s.dns_servers:
        try:
            servers.append(parse_dns_server(server))
        except ValueError as exc:
            raise ConfigError(f"-dns-server '{server}': {exc}") from None
    return Options(dns_servers=tuple(servers), hosts=s.hosts, listeners=tuple(listeners),
                   pcap=s.pcap or None)


def network(s: Settings) -> NetConfig:
    """gvproxy's network: its layout, MACs, one-hour leases, NAT table and no IPv6 (gvproxy
    offers none on its network); names come from its zones, not built-in ones."""
    low, high = pool_bounds(s)
    try:
        return network_layout(
            str(s.subnet), s.gateway_ip.packed, s.host_ip.packed, low.packed, high.packed,
            mtu=s.mtu, domain="", search_domains=tuple(s.search_domains),
            host_names=(), gateway_names=(), vm_names=(),
            gateway_mac=parse_mac(s.gateway_mac), lease_time=3600,
            uuid_macs={uuid: parse_mac(m) for uuid, m in s.uuid_macs.items()},
            blocked=() if s.ec2_metadata_access else (LINK_LOCAL,), ipv6=None,
            nat=tuple((vip.packed, str(host)) for vip, host in s.nat.items()),
            virtual_ips=tuple(v.packed for v in s.virtual_ips),
        )
    except UserError as exc:
        raise ConfigError(str(exc)) from None


def run_options(s: Settings) -> tuple[NetConfig, Options]:
    """gvproxy's settings mapped straight onto the Service's NetConfig and Options."""
    options = service_options(s)
    return network(s), options


class Gvproxy:
    def __init__(self, s: Settings) -> None:
        self.s = s
        self.service = Service(*run_options(s))
        stack = self.service.stack
        low, high = pool_bounds(s)
        for ip, mac in s.static_leases.items():
            if not low <= ipaddress.IPv4Address(ip) <= high:
                raise ConfigError(f"static lease {ip} for {mac}: outside the VM range {low}-{high}")
            try:
                address = ipaddress.IPv4Address(ip).packed
                stack.pool.allocate(mac_key(parse_mac(mac)), address, strict=True)
            except PoolError as exc:
                raise ConfigError(f"static lease {ip} for {mac}: {exc}") from None
        for zone in s.zones:
            stack.dns.names.zones.add(zone)
        self.notifier = Notifier(s.notification) if s.notification else None
        self.fronts: list[Front] = []
        self.ssh: list[SshSocketForward] = []
        self.runner: Any = None  # the aiohttp AppRunner behind every API endpoint
        self.gateway_api: Any = None
        self.tmp: str | None = None  # holds the gateway:80 API socket
        self.failed = False

    async def started(self) -> None:
        """Links are up: forwards, API endpoints, notifications, SSH forwards."""
        try:
            await self._start_extras()
        except (ForwardError, OSError, ValueError) as exc:
            log.error("%s", getattr(exc, "strerror", None) or exc)
            self.failed = True
            self.service.stop()

    async def _start_extras(self) -> None:
        from aiohttp import web

        from pyvpnkit.api import server as api

        service, s = self.service, self.s
        assert service.engine is not None and service.extras is not None
        engine, forwarder = service.engine, service.extras.forwarder
        if self.notifier is not None:
            engine.frame_taps.append(self.notifier.frame_tap)
            engine.close_taps.append(self.notifier.link_closed)
        for local, remote in s.forwards.items():
            protocol, local = ("udp", local[4:]) if local.startswith("udp:") else ("tcp", local)
            forwarder.expose(local, remote, protocol)
        counter = api.FrameCounter()
        engine.frame_taps.append(counter.tap)

        def gvproxy_stats() -> dict[str, Any]:
            stats = service.stack.stats
            return {"BytesSent": counter.bytes_out, "BytesReceived": stats.get("bytes_in", 0),
                    "platform": capabilities().as_dict()}

        app = api.make_app(forwarder, service.stack, counter=counter, extra_stats=gvproxy_stats)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        hijacks = {"/tunnel": self._tunnel}
        for url in s.listen:
            await self._front(url, self.runner.server, {**hijacks, "/connect": self._connect})
        if s.services:
            await self._front(s.services, self.runner.server, hijacks)
        await self._gateway_api(forwarder)
        if self.notifier is not None:
            self.notifier.send(READY)
        guest = f"{s.device_ip}:22"
        for spec in s.ssh_forwards:
            fwd = SshSocketForward(spec, forwarder, guest)
            await fwd.start()
            self.ssh.append(fwd)

    async def _front(self, url: str, http: Any, hijacks: dict[str, Any]) -> None:
        front = Front(url, http, hijacks)
        try:
            await front.start()
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "strerror", None) or exc
            raise OSError(f"cannot listen on {url}: {reason}") from None
        self.fronts.append(front)

    async def _gateway_api(self, forwarder: Any) -> None:
        """gvproxy serves /services/forwarder/* on gateway:80 to the VMs: a redirect to a socket."""
        from aiohttp import web

        from pyvpnkit.api import server as api

        app = web.Application(client_max_size=api.MAX_BODY)
        app[api.FORWARDER] = forwarder
        app.router.add_post("/services/forwarder/expose", api.expose)
        app.router.add_post("/services/forwarder/unexpose", api.unexpose)
        app.router.add_get("/services/forwarder/all", api.forwards)
        self.tmp = tempfile.mkdtemp(prefix="pyvpnkit-gvproxy-")
        path = f"{self.tmp}/gateway-api.sock"
        self.gateway_api = await api.start_api(f"unix://{path}", app)
        gateway = ipaddress.IPv4Network(f"{self.s.gateway_ip}/32")
        tcp = self.service.stack.tcp
        tcp.redirects = (*tcp.redirects, Redirect(gateway, 80, path))

    # -- hijacked routes -----------------------------------------------------------

    def _tunnel(self, transport: asyncio.Transport, query: dict[str, str], early: bytes) -> None:
        """/tunnel?ip=&port=: `OK`, then the connection is a TCP stream to ip:port in a VM."""
        ip, port = query.get("ip", ""), query.get("port", "")
        if not ip:
            transport.write(http_error(500, "ip is mandatory"))
            transport.close()
            return
        assert self.service.extras is not None
        try:
            remote = f"{ipaddress.IPv4Address(ip)}:{int(port)}"
        except ValueError as exc:
            transport.write(http_error(500, str(exc)))
            transport.close()
            return
        sock = detach_socket(transport)
        sock.sendall(b"OK")  # as gvproxy: before dialling; a failed dial just closes
        try:
            self.service.extras.forwarder.connect(sock, remote, early)
        except ForwardError as exc:
            log.error("/tunnel %s: %s", remote, exc)
            sock.close()

    def _connect(self, transport: asyncio.Transport, query: dict[str, str], early: bytes) -> None:
        """/connect: the connection becomes a VM link with the framing of the VM listener."""
        engine = self.service.engine
        assert engine is not None
        framing = QEMU if self.s.protocol == "qemu" else U16LE
        link = StreamLink(engine, self.s.mtu, f"connect:{transport.get_extra_info('peername')}",
                          framing)
        transport.set_protocol(link)
        link.connection_made(transport)
        if early:
            link.data_received(early)
        transport.resume_reading()

    # -- running -------------------------------------------------------------------

    def _write_pid_file(self) -> None:
        """As gvproxy, at start and without a newline: podman reads it with strconv.Atoi."""
        try:
            with open(self.s.pid_file, "w") as f:
                f.write(str(os.getpid()))
        except OSError as exc:
            reason = exc.strerror
            raise ConfigError(f"failed to create pidfile {self.s.pid_file}: {reason}") from None

    async def run(self) -> int:
        if self.s.pid_file:
            self._write_pid_file()
        try:
            return await self._serve()
        finally:
            if self.s.pid_file:
                with contextlib.suppress(OSError):
                    os.unlink(self.s.pid_file)

    async def _serve(self) -> int:
        code = await self.service.run_forever(None, None, on_started=self.started)
        if code != 0 and not self.failed and self.notifier is not None:
            self.notifier.send(HYPERVISOR_ERROR)
        for fwd in self.ssh:
            await fwd.close()
        for front in self.fronts:
            front.close()
        if self.gateway_api is not None:
            await self.gateway_api.close()
        if self.runner is not None:
            await self.runner.cleanup()
        if self.notifier is not None:
            await self.notifier.flush()
            self.notifier.close()
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
        return 1 if code != 0 or self.failed else 0


__all__ = ["Gvproxy", "pool_bounds", "run_options"]
