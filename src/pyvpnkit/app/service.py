"""Assembles a running pyvpnkit: stack, engine, host executors, links, signals.

Whatever the user can get wrong (files, namespaces, TAP devices, sockets) is
opened before the stack starts and reported as a UserError: one line, exit 125.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from pyvpnkit.app.extras import ServiceExtras, start_service_extras
from pyvpnkit.app.options import (
    DEFAULTS,
    Options,
    load_proxy_config,
    proxy_config,
    stack_settings,
)
from pyvpnkit.app.vpnkit_files import load_vpnkit_files
from pyvpnkit.core.conditions import ConditionError
from pyvpnkit.core.config import NetConfig
from pyvpnkit.core.dns.upstreams import HostUpstreams
from pyvpnkit.core.switch.ippool import mac_key
from pyvpnkit.core.switch.stack import Stack
from pyvpnkit.errors import SETUP_FAILED, UserError
from pyvpnkit.runtime.capabilities import capabilities, require_namespaces, require_tap
from pyvpnkit.runtime.childwatch import watch_exit
from pyvpnkit.runtime.conditions_file import load_conditions, watch_conditions
from pyvpnkit.runtime.dns_upstream import DnsUpstream, HostsFileWatcher, secure_query_id
from pyvpnkit.runtime.engine import Engine
from pyvpnkit.runtime.executor import Executor
from pyvpnkit.runtime.filewatch import read_text
from pyvpnkit.runtime.host_icmp import HostIcmp
from pyvpnkit.runtime.host_resolver import HostResolver
from pyvpnkit.runtime.host_tcp import HostTcp
from pyvpnkit.runtime.host_udp import HostUdp
from pyvpnkit.runtime.hostwatch import HostWatch, RouteErrors
from pyvpnkit.runtime.http_proxy import HttpProxy, watch_proxy_config
from pyvpnkit.runtime.limits import DescriptorBudget, Throttle, raise_nofile_limit
from pyvpnkit.runtime.nsdiag import SetupError
from pyvpnkit.runtime.pcap import PcapListener, PcapWriter

if TYPE_CHECKING:  # Linux-only modules are imported where they are used (macOS has none)
    from pyvpnkit.runtime.netns import Attached, IfaceSetup

log = logging.getLogger("pyvpnkit")

RESOLV_CONF = "/etc/resolv.conf"  # followed while we run unless --dns-server is given
# After a second SIGTERM/SIGINT, exec's command gets this long to exit before SIGKILL.
KILL_GRACE = 2.0


def _remove_file_and_dir(path: str) -> None:
    try:
        os.unlink(path)
        os.rmdir(os.path.dirname(path))
    except OSError:
        pass  # gone already, or the directory holds other files: keep it


def _remove_when_we_exit(path: str) -> None:
    """A root child that removes ``path`` once we are gone, however we go.

    We remove it ourselves at a clean exit, but not after --runas dropped root
    (/etc/netns is root's) nor after SIGKILL. The child holds only the read end
    of a pipe whose write end dies with us; it ignores the signals a terminal or
    a launcher sends to the process group, so it outlives us by a moment only.
    """
    read_end, write_end = os.pipe()
    if os.fork() == 0:  # pragma: no cover - runs in the child
        try:
            os.close(write_end)
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_IGN)
            os.read(read_end, 1)
            _remove_file_and_dir(path)
        finally:
            os._exit(0)
    os.close(read_end)  # write_end stays open, not inherited, until we exit


def _log_capabilities() -> None:
    missing = capabilities().missing()
    if missing:
        log.info("this host lacks: %s (see pyvpnkit --version)", ", ".join(missing))


class Service:
    """One running stack: built from a NetConfig and Options, served until stopped."""

    def __init__(self, config: NetConfig, options: Options) -> None:
        self.config = config
        self.options = opts = options
        ours = [config.gateway_ip, config.dns_ip]
        if config.ipv6 is not None:
            ours.append(config.ipv6.dns_ip)
        self.host_upstreams = HostUpstreams(exclude=ours)
        if opts.dns_servers:
            self.host_upstreams.servers = list(opts.dns_servers)  # never overridden
        else:
            self.host_upstreams.update(read_text(RESOLV_CONF), time.monotonic())
        upstreams = self.host_upstreams.servers
        self.dns_mode = opts.dns_mode
        if not upstreams and self.dns_mode == "host":
            log.warning("no upstream DNS servers: types other than A, AAAA and PTR get SERVFAIL")
        elif not upstreams:
            log.warning("no upstream DNS servers: only built-in names and %s answer", opts.hosts)
        self.upstreams = upstreams
        self.hosts_path: str = opts.hosts
        self.stack = Stack(
            config,
            stack_settings(opts),
            dns_upstreams=list(upstreams),
            hosts_text=read_text(opts.hosts) or "",
            dns_query_id=secure_query_id,
        )
        self.proxy_config = load_proxy_config(opts)  # a bad --http file stops us here
        # the files reloaded on change: --gateway-forwards, --dhcp-path, --http, --conditions
        self.watched = load_vpnkit_files(self.stack, opts)
        self.stack.conditions.queue_limit = opts.conditions_queue_bytes
        if opts.conditions:
            try:
                load_conditions(opts.conditions, self.stack.conditions)
            except OSError as exc:
                raise UserError(f"--conditions {opts.conditions}: {exc.strerror}",
                                SETUP_FAILED) from None
            except ConditionError as exc:
                raise UserError(f"--conditions {opts.conditions}: {exc}") from None
        self.engine: Engine | None = None
        self.extras: ServiceExtras | None = None
        self._stop: asyncio.Event | None = None
        self._netns_resolv: str | None = None  # run --netns NAME: /etc/netns/NAME/resolv.conf
        self._killed = False  # exec's command ignored two signals and got SIGKILL
        self.pcap: PcapWriter | None = None
        if opts.pcap:
            try:
                self.pcap = PcapWriter(opts.pcap, opts.pcap_snaplen)
            except OSError as exc:
                raise UserError(f"--pcap {opts.pcap}: {exc.strerror}", SETUP_FAILED) from None

    def resolv_conf_text(self) -> str:
        """/etc/resolv.conf inside an exec namespace: the stack answers DNS."""
        cfg = self.config
        search = cfg.search_domains or tuple(d for d in (cfg.domain,) if d != "localdomain")
        text = f"nameserver {socket.inet_ntoa(cfg.dns_ip)}\n"
        if cfg.ipv6 is not None and cfg.serve_dns:
            text += f"nameserver {ipaddress.IPv6Address(cfg.ipv6.dns_ip)}\n"
        return text + (f"search {' '.join(search)}\n" if search else "")

    def iface_setup(self, resolv_conf: str | None = None) -> IfaceSetup:
        from pyvpnkit.runtime.netns import IfaceSetup

        cfg, opts = self.config, self.options
        return IfaceSetup(
            ifname=opts.ifname,
            config_net=opts.config_net,
            address=socket.inet_ntoa(cfg.lowest_ip),
            prefixlen=cfg.prefixlen,
            gateway=socket.inet_ntoa(cfg.gateway_ip),
            mtu=cfg.mtu,
            resolv_conf=resolv_conf,
            ipv6=cfg.ipv6 is not None,
            ipv6_address=str(ipaddress.IPv6Address(cfg.ipv6.lowest_ip)) if cfg.ipv6 else "",
        )

    # -- assembly ------------------------------------------------------------

    def _start(self) -> Engine:
        if sys.platform.startswith("linux"):
            from pyvpnkit.runtime import sysns

            sysns.tune_malloc()
        loop = asyncio.get_running_loop()
        self._contain_callback_errors(loop)
        self.budget = DescriptorBudget.from_limit(raise_nofile_limit(), loop.time)
        log.info("host sockets for flows: at most %d", self.budget.capacity)
        engine = Engine(self.stack, loop)
        routes = RouteErrors()
        # The host executors: the engine routes each effect to one of them by type.
        keepalive = self.options.tcp_keepalive
        self.tcp = HostTcp(loop, self.stack.tcp, engine.wake, self.options.connect_timeout,
                           settle=engine.settle, budget=self.budget, outbound=self.options.outbound,
                           keepalive=None if keepalive == DEFAULTS.tcp_keepalive else keepalive,
                           route_errors=routes)
        self.http_proxy = HttpProxy(loop, self.stack, engine.wake, engine.settle, self.proxy_config)
        executors: list[Executor] = [
            self.tcp,
            # A datagram read from the host is answered in the same loop iteration.
            HostUdp(loop, self.stack.udp, engine.settle, budget=self.budget,
                    outbound=self.options.outbound, route_errors=routes),
            HostIcmp(loop, self.stack.icmp, engine.wake, budget=self.budget, route_errors=routes),
            DnsUpstream(loop, self.stack.dns, engine.settle),
            self.http_proxy,
        ]
        options = self.options
        if options.http is not None:  # reload --http when it changes
            self.watched.append(watch_proxy_config(
                options.http, lambda text: proxy_config(options, text), self.http_proxy.set_config
            ))
        if options.conditions:
            self.watched.append(watch_conditions(options.conditions, self.stack.conditions))
        for polled in self.watched:
            polled.start(loop)
        if self.dns_mode == "host":
            executors.append(HostResolver(loop, self.stack.dns, engine.wake))
        for executor in executors:
            engine.add_executor(executor)
        self._hosts = HostsFileWatcher(self.hosts_path, self.stack.dns.load_hosts)
        self.host_watch = HostWatch(self.stack.dns, self.host_upstreams,
                                    None if self.options.dns_servers else RESOLV_CONF,
                                    self.tcp, routes)
        self.host_watch.start(loop)
        self._bugs_reported = 0
        self._exhausted_reported = 0
        self._watch_hosts()
        self.engine = engine
        if self.pcap is not None:
            engine.frame_taps.append(self.pcap.tap)
        self.pcap_listeners: list[PcapListener] = []
        for path in self.options.pcap_listen:
            self.pcap_listeners.append(PcapListener(path, self.options.pcap_snaplen))
            engine.frame_taps.append(self.pcap_listeners[-1].tap)
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
            "platform": capabilities().as_dict(),
            "limits": {
                "descriptors": self.budget.describe(),
                "errors_contained": {**self.engine.stats, "callback": self.callback_errors},
                "link_send_dropped": sum(link.dropped for link in links),
                "tcp_connecting": self.stack.tcp.pending_connects,
                "dhcp_no_address": self.stack.dhcp.stats["no_address"],
            },
            "host_network": {**self.host_watch.stats(),
                             "arp_probes_defended": self.stack.arp.defended},
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
        from pyvpnkit.links.tap import TapLink

        assert self.engine is not None
        link = TapLink(attached.tap_fd, self.engine, self.config.mtu, name=name, vnet_hdr=True)
        ip = self.stack.pool.allocate(mac_key(attached.mac), self.config.lowest_ip)
        link_id = self.engine.link_id(link)
        if link_id is not None:
            self.stack.add_vm(link_id, attached.mac, ip)
            if self.options.guest_ip:
                self.stack.add_vm(link_id, attached.mac, self.options.guest_ip)
            if self.stack.v6 is not None and self.options.config_net:
                assert self.config.ipv6 is not None
                self.stack.v6.add_vm(attached.mac, self.config.ipv6.lowest_ip)

    def _shutdown(self) -> None:
        if getattr(self, "_hosts_timer", None) is not None:
            self._hosts_timer.cancel()
        if getattr(self, "host_watch", None) is not None:
            self.host_watch.close()
        if self.engine is not None:
            self.engine.close()
        for polled in self.watched:
            polled.close()
        if self.pcap is not None:
            self.pcap.close()
        for listener in getattr(self, "pcap_listeners", ()):
            listener.close()

    # -- what the user names: checked before anything runs -------------------

    def attach_netns(self, name: str) -> Attached:
        """run --netns: wire a TAP into an existing namespace, and give it our resolv.conf.

        A named namespace (`ip netns add NAME`) gets /etc/netns/NAME/resolv.conf,
        which `ip netns exec` shows as /etc/resolv.conf, unless one is there
        already; we remove ours at exit. A namespace given by path is left alone.
        """
        require_namespaces("--netns")
        from pyvpnkit.runtime.netns import attach

        try:
            attached = attach(name, self.iface_setup())
        except SetupError as exc:
            raise UserError(f"--netns {name}: {exc}", SETUP_FAILED) from None
        if "/" not in name:
            resolv = f"/etc/netns/{name}/resolv.conf"
            try:
                os.makedirs(os.path.dirname(resolv), exist_ok=True)
                with open(resolv, "x") as f:
                    f.write(self.resolv_conf_text())
                self._netns_resolv = resolv
                _remove_when_we_exit(resolv)
            except FileExistsError:
                log.warning("%s exists: leaving it as it is", resolv)
            except OSError as exc:
                log.warning("cannot write %s: %s", resolv, exc.strerror)
        return attached

    def remove_netns_resolv_conf(self) -> None:
        if self._netns_resolv is not None:
            _remove_file_and_dir(self._netns_resolv)
            self._netns_resolv = None

    def open_existing_tap(self, name: str) -> int:
        """run --tap: serve a TAP that exists; never create one (that would serve nothing).
        Of a multi-queue TAP this process serves one queue (bench/multiqueue.py)."""
        require_tap("--tap")
        from pyvpnkit.links.tapdev import attach_tap, tap_error

        try:
            socket.if_nametoindex(name)
        except OSError:
            raise UserError(f"--tap {name}: no such interface (create it first: "
                            f"ip tuntap add {name} mode tap)", SETUP_FAILED) from None
        try:
            return attach_tap(name)
        except OSError as exc:
            raise UserError(f"--tap {name}: {tap_error(name, exc)}", SETUP_FAILED) from None

    def _announce_ready(self) -> None:
        """--pid-file and --ready-fd: tell a launcher we serve."""
        pid_file = self.options.pid_file
        if pid_file:
            try:
                with open(pid_file, "w") as f:
                    f.write(f"{os.getpid()}\n")
            except OSError as exc:
                log.error("--pid-file %s: %s", pid_file, exc.strerror)
        ready_fd = self.options.ready_fd
        if ready_fd is not None:
            try:
                os.write(ready_fd, b"ready\n")
                os.close(ready_fd)
            except OSError as exc:
                log.error("--ready-fd %d: %s", ready_fd, exc.strerror)

    def _remove_pid_file(self) -> None:
        """Remove the pid file only if it is still a regular file holding our pid."""
        pid_file = self.options.pid_file
        if not pid_file or not os.path.isfile(pid_file):
            return
        try:
            with open(pid_file) as f:
                if f.read().strip() == str(os.getpid()):
                    os.unlink(pid_file)
        except OSError:
            pass

    # -- running ----------------------------------------------------------------

    async def run_exec(self, attached: Attached) -> int:
        self._start()
        self.extras = await self._start_extras()
        if self.extras.error:
            # Like `docker run -p` on a taken port: the command never starts.
            if attached.control is not None:
                attached.control.close()  # the child sees EOF and exits
            os.waitpid(attached.pid, 0)
            os.close(attached.tap_fd)
            self._shutdown()
            return SETUP_FAILED
        loop = asyncio.get_running_loop()
        self._attach_tap(attached, f"netns:{self.options.ifname}")
        exited = asyncio.Event()
        stop_watching = watch_exit(loop, attached.pid, exited.set)
        self._forward_signals(loop, attached.pid)
        attached.release()
        self._announce_ready()
        await exited.wait()
        stop_watching()
        _pid, status = os.waitpid(attached.pid, 0)
        from pyvpnkit.runtime.netns import stop_leftovers

        if attached.netns_ino and stop_leftovers(
            attached.netns_ino, signal.SIGKILL if self._killed else signal.SIGTERM
        ):
            log.info("stopped processes the command left in its namespace")
        if self.extras is not None:
            await self.extras.aclose()
        self._shutdown()
        self._remove_pid_file()
        code = os.waitstatus_to_exitcode(status)
        return code if code >= 0 else 128 - code  # killed by a signal: shell convention

    async def _start_extras(self) -> ServiceExtras:
        assert self.engine is not None
        return await start_service_extras(
            self.engine, self.stack, self.tcp, self.options, self.stop, self.extra_stats,
            self.http_proxy, self.budget,
        )

    def stop(self) -> None:
        """End run_forever (as SIGTERM does)."""
        if self._stop is not None:
            self._stop.set()

    def _forward_signals(self, loop: asyncio.AbstractEventLoop, pid: int) -> None:
        """exec's signals, as `unshare --kill-child` and container runtimes treat them.

        SIGTERM is passed on to the command. SIGINT is not: Ctrl-C reaches the
        command from the terminal, and we wait for it as `time` does. A second
        SIGTERM or SIGINT means "stop now": if the command has not exited
        KILL_GRACE seconds later, it gets SIGKILL (and so do its leftovers).
        """
        received: list[int] = []

        def kill() -> None:
            self._killed = True
            log.warning("the command ignored the signals; sending SIGKILL")
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        def on_signal(sig: int) -> None:
            received.append(sig)
            if sig == signal.SIGTERM and len(received) == 1:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            elif len(received) == 2:
                loop.call_later(KILL_GRACE, kill)

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)

    async def run_forever(
        self,
        attached: Attached | None,
        tap_fd: int | None,
        on_started: Callable[[], Awaitable[None]] | None = None,
    ) -> int:
        """Serve until stopped; ``on_started`` runs once links and listeners are up."""
        engine = self._start()
        self.extras = await self._start_extras()
        if attached is not None:
            self._attach_tap(attached, f"netns:{self.options.netns}")
        if tap_fd is not None:
            from pyvpnkit.links.tap import TapLink

            TapLink(tap_fd, engine, self.config.mtu, name=f"tap:{self.options.tap}", vnet_hdr=True)
        from pyvpnkit.links.listeners import start_listener

        listeners = []
        failed = self.extras.error is not None
        for kind, url in self.options.listeners:
            try:
                listeners.append(await start_listener(kind, url, engine, self.config.mtu))
            except (OSError, ValueError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                log.error("cannot listen on --listen-%s %s: %s", kind, url, reason)
                failed = True
                break
            log.info("listening for %s VMs on %s", kind, url)
        assert self._stop is not None
        if self.options.runas and not failed:
            from pyvpnkit.runtime.privileges import RunAsError, drop_to

            try:
                drop_to(self.options.runas)
            except (RunAsError, OSError) as exc:
                log.error("cannot switch user: %s", exc)
                failed = True
        stop = self._stop
        for listener in listeners:
            if listener.kind == "stdio":
                # The parent holds the VM end: its pipes closing ends the service, as in gvproxy.
                self._stdio_done = asyncio.ensure_future(listener.wait_closed())  # type: ignore[attr-defined]
                self._stdio_done.add_done_callback(lambda _f: stop.set())
        if not failed:
            if on_started is not None:
                await on_started()
            log.info("pyvpnkit running")
            self._announce_ready()
            asyncio.get_running_loop().call_soon(_log_capabilities)  # probed once, once serving
            await stop.wait()
        for listener in listeners:
            listener.close()
        if self.extras is not None:
            await self.extras.aclose()
        self._shutdown()
        self._remove_pid_file()
        return SETUP_FAILED if failed else 0
