"""One TCP connection as a sans-I/O state machine (RFC 9293, 6298, 5681/6582, 7323, 2018, 6675).

Segments, host data and timer expiries go in; complete IPv4 packets and
events come out of :meth:`TcpConnection.drain`. Work is deferred to ``drain``
on purpose: the runtime drains once per batch of frames, so one ACK (with one
window update) answers a whole batch and data rides on it.

Sequence numbers are kept unwrapped (growing ints starting at the ISS/IRS) and
only reduced modulo 2**32 on the wire, so comparisons are plain ``<``.

Loss recovery: NewReno (one hole per RTT) while the peer sends no SACK blocks.
Once it does, a scoreboard drives RFC 6675-style recovery: every un-SACKed
range below the highest SACKed byte counts as lost (the link does not reorder,
as in FACK) and is resent once per recovery, as many per RTT as cwnd minus the
pipe estimate allows; after a timeout only the un-SACKed ranges are resent.
The scoreboard is only touched when SACK blocks arrive or during recovery.
"""

from __future__ import annotations

import struct
from typing import Any

from pyvpnkit.core.tcp.congestion import NewReno
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
from pyvpnkit.core.tcp.packet import PacketBuilder
from pyvpnkit.core.tcp.reassembly import Chunk, Reassembly
from pyvpnkit.core.tcp.rto import RtoEstimator
from pyvpnkit.core.tcp.scoreboard import RetransmitLog, Scoreboard
from pyvpnkit.core.tcp.sendbuf import SendBuffer
from pyvpnkit.core.tcp.seq import MASK, unwrap
from pyvpnkit.wire.tcp import ACK, FIN, PSH, RST, SYN, TcpOptions, TcpSegment, encode_options

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

_OPEN = frozenset((SYN_SENT, SYN_RCVD, ESTABLISHED, CLOSE_WAIT))  # send() allowed
_RECEIVING = frozenset((ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2))  # peer has not sent FIN
_SENDING = frozenset((ESTABLISHED, CLOSE_WAIT, FIN_WAIT_1, CLOSING, LAST_ACK))
_KEEPALIVE = frozenset((ESTABLISHED, CLOSE_WAIT))

MIN_MSS = 64  # below this the options would not leave room for data
DEFAULT_PEER_MSS = 536  # RFC 9293 3.7.1
MAX_DUPACKS_PER_DRAIN = 64
DUPTHRESH = 3  # segments SACKed above a hole before it counts as lost (RFC 6675)
MAX_SACK_RTOS = 2  # consecutive timeouts that keep the scoreboard (reneging safety)
_TS_PREFIX = b"\x01\x01\x08\x0a"
_II = struct.Struct("!II")


def _wscale_for(buffer: int) -> int:
    shift = 0
    while shift < 14 and (buffer >> shift) > 0xFFFF:
        shift += 1
    return shift


class TcpConnection:
    """A TCP endpoint; ``local`` is pyvpnkit's side, ``remote`` the VM."""

    # fmt: off
    __slots__ = (
        "_state", "_pb", "mss", "rcv_buffer", "snd_buffer", "keepalive_idle",
        "keepalive_interval", "keepalive_probes", "msl", "fin_wait_2_timeout", "max_retries",
        "user_timeout", "syn_retries", "_send_low", "_use_sack", "_use_ts", "_use_ws", "_ws_ok",
        "_initial_cwnd", "_now", "_gso_size",
        # send side
        "iss", "snd_una", "snd_nxt", "snd_max", "snd_wnd", "snd_wl1", "snd_wl2", "max_snd_wnd",
        "snd_mss", "snd_wscale", "_sb", "_fin_queued", "_cc", "_rto", "_rto_at", "_retries",
        "_first_rexmit", "_rtt_seq", "_rtt_time", "_rexmit_una", "_syn_pending", "_persist_at",
        "_persist_backoff", "_probes_unanswered", "_probe_pending", "_space_low", "_heard",
        "_sacks", "_rec_end", "_lost_to", "_high_rxt", "_rec_force", "_rxt_log",
        # receive side
        "irs", "rcv_nxt", "rcv_adv", "rcv_wscale", "_reasm", "_peer_fin", "_unconsumed",
        "_pending", "_ack_pending", "_dupacks_out", "sack_ok", "ts_ok", "_ts_recent",
        "_last_recv", "_ka_probes", "_ka_last", "_tw_at",
        # output
        "_packets", "_events", "_closed_emitted",
    )
    # fmt: on

    def __init__(
        self,
        *,
        local_ip: bytes,
        local_port: int,
        remote_ip: bytes,
        remote_port: int,
        iss: int,
        mss: int,
        rcv_buffer: int = 4 << 20,
        snd_buffer: int = 4 << 20,
        keepalive_idle: float | None = 7200.0,
        checksum: bool = True,
        keepalive_interval: float = 75.0,
        keepalive_probes: int = 9,
        msl: float = 15.0,
        fin_wait_2_timeout: float | None = 60.0,
        max_retries: int = 15,
        user_timeout: float = 300.0,
        syn_retries: int = 5,
        min_rto: float = 0.2,
        max_rto: float = 60.0,
        initial_rto: float = 1.0,
        initial_cwnd: int = 10,
        send_space_low: int | None = None,
        max_ooo_intervals: int = 1024,
        sack: bool = True,
        timestamps: bool = True,
        window_scaling: bool = True,
        gso_size: int | None = None,
    ) -> None:
        self._state = CLOSED
        # When the link segments for us (TSO through a TAP's virtio-net header),
        # new data leaves in packets of up to gso_size bytes (options included)
        # instead of snd_mss: one Python pass per 64 KB whatever the MTU.
        self._gso_size = gso_size
        self._pb = PacketBuilder(local_ip, remote_ip, local_port, remote_port, checksum)
        self.mss = max(int(mss), MIN_MSS)
        self.rcv_buffer = max(int(rcv_buffer), 1)
        self.snd_buffer = max(int(snd_buffer), 1)
        self.keepalive_idle = keepalive_idle
        self.keepalive_interval = keepalive_interval
        self.keepalive_probes = keepalive_probes
        self.msl = msl
        self.fin_wait_2_timeout = fin_wait_2_timeout
        self.max_retries = max_retries
        self.user_timeout = user_timeout
        self.syn_retries = syn_retries
        self._send_low = self.snd_buffer // 4 if send_space_low is None else send_space_low
        self._use_sack = sack
        self._use_ts = timestamps
        self._use_ws = window_scaling
        self._ws_ok = False
        self._initial_cwnd = initial_cwnd
        self._now = 0.0

        iss &= MASK
        self.iss = iss
        self.snd_una = self.snd_nxt = self.snd_max = iss
        self.snd_wnd = 0
        self.snd_wl1 = 0
        self.snd_wl2 = iss
        self.max_snd_wnd = 0
        self.snd_mss = self.mss
        self.snd_wscale = 0
        self._sb = SendBuffer(iss + 1)
        self._fin_queued = False
        self._cc = NewReno(self.mss, iss, initial_cwnd)
        self._rto = RtoEstimator(initial_rto, min_rto, max_rto)
        self._rto_at: float | None = None
        self._retries = 0
        self._first_rexmit: float | None = None
        self._rtt_seq: int | None = None
        self._rtt_time = 0.0
        self._rexmit_una = False
        self._syn_pending = False
        self._persist_at: float | None = None
        self._persist_backoff = 0
        self._probes_unanswered = 0
        self._probe_pending = False
        self._space_low = False
        self._heard = False  # a segment arrived since the last timer run
        self._sacks = Scoreboard()
        self._rec_end: int | None = None  # SACK recovery runs until SND.UNA reaches this
        self._lost_to = 0  # in SACK recovery, holes below max(this, highest SACK) are lost
        self._high_rxt = 0  # lost data below this was already resent in this recovery
        self._rec_force = False  # resend the first hole even if the pipe is full
        self._rxt_log = RetransmitLog()

        self.irs = 0
        self.rcv_nxt = 0
        self.rcv_adv = 0
        self.rcv_wscale = 0
        self._reasm = Reassembly(max_ooo_intervals)
        self._peer_fin: int | None = None
        self._unconsumed = 0
        self._pending: list[Chunk] = []
        self._ack_pending = False
        self._dupacks_out = 0
        self.sack_ok = False
        self.ts_ok = False
        self._ts_recent = 0
        self._last_recv = 0.0
        self._ka_probes = 0
        self._ka_last = 0.0
        self._tw_at: float | None = None

        self._packets: list[bytes] = []
        self._events: list[object] = []
        self._closed_emitted = False

    # -- opening ---------------------------------------------------------------

    @classmethod
    def accept(cls, syn: TcpSegment, now: float, **kw: Any) -> TcpConnection:
        """Passive open answering the peer's SYN; the SYN-ACK goes out on the next drain."""
        conn = cls(**kw)
        conn._passive_open(syn, now)
        return conn

    def _passive_open(self, syn: TcpSegment, now: float) -> None:
        self._now = self._last_recv = now
        opts = syn.options
        self.irs = syn.seq
        self.rcv_nxt = syn.seq + 1
        self._negotiate(opts, offered=True)
        self.rcv_adv = self.rcv_nxt + min(self.rcv_buffer, 0xFFFF)
        self.snd_wnd = self.max_snd_wnd = syn.window  # never scaled in a SYN (RFC 7323 2.2)
        self.snd_wl1 = syn.seq
        self._state = SYN_RCVD
        self._syn_pending = True

    def connect(self, now: float) -> None:
        """Active open: a SYN goes out on the next drain."""
        if self._state != CLOSED or self._closed_emitted:
            return
        self._now = self._last_recv = now
        self._state = SYN_SENT
        self._syn_pending = True

    def _negotiate(self, opts: TcpOptions, offered: bool) -> None:
        """Adopt the options of the peer's SYN (``offered``: we sent or will send ours)."""
        peer_mss = opts.mss if opts.mss else DEFAULT_PEER_MSS
        self.snd_mss = max(min(peer_mss, self.mss), MIN_MSS)
        self._cc = NewReno(self.snd_mss, self.iss, self._initial_cwnd)
        self._ws_ok = offered and self._use_ws and opts.wscale is not None
        if self._ws_ok and opts.wscale is not None:
            self.snd_wscale = opts.wscale
            self.rcv_wscale = _wscale_for(self.rcv_buffer)
        else:
            self.snd_wscale = self.rcv_wscale = 0
        self.sack_ok = offered and self._use_sack and opts.sack_permitted
        self.ts_ok = offered and self._use_ts and opts.timestamps is not None
        if opts.timestamps is not None:
            self._ts_recent = opts.timestamps[0]

    # -- public state ----------------------------------------------------------

    @property
    def state(self) -> str:
        return self._state

    @property
    def closed(self) -> bool:
        return self._state == CLOSED

    @property
    def send_space(self) -> int:
        if self._fin_queued or self._state not in _OPEN:
            return 0
        return max(0, self.snd_buffer - len(self._sb))

    # -- host side -------------------------------------------------------------

    def send(self, data: bytes | bytearray | memoryview, now: float) -> int:
        """Queue up to ``send_space`` bytes for the peer; returns how many were taken."""
        self._now = now
        space = self.send_space
        n = len(data)
        if n > space:
            n = space
            self._space_low = True
        if n <= 0:
            return 0
        self._sb.append(data if n == len(data) else memoryview(data)[:n])
        if self.snd_buffer - len(self._sb) < self._send_low:
            self._space_low = True
        return n

    def shutdown(self, now: float) -> None:
        """No more host data: FIN after what is queued; receiving goes on (half-close)."""
        self._now = now
        if self._fin_queued or self._state not in _OPEN:
            return
        self._fin_queued = True
        if self._state == ESTABLISHED:
            self._state = FIN_WAIT_1
        elif self._state == CLOSE_WAIT:
            self._state = LAST_ACK
        # In SYN_SENT / SYN_RCVD the FIN waits for the handshake to finish.

    def abort(self, now: float) -> None:
        """Reset the connection (RST to the peer unless it never saw us)."""
        self._now = now
        if self._state == CLOSED:
            return
        if self._state not in (SYN_SENT, TIME_WAIT):
            self._send_rst()
        self._enter_closed()

    def consumed(self, n: int, now: float) -> None:
        """The host took ``n`` received bytes: reopen the window (RFC 9293 3.8.6.2.2)."""
        self._now = now
        if n <= 0:
            return
        self._unconsumed = max(0, self._unconsumed - n)
        if self._state in _RECEIVING:
            avail = self.rcv_buffer - self._unconsumed
            cur = max(self.rcv_adv - self.rcv_nxt, 0)
            if cur <= self.rcv_buffer // 2 and avail - cur >= self._sws_threshold():
                self._ack_pending = True

    def _sws_threshold(self) -> int:
        return max(min(self.rcv_buffer // 2, self.mss), 1)

    # -- segments from the peer ------------------------------------------------

    def handle_segment(self, seg: TcpSegment, now: float) -> None:
        self._now = now
        st = self._state
        if st == CLOSED:
            return
        if st == SYN_SENT:
            self._handle_syn_sent(seg)
            return
        flags = seg.flags
        self._last_recv = now
        self._heard = True
        self._ka_probes = 0
        self._probes_unanswered = 0
        rcv_nxt = self.rcv_nxt
        seq = unwrap(seg.seq, rcv_nxt)
        payload = seg.payload
        plen = len(payload)

        if flags & SYN and st == SYN_RCVD and not flags & ACK and seq == self.irs:
            self._syn_pending = True  # the peer missed our SYN-ACK
            return

        # Acceptability (RFC 9293 3.10.7.4, first check).
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
                self._ack_pending = True
                if st == TIME_WAIT and flags & FIN:
                    self._tw_at = now + 2 * self.msl
            return

        if flags & RST:
            if st != TIME_WAIT:
                self._event(Reset())
            self._enter_closed()
            return
        if flags & SYN:
            self._ack_pending = True  # challenge ACK (RFC 5961 4.2)
            return
        if not flags & ACK:
            return

        if self.ts_ok:
            ts = seg.options.timestamps
            if ts is not None and seq <= rcv_nxt:
                self._ts_recent = ts[0]

        if not self._handle_ack(seg, seq, plen):
            return
        st = self._state
        if st in _RECEIVING and (plen or flags & FIN):
            self._handle_text(seq, payload, flags & FIN)

    def _handle_syn_sent(self, seg: TcpSegment) -> None:
        flags = seg.flags
        ack_ok = False
        if flags & ACK:
            ack = unwrap(seg.ack, self.snd_una)
            if ack <= self.iss or ack > self.snd_max:
                if not flags & RST:
                    self._send_rst(seg.ack)
                return
            ack_ok = True
        if flags & RST:
            if ack_ok:
                self._event(Reset())
                self._enter_closed()
            return
        if not flags & SYN:
            return
        self._last_recv = self._now
        self.irs = seg.seq
        self.rcv_nxt = seg.seq + 1
        self._negotiate(seg.options, offered=True)
        self.rcv_adv = self.rcv_nxt + min(self.rcv_buffer, 0xFFFF)
        self.snd_wnd = self.max_snd_wnd = seg.window
        self.snd_wl1 = seg.seq
        self.snd_wl2 = self.iss + 1
        if ack_ok:
            self._on_new_ack(self.iss + 1, seg)
            self._establish()
            self._ack_pending = True
        else:  # simultaneous open
            self._state = SYN_RCVD
            self._syn_pending = True

    def _establish(self) -> None:
        self._state = FIN_WAIT_1 if self._fin_queued else ESTABLISHED
        self._retries = 0
        self._first_rexmit = None
        self._event(Established())

    def _handle_ack(self, seg: TcpSegment, seq: int, plen: int) -> bool:
        """ACK field processing; False drops the rest of the segment."""
        snd_una = self.snd_una
        ack = unwrap(seg.ack, snd_una)
        if self._state == SYN_RCVD:
            if not snd_una < ack <= self.snd_max:
                self._send_rst(seg.ack)
                return False
            self._establish()
        if ack > self.snd_max:
            self._ack_pending = True  # acknowledges something never sent
            return False
        if ack < snd_una - max(self.max_snd_wnd, 0xFFFF):
            self._ack_pending = True  # far too old (RFC 5961 5.2)
            return False
        if ack < snd_una:
            return True  # old duplicate: ignore the ACK, keep the text
        new_wnd = seg.window << self.snd_wscale
        same_wnd = new_wnd == self.snd_wnd
        if self.snd_wl1 < seq or (self.snd_wl1 == seq and self.snd_wl2 <= ack):
            self.snd_wnd = new_wnd
            self.snd_wl1 = seq
            self.snd_wl2 = ack
            if new_wnd > self.max_snd_wnd:
                self.max_snd_wnd = new_wnd
            if new_wnd:
                self._persist_at = None
                self._persist_backoff = 0
        blocks = seg.options.sack_blocks if self.sack_ok else ()
        if ack > snd_una:
            if not self._on_new_ack(ack, seg):
                return False
            if blocks or self._sacks.starts:
                self._on_sack(blocks)
            return True
        if blocks:
            self._on_sack(blocks)
        if (
            plen == 0
            and same_wnd
            and not seg.flags & (SYN | FIN)
            and self.snd_max > snd_una
            and self._rec_end is None
            and self._cc.on_dupack(snd_una, self.snd_max)
        ):
            if self._sacks.starts:
                self._enter_sack_recovery()
            else:
                self._rexmit_una = True
        return True

    def _on_sack(self, blocks: tuple[tuple[int, int], ...]) -> None:
        """Fold the peer's SACK blocks into the scoreboard; detect loss and reneging."""
        sb = self._sacks
        una = self.snd_una
        if sb.starts and not sb.ack(una):
            # The peer dropped data it had SACKed: forget all of it and fall back
            # to NewReno (or go back N after a timeout).
            sb.clear()
            self._rxt_log.reset()
            if self._rec_end is not None:
                self._rec_end = None
                if not self._cc.in_recovery:
                    self.snd_nxt = una
                self._rexmit_una = True
        snd_max = self.snd_max
        newest = None
        for left, right in blocks:
            start = unwrap(left, una)
            end = unwrap(right, una)
            # Blocks at or below SND.UNA are D-SACKs (RFC 2883) or bogus.
            if una < start < end <= snd_max:
                sb.add(start, end)
                if newest is None:
                    newest = (start, end)
        if not sb.starts:
            return
        if self._rec_end is not None:
            if self._rxt_log.starts:
                self._rxt_log.detect(sb, una, newest)
            return
        cc = self._cc
        if cc.in_recovery:  # NewReno recovery that now has SACK information
            cc.cwnd = cc.ssthresh
            self._rec_end = cc.recover
            self._lost_to = una
            self._rxt_log.reset()
        elif una >= cc.recover and (
            sb.sacked >= DUPTHRESH * self.snd_mss or sb.ends[-1] >= min(snd_max, self._sb.end)
        ):
            # Enough SACKed above the first hole, or everything sent after it
            # arrived (no more duplicate ACKs will come: RFC 5827 early retransmit).
            self._enter_sack_recovery()

    def _enter_sack_recovery(self) -> None:
        una = self.snd_una
        self._cc.on_sack_loss(una, self.snd_max)
        self._rec_end = self.snd_max
        self._lost_to = una
        self._high_rxt = una
        self._rec_force = True
        self._rxt_log.reset()

    def _on_new_ack(self, ack: int, seg: TcpSegment) -> bool:
        """``ack`` advances SND.UNA; False when the connection ended with it."""
        now = self._now
        sb = self._sb
        acked = sb.ack(min(ack, sb.end))
        ts = seg.options.timestamps if self.ts_ok else None
        if ts is not None and ts[1]:
            rtt_ms = (int(now * 1000) - ts[1]) & MASK
            if rtt_ms < 60_000:
                self._rto.sample(rtt_ms / 1000)
        elif self._rtt_seq is not None and ack >= self._rtt_seq:
            self._rto.sample(now - self._rtt_time)
            self._rtt_seq = None
        self.snd_una = ack
        if self.snd_nxt < ack:
            self.snd_nxt = ack
        self._retries = 0
        self._first_rexmit = None
        rec = self._rec_end
        if rec is None:
            if self._cc.on_ack(ack, acked, self.snd_max - ack):
                self._rexmit_una = True
        elif ack >= rec:
            self._rec_end = None
            self._cc.on_ack(ack, acked, self.snd_max - ack)  # leaves recovery
        elif not self._cc.in_recovery:
            self._cc.on_ack(ack, acked, self.snd_max - ack)  # slow start after a timeout
        self._rto_at = None if ack == self.snd_max else now + self._rto.rto

        if self._fin_queued and ack > sb.end:  # our FIN is acknowledged
            st = self._state
            if st == FIN_WAIT_1:
                self._state = FIN_WAIT_2
            elif st == CLOSING:
                self._enter_time_wait()
            elif st == LAST_ACK:
                self._enter_closed()
                return False
        elif self._space_low and self.snd_buffer - len(sb) >= self._send_low:
            self._space_low = False
            if self._state in _OPEN:
                self._event(SendSpace())
        return True

    def _handle_text(self, seq: int, payload: memoryview, fin: int) -> None:
        rcv_nxt = self.rcv_nxt
        if seq < rcv_nxt:
            payload = payload[rcv_nxt - seq :]
            seq = rcv_nxt
        limit = self.rcv_adv if self._peer_fin is None else min(self.rcv_adv, self._peer_fin)
        if seq + len(payload) > limit:
            payload = payload[: max(0, limit - seq)]
            fin = 0
        self._ack_pending = True
        plen = len(payload)
        if fin and self._peer_fin is None:
            self._peer_fin = seq + plen
            self._reasm.clip(seq + plen)  # nothing may follow the FIN
        if seq == rcv_nxt:
            if plen:
                # Frames are immutable bytes: keep a view until the one copy in drain().
                self._pending.append(payload if isinstance(payload.obj, bytes) else bytes(payload))
                rcv_nxt += plen
                if self._reasm:
                    chunks, new_nxt = self._reasm.pop(rcv_nxt)
                    self._pending.extend(chunks)
                    plen += new_nxt - rcv_nxt
                    rcv_nxt = new_nxt
                self.rcv_nxt = rcv_nxt
                self._unconsumed += plen
        elif plen:
            self._reasm.add(seq, payload if isinstance(payload.obj, bytes) else bytes(payload))
            self._dupacks_out += 1
        if self._peer_fin is not None and self.rcv_nxt == self._peer_fin:
            self._on_peer_fin()

    def _on_peer_fin(self) -> None:
        self.rcv_nxt += 1
        self._ack_pending = True
        self._event(PeerClosed())
        st = self._state
        if st == ESTABLISHED:
            self._state = CLOSE_WAIT
        elif st == FIN_WAIT_1:
            self._state = CLOSING
        elif st == FIN_WAIT_2:
            self._enter_time_wait()

    # -- timers ----------------------------------------------------------------

    def next_deadline(self) -> float | None:
        st = self._state
        if st == CLOSED:
            return None
        if st == TIME_WAIT:
            return self._tw_at
        best = self._rto_at
        if self._persist_at is not None and (best is None or self._persist_at < best):
            best = self._persist_at
        ka = self._keepalive_deadline()
        if ka is not None and (best is None or ka < best):
            best = ka
        if st == FIN_WAIT_2 and self.fin_wait_2_timeout is not None:
            fw2 = self._last_recv + self.fin_wait_2_timeout
            if best is None or fw2 < best:
                best = fw2
        return best

    def _keepalive_deadline(self) -> float | None:
        if (
            self.keepalive_idle is None
            or self._state not in _KEEPALIVE
            or self.snd_max != self.snd_una
        ):
            return None
        if self._ka_probes == 0:
            return self._last_recv + self.keepalive_idle
        return self._ka_last + self.keepalive_interval

    def handle_timer(self, now: float) -> None:
        self._now = now
        st = self._state
        if st == CLOSED:
            return
        if st == TIME_WAIT:
            if self._tw_at is not None and now >= self._tw_at:
                self._enter_closed()
            return
        if (
            st == FIN_WAIT_2
            and self.fin_wait_2_timeout is not None
            and now >= self._last_recv + self.fin_wait_2_timeout
        ):
            self._send_rst()
            self._enter_closed()
            return
        if self._rto_at is not None and now >= self._rto_at:
            self._on_rto(now)
        if self._state == CLOSED:
            return
        if self._persist_at is not None and now >= self._persist_at:
            self._on_persist(now)
        ka = self._keepalive_deadline()
        if ka is not None and now >= ka and self._state != CLOSED:
            if self._ka_probes >= self.keepalive_probes:
                self._time_out()
            else:
                self._ka_probes += 1
                self._ka_last = now
                self._probe_pending = True
        self._heard = False

    def _on_rto(self, now: float) -> None:
        self._rto_at = None
        st = self._state
        if st in (SYN_SENT, SYN_RCVD):
            self._retries += 1
            if self._retries > self.syn_retries:
                self._time_out()
                return
            self._rto.backoff()
            self._rtt_seq = None
            self._syn_pending = True
            self._rto_at = now + self._rto.rto
            return
        if self.snd_max == self.snd_una:
            return
        # A peer that keeps answering with a zero window is alive: probe, don't count.
        if not (self.snd_wnd == 0 and self._heard):
            self._retries += 1
            if self._first_rexmit is None:
                self._first_rexmit = now
            if self._retries > self.max_retries or now - self._first_rexmit >= self.user_timeout:
                self._time_out()
                return
        self._cc.on_timeout(self.snd_una, self.snd_max)
        self._rto.backoff()
        self._rtt_seq = None
        self._rto_at = now + self._rto.rto
        if self._sacks.starts and self._retries <= MAX_SACK_RTOS:
            # Resend every un-SACKed range (RFC 6675 5.1), first one even into a
            # zero window (it is the probe). Repeated timeouts without progress
            # drop the scoreboard, in case the peer reneged.
            self._rec_end = self._lost_to = self.snd_max
            self._high_rxt = self.snd_una
            self._rec_force = True
            self._rexmit_una = False
            self._rxt_log.reset()
            return
        self._sacks.clear()
        self._rec_end = None
        # Go back N; the first segment goes out even into a zero window (it is the probe).
        self.snd_nxt = self.snd_una
        self._rexmit_una = True

    def _on_persist(self, now: float) -> None:
        self._persist_at = None
        if self.snd_wnd or self.snd_max != self.snd_una or self._state not in _SENDING:
            return
        self._probes_unanswered += 1
        if self._probes_unanswered > self.max_retries:
            self._time_out()
            return
        self._probe_pending = True
        self._persist_backoff += 1
        self._persist_at = now + self._persist_interval()

    def _persist_interval(self) -> float:
        rto = self._rto
        return float(
            min(max(rto.rto, rto.min_rto) * (1 << min(self._persist_backoff, 16)), rto.max_rto)
        )

    def _time_out(self) -> None:
        if self._state != SYN_SENT:
            self._send_rst()
        self._event(TimedOut())
        self._enter_closed()

    # -- state changes ---------------------------------------------------------

    def _enter_time_wait(self) -> None:
        self._state = TIME_WAIT
        self._tw_at = self._now + 2 * self.msl
        self._stop_timers()
        self._emit_closed()

    def _enter_closed(self) -> None:
        self._state = CLOSED
        self._stop_timers()
        self._tw_at = None
        self._syn_pending = False
        self._sb = SendBuffer(self._sb.end)
        self._sacks.clear()
        self._rec_end = None
        self._reasm = Reassembly(1)
        self._emit_closed()

    def _stop_timers(self) -> None:
        self._rto_at = None
        self._persist_at = None
        self._probe_pending = False
        self._rexmit_una = False

    def _emit_closed(self) -> None:
        if not self._closed_emitted:
            self._closed_emitted = True
            self._event(Closed())

    def _event(self, ev: TcpEvent) -> None:
        if self._pending:
            self._flush_data()
        self._events.append(ev)

    def _flush_data(self) -> None:
        p = self._pending
        data = bytes(p[0]) if len(p) == 1 else b"".join(p)
        self._pending = []
        self._events.append(DataReceived(data))

    # -- output ----------------------------------------------------------------

    def drain(self) -> tuple[list[bytes], list[object]]:
        """Packets for the peer and events for the owner since the last drain."""
        if self._state != CLOSED:
            self._output()
        if self._pending:
            self._flush_data()
        packets, events = self._packets, self._events
        self._packets, self._events = [], []
        return packets, events

    def _send_rst(self, seq: int | None = None) -> None:
        if seq is None:
            pkt = self._pb.build(self.snd_max & MASK, self.rcv_nxt & MASK, RST | ACK, 0)
        else:
            pkt = self._pb.build(seq & MASK, 0, RST, 0)
        self._packets.append(pkt)

    def _options(self) -> bytes:
        """Options of a non-SYN segment: timestamps, then SACK blocks if there are holes."""
        opts = b""
        if self.ts_ok:
            opts = _TS_PREFIX + _II.pack(int(self._now * 1000) & MASK, self._ts_recent)
        if self.sack_ok and self._reasm:
            blocks = self._reasm.sack_blocks(3 if self.ts_ok else 4)
            opts += b"\x01\x01\x05" + bytes((2 + 8 * len(blocks),))
            opts += b"".join(_II.pack(s & MASK, e & MASK) for s, e in blocks)
        return opts

    def _window(self) -> tuple[int, int]:
        """Window field to advertise and the right edge it stands for (never left of RCV.ADV,
        up to scaling granularity). Receiver SWS avoidance: the edge only moves right by at
        least min(buffer/2, MSS) (RFC 9293 3.8.6.2.2)."""
        rcv_nxt = self.rcv_nxt
        avail = self.rcv_buffer - self._unconsumed
        cur = self.rcv_adv - rcv_nxt
        if cur < 0:
            cur = 0
        wnd = avail if avail - cur >= self._sws_threshold() else cur
        ws = self.rcv_wscale
        field = wnd >> ws
        if field > 0xFFFF:
            field = 0xFFFF
        return field, rcv_nxt + (field << ws)

    def _syn_packet(self) -> bytes:
        tsval = int(self._now * 1000) & MASK
        if self._state == SYN_SENT:
            opts = TcpOptions(
                mss=self.mss,
                wscale=_wscale_for(self.rcv_buffer) if self._use_ws else None,
                sack_permitted=self._use_sack,
                timestamps=(tsval, 0) if self._use_ts else None,
            )
            flags, ack = SYN, 0
        else:
            opts = TcpOptions(
                mss=self.mss,
                wscale=self.rcv_wscale if self._ws_ok else None,
                sack_permitted=self.sack_ok,
                timestamps=(tsval, self._ts_recent) if self.ts_ok else None,
            )
            flags, ack = SYN | ACK, self.rcv_nxt & MASK
        window = min(self.rcv_buffer, 0xFFFF)
        return self._pb.build(self.iss, ack, flags, window, encode_options(opts))

    def _output(self) -> None:
        st = self._state
        now = self._now
        if st == SYN_SENT or st == SYN_RCVD:
            if self._syn_pending or (st == SYN_RCVD and self._ack_pending):
                self._packets.append(self._syn_packet())
                if self.snd_max == self.iss:
                    self.snd_nxt = self.snd_max = self.iss + 1
                    self._rtt_seq = self.iss + 1
                    self._rtt_time = now
                if self._rto_at is None:
                    self._rto_at = now + self._rto.rto
            self._syn_pending = self._ack_pending = False
            self._dupacks_out = 0
            return

        window, edge = self._window()
        ack = self.rcv_nxt & MASK
        opts = self._options()
        build = self._pb.build
        out = self._packets
        sent_before = len(out)
        acked = False
        # Bare ACKs carry SND.MAX, not SND.NXT: after a timeout SND.NXT is rolled back, and
        # the peer would find an older sequence number unacceptable and ignore the ACK.
        if self._dupacks_out and self._reasm:
            pure = build(self.snd_max & MASK, ack, ACK, window, opts)
            out.extend([pure] * min(self._dupacks_out, MAX_DUPACKS_PER_DRAIN))
            acked = True
        self._dupacks_out = 0

        if st in _SENDING:
            limit = None
            if self._rec_end is not None:
                limit, sent = self._sack_output(window, ack, opts)
                acked = acked or sent
            if self._rexmit_una:
                self._rexmit_una = False
                if self.snd_max > self.snd_una:
                    sent_to = self._retransmit_una(window, ack, opts)
                    if self.snd_nxt < sent_to:
                        self.snd_nxt = sent_to
                    acked = True
            if self.snd_nxt < self._sb.end or (self._fin_queued and self.snd_nxt == self._sb.end):
                acked = self._send_data(window, ack, opts, limit) or acked
        if self._probe_pending:
            self._probe_pending = False
            out.append(build((self.snd_una - 1) & MASK, ack, ACK, window, opts))
            acked = True
        if self._ack_pending and not acked:
            out.append(build(self.snd_max & MASK, ack, ACK, window, opts))
        self._ack_pending = False
        if len(out) > sent_before and edge > self.rcv_adv:
            self.rcv_adv = edge  # the peer has been told: accept up to there from now on

        if self.snd_max > self.snd_una:
            if self._rto_at is None:
                self._rto_at = now + self._rto.rto
            self._persist_at = None
        elif st in _SENDING and self.snd_nxt < self._sb.end and self.snd_wnd == 0:
            if self._persist_at is None:
                self._persist_at = now + self._persist_interval()
        else:
            self._persist_at = None
            self._persist_backoff = 0

    def _retransmit_una(self, window: int, ack: int, opts: bytes) -> int:
        """Resend the first unacknowledged segment; returns the sequence after it."""
        una = self.snd_una
        end = self._sb.end
        if self._rtt_seq is not None and self._rtt_seq > una:
            self._rtt_seq = None  # Karn: this range is now ambiguous
        if una < end:
            n = min(self.snd_mss - len(opts), end - una, self.snd_max - una)
            flags = ACK | PSH
            if self._fin_queued and una + n == end and self.snd_max > end:
                flags |= FIN
            payload = self._sb.slice(una, n)
            self._packets.append(self._pb.build(una & MASK, ack, flags, window, opts, payload))
            if una + n > self._high_rxt:
                self._high_rxt = una + n
            return una + n + (1 if flags & FIN else 0)
        if self._fin_queued:
            self._packets.append(self._pb.build(una & MASK, ack, ACK | FIN, window, opts))
            return una + 1
        return una

    def _sack_output(self, window: int, ack: int, opts: bytes) -> tuple[int, bool]:
        """SACK recovery: resend lost ranges while cwnd exceeds the pipe (RFC 6675 5).

        Returns the sequence new data may go up to, and whether anything was sent.
        """
        sb = self._sacks
        log = self._rxt_log
        una = self.snd_una
        snd_max = self.snd_max
        lost_to = self._lost_to
        if sb.starts and sb.ends[-1] > lost_to:
            lost_to = sb.ends[-1]
        if lost_to > snd_max:
            lost_to = snd_max
        nxt = self._high_rxt if self._high_rxt > una else una
        # In the pipe: all outstanding bytes but the SACKed and the lost not yet resent.
        pipe = snd_max - una - sb.sacked - sb.hole_bytes(nxt, lost_to)
        relost = log.lost
        if relost:
            pipe -= sum(sb.hole_bytes(max(s, una), e) for s, e in relost)
        cwnd = self._cc.cwnd
        eff_mss = self.snd_mss - len(opts)
        sent = False
        # Resent ranges that were lost again go first (once more; then the RTO).
        while relost and (cwnd - pipe >= eff_mss or self._rec_force):
            start, end = relost[0]
            hole = sb.next_hole(max(start, una), end)
            if hole is None:
                relost.pop(0)
                continue
            start, end = hole
            n = min(end - start, eff_mss)
            relost[0] = (start + n, relost[0][1])
            self._resend(start, n, window, ack, opts)
            self._rec_force = False
            sent = True
            pipe += n
        while cwnd - pipe >= eff_mss or self._rec_force:
            hole = sb.next_hole(nxt, lost_to)
            if hole is None:
                break
            self._rec_force = False
            start, end = hole
            n = min(end - start, eff_mss)
            self._resend(start, n, window, ack, opts)
            log.record(start, start + n, snd_max)
            sent = True
            pipe += n
            nxt = start + n
        self._rec_force = False
        if nxt > self._high_rxt:
            self._high_rxt = nxt
        if sent and self._rtt_seq is not None and self._rtt_seq > una:
            self._rtt_seq = None  # Karn: this range is now ambiguous
        room = cwnd - pipe
        limit = self.snd_nxt + (room if room > 0 else 0)
        wnd_edge = una + self.snd_wnd
        return (limit if limit < wnd_edge else wnd_edge), sent

    def _resend(self, start: int, n: int, window: int, ack: int, opts: bytes) -> None:
        """Resend ``n`` sequence numbers from ``start`` (the last may be our FIN)."""
        data_end = self._sb.end
        stop = start + n
        payload = self._sb.slice(start, min(stop, data_end) - start) if start < data_end else b""
        flags = ACK | PSH if payload else ACK
        if self._fin_queued and stop > data_end:
            flags |= FIN
        self._packets.append(self._pb.build(start & MASK, ack, flags, window, opts, payload))

    def _send_data(self, window: int, ack: int, opts: bytes, limit: int | None = None) -> bool:
        """Send new (or, after a timeout, resend) data and the FIN as the windows allow.

        ``limit`` overrides the congestion/peer window edge (SACK recovery)."""
        sb = self._sb
        end = sb.end
        fin_queued = self._fin_queued
        eff_mss = self.snd_mss - len(opts)
        eff_seg = max(self._gso_size or 0, self.snd_mss) - len(opts)
        build = self._pb.build
        out = self._packets
        snd_una = self.snd_una
        cwnd = self._cc.cwnd
        snd_wnd = self.snd_wnd
        if limit is None:
            limit = snd_una + (cwnd if cwnd < snd_wnd else snd_wnd)
        nxt = self.snd_nxt
        sent = False
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
            out.append(build(nxt & MASK, ack, flags, window, opts, sb.slice(nxt, n)))
            sent = True
            if self._rtt_seq is None and nxt >= self.snd_max and not self.ts_ok:
                self._rtt_seq = seg_end
                self._rtt_time = self._now
            nxt = seg_end + (1 if flags & FIN else 0)
        else:
            if fin_queued and nxt == end:
                out.append(build(nxt & MASK, ack, ACK | FIN, window, opts))
                sent = True
                nxt += 1
        self.snd_nxt = nxt
        if nxt > self.snd_max:
            self.snd_max = nxt
        return sent
