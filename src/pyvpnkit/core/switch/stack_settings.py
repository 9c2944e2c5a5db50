"""What the stack is told by the user: one frozen value, built once in app/ from Options.

The stack hands each part down whole (``tcp`` to the TCP NAT and on to every
connection) instead of a keyword per setting. What depends on the link a VM
is on (TAP offloads) is not here: the runtime tells the stack per link.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pyvpnkit.core.nat.tcp_nat import MAX_PENDING_CONNECTS, Redirect
from pyvpnkit.core.nat.udp_nat import IDLE_TIMEOUT, MAX_FLOWS
from pyvpnkit.core.tcp.settings import TcpSettings


@dataclass(frozen=True, slots=True)
class StackSettings:
    tcp: TcpSettings = field(default_factory=TcpSettings)
    redirects: tuple[Redirect, ...] = ()  # --forwards: VM connections to unix sockets
    max_pending_connects: int = MAX_PENDING_CONNECTS  # host connects in flight per VM
    verify_checksums: bool = False  # --verify-checksums: drop VM frames whose sums are wrong
    udp_idle_timeout: float = IDLE_TIMEOUT
    udp_max_flows: int = MAX_FLOWS
    dns_mode: str = "forward"  # or "host": A/AAAA/PTR from getaddrinfo
    dns_timeout: float = 5.0
    dns_cache: int = 0  # forwarded answers kept (0: none)
