"""vpnkit's gateway forwards: VM traffic to a port of the gateway goes to a host address.

vpnkit (src/hostnet/gateway_forwards.ml) keeps two lists: the static one from
``--tcpv4-forwards``/``--udpv4-forwards`` (``<local port>:<remote IPv4>:<remote
port>,...``) and the dynamic one from the ``--gateway-forwards`` JSON file
(``[{"protocol", "external_port", "internal_ip", "internal_port"}]``), replaced
whenever the file changes. A VM connection (or datagram) to gateway:external_port
then reaches internal_ip:internal_port from the host, as any NAT flow does;
answers come back from gateway:external_port. The first entry for a port wins,
static before dynamic, as in vpnkit's list search.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass

PROTOCOLS = ("tcp", "udp")


@dataclass(frozen=True, slots=True)
class GatewayForward:
    protocol: str  # "tcp" or "udp"
    external_port: int
    internal_ip: str  # IPv4, as the host socket reports it
    internal_port: int


def _port(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 0xFFFF:
        raise ValueError(f"{what} {value!r} is not a port number 1..65535")
    return value


def _ipv4(value: object, what: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except (ValueError, TypeError):
        raise ValueError(f"{what} {value!r} should be an IPv4 address") from None


def parse_json(text: str) -> tuple[GatewayForward, ...]:
    """The --gateway-forwards file; ValueError naming the bad entry."""
    try:
        entries = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(entries, list):
        raise ValueError("expected a JSON list of forwards")
    out = []
    for i, entry in enumerate(entries):
        where = f"entry {i}:"
        if not isinstance(entry, dict):
            raise ValueError(f"{where} expected an object")
        missing = [k for k in ("protocol", "external_port", "internal_ip", "internal_port")
                   if k not in entry]
        if missing:
            raise ValueError(f"{where} missing \"{missing[0]}\"")
        if entry["protocol"] not in PROTOCOLS:
            raise ValueError(f"{where} protocol should be tcp or udp")
        out.append(GatewayForward(
            entry["protocol"], _port(entry["external_port"], f"{where} external_port"),
            _ipv4(entry["internal_ip"], f"{where} internal_ip"),
            _port(entry["internal_port"], f"{where} internal_port"),
        ))
    return tuple(out)


def parse_list(protocol: str, text: str) -> tuple[GatewayForward, ...]:
    """--tcpv4-forwards / --udpv4-forwards: ``<local port>:<remote IPv4>:<remote port>,...``."""
    out = []
    for item in filter(None, text.split(",")):
        parts = item.split(":")
        if len(parts) != 3 or not parts[0].isdigit() or not parts[2].isdigit():
            raise ValueError(f"{item!r}: expected <local port>:<remote IPv4>:<remote port>")
        out.append(GatewayForward(protocol, _port(int(parts[0]), f"{item!r}: local port"),
                                  _ipv4(parts[1], f"{item!r}: remote"),
                                  _port(int(parts[2]), f"{item!r}: remote port")))
    return tuple(out)


class GatewayForwards:
    """The table the stack consults for TCP and UDP to the gateway's own address."""

    def __init__(self, static: tuple[GatewayForward, ...] = ()) -> None:
        self._static = static
        self._dynamic: tuple[GatewayForward, ...] = ()
        self._table: dict[tuple[str, int], tuple[str, int]] = {}
        self._rebuild()

    def update(self, dynamic: tuple[GatewayForward, ...]) -> None:
        """The --gateway-forwards file's entries, replacing the previous ones."""
        self._dynamic = dynamic
        self._rebuild()

    def _rebuild(self) -> None:
        table: dict[tuple[str, int], tuple[str, int]] = {}
        for f in self._static + self._dynamic:
            table.setdefault((f.protocol, f.external_port), (f.internal_ip, f.internal_port))
        self._table = table

    def __bool__(self) -> bool:
        return bool(self._table)

    def lookup(self, protocol: str, port: int) -> tuple[str, int] | None:
        """Where gateway:port goes on the host, or None."""
        return self._table.get((protocol, port))
