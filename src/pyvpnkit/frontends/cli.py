"""Command line: `pyvpnkit exec -- CMD`, `pyvpnkit run`, and API clients."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence

from pyvpnkit import __version__, build
from pyvpnkit.api.commands import add_service_options, add_subcommands, dispatch
from pyvpnkit.app.options import (
    DEFAULTS,
    MAX_SNAPLEN,
    Options,
    load_redirects,
    parse_dns_server,
    split_names,
)
from pyvpnkit.core.config import MAX_MTU, MIN_MTU, NetConfig, network_layout
from pyvpnkit.core.ip.ipv6_layout import DEFAULT_SUBNET, Ipv6Layout, ipv6_layout
from pyvpnkit.core.tcp.settings import KEEPALIVE
from pyvpnkit.errors import NOT_EXECUTABLE, NOT_FOUND, SETUP_FAILED, UserError
from pyvpnkit.frontends.proxy_options import add_proxy_options, proxy_overrides
from pyvpnkit.frontends.usage import OneLineParser
from pyvpnkit.frontends.vpnkit_options import add_vpnkit_options, vpnkit_overrides
from pyvpnkit.runtime.nsdiag import SetupError

log = logging.getLogger("pyvpnkit")

IPV6_MIN_MTU = 1280  # RFC 8200; below it IPv6 is off
IFNAMSIZ = 16


def _ipv4(text: str) -> bytes:
    try:
        return ipaddress.IPv4Address(text).packed
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _int_in(low: int, high: int, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{what} must be a whole number from {low} to {high}")
        return value

    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError("must be a number of seconds above 0")
    return value


def _keepalive(text: str) -> tuple[float, float, int] | None:
    """IDLE[,INTERVAL,COUNT]: probe after IDLE s, then every INTERVAL s, give up after COUNT."""
    parts = text.split(",")
    try:
        if len(parts) not in (1, 3):
            raise ValueError
        idle = float(parts[0])
        _idle, interval, count = KEEPALIVE  # IDLE alone keeps the default interval and count
        if len(parts) == 3:
            interval, count = float(parts[1]), int(parts[2])
        if idle < 0 or interval <= 0 or count < 1 or idle == float("inf"):
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(
            "use IDLE[,INTERVAL,COUNT]: seconds idle (0: off), seconds between probes (>0), "
            "probes before giving up (>=1)"
        ) from None
    return None if idle == 0 else (idle, interval, count)


def _dns_server(text: str) -> tuple[str, int]:
    try:
        return parse_dns_server(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _ifname(text: str) -> str:
    """A name the kernel accepts for a new interface (dev_valid_name), other than lo."""
    if not text or text in (".", "..") or len(text.encode()) >= IFNAMSIZ:
        raise argparse.ArgumentTypeError("an interface name has 1 to 15 characters")
    if "/" in text or ":" in text or any(c.isspace() for c in text):
        raise argparse.ArgumentTypeError("an interface name has no '/', ':' or whitespace")
    if text == "lo":
        raise argparse.ArgumentTypeError("lo is the namespace's loopback")
    return text


def add_network_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("virtual network")
    g.add_argument("--subnet", default="192.168.65.0/24", metavar="CIDR",
                   help="IPv4 VM subnet, /29 or larger (default %(default)s)")
    g.add_argument("--gateway-ip", type=_ipv4, metavar="IP",
                   help="gateway address: ARP, DHCP, DNS, ping (default: subnet .1)")
    g.add_argument("--host-ip", type=_ipv4, metavar="IP",
                   help="host-loopback alias, reaches the host's 127.0.0.1 (default: subnet .2)")
    g.add_argument("--lowest-ip", type=_ipv4, metavar="IP",
                   help="first VM address; exec's namespace gets it (default: subnet .3)")
    g.add_argument("--highest-ip", type=_ipv4, metavar="IP",
                   help="last VM address (default: the subnet's last host); the pool "
                   "--lowest-ip..--highest-ip must not hold the gateway or the alias")
    g.add_argument("--mtu", type=_int_in(MIN_MTU, MAX_MTU, "MTU"), default=1500, metavar="N",
                   help=f"link MTU, {MIN_MTU} to {MAX_MTU} (default 1500)")
    g.add_argument(
        "--no-host-loopback",
        action="store_true",
        help="refuse connections to the host alias instead of mapping them to 127.0.0.1",
    )
    g.add_argument(
        "--forwards",
        metavar="FILE",
        help="JSON list of outbound redirects "
        '[{"protocol":"tcp","dst_prefix":"10.0.0.0/8","dst_port":80,"path":"/run/x.sock"}]',
    )
    g.add_argument("--ipv6-subnet", default=DEFAULT_SUBNET, metavar="PREFIX/64",
                   help="IPv6 prefix: gateway ::1 and fe80::1, host alias ::2, VMs by SLAAC "
                   "or DHCPv6 from ::3 (default %(default)s)")
    g.add_argument("--no-ipv6", action="store_true",
                   help="no IPv6: IPv6 frames are dropped, exec leaves IPv6 off")
    g.add_argument("--domain", default="localdomain",
                   help="DHCP domain name (option 15; default %(default)s)")
    g.add_argument("--search", action="append", default=[], metavar="DOMAIN",
                   help="DNS search domain for DHCP (option 119) and the namespace's "
                   "resolv.conf (repeatable; without it, resolv.conf searches --domain unless that "
                   "is localdomain)")
    d = p.add_argument_group("DNS")
    d.add_argument(
        "--dns-server",
        type=_dns_server,
        action="append",
        default=[],
        metavar="IP[#PORT]",
        help="upstream DNS server (repeatable; default: the host's /etc/resolv.conf)",
    )
    d.add_argument("--hosts", default=DEFAULTS.hosts, metavar="FILE",
                   help="hosts file the DNS server answers from, reloaded when it changes "
                   "(checked every 2 s; default %(default)s, /dev/null for none)")
    d.add_argument(
        "--dns-mode",
        choices=["forward", "host"],
        default="forward",
        help="forward: names not built in or in --hosts go to the upstream servers; "
        "host: A/AAAA/PTR go to the host's own resolver (getaddrinfo: VPN split DNS, "
        "mDNS, nsswitch), other types to the upstream servers (default %(default)s)",
    )
    d.add_argument("--dns-cache", type=_int_in(0, 1 << 20, "--dns-cache"),
                   default=DEFAULTS.dns_cache, metavar="N",
                   help="keep up to N forwarded DNS answers for their TTL (negative ones "
                   "for the SOA's); 0, the default, forwards every query")
    d.add_argument("--host-names", type=split_names, metavar="NAMES",
                   default=("host.docker.internal", "host.internal"),
                   help="comma-separated names of the host alias "
                   "(default host.docker.internal,host.internal)")
    d.add_argument("--gateway-names", type=split_names, metavar="NAMES",
                   default=("gateway.docker.internal", "gateway.internal"),
                   help="comma-separated names of the gateway "
                   "(default gateway.docker.internal,gateway.internal)")
    d.add_argument("--vm-names", type=split_names, default=("vm.internal",), metavar="NAMES",
                   help="comma-separated names of the first VM (default vm.internal)")
    g.add_argument(
        "--tcp-keepalive",
        type=_keepalive,
        default=DEFAULTS.tcp_keepalive,
        metavar="IDLE[,INTERVAL,COUNT]",
        help="probe a VM connection idle for IDLE s, then every INTERVAL s; close it after "
        "COUNT unanswered probes; only dead ones are closed (0: off; default 7200,75,9)",
    )
    g.add_argument("--udp-idle-timeout", type=_seconds, default=DEFAULTS.udp_idle_timeout,
                   metavar="SECONDS",
                   help="forget a UDP flow after this long idle, above 0 (default 60)")
    g.add_argument("--udp-max-flows", type=_int_in(1, 1 << 20, "--udp-max-flows"),
                   default=DEFAULTS.udp_max_flows, metavar="N",
                   help="UDP flows kept at most, 1 or more; the oldest goes first (default 4096)")
    g.add_argument(
        "--verify-checksums",
        action="store_true",
        help="verify TCP/UDP/ICMP checksums of VM frames (off: local links cannot corrupt; "
        "frames a TAP's kernel left to us to checksum are not verified)",
    )
    add_limits_options(p)
    o = p.add_argument_group("output")
    o.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"],
                   help="info adds a line per finished TCP flow (default %(default)s)")
    o.add_argument("--pcap", metavar="FILE", help="capture every VM frame to a libpcap file")
    o.add_argument("--pcap-snaplen", type=_int_in(1, MAX_SNAPLEN, "--pcap-snaplen"),
                   default=DEFAULTS.pcap_snaplen, metavar="N",
                   help=f"bytes kept per captured frame, 1 to {MAX_SNAPLEN} (default 65535)")
    o.add_argument("--pcap-listen", action="append", default=[], metavar="PATH",
                   help="serve a live capture to every client of this unix socket (repeatable)")


def add_limits_options(p: argparse.ArgumentParser) -> None:
    """Resource limits and timeouts for floods and dead upstreams (README: Limits)."""
    g = p.add_argument_group("limits")
    g.add_argument("--connect-timeout", type=_seconds, default=DEFAULTS.connect_timeout,
                   metavar="SECONDS",
                   help="a host connect not done after this long gives the VM an RST "
                   "(default 30)")
    g.add_argument("--max-pending-connects", type=_int_in(1, 1 << 20, "--max-pending-connects"),
                   default=DEFAULTS.max_pending_connects, metavar="N",
                   help="host connects one VM may have in flight; a SYN beyond resets the "
                   "oldest (default 1024)")
    g.add_argument("--dns-timeout", type=_seconds, default=DEFAULTS.dns_timeout, metavar="SECONDS",
                   help="a query no upstream answered after trying each gets SERVFAIL "
                   "(default 5)")
    g.add_argument("--runas", metavar="USER[:GROUP]",
                   help="run only: when started as root, switch to this user once TAPs are "
                   "open and listeners bound")


def add_iface_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ifname", type=_ifname, default=DEFAULTS.ifname,
                   help="TAP interface name inside the namespace (default %(default)s)")
    p.add_argument(
        "--no-config-net",
        action="store_true",
        help="only bring the interface up (configure it with DHCP yourself)",
    )
    p.add_argument("--pid-file", metavar="PATH",
                   help="write pyvpnkit's pid here once it serves; removed at exit")
    p.add_argument("--ready-fd", type=_int_in(0, 1 << 20, "--ready-fd"), metavar="FD",
                   help="write a line to this inherited fd and close it once pyvpnkit serves")


def build_config(args: argparse.Namespace) -> NetConfig:
    """The layout and the options the core takes; a bad layout is a UserError."""
    return network_layout(
        args.subnet,
        args.gateway_ip,
        args.host_ip,
        args.lowest_ip,
        args.highest_ip,
        mtu=args.mtu,
        domain=args.domain,
        search_domains=tuple(args.search),
        host_loopback=not args.no_host_loopback,
        host_names=args.host_names,
        gateway_names=args.gateway_names,
        vm_names=args.vm_names,
        ipv6=_ipv6(args),
    )


def _ipv6(args: argparse.Namespace) -> Ipv6Layout | None:
    """--ipv6-subnet's layout; None with --no-ipv6, or below IPv6's 1280-byte MTU unless asked."""
    if args.no_ipv6:
        return None
    if args.mtu < IPV6_MIN_MTU:
        if args.ipv6_subnet != DEFAULT_SUBNET:
            raise UserError(f"--mtu {args.mtu}: IPv6 (--ipv6-subnet) needs {IPV6_MIN_MTU} or more")
        return None
    return ipv6_layout(args.ipv6_subnet)


def _listen_url(kind: str) -> Callable[[str], str]:
    def check(url: str) -> str:
        from pyvpnkit.links.url import ListenURLError, parse_listen_url

        try:
            parse_listen_url(url, kind)
        except ListenURLError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return url

    return check


def add_listener_options(p: argparse.ArgumentParser) -> None:
    """VM transports, spelled as gvproxy spells them; each repeatable, all at once."""
    g = p.add_argument_group("VM listeners")
    stream = "unix:///PATH, tcp://127.0.0.1:PORT or vsock://PORT"
    g.add_argument("--listen-qemu", action="append", default=[], metavar="URL",
                   type=_listen_url("qemu"),
                   help=f"{stream}; 4-byte big-endian length framing (QEMU -netdev stream/socket)")
    g.add_argument("--listen-vpnkit", action="append", default=[], metavar="URL",
                   type=_listen_url("vpnkit"),
                   help=f"{stream}; hyperkit/Docker Desktop vmnet protocol")
    g.add_argument("--listen-bess", action="append", default=[], metavar="URL",
                   type=_listen_url("bess"),
                   help="unixpacket:///PATH; one frame per SOCK_SEQPACKET message")
    g.add_argument("--listen-vfkit", action="append", default=[], metavar="URL",
                   type=_listen_url("vfkit"),
                   help="unixgram:///PATH; one frame per datagram (vfkit)")
    g.add_argument("--listen-stdio", action="store_true",
                   help="uint16 LE length-prefixed frames on stdin/stdout")


def listener_specs(args: argparse.Namespace) -> tuple[tuple[str, str], ...]:
    specs = [(kind, url) for kind in ("qemu", "vpnkit", "bess", "vfkit")
             for url in getattr(args, f"listen_{kind}", [])]
    if getattr(args, "listen_stdio", False):
        specs.append(("stdio", "stdio"))
    return tuple(specs)


def service_options(args: argparse.Namespace) -> Options:
    """The parsed command line as a Service's Options; a bad --forwards file is a UserError."""
    return Options(
        **proxy_overrides(args),
        **vpnkit_overrides(args),
        dns_servers=tuple(args.dns_server),
        hosts=args.hosts,
        dns_mode=args.dns_mode,
        dns_timeout=args.dns_timeout,
        dns_cache=args.dns_cache,
        redirects=load_redirects(args.forwards),
        verify_checksums=args.verify_checksums,
        tcp_keepalive=args.tcp_keepalive,
        udp_idle_timeout=args.udp_idle_timeout,
        udp_max_flows=args.udp_max_flows,
        max_pending_connects=args.max_pending_connects,
        connect_timeout=args.connect_timeout,
        listeners=listener_specs(args),
        tap=getattr(args, "tap", None),
        netns=getattr(args, "netns", None),
        ifname=args.ifname,
        config_net=not args.no_config_net,
        pcap=args.pcap,
        pcap_snaplen=args.pcap_snaplen,
        pcap_listen=tuple(args.pcap_listen),
        publish=tuple(args.publish),
        forward_source=not args.no_forward_source,
        api=args.api,
        conditions=args.conditions,
        conditions_queue_bytes=args.conditions_queue_bytes,
        metrics_listen=args.metrics_listen,
        runas=args.runas,
        pid_file=args.pid_file,
        ready_fd=args.ready_fd,
    )


EPILOG = """exit status: the command's (exec), 128+N if it was killed by signal N;
2 for a bad command line, 125 when pyvpnkit could not set up (namespace, TAP,
file, socket), 126 when the command cannot be executed, 127 when it is not found"""


class _Version(argparse.Action):
    """--version: the version, then what this host offers (probed only when asked)."""

    def __call__(self, parser: argparse.ArgumentParser, *_args: object, **_kw: object) -> None:
        from pyvpnkit.runtime.capabilities import capabilities

        head = f"pyvpnkit {__version__} ({build.describe()})"
        print("\n".join([head, *capabilities().lines()]))
        parser.exit()


def make_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="pyvpnkit",
        description="User-mode network stack giving VMs and network namespaces the host's network.",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action=_Version, nargs=0,
                        help="show the version, the build and this host's capabilities, and exit")
    sub = parser.add_subparsers(dest="command", required=True)

    ex = sub.add_parser(
        "exec", help="run a command in a new network namespace wired to the stack", epilog=EPILOG
    )
    add_network_options(ex)
    add_proxy_options(ex)
    add_vpnkit_options(ex)
    add_iface_options(ex)
    add_service_options(ex)
    ex.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")

    run = sub.add_parser("run", help="long-running service", epilog=EPILOG)
    add_network_options(run)
    add_proxy_options(run)
    add_vpnkit_options(run)
    add_iface_options(run)
    add_service_options(run)
    run.add_argument("--netns", metavar="NAME|PATH",
                     help="attach to an existing namespace (ip netns NAME, or a path such as "
                     "/proc/PID/ns/net): create and configure a TAP in it")
    run.add_argument("--tap", metavar="IFNAME",
                     help="serve an existing TAP device of the current namespace")
    add_listener_options(run)
    add_subcommands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    code = dispatch(args)
    if code is not None:
        return code
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s pyvpnkit %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.ready_fd is not None:
            try:  # ours alone: a command holding it would delay the reader's EOF
                os.set_inheritable(args.ready_fd, False)
            except OSError:
                fd = args.ready_fd
                raise UserError(f"--ready-fd {fd}: not an open file descriptor") from None
        if args.runas:
            from pyvpnkit.runtime.privileges import RunAsError, resolve

            if args.command != "run":
                parser.error("--runas is for `pyvpnkit run` "
                             "(exec must be able to stop its command)")
            try:
                resolve(args.runas)
            except RunAsError as exc:
                parser.error(str(exc))
        if args.command == "exec":
            cmd = list(args.cmd)
            if cmd and cmd[0] == "--":
                cmd = cmd[1:]
            if not cmd:
                parser.error("exec needs a command: pyvpnkit exec [OPTIONS] -- CMD [ARGS...]")
            return run_exec(args, cmd)
        if not args.netns and not args.tap and not listener_specs(args):
            parser.error("run needs --netns, --tap or a --listen-* option")
        return run_service(args)
    except UserError as exc:
        print(f"pyvpnkit: {exc}", file=sys.stderr)
        return exc.exit_code


def check_command(name: str) -> None:
    """Refuse a command the namespace could not execute, with unshare's exit codes."""
    path = shutil.which(name) if "/" not in name else name
    if path is None or not os.path.exists(path):
        what = "No such file or directory" if "/" in name else "command not found"
        raise UserError(f"{name}: {what}", NOT_FOUND)
    if os.path.isdir(path):
        raise UserError(f"{name}: Is a directory", NOT_EXECUTABLE)
    if not os.access(path, os.X_OK):
        raise UserError(f"{name}: Permission denied (not executable)", NOT_EXECUTABLE)
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise UserError(f"{name}: {exc.strerror}", NOT_EXECUTABLE) from None
    if magic != b"\x7fELF" and not magic.startswith(b"#!") and not _binfmt_misc_handlers():
        raise UserError(f"{name}: Exec format error (neither ELF nor a #! script)",
                        NOT_EXECUTABLE)


def _binfmt_misc_handlers() -> bool:
    """Whether binfmt_misc may run other formats (qemu-user, Java...): then let exec decide."""
    try:
        return bool(set(os.listdir("/proc/sys/fs/binfmt_misc")) - {"register", "status"})
    except OSError:
        return False


def run_exec(args: argparse.Namespace, cmd: list[str]) -> int:
    from pyvpnkit.app.service import Service
    from pyvpnkit.runtime.capabilities import require_namespaces

    require_namespaces("exec")
    from pyvpnkit.runtime import netns

    config = build_config(args)
    check_command(cmd[0])
    service = Service(config, service_options(args))
    with tempfile.TemporaryDirectory(prefix="pyvpnkit-") as tmp:
        resolv = os.path.join(tmp, "resolv.conf")
        with open(resolv, "w") as f:
            f.write(service.resolv_conf_text())
        setup = service.iface_setup(resolv_conf=resolv)
        try:
            attached = netns.spawn(cmd, setup)
        except SetupError as exc:
            raise UserError(str(exc), SETUP_FAILED) from None
        return asyncio.run(service.run_exec(attached))


def run_service(args: argparse.Namespace) -> int:
    from pyvpnkit.app.service import Service

    config = build_config(args)
    service = Service(config, service_options(args))
    try:
        attached = service.attach_netns(args.netns) if args.netns else None
        tap_fd = service.open_existing_tap(args.tap) if args.tap else None
        return asyncio.run(service.run_forever(attached, tap_fd))
    finally:
        service.remove_netns_resolv_conf()


__all__ = ["main", "signal", "sys"]
