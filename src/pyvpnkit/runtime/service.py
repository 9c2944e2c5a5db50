"""Assembles a running pyvpnkit: stack, engine, host executors, links, signals."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket

from pyvpnkit.api.commands import ServiceExtras, start_service_extras
from pyvpnkit.cli import listener_specs, load_redirects
from pyvpnkit.core.config import NetConfig
from pyvpnkit.core.dns.forwarder import UpstreamQuery
from pyvpnkit.core.dns.hostmode import HostResolve
from pyvpnkit.core.icmp_nat import IcmpClose, IcmpEchoSend
from pyvpnkit.core.stack import Stack
from pyvpnkit.core.udp_nat import UdpClose, UdpOpen, UdpSend
from pyvpnkit.links.tap import TapLink
from pyvpnkit.runtime import sysns
from pyvpnkit.runtime.dns_upstream import DnsUpstream, HostsFileWatcher, secure_query_id
from pyvpnkit.runtime.engine import Engine
from pyvpnkit.runtime.host_icmp import HostIcmp
from pyvpnkit.runtime.host_resolver import HostResolver
from pyvpnkit.runtime.host_udp import HostUdp
from pyvpnkit.runtime.limits import DescriptorBudget, Throttle, raise_nofile_limit
from pyvpnkit.runtime.netns import Attached, IfaceSetup, stop_leftovers
from pyvpnkit.runtime.pcap import PcapWriter
from pyvpnkit.runtime.resolvconf import parse_resolv_conf
from pyvpnkit.runtime.tap import open_tap

log = logging.getLogger("pyvpnkit")


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


class Service:
    def __init__(self, config: NetConfig, args: argparse.Namespace) -> None:
        self.config = config
        self.args = args
        upstreams: list[tuple[str, int]] = list(args.dns_server)
        if not upstreams:
            upstreams, _search = parse_resolv_conf(_read("/etc/resolv.conf"))
            upstreams = [u for u in upstreams if u[0] != socket.inet_ntoa(config.gateway_ip)]
        self.dns_mode: str = getattr(args, "dns_mode", "forward")
        if not upstreams and self.dns_mode == "host":
            log.warning("no upstream DNS servers: types other than A, AAAA and PTR get SERVFAIL")
        elif not upstreams:
            log.warning("no upstream DNS servers: only built-in names and %s answer", args.hosts)
        self.upstreams = upstreams
        self.hosts_path: str = args.hosts
        self.stack = Stack(
            config,
            dns_upstreams=upstreams,
            hosts_text=_read(args.hosts),
            dns_query_id=secure_query_id,
            tcp_redirects=load_redirects(getattr(args, "forwards", None)),
            # TAP links hand TCP to the kernel with partial checksums and as
            # GSO super-segments; hypervisor links need both done by us.
            tcp_checksums=bool(listener_specs(args)),
            tcp_gso=not listener_specs(args),
            verify_checksums=args.verify_checksums,
            tcp_keepalive=args.tcp_keepalive or None,
            udp_idle_timeout=args.udp_idle_timeout,
            udp_max_flows=args.udp_max_flows,
            dns_mode=self.dns_mode,
            dns_timeout=args.dns_timeout,
            max_pending_connects=args.max_pending_connects,
        )
        self.engine: Engine | None = None
        self.extras: ServiceExtras | None = None
        self._stop: asyncio.Event | None = None
        self._runas_failed = False

    def resolv_conf_text(self) -> str:
        """/etc/resolv.conf inside an exec namespace: the gateway answers DNS."""
        cfg = self.config
        search = cfg.search_domains or tuple(d for d in (cfg.domain,) if d != "localdomain")
        text = f"nameserver {socket.inet_ntoa(cfg.gateway_ip)}\n"
        return text + (f"search {' '.join(search)}\n" if search else "")

    def iface_setup(self, args: argparse.Namespace, resolv_conf: str | None = None) -> IfaceSetup:
        cfg = self.config
        return IfaceSetup(
            ifname=args.ifname,
            config_net=not args.no_config_net,
            address=socket.inet_ntoa(cfg.lowest_ip),
            prefixlen=cfg.prefixlen,
            gateway=socket.inet_ntoa(cfg.gateway_ip),
            mtu=cfg.mtu,
            resolv_conf=resolv_conf,
        )

    # -- assembly ------------------------------------------------------------

    def _start(self) -> Engine:
        sysns.tune_malloc()
        loop = asyncio.get_running_loop()
        self._contain_callback_errors(loop)
        self.budget = DescriptorBudget.from_limit(raise_nofile_limit(), loop.time)
        log.info("host sockets for flows: at most %d", self.budget.capacity)
        engine = Engine(
            self.stack, loop, connect_timeout=self.args.connect_timeout, budget=self.budget
        )
        self.udp = HostUdp(loop, self.stack.udp, engine.wake, budget=self.budget)
        self.icmp = HostIcmp(loop, self.stack.icmp, engine.wake, budget=self.budget)
        self.dns = DnsUpstream(loop, self.stack.dns, engine.wake)
        engine.add_executor(
            {t: self.udp.execute for t in (UdpOpen, UdpSend, UdpClose)}, self.udp.fail
        )
        engine.add_executor({t: self.icmp.execute for t in (IcmpEchoSend, IcmpClose)})
        engine.add_executor({UpstreamQuery: self.dns.perform})  # type: ignore[dict-item]
        if self.dns_mode == "host":
            self.host_dns = HostResolver(loop, self.stack.dns, engine.wake)
            engine.add_executor({HostResolve: self.host_dns.perform})  # type: ignore[dict-item]
        self._hosts = HostsFileWatcher(self.hosts_path, self.stack.dns.load_hosts)
        self._bugs_reported = 0
        self._exhausted_reported = 0
        self._watch_hosts()
        self.engine = engine
        self.pcap: PcapWriter | None = None
        if getattr(self.args, "pcap", None):
            self.pcap = PcapWriter(self.args.pcap, self.args.pcap_snaplen)
            engine.frame_taps.append(self.pcap.tap)
        self._stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stop.set)
        return engine

    def _contain_callback_errors(self, loop: asyncio.AbstractEventLoop) -> None:
        """Last line of defence: an error escaping a socket callback is one counted line."""
        self.callback_errors = 0
        throttle = Throttle(loop.time)

        def handler(_loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
            self.callback_errors += 1
            exc = context.get("exception")
            log.debug("callback error: %s", context.get("message"), exc_info=exc)  # type: ignore[arg-type]
            count = throttle.event()
            if count:
                log.error("%d callback error(s) contained; last: %s", count,
                          repr(exc) if exc is not None else context.get("message"))

        loop.set_exception_handler(handler)

    def extra_stats(self) -> dict[str, object]:
        """Limits for /stats: descriptors, contained errors, link drops, pending connects."""
        assert self.engine is not None
        links = self.engine.links.values()
        return {
            "limits": {
                "descriptors": self.budget.describe(),
                "errors_contained": {**self.engine.stats, "callback": self.callback_errors},
                "link_send_dropped": sum(link.dropped for link in links),
                "tcp_connecting": self.stack.tcp.pending_connects,
                "dhcp_no_address": self.stack.dhcp.stats["no_address"],
            }
        }

    def _watch_hosts(self) -> None:
        """Every 2 s: reload the hosts file if it changed, report stack bugs."""
        loop = asyncio.get_running_loop()
        self._hosts.check(loop.time())
        bugs = self.stack.stats["drop_internal_error"]
        if bugs > self._bugs_reported:
            log.error("%d frame(s) dropped by internal errors; last: %s",
                      bugs - self._bugs_reported, self.stack.last_error)
            self._bugs_reported = bugs
        exhausted = self.stack.dhcp.stats["no_address"]
        if exhausted > self._exhausted_reported:
            log.warning("DHCP: no free address for %d request(s); pool %s..%s is full",
                        exhausted - self._exhausted_reported,
                        socket.inet_ntoa(self.config.lowest_ip),
                        socket.inet_ntoa(self.config.highest_ip))
            self._exhausted_reported = exhausted
        self._hosts_timer = loop.call_later(2.0, self._watch_hosts)

    def _attach_tap(self, attached: Attached, name: str) -> None:
        """Serve a namespace's TAP; its interface has the first address: reserve it."""
        assert self.engine is not None
        link = TapLink(attached.tap_fd, self.engine, self.config.mtu, name=name, vnet_hdr=True)
        ip = self.stack.pool.allocate("mac:" + attached.mac.hex(":"), self.config.lowest_ip)
        link_id = self.engine.link_id(link)
        if link_id is not None:
            self.stack.add_vm(link_id, attached.mac, ip)

    def _shutdown(self) -> None:
        if getattr(self, "_hosts_timer", None) is not None:
            self._hosts_timer.cancel()
        if self.engine is not None:
            self.engine.close()
        for part in ("udp", "icmp", "dns", "host_dns", "pcap"):
            obj = getattr(self, part, None)
            if obj is not None:
                obj.close()

    async def run_exec(self, attached: Attached) -> int:
        self._start()
        self.extras = await start_service_extras(self)
        if self.extras.error:
            # Like `docker run -p` on a taken port: the command never starts.
            if attached.control is not None:
                attached.control.close()  # the child sees EOF and exits
            os.waitpid(attached.pid, 0)
            os.close(attached.tap_fd)
            self._shutdown()
            return 125
        loop = asyncio.get_running_loop()
        # Ctrl-C reaches the command from the terminal; like `time` or
        # `unshare`, we wait for the command instead of killing it.
        loop.remove_signal_handler(signal.SIGINT)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        self._attach_tap(attached, f"netns:{self.args.ifname}")
        pidfd = os.pidfd_open(attached.pid)
        exited = asyncio.Event()
        loop.add_reader(pidfd, exited.set)
        attached.release()
        assert self._stop is not None
        stop_task = asyncio.ensure_future(self._stop.wait())
        exit_task = asyncio.ensure_future(exited.wait())
        await asyncio.wait({stop_task, exit_task}, return_when=asyncio.FIRST_COMPLETED)
        if not exited.is_set():
            os.kill(attached.pid, signal.SIGTERM)
            await exited.wait()
        stop_task.cancel()
        loop.remove_reader(pidfd)
        os.close(pidfd)
        _pid, status = os.waitpid(attached.pid, 0)
        if attached.netns_ino and stop_leftovers(attached.netns_ino):
            log.info("stopped processes the command left in its namespace")
        if self.extras is not None:
            await self.extras.aclose()
        self._shutdown()
        code = os.waitstatus_to_exitcode(status)
        return code if code >= 0 else 128 - code  # killed by a signal: shell convention

    async def run_forever(self, attached: Attached | None, tap_name: str | None) -> int:
        engine = self._start()
        self.extras = await start_service_extras(self)
        if attached is not None:
            self._attach_tap(attached, f"netns:{self.args.netns}")
        if tap_name:
            TapLink(
                open_tap(tap_name, vnet_hdr=True),
                engine,
                self.config.mtu,
                name=f"tap:{tap_name}",
                vnet_hdr=True,
            )
        from pyvpnkit.links import start_listener

        listeners = []
        try:
            for kind, url in listener_specs(self.args):
                listeners.append(await start_listener(kind, url, engine, self.config.mtu))
                log.info("listening for %s VMs on %s", kind, url)
        except (OSError, ValueError) as exc:
            log.error("cannot listen: %s", exc)
            self._stop.set()
        if self.args.runas and not self._stop.is_set():
            from pyvpnkit.runtime.privileges import RunAsError, drop_to

            try:
                drop_to(self.args.runas)
            except (RunAsError, OSError) as exc:
                log.error("cannot switch user: %s", exc)
                self._stop.set()
                self._runas_failed = True
        stop = self._stop
        for listener in listeners:
            if listener.kind == "stdio":
                # The parent holds the VM end: its pipes closing ends the service, as in gvproxy.
                self._stdio_done = asyncio.ensure_future(listener.wait_closed())  # type: ignore[attr-defined]
                self._stdio_done.add_done_callback(lambda _f: stop.set())
        log.info("pyvpnkit running")
        await self._stop.wait()
        for listener in listeners:
            listener.close()
        if self.extras is not None:
            await self.extras.aclose()
        self._shutdown()
        failed = len(listeners) < len(listener_specs(self.args)) or self._runas_failed
        return 1 if failed else 0
