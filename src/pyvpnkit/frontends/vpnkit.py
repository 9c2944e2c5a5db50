"""`pyvpnkit-vpnkit`: vpnkit's command line, for launchers that run a `vpnkit` binary.

rootlesskit's `--net=vpnkit` runs `vpnkit --ethernet PATH --mtu N [--host-ip
0.0.0.0]`; Docker Desktop-style setups pass more of vpnkit's flags. Each flag
keeps vpnkit's name, default and meaning (vpnkit's src/bin/main.ml) and is
mapped straight onto the NetConfig and Options that do the same, so the
ordinary service runs with a vmnet listener. vpnkit flags for features
pyvpnkit does not have are refused by name rather than ignored.

Exit status: 0 after SIGINT/SIGTERM, 1 when a socket (--ethernet, --pcap)
cannot be served, 124 for a command-line error (vpnkit's own code for one).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import sys
import textwrap
from collections.abc import Sequence
from typing import Any, NoReturn
from urllib.parse import quote

from pyvpnkit import __version__
from pyvpnkit.app.options import (
    DEFAULTS,
    MAX_SNAPLEN,
    Options,
    load_proxy_config,
    load_redirects,
    parse_dns_server,
    parse_mac,
    split_names,
)
from pyvpnkit.core.config import MAX_MTU, MIN_MTU, NetConfig, network_layout
from pyvpnkit.errors import UserError
from pyvpnkit.frontends.usage import OneLineParser
from pyvpnkit.frontends.vpnkit_options import add_vpnkit_options, vpnkit_overrides

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
    try:
        raw: bytes | None = parse_mac(text)
    except ValueError:
        raw = None
    if raw is None or raw[0] & 1:  # a group address cannot be the gateway's
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
        help=f"MTU of the ethernet links, {MIN_MTU}..{MAX_MTU} (default 1500)")
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
        add(flag, type=split_names, metavar="NAMES", help=f"comma-separated DNS names of {meaning}")
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
    add_vpnkit_options(p, port_max_idle_time=300.0)
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
    if not MIN_MTU <= args.mtu <= MAX_MTU:
        raise UsageError(f"--mtu {args.mtu}: must be between {MIN_MTU} and {MAX_MTU}")
    if not 1 <= args.pcap_snaplen <= MAX_SNAPLEN:
        raise UsageError(f"--pcap-snaplen {args.pcap_snaplen}: must be at least 1 "
                         f"and at most {MAX_SNAPLEN}")
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


DnsServer = tuple[str, int]
DnsZones = tuple[tuple[DnsServer, tuple[str, ...]], ...]
DnsFile = tuple[list[DnsServer], list[str], DnsZones]


def parse_dns_file(path: str) -> DnsFile:
    """vpnkit's --dns file: ([(IP, PORT), ...], [search domain, ...], zones).

    A 'zone DOMAIN...' line gives the nameserver before it those domains: their
    names go only to it (and other servers with a matching zone), as in vpnkit.
    'timeout', 'order' and 'assume-offline-after' tune vpnkit's own forwarder
    and are ignored.
    """
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise UsageError(f"--dns {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"--dns {path}: not text: {exc}") from None
    servers: list[DnsServer] = []
    search: list[str] = []
    zones: dict[DnsServer, tuple[str, ...]] = {}
    for number, raw in enumerate(lines, 1):
        keyword, _, value = raw.strip().partition(" ")
        value = value.strip()
        if keyword == "nameserver":
            servers.append(_nameserver(value, f"--dns {path}: line {number}"))
        elif keyword == "search":
            search = value.split()
        elif keyword == "zone":
            if not servers or not value:
                raise UsageError(f"--dns {path}: line {number}: a zone line names domains "
                                 "for the nameserver line before it")
            zones[servers[-1]] = zones.get(servers[-1], ()) + tuple(value.split())
    return servers, search, tuple(zones.items())


def _nameserver(value: str, where: str) -> DnsServer:
    try:
        return parse_dns_server(value)
    except ValueError:
        raise UsageError(f"{where}: bad nameserver {value!r} (use IP or IP#PORT)") from None


def network(args: argparse.Namespace, search: Sequence[str]) -> NetConfig:
    """vpnkit's layout as a NetConfig: no IPv6 (vpnkit drops it; so does its drop-in)."""
    ips = (args.gateway_ip, args.lowest_ip, args.highest_ip)
    # As vpnkit's DHCP server: the smallest network holding the gateway and the pool.
    subnet = ipaddress.IPv4Network(f"{args.lowest_ip}/32")
    while not all(ip in subnet for ip in ips):
        subnet = subnet.supernet()
    loopback = args.host_ip.packed != bytes(4)  # 0.0.0.0: no host alias, .2 stays reserved
    given = {"domain": args.domain, "gateway_mac": args.server_macaddr,
             "host_names": args.host_names, "gateway_names": args.gateway_names,
             "vm_names": args.vm_names}  # fmt: skip
    return network_layout(
        str(subnet), args.gateway_ip.packed, args.host_ip.packed if loopback else None,
        args.lowest_ip.packed, args.highest_ip.packed,
        mtu=args.mtu, search_domains=tuple(search), host_loopback=loopback, ipv6=None,
        **{name: value for name, value in given.items() if value is not None},
    )


def service_options(args: argparse.Namespace, dns: DnsFile | None) -> Options:
    """The Service's Options for these vpnkit flags; a bad --forwards file is a UserError."""
    # A leading "@" is a file name to vpnkit, an abstract socket in a pyvpnkit URL.
    path = "./" + args.ethernet if args.ethernet.startswith("@") else args.ethernet
    servers, _search, zones = dns if dns is not None else ([], [], ())
    return Options(
        listeners=(("vpnkit", f"unix://{quote(path, safe='/')}"),),
        hosts=args.hosts,
        dns_servers=tuple(servers),
        dns_zones=zones,
        dns_mode="host" if dns is None else DEFAULTS.dns_mode,  # vpnkit's default: the host's
        http=args.http,
        redirects=load_redirects(args.forwards),
        pcap_listen=tuple(args.pcap),
        pcap_snaplen=args.pcap_snaplen,
        **vpnkit_overrides(args),
    )


def configure(argv: Sequence[str] | None) -> tuple[NetConfig, Options, str]:
    """The network, the Service's Options and the log level for a vpnkit command line."""
    args = parse_args(argv)
    dns = parse_dns_file(args.dns) if args.dns is not None else None
    try:
        options = service_options(args, dns)
        load_proxy_config(options)  # --http, checked now
        config = network(args, dns[1] if dns is not None else ())
    except UserError as exc:
        raise UsageError(str(exc)) from None
    debug = args.debug or "VPNKIT_DEBUG" in os.environ
    return config, options, "debug" if debug else "warning"


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config, options, level = configure(argv)
    except UsageError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s pyvpnkit-vpnkit %(levelname)s %(name)s: %(message)s",
    )
    from pyvpnkit.app.service import Service

    try:
        service = Service(config, options)
        return asyncio.run(service.run_forever(None, None))
    except UserError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a --pcap socket that cannot be bound
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
