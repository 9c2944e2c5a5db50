"""NewReno congestion control (RFC 5681, RFC 6582).

Sequence numbers here are the connection's unwrapped ones. The peer is on a
local link, so growth is generous: slow start adds every acknowledged byte
(RFC 3465 without the L limit) and nothing but the peer's window caps cwnd.
"""

from __future__ import annotations

DUPACK_THRESHOLD = 3
MAX_CWND = 1 << 31


class NewReno:
    __slots__ = ("mss", "cwnd", "ssthresh", "dupacks", "in_recovery", "recover")

    def __init__(self, mss: int, snd_una: int, initial_segments: int = 10) -> None:
        self.mss = mss
        self.cwnd = initial_segments * mss
        self.ssthresh = MAX_CWND
        self.dupacks = 0
        self.in_recovery = False
        self.recover = snd_una  # highest sequence sent when the last loss episode began

    def on_ack(self, ack: int, acked: int, flight_after: int) -> bool:
        """``acked`` new bytes were acknowledged; True asks to retransmit the first hole."""
        self.dupacks = 0
        mss = self.mss
        if self.in_recovery:
            if ack >= self.recover:  # full acknowledgement: leave recovery, deflate
                self.in_recovery = False
                self.cwnd = min(self.ssthresh, max(flight_after, mss) + mss)
                return False
            # Partial acknowledgement: the next hole was lost too.
            self.cwnd = max(self.cwnd - acked, mss) + (mss if acked >= mss else 0)
            return True
        if self.cwnd < self.ssthresh:
            self.cwnd = min(self.cwnd + acked, MAX_CWND)
        else:
            self.cwnd = min(self.cwnd + max(1, mss * acked // self.cwnd), MAX_CWND)
        return False

    def on_dupack(self, snd_una: int, snd_max: int) -> bool:
        """A duplicate ACK arrived; True asks for a fast retransmit of ``snd_una``."""
        self.dupacks += 1
        if self.in_recovery:
            self.cwnd = min(self.cwnd + self.mss, MAX_CWND)  # a segment left the network
            return False
        if self.dupacks == DUPACK_THRESHOLD and snd_una >= self.recover:
            flight = snd_max - snd_una
            self.ssthresh = max(flight // 2, 2 * self.mss)
            self.cwnd = self.ssthresh + DUPACK_THRESHOLD * self.mss
            self.recover = snd_max
            self.in_recovery = True
            return True
        return False

    def on_sack_loss(self, snd_una: int, snd_max: int) -> None:
        """SACK-based loss detection (RFC 6675 5): halve once, no window inflation.

        The sender then paces (re)transmissions by its pipe estimate against cwnd,
        and a partial ACK leaves cwnd alone (it must not call :meth:`on_ack` for it).
        """
        if not self.in_recovery:
            self.ssthresh = max((snd_max - snd_una) // 2, 2 * self.mss)
        self.cwnd = self.ssthresh
        self.recover = snd_max
        self.in_recovery = True
        self.dupacks = 0

    def deflate(self) -> None:
        """NewReno recovery learned of SACK: drop the dupack inflation, pace by the pipe."""
        self.cwnd = self.ssthresh

    def on_timeout(self, snd_una: int, snd_max: int) -> None:
        """Retransmission timer expiry: back to one segment, slow start (RFC 5681 3.1)."""
        flight = snd_max - snd_una
        self.ssthresh = max(flight // 2, 2 * self.mss)
        self.cwnd = self.mss
        self.recover = snd_max
        self.in_recovery = False
        self.dupacks = 0
