"""The send half of a connection: what may be sent, the segments that carry it, its timers.

SND.UNA <= SND.NXT <= SND.MAX over the send buffer: SND.NXT is rolled back to
SND.UNA to go back N after a timeout, SND.MAX remembers the highest sequence
ever sent (bare ACKs carry it). New data goes out as the smaller of cwnd and
the peer's window allows, in segments of the agreed MSS or, when the link
segments for us (TSO), in super-segments of up to ``gso_size`` bytes: one
Python pass per 64 KB whatever the MTU. Also here: RTT sampling (Karn), the
retransmission timer with its retry budget, and the persist timer that
probes a zero window (RFC 9293 3.8.6.1).
"""

from __future__ import annotations

from typing import Literal

from pyvpnkit.core.tcp.packet import PacketBuilder
from pyvpnkit.core.tcp.rto import RtoEstimator
from pyvpnkit.core.tcp.sendbuf import SendBuffer
from pyvpnkit.core.tcp.seq import MASK
from pyvpnkit.wire.tcp import ACK, FIN, PSH

Expiry = Literal["give up", "idle", "resend"]
DUPLICATE = -1  # Sender.on_ack: a duplicate ACK
OLD = -2  # Sender.on_ack: SND.UNA did not move, but not a duplicate ACK either


class Sender:
    __slots__ = (
        "_pb", "iss", "snd_una", "snd_nxt", "snd_max", "snd_wnd", "snd_wl1", "snd_wl2",
        "max_snd_wnd", "snd_mss", "snd_wscale", "gso_size", "buf", "size", "low", "space_low",
        "fin_queued", "ts_ok", "rto", "rto_at", "retries", "first_rexmit", "max_retries",
        "user_timeout", "syn_retries", "rtt_seq", "rtt_time", "persist_at", "persist_backoff",
    )  # fmt: skip

    def __init__(
        self,
        pb: PacketBuilder,
        iss: int,
        mss: int,
        rto: RtoEstimator,
        *,
        size: int,
        low: int,
        gso_size: int | None,
        max_retries: int,
        user_timeout: float,
        syn_retries: int,
    ) -> None:
        self._pb = pb
        self.iss = iss
        self.snd_una = self.snd_nxt = self.snd_max = iss
        self.snd_wnd = 0
        self.snd_wl1 = 0
        self.snd_wl2 = iss
        self.max_snd_wnd = 0
        self.snd_mss = mss
        self.snd_wscale = 0
        self.gso_size = gso_size
        self.buf = SendBuffer(iss + 1)
        self.size = size  # send buffer capacity
        self.low = low  # SendSpace once this much is free again
        self.space_low = False
        self.fin_queued = False
        self.ts_ok = False
        self.rto = rto
        self.rto_at: float | None = None
        self.retries = 0
        self.first_rexmit: float | None = None
        self.max_retries = max_retries
        self.user_timeout = user_timeout
        self.syn_retries = syn_retries
        self.rtt_seq: int | None = None  # timed segment (when timestamps are off)
        self.rtt_time = 0.0
        self.persist_at: float | None = None
        self.persist_backoff = 0

    def start(
        self, window: int, seq: int, ack: int, mss: int, wscale: int, timestamps: bool
    ) -> None:
        """The peer's SYN: its window (never scaled in a SYN, RFC 7323 2.2) and the options."""
        self.snd_wnd = self.max_snd_wnd = window
        self.snd_wl1 = seq
        self.snd_wl2 = ack
        self.snd_mss = mss
        self.snd_wscale = wscale
        self.ts_ok = timestamps

    def syn_sent(self, now: float) -> None:
        """Our SYN went out: it occupies one sequence number and is timed."""
        if self.snd_max == self.iss:
            self.snd_nxt = self.snd_max = self.iss + 1
            self.rtt_seq = self.iss + 1
            self.rtt_time = now
        if self.rto_at is None:
            self.rto_at = now + self.rto.rto

    # -- host data -------------------------------------------------------------

    def space(self, open_: bool) -> int:
        """Room in the send buffer (none once the FIN is queued or the connection is not
        ``open_`` for host data)."""
        if self.fin_queued or not open_:
            return 0
        return max(0, self.size - len(self.buf))

    def append(self, data: bytes | bytearray | memoryview, open_: bool) -> int:
        """Queue as much of ``data`` as there is room for; returns how many bytes."""
        space = 0 if self.fin_queued or not open_ else self.size - len(self.buf)
        n = len(data)
        if n > space:
            n = space
            self.space_low = True
        if n <= 0:
            return 0
        self.buf.append(data if n == len(data) else memoryview(data)[:n])
        if self.size - len(self.buf) < self.low:
            self.space_low = True
        return n

    def queue_fin(self) -> None:
        """No more host data: our FIN follows what is queued."""
        self.fin_queued = True

    def space_regained(self) -> bool:
        """True once after the buffer drained past its low-water mark."""
        if self.space_low and self.size - len(self.buf) >= self.low:
            self.space_low = False
            return True
        return False

    def discard(self) -> None:
        self.buf = SendBuffer(self.buf.end)

    # -- ACKs ------------------------------------------------------------------

    def on_ack(
        self,
        ack: int,
        seq: int,
        window: int | None,
        ts: tuple[int, int] | None,
        now: float,
        bare: bool,
    ) -> int:
        """An acceptable ACK (SND.UNA <= ``ack`` <= SND.MAX) of a segment starting at ``seq``.

        Takes its window unless it is older than the last one (RFC 9293 3.10.7.4; None:
        the SYN-ACK's, already taken). If it acknowledges new data: frees the bytes,
        samples the RTT, restarts the timer and the retry budget, and returns how many
        data bytes that was. Otherwise returns DUPLICATE for a duplicate ACK (RFC 5681 2:
        ``bare`` of data, SYN and FIN, same window, data outstanding) or OLD."""
        same = True
        if window is not None:
            new_wnd = window << self.snd_wscale
            same = new_wnd == self.snd_wnd
            wl1 = self.snd_wl1
            if wl1 < seq or (wl1 == seq and self.snd_wl2 <= ack):
                self.snd_wnd = new_wnd
                self.snd_wl1 = seq
                self.snd_wl2 = ack
                if new_wnd > self.max_snd_wnd:
                    self.max_snd_wnd = new_wnd
                if new_wnd:
                    self.persist_at = None
                    self.persist_backoff = 0
        if ack == self.snd_una:
            return DUPLICATE if bare and same and self.snd_max > ack else OLD
        buf = self.buf
        acked = buf.ack(min(ack, buf.end))
        if self.ts_ok and ts is not None and ts[1]:
            rtt_ms = (int(now * 1000) - ts[1]) & MASK
            if rtt_ms < 60_000:
                self.rto.sample(rtt_ms / 1000)
        elif self.rtt_seq is not None and ack >= self.rtt_seq:
            self.rto.sample(now - self.rtt_time)
            self.rtt_seq = None
        self.snd_una = ack
        if self.snd_nxt < ack:
            self.snd_nxt = ack
        self.retries = 0
        self.first_rexmit = None
        self.rto_at = None if ack == self.snd_max else now + self.rto.rto
        return acked

    def progress(self) -> None:
        """The handshake completed: the retry budget starts over."""
        self.retries = 0
        self.first_rexmit = None

    def rewind(self) -> None:
        """Go back N: send again from SND.UNA."""
        self.snd_nxt = self.snd_una

    def karn(self) -> None:
        """A range that may be timed was resent: its ACK no longer measures the RTT."""
        if self.rtt_seq is not None and self.rtt_seq > self.snd_una:
            self.rtt_seq = None

    # -- segments --------------------------------------------------------------

    def output(
        self,
        out: list[bytes],
        window: int,
        ack: int,
        opts: bytes,
        cwnd: int,
        limit: int | None,
        now: float,
        sending: bool,
    ) -> bool:
        """Send new (or, after a timeout, resend) data and the FIN as cwnd and the peer's
        window allow (``limit`` overrides that edge: SACK recovery), if ``sending``; then
        time what is in flight, or probe a zero window that holds data back. True if
        anything was sent."""
        sb = self.buf
        end = sb.end
        nxt = self.snd_nxt
        fin_queued = self.fin_queued
        sent = False
        if sending and (nxt < end or (fin_queued and nxt == end)):
            eff_mss = self.snd_mss - len(opts)
            eff_seg = max(self.gso_size or 0, self.snd_mss) - len(opts)
            pb = self._pb  # a native call when compiled (a bound method is a generic one)
            snd_una = self.snd_una
            snd_wnd = self.snd_wnd
            if limit is None:
                limit = snd_una + (cwnd if cwnd < snd_wnd else snd_wnd)
            while nxt < end:
                room = limit - nxt
                n = end - nxt
                if n > eff_seg:
                    n = eff_seg
                if room < n and room >= eff_mss and n > eff_mss:
                    n = room - room % eff_mss  # a super-segment of whole segments
                if room < n:
                    # Sender SWS avoidance (RFC 9293 3.8.6.2.1) without Nagle.
                    peer_limited = snd_wnd <= cwnd and room >= self.max_snd_wnd // 2
                    if room > 0 and (nxt == snd_una or peer_limited):
                        n = room
                    else:
                        break
                seg_end = nxt + n
                flags = ACK
                if seg_end == end:
                    flags = ACK | PSH | FIN if fin_queued else ACK | PSH
                elif limit - seg_end < eff_mss:
                    flags = ACK | PSH
                out.append(pb.build(nxt & MASK, ack, flags, window, opts, sb.slice(nxt, n)))
                sent = True
                if self.rtt_seq is None and nxt >= self.snd_max and not self.ts_ok:
                    self.rtt_seq = seg_end
                    self.rtt_time = now
                nxt = seg_end + (1 if flags & FIN else 0)
            else:
                if fin_queued and nxt == end:
                    out.append(pb.build(nxt & MASK, ack, ACK | FIN, window, opts))
                    sent = True
                    nxt += 1
            self.snd_nxt = nxt
            if nxt > self.snd_max:
                self.snd_max = nxt
        self.arm_timers(now, sending)
        return sent

    @property
    def idle(self) -> bool:
        """Nothing new to send: all data (and a queued FIN) went out."""
        nxt, end = self.snd_nxt, self.buf.end
        return nxt > end or (nxt == end and not self.fin_queued)

    def arm_timers(self, now: float, sending: bool) -> None:
        """Time what is in flight, or probe a zero window that holds data back."""
        if self.snd_max > self.snd_una:
            if self.rto_at is None:
                self.rto_at = now + self.rto.rto
            self.persist_at = None
        elif sending and self.snd_nxt < self.buf.end and self.snd_wnd == 0:
            if self.persist_at is None:
                self.persist_at = now + self._persist_interval()
        else:
            self.persist_at = None
            self.persist_backoff = 0

    def retransmit_una(self, out: list[bytes], window: int, ack: int, opts: bytes) -> int:
        """Resend the first unacknowledged segment; returns the sequence after it."""
        una = self.snd_una
        end = self.buf.end
        if self.rtt_seq is not None and self.rtt_seq > una:
            self.rtt_seq = None  # Karn: this range is now ambiguous
        sent_to = una
        if una < end:
            n = min(self.snd_mss - len(opts), end - una, self.snd_max - una)
            flags = ACK | PSH
            if self.fin_queued and una + n == end and self.snd_max > end:
                flags |= FIN
            payload = self.buf.slice(una, n)
            out.append(self._pb.build(una & MASK, ack, flags, window, opts, payload))
            sent_to = una + n + (1 if flags & FIN else 0)
        elif self.fin_queued:
            out.append(self._pb.build(una & MASK, ack, ACK | FIN, window, opts))
            sent_to = una + 1
        if self.snd_nxt < sent_to:
            self.snd_nxt = sent_to
        return sent_to

    def resend(
        self, out: list[bytes], start: int, n: int, window: int, ack: int, opts: bytes
    ) -> None:
        """Resend ``n`` sequence numbers from ``start`` (the last may be our FIN)."""
        data_end = self.buf.end
        stop = start + n
        payload = self.buf.slice(start, min(stop, data_end) - start) if start < data_end else b""
        flags = ACK | PSH if payload else ACK
        if self.fin_queued and stop > data_end:
            flags |= FIN
        out.append(self._pb.build(start & MASK, ack, flags, window, opts, payload))

    # -- timers ----------------------------------------------------------------

    def deadline(self) -> float | None:
        rto_at, persist_at = self.rto_at, self.persist_at
        if persist_at is not None and (rto_at is None or persist_at < rto_at):
            return persist_at
        return rto_at

    def stop_timers(self) -> None:
        self.rto_at = None
        self.persist_at = None

    def timeout(self, now: float, handshake: bool, heard: bool) -> Expiry:
        """The retransmission timer expired: resend, or give up once the budget is spent
        (``heard``: the peer spoke since the last timer run)."""
        self.rto_at = None
        if handshake:
            self.retries += 1
            if self.retries > self.syn_retries:
                return "give up"
        else:
            if self.snd_max == self.snd_una:
                return "idle"
            # A peer that keeps answering with a zero window is alive: probe, don't count.
            if not (self.snd_wnd == 0 and heard):
                self.retries += 1
                if self.first_rexmit is None:
                    self.first_rexmit = now
                if self.retries > self.max_retries or now - self.first_rexmit >= self.user_timeout:
                    return "give up"
        self.rto.backoff()
        self.rtt_seq = None
        self.rto_at = now + self.rto.rto
        return "resend"

    def persist_fired(self, now: float, sending: bool) -> bool:
        """The persist timer expired: True when the window is still shut on waiting data
        (a probe is due; the next one backs off)."""
        self.persist_at = None
        if self.snd_wnd or self.snd_max != self.snd_una or not sending:
            return False
        self.persist_backoff += 1
        self.persist_at = now + self._persist_interval()
        return True

    def _persist_interval(self) -> float:
        rto = self.rto
        return float(
            min(max(rto.rto, rto.min_rto) * (1 << min(self.persist_backoff, 16)), rto.max_rto)
        )
