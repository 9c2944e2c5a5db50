"""Upstream DNS servers and search domains from resolv.conf text.

Loopback stubs (127.0.0.53, ::1) are kept: pyvpnkit runs in the host's
namespace, where they work. A server equal to the gateway address is dropped,
because forwarding there would send the query back into ourselves.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

DNS_PORT = 53


def parse_resolv_conf(
    text: str, *, exclude: Iterable[bytes | str] = ()
) -> tuple[list[tuple[str, int]], list[str]]:
    """Return ([(ip, 53), ...], [search domain, ...]) in file order, no duplicates.

    `exclude` holds addresses (packed or text) never to use, e.g. the gateway.
    As in glibc, the last `search` or `domain` line decides the search list.
    """
    excluded = {ipaddress.ip_address(a) for a in exclude}
    servers: list[tuple[str, int]] = []
    search: list[str] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].split(";", 1)[0].split()
        if not line:
            continue
        keyword, args = line[0], line[1:]
        if keyword == "nameserver" and args:
            server = _nameserver(args[0], excluded)
            if server is not None and server not in servers:
                servers.append(server)
        elif keyword == "search":
            search = list(dict.fromkeys(d.rstrip(".") for d in args if d.rstrip(".")))
        elif keyword == "domain" and args and args[0].rstrip("."):
            search = [args[0].rstrip(".")]
    return servers, search


def _nameserver(
    text: str, excluded: set[ipaddress.IPv4Address | ipaddress.IPv6Address]
) -> tuple[str, int] | None:
    addr_text, _, zone = text.partition("%")
    try:
        addr = ipaddress.ip_address(addr_text)
    except ValueError:
        return None
    if addr in excluded or addr.is_unspecified:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and zone:
        return (f"{addr.compressed}%{zone}", DNS_PORT)  # link-local needs its zone
    return (addr.compressed, DNS_PORT)

