"""Sans-I/O TCP that terminates the VMs' connections (split by concern like mirage-tcpip).

``connection`` holds the state machine; ``seq``, ``reassembly``, ``sendbuf``,
``rto``, ``congestion`` and ``packet`` are the parts it is built from.
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

__all__ = [
    "Closed",
    "DataReceived",
    "Established",
    "PeerClosed",
    "Reset",
    "SendSpace",
    "TcpConnection",
    "TcpEvent",
    "TimedOut",
]
