"""Sans-I/O TCP that terminates the VMs' connections (split by concern like mirage-tcpip).

``connection`` is the state machine (its table of states and edges is in
``state``); it wires ``receiver``, ``sender``, ``recovery``, ``options`` and
``timers``, each owning its state, built in turn on ``seq``, ``reassembly``,
``sendbuf``, ``rto``, ``congestion``, ``scoreboard`` and ``packet``.
"""

from pyvpnkit.core.tcp.connection import TcpConnection
from pyvpnkit.core.tcp.events import (
    Closed,
    DataReceived,
    Established,
    PeerClosed,
    Reset,
    SendSpace,
    TcpEvent,
    TimedOut,
)
from pyvpnkit.core.tcp.settings import TcpSettings

__all__ = [
    "Closed",
    "DataReceived",
    "Established",
    "PeerClosed",
    "Reset",
    "SendSpace",
    "TcpConnection",
    "TcpEvent",
    "TcpSettings",
    "TimedOut",
]
