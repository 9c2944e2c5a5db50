"""The HTTP proxy's I/O: upstream sockets for each proxied VM flow, and the config file.

An Executor (runtime/executor.py). The TCP NAT hands a flow over with
ProxyOpen and then addresses the flow's host-side effects to us under their
own types (ProxyWrite, ProxyShutdown, ProxyClose, pause/resume: see
core/effects.HostSide), and we answer with the NAT's host callbacks
(host_connected, host_data, host_sent, host_eof, host_reset). The decisions
live in core/http_proxy/machine.py; this file connects, resolves, writes and
reads.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import dns.name
import dns.rdataclass
import dns.rdatatype

from pyvpnkit.core.dns.zones import NoSuchName
from pyvpnkit.core.effects import (
    Effect,
    ProxyClose,
    ProxyOpen,
    ProxyPauseReading,
    ProxyResumeReading,
    ProxyShutdown,
    ProxyWrite,
)
from pyvpnkit.core.http_proxy.config import ConfigError, ProxyConfig, config_from_json
from pyvpnkit.core.http_proxy.effects import (
    CloseUpstream,
    Connect,
    EndVm,
    ResetVm,
    Send,
    ShutdownUpstream,
    ToVm,
)
from pyvpnkit.core.nat.routes import host_address, named_address
from pyvpnkit.core.nat.tcp_nat import READ_CHUNK
from pyvpnkit.core.switch.stack import Stack
from pyvpnkit.runtime.filewatch import PolledFile

if TYPE_CHECKING:
    from pyvpnkit.core.http_proxy.machine import ProxyFlow

log = logging.getLogger("pyvpnkit.http_proxy")

CONNECT_TIMEOUT = 10.0  # an unreachable upstream gets its 502 within this
WATCH_INTERVAL = 1.0  # seconds between checks of the --http file
LOWAT_WAIT = 0.002  # a body's bytes wait at most this long for more (see _wake_at)


class _Refused(Exception):
    """A direct connection our routing policy does not allow."""


class _Upstream(asyncio.Protocol):
    def __init__(self, proxy: HttpProxy, flow: _Flow, conn: int) -> None:
        self.proxy = proxy
        self.flow = flow
        self.conn = conn
        self.transport: asyncio.Transport | None = None
        self.lowat = 1  # the socket's SO_RCVLOWAT
        self.last_read = 0.0
        self.lowat_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.proxy._connected(self)

    def data_received(self, data: bytes) -> None:
        self.proxy._feed(self.flow, lambda m: m.upstream_data(self.conn, data))
        self.proxy._wake_at(self)

    def eof_received(self) -> bool:
        self.proxy._feed(self.flow, lambda m: m.upstream_eof(self.conn))
        return True  # keep writing: a tunnel is half-closed

    def connection_lost(self, exc: Exception | None) -> None:
        if self.flow.upstreams.pop(self.conn, None) is self and exc is not None:
            self.proxy._feed(self.flow, lambda m: m.upstream_reset(self.conn))

    def pause_writing(self) -> None:
        self.flow.machine.upstream_blocked(self.conn, True)

    def resume_writing(self) -> None:
        self.proxy._feed(self.flow, lambda m: m.upstream_blocked(self.conn, False))


@dataclass(eq=False)
class _Flow:
    fid: int
    machine: ProxyFlow
    upstreams: dict[int, _Upstream] = field(default_factory=dict)
    paused: bool = False
    routes: int = 0  # machine.routes already copied into the flow log
    closed: bool = False


class HttpProxy:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        stack: Stack,
        wake: Callable[[], None],
        settle: Callable[[], None],
        config: ProxyConfig,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        self.loop = loop
        self.stack = stack
        self.nat = stack.tcp
        self.wake = wake
        self.settle = settle
        self.connect_timeout = connect_timeout
        self.outcomes: Counter[str] = Counter()  # proxied requests, for the metrics
        self.flows: dict[int, _Flow] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.config = config
        self.set_config(config)

    def set_config(self, config: ProxyConfig) -> None:
        """New flows use it; flows already open keep the one they started with."""
        self.config = config
        self.stack.set_http_proxy(config)

    def config_json(self) -> dict[str, Any]:
        return self.config.to_json()

    def set_config_json(self, obj: object) -> None:
        """POST /http_proxy.json: replace the configuration (ConfigError if invalid)."""
        self.set_config(config_from_json(obj))
        log.info("HTTP proxy configuration replaced through the API")

    # -- the Executor contract ---------------------------------------------

    effects = (ProxyOpen, ProxyWrite, ProxyShutdown, ProxyClose, ProxyPauseReading,
               ProxyResumeReading)

    def execute(self, effect: Effect) -> None:
        if isinstance(effect, ProxyOpen):
            self._open(effect)
            return
        flow = self.flows.get(getattr(effect, "flow_id", -1))
        if flow is None:
            return  # forgotten after ResetVm: the NAT's last words for it
        if isinstance(effect, ProxyWrite):
            data = effect.data
            self._feed(flow, lambda m: m.vm_data(data))
        elif isinstance(effect, ProxyShutdown):
            self._feed(flow, lambda m: m.vm_eof())
        elif isinstance(effect, ProxyClose):
            self._forget(flow, effect.reset)
        elif isinstance(effect, ProxyPauseReading):
            self._pause(flow, True)
        elif isinstance(effect, ProxyResumeReading):
            self._pause(flow, False)

    def fail(self, effect: Effect) -> None:
        """An effect for a proxied flow raised: drop its upstreams, reset the VM's side."""
        flow_id = getattr(effect, "flow_id", None)
        if flow_id is None:
            return
        flow = self.flows.get(flow_id)
        if flow is not None:
            self._forget(flow, reset=True)
        self.nat.host_reset(flow_id, self.loop.time())
        self.wake()

    # -- from the NAT --------------------------------------------------------

    def _open(self, eff: ProxyOpen) -> None:
        from pyvpnkit.core.http_proxy.machine import ProxyFlow  # h11: on first use only

        now = self.loop.time()
        machine = ProxyFlow(self.config, self.stack.config, eff.mode, eff.dst, eff.port, now)
        flow = _Flow(eff.flow_id, machine)
        self.flows[eff.flow_id] = flow
        self.nat.host_connected(eff.flow_id, now)
        if machine.deadline is not None:
            self.loop.call_at(machine.deadline, self._feed, flow,
                              lambda m: m.handle_timer(self.loop.time()))
        self.wake()

    def _pause(self, flow: _Flow, paused: bool) -> None:
        flow.paused = paused
        for up in flow.upstreams.values():
            if up.transport is not None and not up.transport.is_closing():
                if paused:
                    up.transport.pause_reading()
                else:
                    up.transport.resume_reading()

    def _forget(self, flow: _Flow, reset: bool) -> None:
        flow.closed = True
        self.flows.pop(flow.fid, None)
        for up in list(flow.upstreams.values()):
            if up.transport is not None:
                if reset:
                    up.transport.abort()
                else:
                    up.transport.close()
        flow.upstreams.clear()

    # -- the machine ---------------------------------------------------------

    def _feed(self, flow: _Flow, event: Callable[[ProxyFlow], None]) -> None:
        """Give the machine an event, then perform what it asks."""
        if flow.closed:
            return
        try:
            event(flow.machine)
        except Exception:  # a bug in the machine: this flow ends, the stack goes on
            log.exception("proxied flow %d: internal error, resetting it", flow.fid)
            flow.machine.effects[:] = [ResetVm()]
        self._perform(flow)
        self.settle()

    def _perform(self, flow: _Flow) -> None:
        machine, nat, fid = flow.machine, self.nat, flow.fid
        while not flow.closed:
            effects, credit = machine.take()
            if not effects and not credit:
                break
            now = self.loop.time()
            if credit:
                nat.host_sent(fid, credit, now)
            for eff in effects:
                if isinstance(eff, ToVm):
                    nat.host_data(fid, eff.data, now)
                elif isinstance(eff, Send):
                    up = flow.upstreams.get(eff.conn)
                    if up is not None and up.transport is not None:
                        up.transport.write(eff.data)
                elif isinstance(eff, Connect):
                    self._connect(flow, eff)
                elif isinstance(eff, CloseUpstream):
                    up = flow.upstreams.pop(eff.conn, None)
                    if up is not None and up.transport is not None:
                        up.transport.close()
                elif isinstance(eff, ShutdownUpstream):
                    up = flow.upstreams.get(eff.conn)
                    if up is not None and up.transport is not None \
                            and up.transport.can_write_eof():
                        up.transport.write_eof()
                elif isinstance(eff, EndVm):
                    nat.host_eof(fid, now)
                elif isinstance(eff, ResetVm):
                    nat.host_reset(fid, now)
                    self._forget(flow, reset=True)  # the NAT sends no ProxyClose after this
        self._note(flow)

    def _note(self, flow: _Flow) -> None:
        machine = flow.machine
        for line in machine.notes:
            log.warning("proxied flow %d to %s:%d: %s",
                        flow.fid, machine.dst_ip, machine.dst_port, line)
        machine.notes.clear()
        if machine.outcomes:
            for outcome in machine.outcomes:
                self.outcomes[outcome] += 1
            machine.outcomes.clear()
        if len(machine.routes) != flow.routes:
            flow.routes = len(machine.routes)
            self.nat.host_route(flow.fid, ", ".join(machine.routes))

    # -- upstream connections ------------------------------------------------

    def _connect(self, flow: _Flow, eff: Connect) -> None:
        task = self.loop.create_task(self._connect_task(flow, eff))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect_task(self, flow: _Flow, eff: Connect) -> None:
        try:
            async with asyncio.timeout(self.connect_timeout):
                host = await self._resolve(eff.host, eff.port, eff.direct)
                await self.loop.create_connection(
                    lambda: _Upstream(self, flow, eff.conn), host, eff.port
                )
        except (OSError, TimeoutError, _Refused, UnicodeError) as exc:
            if eff.conn not in flow.upstreams:
                reason = _reason(exc)
                self._feed(flow, lambda m: m.upstream_failed(eff.conn, reason))

    def _connected(self, up: _Upstream) -> None:
        flow = up.flow
        assert up.transport is not None
        if flow.closed:
            up.transport.abort()
            return
        flow.upstreams[up.conn] = up
        up.transport.set_write_buffer_limits(high=READ_CHUNK)
        if flow.paused:
            up.transport.pause_reading()
        self._feed(flow, lambda m: m.upstream_connected(up.conn))

    def _wake_at(self, up: _Upstream) -> None:
        """In a body of known length, wake up for READ_CHUNK bytes (or the rest), not less.

        A relaying upstream proxy writes in small pieces (tinyproxy: 76 KB a
        read on average); each read costs a trip through the machine, the NAT
        and a short segment to the VM. SO_RCVLOWAT makes the kernel gather
        them. A slow body must not wait for a full chunk: LOWAT_WAIT after
        the last read, the mark drops to 1 and what has come goes on.
        """
        want = min(up.flow.machine.body_left, READ_CHUNK) or 1
        if want > 1:
            up.last_read = self.loop.time()
            if up.lowat_timer is None:
                up.lowat_timer = self.loop.call_at(up.last_read + LOWAT_WAIT,
                                                   self._lowat_check, up)
        self._set_lowat(up, want)

    def _lowat_check(self, up: _Upstream) -> None:
        up.lowat_timer = None
        due = up.last_read + LOWAT_WAIT
        if up.lowat == 1 or up.flow.closed:
            return
        if self.loop.time() < due:
            up.lowat_timer = self.loop.call_at(due, self._lowat_check, up)
        else:
            self._set_lowat(up, 1)

    @staticmethod
    def _set_lowat(up: _Upstream, want: int) -> None:
        if want == up.lowat or up.transport is None or up.transport.is_closing():
            return
        sock = up.transport.get_extra_info("socket")
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, want)
        except OSError:
            return
        up.lowat = want

    async def _resolve(self, host: str, port: int, direct: bool) -> str:
        """An address for ``host``: built-in names and the hosts file first, then the
        host's resolver. A direct connection goes to the first address the NATs'
        policy (core/routes) lets a VM reach, as the NAT would map it; an upstream
        proxy is the user's own configuration, the host's view, so it is not judged
        (a local cntlm or tinyproxy on 127.0.0.1 is the usual setup)."""
        literal = named_address(host)
        candidates = [literal] if literal is not None else \
            self._local_name(host) or await self._host_lookup(host, port)
        if not direct:
            return str(ipaddress.ip_address(candidates[0]))
        for dst in candidates:
            target = host_address(self.stack.config, dst)
            if target is not None:
                return target
        raise _Refused(f"{host} is not reachable from the VMs")

    def _local_name(self, host: str) -> list[bytes]:
        try:
            name = dns.name.from_text(host)
        except (dns.exception.DNSException, UnicodeError):
            return []
        found = self.stack.dns.names.lookup(name, dns.rdatatype.A, dns.rdataclass.IN)
        if isinstance(found, NoSuchName):  # a DNS zone's NXDOMAIN: the VMs' view, ours too
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [ipaddress.IPv4Address(rdata.address).packed
                for rrset in found or () for rdata in rrset]

    async def _host_lookup(self, host: str, port: int) -> list[bytes]:
        """Every address of ``host``, IPv4 first (as the resolver orders them within)."""
        infos = await self.loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        infos.sort(key=lambda info: info[0] != socket.AF_INET)
        if not infos:
            raise OSError(f"{host}: no address")
        return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]).packed for info in infos]

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for flow in list(self.flows.values()):
            self._forget(flow, reset=True)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "connection timed out"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve ({exc.strerror})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def watch_proxy_config(
    path: str, build: Callable[[str], ProxyConfig], apply: Callable[[ProxyConfig], None]
) -> PolledFile:
    """A poll that reloads the --http file when it changes; a bad file keeps the last good
    config (start-up already read and checked it)."""

    def reload(text: str) -> None:
        try:
            if not text and not os.path.isfile(path):
                raise ConfigError("cannot read the file")
            config = build(text)
        except ConfigError as exc:
            log.error("--http %s: %s; keeping the previous configuration", path, exc)
            return
        apply(config)
        log.info("--http %s reloaded", path)

    return PolledFile(path, reload, WATCH_INTERVAL)
