"""What a Service is built from: the options every command line maps onto.

The CLIs parse; this module holds what they produce, so the Service never
sees argparse. Each front end maps its own flags straight onto `Options`;
option values several front ends take (a DNS server, a list of names) are
checked here, once, and the network layout in `core.config.network_layout`.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass

from pyvpnkit.core.conditions import DEFAULT_QUEUE_BYTES
from pyvpnkit.core.http_proxy.config import (
    ConfigError,
    HostList,
    ProxyConfig,
    Upstream,
    parse_config,
    with_overrides,
)
from pyvpnkit.core.nat.gateway_forwards import GatewayForward
from pyvpnkit.core.nat.tcp_nat import Redirect
from pyvpnkit.core.switch.stack_settings import StackSettings
from pyvpnkit.core.tcp.settings import KEEPALIVE, TcpSettings
from pyvpnkit.errors import SETUP_FAILED, UserError

_STACK = StackSettings()  # the stack's defaults, which Options repeats by reference
MAX_SNAPLEN = 262144  # tcpdump's maximum
HEX = frozenset("0123456789abcdefABCDEF")


@dataclass(frozen=True)
class Options:
    """How a Service runs, beside its NetConfig; the defaults are `pyvpnkit run`'s."""

    # DNS: upstream servers (none: the host's resolv.conf), hosts file, mode, timeout
    dns_servers: tuple[tuple[str, int], ...] = ()
    hosts: str = "/etc/hosts"
    dns_mode: str = _STACK.dns_mode  # or "host": A/AAAA/PTR from getaddrinfo
    dns_timeout: float = _STACK.dns_timeout
    dns_cache: int = _STACK.dns_cache  # forwarded answers kept (0: none)
    # the stack
    redirects: tuple[Redirect, ...] = ()  # --forwards
    verify_checksums: bool = _STACK.verify_checksums
    tcp_keepalive: tuple[float, float, int] | None = KEEPALIVE
    udp_idle_timeout: float = _STACK.udp_idle_timeout
    udp_max_flows: int = _STACK.udp_max_flows
    max_pending_connects: int = _STACK.max_pending_connects
    connect_timeout: float = 30.0
    outbound: tuple[str, str] = ("", "")  # host sockets' source (IPv4, IPv6); "": any
    # the HTTP proxy: --http (vpnkit's http_proxy.json, reloaded when it changes) and the
    # flags that override its keys (--proxy-from-env is resolved into them by the CLI)
    http: str | None = None
    http_proxy: Upstream | None = None
    https_proxy: Upstream | None = None
    no_proxy: HostList | None = None
    # links: (kind, url) listeners, an existing TAP, a namespace to wire a TAP into
    listeners: tuple[tuple[str, str], ...] = ()
    tap: str | None = None
    netns: str | None = None
    ifname: str = "eth0"  # the TAP inside a namespace
    config_net: bool = True  # address, route and resolv.conf in the namespace
    # the namespace's guest is also known at this address before it speaks (slirp4netns's
    # .100, which launchers configure themselves while DHCP would lease .15)
    guest_ip: bytes = b""
    # capture, port forwarding, API
    pcap: str | None = None
    pcap_snaplen: int = 65535
    pcap_listen: tuple[str, ...] = ()
    publish: tuple[tuple[str, str, str], ...] = ()  # (local, remote, protocol)
    forward_source: bool = True  # forwarded flows show the client's address (--no-forward-source)
    listen_backlog: int | None = None  # listen(2) backlog of forwards (None: SOMAXCONN)
    allowed_bind_addresses: tuple[str, ...] = ()  # host addresses forwards may bind (): any
    # vpnkit's: gateway forwards (static, and a watched JSON file), its DHCP file, and how
    # long a quiet switch port lives (0: for ever)
    gateway_forwards: tuple[GatewayForward, ...] = ()
    gateway_forwards_file: str | None = None
    dhcp_file: str | None = None
    port_max_idle_time: float = 0.0
    dns_zones: tuple[tuple[tuple[str, int], tuple[str, ...]], ...] = ()  # vpnkit --dns zones
    api: str | None = None
    # network conditions (--conditions, reloaded when it changes) and Prometheus metrics
    conditions: str | None = None
    conditions_queue_bytes: int = DEFAULT_QUEUE_BYTES
    metrics_listen: str | None = None  # tcp://HOST:PORT
    # process
    runas: str | None = None
    pid_file: str | None = None
    ready_fd: int | None = None


DEFAULTS = Options()


def stack_settings(options: Options) -> StackSettings:
    """The stack's share of the options, handed to it whole."""
    return StackSettings(
        tcp=TcpSettings(keepalive=options.tcp_keepalive),
        redirects=options.redirects,
        max_pending_connects=options.max_pending_connects,
        verify_checksums=options.verify_checksums,
        udp_idle_timeout=options.udp_idle_timeout,
        udp_max_flows=options.udp_max_flows,
        dns_mode=options.dns_mode,
        dns_timeout=options.dns_timeout,
        dns_cache=options.dns_cache,
    )


def parse_dns_server(text: str) -> tuple[str, int]:
    """IP or IP#PORT as (IP, PORT); ValueError says what is wrong, for the caller's flag."""
    host, sep, port = text.partition("#")
    try:
        ipaddress.ip_address(host)
        number = int(port) if sep else 53
    except ValueError:
        raise ValueError("use IP or IP#PORT") from None
    if not 1 <= number <= 65535:
        raise ValueError(f"port {number} is not in 1..65535")
    return host, number


def parse_mac(text: str) -> bytes:
    """aa:bb:cc:dd:ee:ff (either case) as 6 bytes; ValueError otherwise."""
    parts = text.split(":")
    if len(parts) != 6 or not all(len(p) == 2 and all(c in HEX for c in p) for p in parts):
        raise ValueError(f"{text!r} is not a MAC address")
    return bytes.fromhex("".join(parts))


def split_names(text: str) -> tuple[str, ...]:
    """A comma-separated list of DNS names (--host-names and the like); empty entries dropped."""
    return tuple(n.strip() for n in text.split(",") if n.strip())


def _redirect(path: str, i: int, rule: object) -> Redirect:
    where = f"--forwards {path} entry {i}"
    if not isinstance(rule, dict):
        raise UserError(f"{where}: expected an object with dst_prefix, dst_port and path, "
                        f"got {json.dumps(rule)}")
    if rule.get("protocol", "tcp") != "tcp":
        raise UserError(f"{where}: protocol {rule['protocol']!r}: only \"tcp\" is supported")
    for key in ("dst_prefix", "dst_port", "path"):
        if key not in rule:
            raise UserError(f"{where}: missing \"{key}\"")
    try:
        prefix = ipaddress.IPv4Network(rule["dst_prefix"], strict=False)
    except (TypeError, ValueError):
        prefix_text = rule["dst_prefix"]
        raise UserError(f"{where}: dst_prefix {prefix_text!r} is not an IPv4 prefix") from None
    port = rule["dst_port"]
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise UserError(f"{where}: dst_port {port!r} is not a port number 1..65535")
    if not isinstance(rule["path"], str) or not rule["path"]:
        raise UserError(f"{where}: path {rule['path']!r} is not a unix socket path")
    return Redirect(prefix, port, rule["path"])


def load_redirects(path: str | None) -> tuple[Redirect, ...]:
    """Parse a vpnkit-style --forwards file; errors name the bad entry and field."""
    if not path:
        return ()
    try:
        with open(path) as f:
            rules = json.load(f)
    except OSError as exc:
        raise UserError(f"--forwards {path}: {exc.strerror}", SETUP_FAILED) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"--forwards {path}: not JSON ({exc})") from None
    if not isinstance(rules, list):
        raise UserError(f"--forwards {path}: expected a JSON list of redirects")
    return tuple(_redirect(path, i, rule) for i, rule in enumerate(rules))


def proxy_config(options: Options, text: str | None) -> ProxyConfig:
    """The --http file's text (ConfigError if invalid; None: no file) under the flags."""
    base = parse_config(text) if text is not None else ProxyConfig()
    return with_overrides(base, options.http_proxy, options.https_proxy, options.no_proxy)


def load_proxy_config(options: Options) -> ProxyConfig:
    """The HTTP proxy's configuration at start-up; a bad --http file is a UserError naming it."""
    path = options.http
    if path is None:
        return proxy_config(options, None)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise UserError(f"--http {path}: {exc.strerror}", SETUP_FAILED) from None
    except UnicodeDecodeError as exc:
        raise UserError(f"--http {path}: not text ({exc})") from None
    try:
        return proxy_config(options, text)
    except ConfigError as exc:
        raise UserError(f"--http {path}: {exc}") from None
