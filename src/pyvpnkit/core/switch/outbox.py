"""What the stack's machines made since its last drain: IP packets for VMs, effects
for the runtime.

The stack hands one outbox to the UDP and ICMP NATs, the UDP forwarder and the
reassembler, so a drain takes their output in one swap instead of a call (and
two fresh lists) per machine, after every batch of frames. A machine made
alone (the unit tests) gets its own, and its ``drain()`` takes from that.
"""

from __future__ import annotations

from pyvpnkit.core.effects import Effect


class Outbox:
    __slots__ = ("packets", "effects")

    def __init__(self) -> None:
        self.packets: list[bytes] = []
        self.effects: list[Effect] = []

    def take(self) -> tuple[list[bytes], list[Effect]]:
        packets, effects = self.packets, self.effects
        self.packets, self.effects = [], []
        return packets, effects


__all__ = ["Outbox"]
