"""TCP's states and what moves a connection between them (RFC 9293 3.3.2, figure 5).

Like h11's ``_state.py``: every state and every edge in one table, so a reader
sees the whole lifecycle on one screen. :class:`TcpConnection` applies it and
runs each state's entry actions (TIME_WAIT starts its 2 MSL timer, CLOSED
drops everything).
"""

from __future__ import annotations

CLOSED = "CLOSED"
SYN_SENT = "SYN_SENT"
SYN_RCVD = "SYN_RCVD"
ESTABLISHED = "ESTABLISHED"
FIN_WAIT_1 = "FIN_WAIT_1"
FIN_WAIT_2 = "FIN_WAIT_2"
CLOSE_WAIT = "CLOSE_WAIT"
CLOSING = "CLOSING"
LAST_ACK = "LAST_ACK"
TIME_WAIT = "TIME_WAIT"

# Events: what moves a connection from one state to the next.
CONNECT = "connect"  # the host opens actively
PASSIVE_OPEN = "passive open"  # the peer's SYN arrives for a listener
PEER_SYN = "peer SYN"  # the peer's SYN without an ACK of ours (simultaneous open)
HANDSHAKE_DONE = "handshake done"  # the peer acknowledged our SYN
CLOSE = "close"  # the host has no more data (shutdown)
FIN_ACKED = "FIN acked"  # the peer acknowledged our FIN
PEER_FIN = "peer FIN"  # the peer's FIN arrived in order
EXPIRED = "expired"  # TIME_WAIT's 2 MSL or FIN_WAIT_2's timeout ran out

# Every state and every edge; an event missing from a state's row leaves it where it is.
# Not listed: from any state, RST, abort() and giving up (timeouts) lead to CLOSED.
TRANSITIONS: dict[str, dict[str, str]] = {
    CLOSED: {CONNECT: SYN_SENT, PASSIVE_OPEN: SYN_RCVD},
    SYN_SENT: {HANDSHAKE_DONE: ESTABLISHED, PEER_SYN: SYN_RCVD},
    SYN_RCVD: {HANDSHAKE_DONE: ESTABLISHED},  # a FIN queued meanwhile then closes at once
    ESTABLISHED: {CLOSE: FIN_WAIT_1, PEER_FIN: CLOSE_WAIT},
    FIN_WAIT_1: {FIN_ACKED: FIN_WAIT_2, PEER_FIN: CLOSING},
    FIN_WAIT_2: {PEER_FIN: TIME_WAIT, EXPIRED: CLOSED},
    CLOSE_WAIT: {CLOSE: LAST_ACK},
    CLOSING: {FIN_ACKED: TIME_WAIT},
    LAST_ACK: {FIN_ACKED: CLOSED},
    TIME_WAIT: {EXPIRED: CLOSED},
}

# Groups of states that share a behaviour.
OPEN = frozenset((SYN_SENT, SYN_RCVD, ESTABLISHED, CLOSE_WAIT))  # the host may send
RECEIVING = frozenset((ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2))  # the peer has not sent FIN
SENDING = frozenset((ESTABLISHED, CLOSE_WAIT, FIN_WAIT_1, CLOSING, LAST_ACK))  # data may flow
KEEPALIVE = frozenset((ESTABLISHED, CLOSE_WAIT))  # an idle peer is probed
HANDSHAKE = frozenset((SYN_SENT, SYN_RCVD))  # our SYN is not yet acknowledged
