"""Loss recovery of the send half: NewReno without SACK, a scoreboard with it.

While the peer sends no SACK blocks, NewReno (RFC 5681/6582) resends one hole
per RTT. Once it does, a scoreboard drives RFC 6675-style recovery: every
un-SACKed range below the highest SACKed byte counts as lost (the link does
not reorder, as in FACK) and is resent once per recovery, as many per RTT as
cwnd minus the pipe estimate allows; resent ranges found lost again go first
(:class:`RetransmitLog`); after a timeout only the un-SACKed ranges are resent.
The scoreboard is only touched when SACK blocks arrive or during recovery.
This module decides what to resend; the :class:`Sender` builds the segments.
"""

from __future__ import annotations

from pyvpnkit.core.tcp.congestion import NewReno
from pyvpnkit.core.tcp.scoreboard import RetransmitLog, Scoreboard
from pyvpnkit.core.tcp.sender import Sender
from pyvpnkit.core.tcp.seq import unwrap

DUPTHRESH = 3  # segments SACKed above a hole before it counts as lost (RFC 6675)
MAX_SACK_RTOS = 2  # consecutive timeouts that keep the scoreboard (reneging safety)


class Recovery:
    __slots__ = (
        "_tx", "_initial_cwnd", "cc", "sacks", "_log", "rec_end", "_lost_to", "_high_rxt",
        "_force", "rexmit_una",
    )  # fmt: skip

    def __init__(self, tx: Sender, initial_cwnd: int) -> None:
        self._tx = tx
        self._initial_cwnd = initial_cwnd
        self.cc = NewReno(tx.snd_mss, tx.iss, initial_cwnd)
        self.sacks = Scoreboard()
        self._log = RetransmitLog()
        self.rec_end: int | None = None  # SACK recovery runs until SND.UNA reaches this
        self._lost_to = 0  # in SACK recovery, holes below max(this, highest SACK) are lost
        self._high_rxt = 0  # lost data below this was already resent in this recovery
        self._force = False  # resend the first hole even if the pipe is full
        self.rexmit_una = False  # resend the first unacknowledged segment on output

    def restart(self) -> None:
        """The handshake settled the MSS: count the initial window in its segments."""
        self.cc = NewReno(self._tx.snd_mss, self._tx.iss, self._initial_cwnd)

    def clear(self) -> None:
        self.sacks.clear()
        self.rec_end = None

    def stop(self) -> None:
        """The timers stopped (TIME_WAIT or CLOSED): no retransmission is due."""
        self.rexmit_una = False

    # -- ACKs ------------------------------------------------------------------

    def on_ack(self, ack: int, acked: int) -> None:
        """SND.UNA advanced to ``ack`` over ``acked`` data bytes."""
        rec = self.rec_end
        if rec is None:
            if self.cc.on_ack(ack, acked, self._tx.snd_max - ack):
                self.rexmit_una = True
        elif ack >= rec:
            self.rec_end = None
            self.cc.on_ack(ack, acked, self._tx.snd_max - ack)  # leaves recovery
        elif not self.cc.in_recovery:
            self.cc.on_ack(ack, acked, self._tx.snd_max - ack)  # slow start after a timeout

    def on_dupack(self) -> None:
        tx = self._tx
        if self.rec_end is None and self.cc.on_dupack(tx.snd_una, tx.snd_max):
            if self.sacks:
                self._enter_sack_recovery()
            else:
                self.rexmit_una = True

    def on_sack(self, blocks: tuple[tuple[int, int], ...]) -> None:
        """Fold the peer's SACK blocks into the scoreboard; detect loss and reneging."""
        sb = self.sacks
        tx = self._tx
        una = tx.snd_una
        if sb and not sb.ack(una):
            # The peer dropped data it had SACKed: forget all of it and fall back
            # to NewReno (or go back N after a timeout).
            sb.clear()
            self._log.reset()
            if self.rec_end is not None:
                self.rec_end = None
                if not self.cc.in_recovery:
                    tx.rewind()
                self.rexmit_una = True
        snd_max = tx.snd_max
        newest = None
        for left, right in blocks:
            start = unwrap(left, una)
            end = unwrap(right, una)
            # Blocks at or below SND.UNA are D-SACKs (RFC 2883) or bogus.
            if una < start < end <= snd_max:
                sb.add(start, end)
                if newest is None:
                    newest = (start, end)
        if not sb:
            return
        if self.rec_end is not None:
            self._log.detect(sb, una, newest)
            return
        cc = self.cc
        if cc.in_recovery:  # NewReno recovery that now has SACK information
            cc.deflate()
            self.rec_end = cc.recover
            self._lost_to = una
            self._log.reset()
        elif una >= cc.recover and (
            sb.sacked >= DUPTHRESH * tx.snd_mss or sb.high >= min(snd_max, tx.buf.end)
        ):
            # Enough SACKed above the first hole, or everything sent after it
            # arrived (no more duplicate ACKs will come: RFC 5827 early retransmit).
            self._enter_sack_recovery()

    def _enter_sack_recovery(self) -> None:
        tx = self._tx
        una = tx.snd_una
        self.cc.on_sack_loss(una, tx.snd_max)
        self.rec_end = tx.snd_max
        self._lost_to = una
        self._high_rxt = una
        self._force = True
        self._log.reset()

    def on_timeout(self, retries: int) -> None:
        """The retransmission timer expired (``retries`` times in a row)."""
        tx = self._tx
        self.cc.on_timeout(tx.snd_una, tx.snd_max)
        if self.sacks and retries <= MAX_SACK_RTOS:
            # Resend every un-SACKed range (RFC 6675 5.1), first one even into a
            # zero window (it is the probe). Repeated timeouts without progress
            # drop the scoreboard, in case the peer reneged.
            self.rec_end = self._lost_to = tx.snd_max
            self._high_rxt = tx.snd_una
            self._force = True
            self.rexmit_una = False
            self._log.reset()
            return
        self.clear()
        # Go back N; the first segment goes out even into a zero window (it is the probe).
        tx.rewind()
        self.rexmit_una = True

    # -- output ----------------------------------------------------------------

    def output(
        self, out: list[bytes], window: int, ack: int, opts: bytes
    ) -> tuple[int | None, bool]:
        """Resend what recovery calls for; returns the sequence new data may go up to
        (None: as cwnd allows) and whether anything was sent."""
        limit = None
        sent = False
        if self.rec_end is not None:
            limit, sent = self._sack_output(out, window, ack, opts)
        if self.rexmit_una:
            self.rexmit_una = False
            tx = self._tx
            if tx.snd_max > tx.snd_una:
                sent_to = tx.retransmit_una(out, window, ack, opts)
                data_to = min(sent_to, tx.buf.end)
                if data_to > self._high_rxt:
                    self._high_rxt = data_to
                sent = True
        return limit, sent

    def _sack_output(
        self, out: list[bytes], window: int, ack: int, opts: bytes
    ) -> tuple[int, bool]:
        """SACK recovery: resend lost ranges while cwnd exceeds the pipe (RFC 6675 5)."""
        tx = self._tx
        sb = self.sacks
        log = self._log
        una = tx.snd_una
        snd_max = tx.snd_max
        lost_to = self._lost_to
        if sb and sb.high > lost_to:
            lost_to = sb.high
        if lost_to > snd_max:
            lost_to = snd_max
        nxt = self._high_rxt if self._high_rxt > una else una
        # In the pipe: all outstanding bytes but the SACKed and the lost not yet resent.
        pipe = snd_max - una - sb.sacked - sb.hole_bytes(nxt, lost_to) - log.lost_bytes(sb, una)
        cwnd = self.cc.cwnd
        eff_mss = tx.snd_mss - len(opts)
        sent = False
        # Resent ranges that were lost again go first (once more; then the RTO).
        while cwnd - pipe >= eff_mss or self._force:
            relost = log.next_lost(sb, una, eff_mss)
            if relost is None:
                break
            start, n = relost
            tx.resend(out, start, n, window, ack, opts)
            self._force = False
            sent = True
            pipe += n
        while cwnd - pipe >= eff_mss or self._force:
            hole = sb.next_hole(nxt, lost_to)
            if hole is None:
                break
            self._force = False
            start, end = hole
            n = min(end - start, eff_mss)
            tx.resend(out, start, n, window, ack, opts)
            log.record(start, start + n, snd_max)
            sent = True
            pipe += n
            nxt = start + n
        self._force = False
        if nxt > self._high_rxt:
            self._high_rxt = nxt
        if sent:
            tx.karn()
        room = cwnd - pipe
        limit = tx.snd_nxt + (room if room > 0 else 0)
        wnd_edge = una + tx.snd_wnd
        return (limit if limit < wnd_edge else wnd_edge), sent
