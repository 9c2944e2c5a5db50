"""The engine's one contract with the host: an executor performs some kinds of effect.

Each host module (host_tcp, host_udp, host_icmp, dns_upstream, host_resolver,
forwarder, http_proxy) is one. The composition root (app/service.py) hands them to the
engine, which routes each effect by its type and knows none of them.
"""

from __future__ import annotations

from typing import Protocol

from pyvpnkit.core.effects import Effect


class Executor(Protocol):
    @property
    def effects(self) -> tuple[type[Effect], ...]:
        """The effect types this executor performs (each type has one executor)."""
        ...

    def execute(self, effect: Effect) -> None:
        """Perform ``effect`` on the host; report results to the core, then wake the engine."""
        ...

    def fail(self, effect: Effect) -> None:
        """``execute(effect)`` raised: undo what it left half done (reset or drop its flow)."""
        ...

    def close(self) -> None:
        """The service stops: close every host resource."""
        ...
