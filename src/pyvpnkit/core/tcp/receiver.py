"""The receive half of a connection: window, in-order delivery, what the next ACK must say.

RCV.NXT moves as bytes arrive in order (out-of-order ones wait in the
reassembly queue); the advertised right edge RCV.ADV only moves right, and
only once an ACK has told the peer (RFC 9293 3.8.6.2.2). Bytes count against
the buffer until the host has taken them (``consumed``), so the window the
peer sees follows what the host side absorbs.
"""

from __future__ import annotations

from typing import Literal

from pyvpnkit.core.tcp.reassembly import Chunk, Reassembly
from pyvpnkit.wire.tcp import ACK, FIN, RST, SYN

Verdict = Literal["accept", "drop", "reset", "unacceptable"]


class Receiver:
    __slots__ = (
        "buffer", "mss", "irs", "rcv_nxt", "rcv_adv", "rcv_wscale", "reasm", "peer_fin",
        "unconsumed", "pending", "ack_pending", "dupacks", "ts_ok", "ts_recent",
        "may_delay", "delack", "delack_at", "unacked",
    )  # fmt: skip

    def __init__(
        self, buffer: int, mss: int, max_ooo_intervals: int, may_delay: bool = False
    ) -> None:
        self.buffer = buffer
        self.mss = mss  # ours: the unit of receiver SWS avoidance
        self.irs = 0
        self.rcv_nxt = 0
        self.rcv_adv = 0
        self.rcv_wscale = 0
        self.reasm = Reassembly(max_ooo_intervals)
        self.peer_fin: int | None = None  # sequence number of the peer's FIN, once seen
        self.unconsumed = 0  # delivered to the host but not yet taken by it
        self.pending: list[Chunk] = []  # in-order bytes for the next DataReceived
        self.ack_pending = False  # the next drain owes the peer an ACK
        self.dupacks = 0  # out-of-order arrivals since the last drain (RFC 5681 4.2)
        self.ts_ok = False
        self.ts_recent = 0  # the peer's latest TSval, echoed back (RFC 7323 4.3)
        # Delayed ACK (RFC 1122 4.2.3.2, RFC 5681 4.2): in-order data may wait for the
        # host's answer to carry its ACK, until ``delack_at`` or a second full segment.
        self.may_delay = may_delay
        self.delack = False  # an ACK is owed but may wait
        self.delack_at: float | None = None
        self.unacked = 0  # bytes taken since the last ACK went out

    def start(self, irs: int, wscale: int, timestamps: bool, ts: tuple[int, int] | None) -> None:
        """The peer's SYN arrived: its stream starts after ``irs``; offer an unscaled window."""
        self.irs = irs
        self.rcv_nxt = irs + 1
        self.rcv_adv = self.rcv_nxt + min(self.buffer, 0xFFFF)
        self.rcv_wscale = wscale
        self.ts_ok = timestamps
        if ts is not None:
            self.ts_recent = ts[0]

    def check(self, seq: int, plen: int, flags: int, ts: tuple[int, int] | None) -> Verdict:
        """The first checks of an arriving segment (RFC 9293 3.10.7.4): sequence number,
        RST, SYN, ACK; an accepted segment's TSval becomes TS.Recent (RFC 7323 4.3)."""
        rcv_nxt = self.rcv_nxt
        wnd = self.rcv_adv - rcv_nxt
        seg_len = plen + (1 if flags & SYN else 0) + (1 if flags & FIN else 0)
        if seg_len == 0:
            ok = seq == rcv_nxt if wnd <= 0 else rcv_nxt <= seq < self.rcv_adv
        elif wnd <= 0:
            # Like Linux, take a bare FIN at RCV.NXT even into a zero window.
            ok = plen == 0 and flags & (FIN | SYN) == FIN and seq == rcv_nxt
        else:
            last = seq + seg_len - 1
            ok = rcv_nxt <= seq < self.rcv_adv or rcv_nxt <= last < self.rcv_adv
        if not ok:
            if not flags & RST:
                self.ack_pending = True
            return "unacceptable"
        if flags & RST:
            return "reset"
        if flags & SYN:
            self.ack_pending = True  # challenge ACK (RFC 5961 4.2)
            return "drop"
        if not flags & ACK:
            return "drop"
        if self.ts_ok and ts is not None and seq <= rcv_nxt:
            self.ts_recent = ts[0]
        return "accept"

    def text(self, seq: int, payload: memoryview, fin: int) -> bool:
        """Take the segment's bytes (and FIN); True once the peer's FIN is reached in order."""
        rcv_nxt = self.rcv_nxt
        # Old, clipped, out-of-order or FIN-bearing segments are answered at once.
        delay = self.may_delay and not fin and seq == rcv_nxt and not self.reasm.bytes
        if seq < rcv_nxt:
            payload = payload[rcv_nxt - seq :]
            seq = rcv_nxt
        limit = self.rcv_adv if self.peer_fin is None else min(self.rcv_adv, self.peer_fin)
        if seq + len(payload) > limit:
            payload = payload[: max(0, limit - seq)]
            fin = 0
            delay = False
        plen = len(payload)
        if delay and plen:
            self.unacked += plen
            # Never sit on the ACK for a second full segment or a closing window.
            if self.unacked < 2 * self.mss and self._roomy(seq + plen):
                self.delack = True
            else:
                self.ack_pending = True
        else:
            self.ack_pending = True
        if fin and self.peer_fin is None:
            self.peer_fin = seq + plen
            self.reasm.clip(seq + plen)  # nothing may follow the FIN
        if seq == rcv_nxt:
            if plen:
                # Frames are immutable bytes: keep a view until the one copy in take_data().
                self.pending.append(payload if isinstance(payload.obj, bytes) else bytes(payload))
                rcv_nxt += plen
                if self.reasm.bytes:  # (an attribute: cheaper than its __bool__)
                    chunks, new_nxt = self.reasm.pop(rcv_nxt)
                    self.pending.extend(chunks)
                    plen += new_nxt - rcv_nxt
                    rcv_nxt = new_nxt
                self.rcv_nxt = rcv_nxt
                self.unconsumed += plen
        elif plen:
            self.reasm.add(seq, payload if isinstance(payload.obj, bytes) else bytes(payload))
            self.dupacks += 1
        if self.peer_fin is not None and self.rcv_nxt == self.peer_fin:
            self.rcv_nxt += 1
            return True
        return False

    def take_data(self) -> bytes:
        """The in-order bytes gathered since the last call, copied once."""
        p = self.pending
        self.pending = []
        return bytes(p[0]) if len(p) == 1 else b"".join(p)

    def consumed(self, n: int, open_window: bool) -> bool:
        """The host took ``n`` bytes; owe a window update if that opens it enough
        (True then: a drain has an ACK to send or to schedule).

        While the peer still has room to send, the update waits like a delayed
        ACK: the host's answer usually carries it within microseconds. Sent at
        once, it costs a frame per short connection (the first byte taken
        opens the SYN's unscaled 64 KB window to the whole buffer).
        """
        self.unconsumed = max(0, self.unconsumed - n)
        if open_window:
            avail = self.buffer - self.unconsumed
            cur = max(self.rcv_adv - self.rcv_nxt, 0)
            if cur <= self.buffer // 2 and avail - cur >= self._sws_threshold():
                if self.may_delay and self._roomy(self.rcv_nxt):
                    self.delack = True
                else:
                    self.ack_pending = True
                return True
        return False

    def _roomy(self, nxt: int) -> bool:
        """The window left beyond ``nxt`` lets the peer go on sending while an ACK waits."""
        return self.rcv_adv - nxt >= min(2 * self.mss, 0x8000)

    def _sws_threshold(self) -> int:
        return max(min(self.buffer // 2, self.mss), 1)

    def window(self) -> tuple[int, int]:
        """Window field to advertise and the right edge it stands for (never left of RCV.ADV,
        up to scaling granularity). Receiver SWS avoidance: the edge only moves right by at
        least min(buffer/2, MSS) (RFC 9293 3.8.6.2.2)."""
        rcv_nxt = self.rcv_nxt
        avail = self.buffer - self.unconsumed
        cur = self.rcv_adv - rcv_nxt
        if cur < 0:
            cur = 0
        wnd = avail if avail - cur >= self._sws_threshold() else cur
        ws = self.rcv_wscale
        field = wnd >> ws
        if field > 0xFFFF:
            field = 0xFFFF
        return field, rcv_nxt + (field << ws)

    def advertised(self, edge: int) -> None:
        """An ACK told the peer ``edge``: accept up to there from now on."""
        if edge > self.rcv_adv:
            self.rcv_adv = edge

    def acked(self) -> None:
        """A segment carrying our ACK went out: nothing is owed any more."""
        self.ack_pending = self.delack = False
        self.delack_at = None
        self.unacked = 0

    def close(self) -> None:
        """Drop what waits out of order."""
        self.reasm = Reassembly(1)
        self.acked()
