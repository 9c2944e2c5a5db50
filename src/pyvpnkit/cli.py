"""Command line: `pyvpnkit exec -- CMD`, `pyvpnkit run`, and API clients."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Sequence

from pyvpnkit import __version__
from pyvpnkit.api.commands import add_service_options, add_subcommands, dispatch
from pyvpnkit.core.config import NetConfig
from pyvpnkit.core.tcp_nat import Redirect

log = logging.getLogger("pyvpnkit")

MAX_MTU = 65520


def _ipv4(text: str) -> bytes:
    try:
        return ipaddress.IPv4Address(text).packed
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _mtu(text: str) -> int:
    value = int(text)
    if not 576 <= value <= MAX_MTU:
        raise argparse.ArgumentTypeError(f"MTU must be between 576 and {MAX_MTU}")
    return value


def _dns_server(text: str) -> tuple[str, int]:
    host, _, port = text.partition("#")
    try:
        ipaddress.ip_address(host)
        return host, int(port or 53)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"bad DNS server {text!r}: use IP or IP#PORT") from exc


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def add_network_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("virtual network")
    g.add_argument("--subnet", default="192.168.65.0/24", help="VM subnet (default %(default)s)")
    g.add_argument("--gateway-ip", type=_ipv4, help="gateway address (default: subnet .1)")
    g.add_argument("--host-ip", type=_ipv4, help="host-loopback alias (default: subnet .2)")
    g.add_argument("--lowest-ip", type=_ipv4, help="first VM address (default: subnet .3)")
    g.add_argument("--highest-ip", type=_ipv4, help="last VM address (default: last host)")
    g.add_argument("--mtu", type=_mtu, default=1500, help="link MTU, up to 65520 (default 1500)")
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
    g.add_argument("--domain", default="localdomain", help="DHCP domain name")
    g.add_argument("--search", action="append", default=[], help="DNS search domain (repeatable)")
    d = p.add_argument_group("DNS")
    d.add_argument(
        "--dns-server",
        type=_dns_server,
        action="append",
        default=[],
        metavar="IP[#PORT]",
        help="upstream DNS server (repeatable; default: the host's /etc/resolv.conf)",
    )
    d.add_argument("--hosts", default="/etc/hosts", help="hosts file to answer from")
    d.add_argument(
        "--dns-mode",
        choices=["forward", "host"],
        default="forward",
        help="forward: names not built in or in --hosts go to the upstream servers; "
        "host: A/AAAA/PTR go to the host's own resolver (getaddrinfo: VPN split DNS, "
        "mDNS, nsswitch), other types to the upstream servers (default %(default)s)",
    )
    d.add_argument("--host-names", type=_names, default=("host.docker.internal", "host.internal"))
    d.add_argument(
        "--gateway-names", type=_names, default=("gateway.docker.internal", "gateway.internal")
    )
    d.add_argument("--vm-names", type=_names, default=("vm.internal",))
    g.add_argument(
        "--tcp-keepalive",
        type=float,
        default=7200.0,
        metavar="SECONDS",
        help="probe a VM connection after this long idle; only dead ones are closed "
        "(0 disables; default 7200)",
    )
    g.add_argument("--udp-idle-timeout", type=float, default=60.0, metavar="SECONDS",
                   help="forget a UDP flow after this long idle (default 60)")
    g.add_argument("--udp-max-flows", type=int, default=4096, metavar="N",
                   help="UDP flows kept at most; the oldest goes first (default 4096)")
    g.add_argument(
        "--verify-checksums",
        action="store_true",
        help="verify TCP/UDP/ICMP checksums of VM frames (off: local links cannot corrupt)",
    )
    add_limits_options(p)
    o = p.add_argument_group("output")
    o.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    o.add_argument("--pcap", metavar="FILE", help="capture every VM frame to a libpcap file")
    o.add_argument("--pcap-snaplen", type=int, default=65535, metavar="N",
                   help="bytes kept per captured frame (default 65535)")


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {text}")
    return value


def add_limits_options(p: argparse.ArgumentParser) -> None:
    """Resource limits and timeouts for floods and dead upstreams (README: Limits)."""
    g = p.add_argument_group("limits")
    g.add_argument("--connect-timeout", type=_positive, default=30.0, metavar="SECONDS",
                   help="a host connect not done after this long gives the VM an RST "
                   "(default 30)")
    g.add_argument("--max-pending-connects", type=_count, default=1024, metavar="N",
                   help="host connects one VM may have in flight; a SYN beyond resets the "
                   "oldest (default 1024)")
    g.add_argument("--dns-timeout", type=_positive, default=5.0, metavar="SECONDS",
                   help="a query no upstream answered after trying each gets SERVFAIL "
                   "(default 5)")
    g.add_argument("--runas", metavar="USER[:GROUP]",
                   help="run only: when started as root, switch to this user once TAPs are "
                   "open and listeners bound")


def add_iface_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ifname", default="eth0", help="interface name inside the namespace")
    p.add_argument(
        "--no-config-net",
        action="store_true",
        help="only bring the interface up (configure it with DHCP yourself)",
    )


def build_config(args: argparse.Namespace) -> NetConfig:
    subnet = ipaddress.IPv4Network(args.subnet, strict=False)
    hosts = list(subnet.hosts())
    return NetConfig(
        subnet=subnet,
        gateway_ip=args.gateway_ip or hosts[0].packed,
        host_ip=args.host_ip or hosts[1].packed,
        lowest_ip=args.lowest_ip or hosts[2].packed,
        highest_ip=args.highest_ip or hosts[-1].packed,
        mtu=args.mtu,
        domain=args.domain,
        search_domains=tuple(args.search),
        host_loopback=not args.no_host_loopback,
        host_names=args.host_names,
        gateway_names=args.gateway_names,
        vm_names=args.vm_names,
    )


def load_redirects(path: str | None) -> tuple[Redirect, ...]:
    """Parse a vpnkit-style --forwards file; errors name the bad entry."""
    if not path:
        return ()
    with open(path) as f:
        rules = json.load(f)
    out = []
    for i, rule in enumerate(rules):
        try:
            if rule.get("protocol", "tcp") != "tcp":
                raise ValueError("only tcp redirects are supported")
            out.append(
                Redirect(
                    ipaddress.IPv4Network(rule["dst_prefix"], strict=False),
                    int(rule["dst_port"]),
                    str(rule["path"]),
                )
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SystemExit(f"pyvpnkit: --forwards entry {i}: {exc}") from exc
    return tuple(out)


def add_listener_options(p: argparse.ArgumentParser) -> None:
    """VM transports, spelled as gvproxy spells them; each repeatable, all at once."""
    g = p.add_argument_group("VM listeners")
    g.add_argument("--listen-qemu", action="append", default=[], metavar="URL",
                   help="unix:///PATH, tcp://127.0.0.1:PORT or vsock://PORT; "
                   "4-byte big-endian length framing (QEMU -netdev stream/socket)")
    g.add_argument("--listen-vpnkit", action="append", default=[], metavar="URL",
                   help="unix:///PATH or vsock://PORT; hyperkit/Docker Desktop vmnet protocol")
    g.add_argument("--listen-bess", action="append", default=[], metavar="URL",
                   help="unixpacket:///PATH; one frame per SOCK_SEQPACKET message")
    g.add_argument("--listen-vfkit", action="append", default=[], metavar="URL",
                   help="unixgram:///PATH; one frame per datagram (vfkit)")
    g.add_argument("--listen-stdio", action="store_true",
                   help="uint16 LE length-prefixed frames on stdin/stdout")


def listener_specs(args: argparse.Namespace) -> list[tuple[str, str]]:
    specs = [(kind, url) for kind in ("qemu", "vpnkit", "bess", "vfkit")
             for url in getattr(args, f"listen_{kind}", [])]
    if getattr(args, "listen_stdio", False):
        specs.append(("stdio", "stdio"))
    return specs


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyvpnkit",
        description="User-mode network stack giving VMs and network namespaces the host's network.",
    )
    parser.add_argument("--version", action="version", version=f"pyvpnkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    ex = sub.add_parser("exec", help="run a command in a new network namespace wired to the stack")
    add_network_options(ex)
    add_iface_options(ex)
    add_service_options(ex)
    ex.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")

    run = sub.add_parser("run", help="long-running service")
    add_network_options(run)
    add_iface_options(run)
    add_service_options(run)
    run.add_argument("--netns", help="attach to an existing namespace (NAME or PATH)")
    run.add_argument("--tap", help="use an existing TAP device in the current namespace")
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
    if args.runas:
        from pyvpnkit.runtime.privileges import RunAsError, resolve

        if args.command != "run":
            parser.error("--runas is for `pyvpnkit run` (exec must be able to stop its command)")
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
    if args.command == "run":
        if not args.netns and not args.tap and not listener_specs(args):
            parser.error("run needs --netns, --tap or a --listen-* option")
        return run_service(args)
    parser.error(f"unknown command {args.command}")
    return 2


def run_exec(args: argparse.Namespace, cmd: list[str]) -> int:
    from pyvpnkit.runtime import netns
    from pyvpnkit.runtime.service import Service

    config = build_config(args)
    service = Service(config, args)
    with tempfile.TemporaryDirectory(prefix="pyvpnkit-") as tmp:
        resolv = os.path.join(tmp, "resolv.conf")
        with open(resolv, "w") as f:
            f.write(service.resolv_conf_text())
        setup = service.iface_setup(args, resolv_conf=resolv)
        attached = netns.spawn(cmd, setup)
        return asyncio.run(service.run_exec(attached))


def run_service(args: argparse.Namespace) -> int:
    from pyvpnkit.runtime import netns
    from pyvpnkit.runtime.service import Service

    config = build_config(args)
    service = Service(config, args)
    attached = None
    if args.netns:
        attached = netns.attach(args.netns, service.iface_setup(args))
    return asyncio.run(service.run_forever(attached, tap_name=args.tap))


__all__ = ["main", "signal", "sys"]
