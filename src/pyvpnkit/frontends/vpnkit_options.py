"""Command-line options from vpnkit that `pyvpnkit run`/`exec` and `pyvpnkit-vpnkit` share.

Gateway forwards (`--gateway-forwards FILE`, `--tcpv4-forwards`,
`--udpv4-forwards`), the DHCP file (`--dhcp-path`), `--listen-backlog`,
`--port-max-idle-time` and `--allowed-bind-addresses`, with vpnkit's formats
and meanings (src/bin/main.ml). `vpnkit_overrides` maps them straight onto
Options fields.
"""

from __future__ import annotations

import argparse
import ipaddress
from collections.abc import Callable
from typing import Any

from pyvpnkit.core.nat.gateway_forwards import GatewayForward, parse_list


def _forwards(protocol: str) -> Callable[[str], tuple[GatewayForward, ...]]:
    def parse(text: str) -> tuple[GatewayForward, ...]:
        try:
            return parse_list(protocol, text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return parse


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of 1 or more")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (0: never)")
    return value


def _addresses(text: str) -> tuple[str, ...]:
    try:
        return tuple(str(ipaddress.IPv4Address(a.strip())) for a in text.split(",") if a.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_vpnkit_options(p: argparse.ArgumentParser, port_max_idle_time: float = 0.0) -> None:
    g = p.add_argument_group("vpnkit's gateway forwards, DHCP file and ports")
    g.add_argument("--gateway-forwards", metavar="FILE",
                   help='JSON list [{"protocol":"tcp"|"udp","external_port":N,'
                   '"internal_ip":IPv4,"internal_port":N}]: VM traffic to the gateway\'s port N '
                   "goes to internal_ip:internal_port from the host; reloaded when it changes")
    for proto in ("tcp", "udp"):
        g.add_argument(f"--{proto}v4-forwards", type=_forwards(proto), default=(),
                       metavar="PORT:IPv4:PORT,...",
                       help=f"{proto.upper()} gateway forwards from the command line: "
                       "<local port>:<remote IPv4>:<remote port>,...")
    g.add_argument("--dhcp-path", metavar="FILE",
                   help='vpnkit\'s DHCP JSON {"searchDomains":[...],"domainName":"..."}: the '
                   "search list and (unless --domain is given) the domain offered by DHCP; "
                   "reloaded when it changes")
    g.add_argument("--listen-backlog", type=_count, metavar="N",
                   help="listen(2) backlog of published ports (default: SOMAXCONN)")
    g.add_argument("--port-max-idle-time", type=_seconds, default=port_max_idle_time,
                   metavar="SECONDS",
                   help="close a VM link (switch port) that sent nothing for this long and end "
                   f"its VIF's lease; TAP links never expire (0: never; default "
                   f"{port_max_idle_time:g})")
    g.add_argument("--allowed-bind-addresses", type=_addresses, default=(), metavar="IP,...",
                   help="host addresses published ports may listen on, e.g. 127.0.0.1 "
                   "(default 0.0.0.0: any)")


def vpnkit_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The Options fields these flags set."""
    allowed = args.allowed_bind_addresses
    return {
        "gateway_forwards": args.tcpv4_forwards + args.udpv4_forwards,
        "gateway_forwards_file": args.gateway_forwards,
        "dhcp_file": args.dhcp_path,
        "listen_backlog": args.listen_backlog,
        "port_max_idle_time": args.port_max_idle_time,
        "allowed_bind_addresses": () if "0.0.0.0" in allowed else allowed,
    }
