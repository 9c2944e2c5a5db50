"""How a connection behaves: one frozen value, built once and shared by every connection.

The defaults here are the only ones: the command line's ``--tcp-keepalive``, the
stack and the NAT all take theirs from this module. The NAT derives the MSS, the
super-segment size and whether to compute checksums per address family and per
link (``TcpNat``); everything else reaches the connection as the user set it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

# Idle seconds before the first probe, seconds between probes, probes (Linux's defaults).
KEEPALIVE: Final = (7200.0, 75.0, 9)
# A pure ACK for the VM's in-order data waits this long for the host's answer to carry it
# (loopback and LAN services answer well within it; RFC 1122 allows up to 500 ms).
DELAYED_ACK: Final = 0.002


@dataclass(frozen=True, slots=True)
class TcpSettings:
    mss: int = 1460  # what we announce; the NAT sets it from the MTU and the family
    rcv_buffer: int = 2 << 20
    snd_buffer: int = 2 << 20
    send_space_low: int | None = None  # SendSpace once this much is free (None: a quarter)
    checksum: bool = True  # False: the link completes TCP checksums (TAP offload)
    gso_size: int | None = None  # super-segments the link cuts up (TSO); None: MSS-sized
    keepalive: tuple[float, float, int] | None = KEEPALIVE  # None: never probe
    msl: float = 15.0
    fin_wait_2_timeout: float | None = 60.0
    max_retries: int = 15
    user_timeout: float = 300.0
    syn_retries: int = 5
    min_rto: float = 0.2
    max_rto: float = 60.0
    initial_rto: float = 1.0
    initial_cwnd: int = 10
    max_ooo_intervals: int = 1024
    sack: bool = True
    timestamps: bool = True
    window_scaling: bool = True
    delayed_ack: float = DELAYED_ACK  # 0: ACK at once


DEFAULTS: Final = TcpSettings()
