"""`pyvpnkit-vpnkit`: vpnkit's command line, for launchers that run a `vpnkit` binary.

rootlesskit's `--net=vpnkit` runs `vpnkit --ethernet PATH --mtu N [--host-ip
0.0.0.0]`; Docker Desktop-style setups pass more of vpnkit's flags. Each flag
keeps vpnkit's name, default and meaning (vpnkit's src/bin/main.ml) and is
translated into the `pyvpnkit run` options that do the same, so the ordinary
service runs with a vmnet listener. vpnkit flags for features pyvpnkit does
not have are refused by name rather than ignored.

Exit status: 0 after SIGINT/SIGTERM, 1 when a socket (--ethernet, --pcap)
cannot be served, 124 for a command-line error (vpnkit's own code for one).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import ipaddress
import logging
import os
import sys
import textwrap
from collections.abc import Sequence
from typing import Any, NoReturn
from urllib.parse import quote

from pyvpnkit import __version__, cli
from pyvpnkit.app.options import load_proxy_config
from pyvpnkit.core.config import NetConfig
from pyvpnkit.errors import UserError
from pyvpnkit.usage import OneLineParser

PROG = "pyvpnkit-vpnkit"
EXIT_USAGE = 124

# vpnkit flags whose feature pyvpnkit lacks, and why they are refused.
UNSUPPORTED = {
    "--http-api-path": "not supported: `pyvpnkit run --api` serves /http_proxy.json",
    "--port": "vpnkit's 9P port-forwarding filesystem is not supported",
    "--vsock-path": "vpnkit's vsock port forwarding is not supported",
    "--port-forwards": "vpnkit's vsock port forwarding is not supported",
    "--introspection": "vpnkit's 9P introspection filesystem is not supported",
    "--diagnostics": "vpnkit's diagnostics archive is not supported",
    "--dhcp-path": "a DHCP JSON configuration file is not supported",
    "--tcpv4-forwards": "gateway forwards are not supported",
    "--udpv4-forwards": "gateway forwards are not supported",
    "--gateway-forwards": "gateway forwards are not supported",
    "--allowed-bind-addresses": "not supported: there is no vpnkit port API to bind with",
    "--listen-backlog": "not supported",
    "--port-max-idle-time": "not supported: switch ports do not expire",
    "--max-connections": "not supported (deprecated in vpnkit)",
    "--gc-compact-interval": "not supported: an OCaml heap setting",
}


class UsageError(Exception):
    """A command-line mistake: one line to stderr, exit status 124."""


class _Parser(OneLineParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see --help)")


class _Refuse(argparse.Action):
    def __call__(self, parser: Any, namespace: Any, values: Any, option: Any = None) -> None:
        flag = self.option_strings[0]
        raise UsageError(f"{flag}: {UNSUPPORTED[flag]}")


def _ipv4(text: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IPv4 address") from None


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def _mac(text: str) -> bytes:
    parts = text.split(":")
    try:
        raw = bytes(int(part, 16) for part in parts if len(part) == 2)
    except ValueError:
        raw = b""
    if len(raw) != 6 or len(parts) != 6 or raw[0] & 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a unicast MAC (aa:bb:cc:dd:ee:ff)")
    return raw


# vpnkit's addresses: flag -> (default, meaning).
ADDRESSES = {
    "--gateway-ip": ("192.168.65.1", "the gateway: DHCP, DNS, ARP"),
    "--host-ip": ("192.168.65.2", "reaches the host's localhost; 0.0.0.0 disables that"),
    "--lowest-ip": ("192.168.65.3", "lowest address handed out"),
    "--highest-ip": ("192.168.65.254", "highest address handed out"),
}
NAMES = {
    "--host-names": "the host IP (default host.docker.internal,host.internal)",
    "--gateway-names": "the gateway IP (default gateway.docker.internal,gateway.internal)",
    "--vm-names": "the VM's IP (default vm.internal)",
}
EPILOG = (
    "vpnkit flags refused (pyvpnkit has no such feature):\n  "
    + textwrap.fill(" ".join(UNSUPPORTED), 78, break_on_hyphens=False).replace("\n", "\n  ")
    + "\n\nexit status: 0 when stopped by SIGINT/SIGTERM, 1 if a socket cannot be served,\n"
    f"{EXIT_USAGE} for a command-line error (as vpnkit)."
)


def make_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="vpnkit's command line on pyvpnkit: serve VMs on a vmnet socket (hyperkit,\n"
        "rootlesskit --net=vpnkit). Flags, defaults and meanings are vpnkit's.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = p.add_argument
    add("--version", action="version", version=f"{PROG} (pyvpnkit {__version__})")
    add("--ethernet", metavar="PATH", required=True, help="unix socket to serve VMs on (vmnet)")
    add("--mtu", type=_int, default=1500, metavar="N",
        help=f"MTU of the ethernet links, 576..{cli.MAX_MTU} (default 1500)")
    for flag, (default, meaning) in ADDRESSES.items():
        add(flag, type=_ipv4, default=_ipv4(default), metavar="IP",
            help=f"{meaning} (default {default})")
    add("--server-macaddr", type=_mac, metavar="MAC",
        help="the gateway's MAC (default f6:16:36:bc:f9:c6)")
    add("--domain", help="domain name in DHCP offers (default localdomain)")
    add("--dns", metavar="FILE",
        help="upstream DNS servers: lines 'nameserver IP[#PORT]' and 'search DOMAIN...', "
        "read at start; without it, names go to the host's own resolver (getaddrinfo)")
    add("--hosts", metavar="FILE", default="/etc/hosts",
        help="hosts file to answer from (default /etc/hosts; reloaded on change)")
    for flag, meaning in NAMES.items():
        add(flag, metavar="NAMES", help=f"comma-separated DNS names of {meaning}")
    add("--forwards", metavar="FILE",
        help="JSON list of outbound redirects of VM TCP to unix sockets: "
        '[{"protocol":"tcp","dst_prefix":CIDR,"dst_port":N,"path":PATH}]')
    add("--http", metavar="FILE",
        help="http_proxy.json: upstream HTTP/HTTPS proxies, exclude, transparent ports; "
        "reloaded when it changes")
    add("--pcap", action="append", default=[], metavar="PATH",
        help="unix socket serving a live pcap stream of every frame (repeatable)")
    add("--pcap-snaplen", type=_int, default=128, metavar="N",
        help="bytes kept of each captured frame (default 128)")
    add("--debug", action="store_true", help="verbose logging to stderr (also: VPNKIT_DEBUG set)")
    for flag in UNSUPPORTED:
        add(flag, action=_Refuse, help=argparse.SUPPRESS)
    return p


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """vpnkit's flags, validated; UsageError for anything else."""
    args, rest = make_parser().parse_known_args(argv)
    if rest:
        first = rest[0]
        if first.startswith("-"):
            raise UsageError(f"unknown option {first.split('=', 1)[0]} (see --help)")
        raise UsageError(f"unexpected argument {first!r} (vpnkit takes options only)")
    if not args.ethernet or "://" in args.ethernet or args.ethernet.startswith("fd:"):
        raise UsageError(f"--ethernet {args.ethernet!r}: only a unix socket path is supported")
    if not 576 <= args.mtu <= cli.MAX_MTU:
        raise UsageError(f"--mtu {args.mtu}: must be between 576 and {cli.MAX_MTU}")
    if args.pcap_snaplen < 1:
        raise UsageError(f"--pcap-snaplen {args.pcap_snaplen}: must be at least 1")
    pool = f"--lowest-ip {args.lowest_ip} .. --highest-ip {args.highest_ip}"
    if args.lowest_ip > args.highest_ip:
        raise UsageError(f"{pool}: the range is empty")
    for flag in ("--gateway-ip", "--host-ip"):
        ip = getattr(args, flag[2:].replace("-", "_"))
        if args.lowest_ip <= ip <= args.highest_ip:
            raise UsageError(f"{flag} {ip} lies in the VM range {pool}")
    if args.host_ip == args.gateway_ip:
        raise UsageError(f"--host-ip {args.host_ip} is also the --gateway-ip")
    return args


def parse_dns_file(path: str) -> tuple[list[str], list[str]]:
    """vpnkit's --dns file: (["IP#PORT", ...], [search domain, ...]).

    'timeout', 'order' and 'assume-offline-after' tune vpnkit's own forwarder
    and are ignored; 'zone' (a server only for some domains) cannot be honoured.
    """
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise UsageError(f"--dns {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"--dns {path}: not text: {exc}") from None
    servers: list[str] = []
    search: list[str] = []
    for number, raw in enumerate(lines, 1):
        keyword, _, value = raw.strip().partition(" ")
        value = value.strip()
        if keyword == "nameserver":
            servers.append(_nameserver(value, f"--dns {path}: line {number}"))
        elif keyword == "search":
            search = value.split()
        elif keyword == "zone":
            raise UsageError(f"--dns {path}: line {number}: per-server zones are not supported")
    return servers, search


def _nameserver(value: str, where: str) -> str:
    """IP, or IP#PORT, as IP#PORT."""
    host, port = value, "53"
    if "#" in value:
        host, _, port = value.rpartition("#")
    try:
        ipaddress.ip_address(host)
        if not 0 < int(port) < 65536:
            raise ValueError(port)
    except ValueError:
        raise UsageError(f"{where}: bad nameserver {value!r} (use IP or IP#PORT)") from None
    return f"{host}#{int(port)}"


def run_options(args: argparse.Namespace) -> argparse.Namespace:
    """The `pyvpnkit run` options that do what these vpnkit flags do."""
    ips = (args.gateway_ip, args.lowest_ip, args.highest_ip)
    # As vpnkit's DHCP server: the smallest network holding the gateway and the pool.
    subnet = ipaddress.IPv4Network(f"{args.lowest_ip}/32")
    while not all(ip in subnet for ip in ips):
        subnet = subnet.supernet()
    # A leading "@" is a file name to vpnkit, an abstract socket in a pyvpnkit URL.
    path = "./" + args.ethernet if args.ethernet.startswith("@") else args.ethernet
    run = [f"--listen-vpnkit=unix://{quote(path, safe='/')}", f"--subnet={subnet}",
           "--no-ipv6"]  # vpnkit drops IPv6; so does its drop-in
    options = {"mtu": args.mtu, "hosts": args.hosts, "pcap-snaplen": args.pcap_snaplen}
    for name in ("gateway-ip", "lowest-ip", "highest-ip", "domain", "host-names",
                 "gateway-names", "vm-names", "forwards", "http"):  # fmt: skip
        options[name] = getattr(args, name.replace("-", "_"))
    if args.host_ip.packed == bytes(4):
        run.append("--no-host-loopback")
    else:
        options["host-ip"] = args.host_ip
    run += [f"--{name}={value}" for name, value in options.items() if value is not None]
    if args.dns is None:
        run.append("--dns-mode=host")  # vpnkit's default resolver is the host's own
    else:
        servers, search = parse_dns_file(args.dns)
        run += [f"--dns-server={server}" for server in servers]
        run += [f"--search={domain}" for domain in search]
    run += [f"--pcap-listen={path}" for path in args.pcap]
    debug = args.debug or "VPNKIT_DEBUG" in os.environ
    run.append(f"--log-level={'debug' if debug else 'warning'}")
    return cli.make_parser().parse_args(["run", *run])


def configure(argv: Sequence[str] | None) -> tuple[NetConfig, argparse.Namespace]:
    """The network and the `pyvpnkit run` options for a vpnkit command line."""
    args = parse_args(argv)
    options = run_options(args)
    try:
        load_proxy_config(cli.service_options(options))  # --forwards and --http, checked now
        config = cli.build_config(options)
    except UserError as exc:
        raise UsageError(str(exc)) from None
    if args.server_macaddr is not None:
        config = dataclasses.replace(config, gateway_mac=args.server_macaddr)
    return config, options


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config, options = configure(argv)
    except UsageError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(
        level=getattr(logging, options.log_level.upper()),
        format="%(asctime)s pyvpnkit-vpnkit %(levelname)s %(name)s: %(message)s",
    )
    from pyvpnkit.app.service import Service

    try:
        service = Service(config, cli.service_options(options))
        return asyncio.run(service.run_forever(None, None))
    except UserError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a --pcap socket that cannot be bound
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
