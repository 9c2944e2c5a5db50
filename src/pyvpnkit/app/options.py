"""What a Service is built from: the options every command line maps onto.

The CLIs parse; this module holds what they produce, so the Service never
sees argparse.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass

from pyvpnkit.core.http_proxy.config import (
    ConfigError,
    HostList,
    ProxyConfig,
    Upstream,
    parse_config,
    with_overrides,
)
from pyvpnkit.core.tcp_nat import Redirect
from pyvpnkit.errors import SETUP_FAILED, UserError


@dataclass(frozen=True)
class Options:
    """How a Service runs, beside its NetConfig; the defaults are `pyvpnkit run`'s."""

    # DNS: upstream servers (none: the host's resolv.conf), hosts file, mode, timeout
    dns_servers: tuple[tuple[str, int], ...] = ()
    hosts: str = "/etc/hosts"
    dns_mode: str = "forward"  # or "host": A/AAAA/PTR from getaddrinfo
    dns_timeout: float = 5.0
    dns_cache: int = 0  # forwarded answers kept (0: none)
    # the stack
    redirects: tuple[Redirect, ...] = ()  # --forwards
    verify_checksums: bool = False
    tcp_keepalive: tuple[float, float, int] | None = (7200.0, 75.0, 9)
    udp_idle_timeout: float = 60.0
    udp_max_flows: int = 4096
    max_pending_connects: int = 1024
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
    api: str | None = None
    # process
    runas: str | None = None
    pid_file: str | None = None
    ready_fd: int | None = None


DEFAULTS = Options()


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
