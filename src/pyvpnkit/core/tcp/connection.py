"""One TCP connection as a sans-I/O state machine (RFC 9293).

Segments, host data and timer expiries go in; complete IPv4 packets and
events come out of :meth:`TcpConnection.drain`. Work is deferred to ``drain``
on purpose: the runtime drains once per batch of frames, so one ACK (with one
window update) answers a whole batch and data rides on it.

Sequence numbers are kept unwrapped (growing ints starting at the ISS/IRS) and
only reduced modulo 2**32 on the wire, so comparisons are plain ``<``.

This module runs the state machine (its table is in ``state``) and wires the
parts together, as mirage-tcpip's ``pcb.ml`` does: the :class:`Receiver`
(window, reassembly, the ACK it owes), the :class:`Sender` (send buffer,
segments, retransmission and persist timers), :class:`Recovery` (NewReno, SACK
scoreboard), :class:`Options` (what the SYNs agreed, what each segment
carries) and :class:`Timers` (keepalive, FIN_WAIT_2, TIME_WAIT). Each part
owns its state and changes it through its methods; the connection reads it,
and only sets or clears the receiver's request flags (an ACK owed).
"""

from __future__ import annotations

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
from pyvpnkit.core.tcp.options import Options
from pyvpnkit.core.tcp.packet import PacketBuilder
from pyvpnkit.core.tcp.receiver import Receiver
from pyvpnkit.core.tcp.recovery import Recovery
from pyvpnkit.core.tcp.rto import RtoEstimator
from pyvpnkit.core.tcp.scoreboard import Scoreboard
from pyvpnkit.core.tcp.sender import DUPLICATE, Sender
from pyvpnkit.core.tcp.seq import MASK, unwrap
from pyvpnkit.core.tcp.settings import DEFAULTS, TcpSettings
from pyvpnkit.core.tcp.state import (
    CLOSE,
    CLOSED,
    CONNECT,
    EXPIRED,
    FIN_ACKED,
    FIN_WAIT_2,
    HANDSHAKE,
    HANDSHAKE_DONE,
    KEEPALIVE,
    OPEN,
    PASSIVE_OPEN,
    PEER_FIN,
    PEER_SYN,
    RECEIVING,
    SENDING,
    SYN_RCVD,
    SYN_SENT,
    TIME_WAIT,
    TRANSITIONS,
)
from pyvpnkit.core.tcp.timers import Timers, earliest
from pyvpnkit.wire.tcp import ACK, FIN, RST, SYN, TcpSegment

MAX_DUPACKS_PER_DRAIN = 64


class TcpConnection:
    """A TCP endpoint; ``local`` is pyvpnkit's side, ``remote`` the VM."""

    __slots__ = (
        "_state", "_now", "_pb", "_opt", "_rx", "_tx", "_rec", "_rto", "_tm",
        "_syn_pending", "_probe_pending", "_packets", "_events", "_closed_emitted",
        "_delayed_ack",
    )  # fmt: skip

    def __init__(
        self,
        *,
        local_ip: bytes,
        local_port: int,
        remote_ip: bytes,
        remote_port: int,
        iss: int,
        settings: TcpSettings = DEFAULTS,
    ) -> None:
        o = settings
        self._state = CLOSED
        self._now = 0.0
        self._pb = PacketBuilder(local_ip, remote_ip, local_port, remote_port, o.checksum)
        rcv_buffer = max(int(o.rcv_buffer), 1)
        snd_buffer = max(int(o.snd_buffer), 1)
        self._opt = opt = Options(o.mss, rcv_buffer, o.sack, o.timestamps, o.window_scaling)
        # Seconds a pure ACK for in-order data may wait for data to ride on (0: never).
        self._delayed_ack = o.delayed_ack
        self._rx = Receiver(rcv_buffer, opt.mss, o.max_ooo_intervals, o.delayed_ack > 0)
        self._rto = RtoEstimator(o.initial_rto, o.min_rto, o.max_rto)
        self._tx = Sender(
            self._pb,
            iss & MASK,
            opt.mss,
            self._rto,
            size=snd_buffer,
            low=snd_buffer // 4 if o.send_space_low is None else o.send_space_low,
            gso_size=o.gso_size,
            max_retries=o.max_retries,
            user_timeout=o.user_timeout,
            syn_retries=o.syn_retries,
        )
        self._rec = Recovery(self._tx, o.initial_cwnd)
        idle, interval, probes = o.keepalive or (None, 0.0, 0)
        self._tm = Timers(
            keepalive_idle=idle,
            keepalive_interval=interval,
            keepalive_probes=probes,
            msl=o.msl,
            fin_wait_2_timeout=o.fin_wait_2_timeout,
            max_probes=o.max_retries,
        )
        self._syn_pending = False  # our SYN (or SYN-ACK) is owed on the next drain
        self._probe_pending = False  # a window or keepalive probe is owed
        self._packets: list[bytes] = []
        self._events: list[object] = []
        self._closed_emitted = False

    # -- opening ---------------------------------------------------------------

    @classmethod
    def accept(
        cls,
        syn: TcpSegment,
        now: float,
        *,
        local_ip: bytes,
        local_port: int,
        remote_ip: bytes,
        remote_port: int,
        iss: int,
        settings: TcpSettings = DEFAULTS,
    ) -> TcpConnection:
        """Passive open answering the peer's SYN; the SYN-ACK goes out on the next drain."""
        conn = cls(local_ip=local_ip, local_port=local_port, remote_ip=remote_ip,
                   remote_port=remote_port, iss=iss, settings=settings)
        conn._now = now
        conn._tm.opened(now)
        conn._start(syn, conn._tx.iss)
        conn._move(PASSIVE_OPEN)
        conn._syn_pending = True
        return conn

    def connect(self, now: float) -> None:
        """Active open: a SYN goes out on the next drain."""
        if self._state != CLOSED or self._closed_emitted:
            return
        self._now = now
        self._tm.opened(now)
        self._move(CONNECT)
        self._syn_pending = True

    def _start(self, syn: TcpSegment, wl2: int) -> None:
        """The peer's SYN: agree on the options and start both halves from it."""
        opt = self._opt
        opt.negotiate(syn.options)
        self._rx.start(syn.seq, opt.rcv_wscale, opt.ts_ok, syn.options.timestamps)
        self._tx.start(syn.window, syn.seq, wl2, opt.snd_mss, opt.snd_wscale, opt.ts_ok)
        self._rec.restart()

    # -- public state ----------------------------------------------------------

    @property
    def state(self) -> str:
        return self._state

    @property
    def closed(self) -> bool:
        return self._state == CLOSED

    @property
    def send_space(self) -> int:
        return self._tx.space(self._state in OPEN)

    # Read-only views of the parts' state (RFC 9293's names), for the owner and tests.
    @property
    def snd_una(self) -> int:
        return self._tx.snd_una

    @property
    def snd_nxt(self) -> int:
        return self._tx.snd_nxt

    @property
    def snd_max(self) -> int:
        return self._tx.snd_max

    @property
    def snd_wnd(self) -> int:
        return self._tx.snd_wnd

    @property
    def snd_wscale(self) -> int:
        return self._tx.snd_wscale

    @property
    def snd_mss(self) -> int:
        return self._tx.snd_mss

    @property
    def rcv_nxt(self) -> int:
        return self._rx.rcv_nxt

    @property
    def rcv_adv(self) -> int:
        return self._rx.rcv_adv

    @property
    def rcv_wscale(self) -> int:
        return self._rx.rcv_wscale

    @property
    def sack_ok(self) -> bool:
        return self._opt.sack_ok

    @property
    def ts_ok(self) -> bool:
        return self._opt.ts_ok

    @property
    def _cc(self) -> NewReno:
        return self._rec.cc

    @property
    def _sacks(self) -> Scoreboard:
        return self._rec.sacks

    # -- host side -------------------------------------------------------------

    def send(self, data: bytes | bytearray | memoryview, now: float) -> int:
        """Queue up to ``send_space`` bytes for the peer; returns how many were taken."""
        self._now = now
        return self._tx.append(data, self._state in OPEN)

    def shutdown(self, now: float) -> None:
        """No more host data: FIN after what is queued; receiving goes on (half-close)."""
        self._now = now
        if self._tx.fin_queued or self._state not in OPEN:
            return
        self._tx.queue_fin()
        self._move(CLOSE)  # in SYN_SENT / SYN_RCVD the FIN waits for the handshake

    def abort(self, now: float) -> None:
        """Reset the connection (RST to the peer unless it never saw us)."""
        self._now = now
        if self._state == CLOSED:
            return
        if self._state not in (SYN_SENT, TIME_WAIT):
            self._send_rst()
        self._enter_closed()

    def consumed(self, n: int, now: float) -> bool:
        """The host took ``n`` received bytes: reopen the window (RFC 9293 3.8.6.2.2).
        True if that owes the peer a window update (a drain has something to send)."""
        self._now = now
        if n > 0:
            return self._rx.consumed(n, self._state in RECEIVING)
        return False

    # -- segments from the peer ------------------------------------------------

    def handle_segment(self, seg: TcpSegment, now: float) -> None:
        """A segment from the peer, in RFC 9293 3.10.7.4's order: sequence number, RST
        and SYN (the receiver), the ACK (the sender and recovery), then the text."""
        self._now = now
        st = self._state
        if st == CLOSED:
            return
        if st == SYN_SENT:
            self._handle_syn_sent(seg)
            return
        flags = seg.flags
        self._tm.heard_from(now)
        rx = self._rx
        seq = unwrap(seg.seq, rx.rcv_nxt)
        payload = seg.payload
        plen = len(payload)
        if flags & SYN and st == SYN_RCVD and not flags & ACK and seq == rx.irs:
            self._syn_pending = True  # the peer missed our SYN-ACK
            return
        opts = seg.options
        verdict = rx.check(seq, plen, flags, opts.timestamps)
        if verdict != "accept":
            if verdict == "reset":
                if st != TIME_WAIT:
                    self._event(Reset())
                self._enter_closed()
            elif verdict == "unacceptable" and st == TIME_WAIT and flags & (FIN | RST) == FIN:
                self._tm.enter_time_wait(now)  # the peer's FIN again: our ACK was lost
            return

        tx = self._tx
        snd_una = tx.snd_una
        ack = unwrap(seg.ack, snd_una)
        if st == SYN_RCVD:
            if not snd_una < ack <= tx.snd_max:
                self._send_rst(seg.ack)
                return
            self._establish()
        if ack > tx.snd_max or ack < snd_una - max(tx.max_snd_wnd, 0xFFFF):
            rx.ack_pending = True  # acknowledges what was never sent, or far too old (RFC 5961)
            return
        if ack >= snd_una:  # else an old duplicate: ignore the ACK, keep the text
            bare = plen == 0 and not flags & (SYN | FIN)
            acked = tx.on_ack(ack, seq, seg.window, opts.timestamps, now, bare)
            rec = self._rec
            blocks = opts.sack_blocks if self._opt.sack_ok else ()
            if acked >= 0:
                if not self._acked(ack, acked):
                    return
                if blocks or rec.sacks.sacked:
                    rec.on_sack(blocks)
            else:
                if blocks:
                    rec.on_sack(blocks)
                if acked == DUPLICATE:
                    rec.on_dupack()

        if self._state in RECEIVING and (plen or flags & FIN):
            if rx.text(seq, payload, flags & FIN):
                rx.ack_pending = True
                self._event(PeerClosed())
                self._move(PEER_FIN)

    def _handle_syn_sent(self, seg: TcpSegment) -> None:
        flags = seg.flags
        tx = self._tx
        ack_ok = False
        if flags & ACK:
            ack = unwrap(seg.ack, tx.snd_una)
            if ack <= tx.iss or ack > tx.snd_max:
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
        self._tm.opened(self._now)
        self._start(seg, tx.iss + 1)
        if ack_ok:
            ack = tx.iss + 1
            self._acked(
                ack, tx.on_ack(ack, seg.seq, None, seg.options.timestamps, self._now, False)
            )
            self._establish()
            self._rx.ack_pending = True
        else:
            self._move(PEER_SYN)
            self._syn_pending = True

    def _establish(self) -> None:
        self._move(HANDSHAKE_DONE)
        self._tx.progress()
        self._event(Established())
        if self._tx.fin_queued:
            self._move(CLOSE)

    def _acked(self, ack: int, acked: int) -> bool:
        """SND.UNA moved to ``ack`` over ``acked`` data bytes; False when that ended the
        connection."""
        self._rec.on_ack(ack, acked)
        tx = self._tx
        if tx.fin_queued and ack > tx.buf.end:  # our FIN is acknowledged
            self._move(FIN_ACKED)
            return self._state != CLOSED
        if tx.space_low and tx.space_regained() and self._state in OPEN:
            self._event(SendSpace())
        return True

    # -- timers ----------------------------------------------------------------

    def next_deadline(self) -> float | None:
        st = self._state
        if st == CLOSED:
            return None
        tm = self._tm
        if st == TIME_WAIT:
            return tm.tw_at
        tx = self._tx
        best = tx.deadline()
        if st in KEEPALIVE and tx.snd_max == tx.snd_una:
            best = earliest(best, tm.keepalive_deadline())
        if st == FIN_WAIT_2:
            best = earliest(best, tm.fin_wait_2_deadline())
        delack_at = self._rx.delack_at
        if delack_at is not None and (best is None or delack_at < best):
            best = delack_at
        return best

    def handle_timer(self, now: float) -> None:
        self._now = now
        st = self._state
        if st == CLOSED:
            return
        tm = self._tm
        if st == TIME_WAIT:
            if tm.tw_at is not None and now >= tm.tw_at:
                self._move(EXPIRED)
            return
        fw2 = tm.fin_wait_2_deadline() if st == FIN_WAIT_2 else None
        if fw2 is not None and now >= fw2:
            self._send_rst()  # the peer went quiet without its FIN
            self._move(EXPIRED)
            return
        rx = self._rx
        if rx.delack_at is not None and now >= rx.delack_at:
            rx.ack_pending = True  # nothing came to carry it
        tx = self._tx
        if tx.rto_at is not None and now >= tx.rto_at:
            self._on_rto(now)
            if self._state == CLOSED:
                return
        if tx.persist_at is not None and now >= tx.persist_at:
            if tx.persist_fired(now, self._state in SENDING):
                if tm.zero_window_probe():
                    self._probe_pending = True
                else:
                    self._time_out()
        st = self._state
        if st in KEEPALIVE and tx.snd_max == tx.snd_una:
            action = tm.keepalive(now)
            if action == "give up":
                self._time_out()
            elif action == "probe":
                self._probe_pending = True
        tm.ran()

    def _on_rto(self, now: float) -> None:
        handshake = self._state in HANDSHAKE
        verdict = self._tx.timeout(now, handshake, self._tm.heard)
        if verdict == "give up":
            self._time_out()
        elif verdict == "resend":
            if handshake:
                self._syn_pending = True
            else:
                self._rec.on_timeout(self._tx.retries)

    def _time_out(self) -> None:
        if self._state != SYN_SENT:
            self._send_rst()
        self._event(TimedOut())
        self._enter_closed()

    # -- state changes ---------------------------------------------------------

    def _move(self, event: str) -> None:
        """Follow ``event``'s edge out of the current state, if it has one."""
        new = TRANSITIONS[self._state].get(event)
        if new == TIME_WAIT:
            self._state = TIME_WAIT
            self._tm.enter_time_wait(self._now)
            self._stop_timers()
            self._emit_closed()
        elif new == CLOSED:
            self._enter_closed()
        elif new is not None:
            self._state = new

    def _enter_closed(self) -> None:
        self._state = CLOSED
        self._stop_timers()
        self._tm.stop()
        self._syn_pending = False
        self._tx.discard()
        self._rec.clear()
        self._rx.close()
        self._emit_closed()

    def _stop_timers(self) -> None:
        self._tx.stop_timers()
        self._probe_pending = False
        self._rec.stop()

    def _emit_closed(self) -> None:
        if not self._closed_emitted:
            self._closed_emitted = True
            self._event(Closed())

    def _event(self, ev: TcpEvent) -> None:
        if self._rx.pending:
            self._events.append(DataReceived(self._rx.take_data()))
        self._events.append(ev)

    # -- output ----------------------------------------------------------------

    def drain(self) -> tuple[list[bytes], list[object]]:
        """Packets for the peer and events for the owner since the last drain."""
        if self._state != CLOSED:
            self._output()
        if self._rx.pending:
            self._events.append(DataReceived(self._rx.take_data()))
        packets, events = self._packets, self._events
        self._packets, self._events = [], []
        return packets, events

    def _send_rst(self, seq: int | None = None) -> None:
        if seq is None:
            pkt = self._pb.build(self._tx.snd_max & MASK, self._rx.rcv_nxt & MASK, RST | ACK, 0)
        else:
            pkt = self._pb.build(seq & MASK, 0, RST, 0)
        self._packets.append(pkt)

    def _output(self) -> None:
        st = self._state
        now = self._now
        rx = self._rx
        tx = self._tx
        if st in HANDSHAKE:
            if self._syn_pending or (st == SYN_RCVD and rx.ack_pending):
                active = st == SYN_SENT
                flags, ack = (SYN, 0) if active else (SYN | ACK, rx.rcv_nxt & MASK)
                window = min(rx.buffer, 0xFFFF)
                opts = self._opt.syn(now, active, rx.ts_recent)
                self._packets.append(self._pb.build(tx.iss, ack, flags, window, opts))
                tx.syn_sent(now)
            self._syn_pending = False
            rx.acked()
            rx.dupacks = 0
            return

        sending = st in SENDING
        rec = self._rec
        if not (rx.ack_pending or rx.dupacks or self._probe_pending) and (
            not sending or (tx.idle and rec.rec_end is None and not rec.rexmit_una)
        ):
            # Nothing owed and nothing to send (most drains of a request/response):
            # only the timers, without building a window and options for no segment.
            tx.arm_timers(now, sending)
            if rx.delack and rx.delack_at is None:
                rx.delack_at = now + self._delayed_ack
            return

        window, edge = rx.window()
        ack = rx.rcv_nxt & MASK
        opts = self._opt.segment(now, rx.ts_recent, rx.reasm)
        pb = self._pb  # a native call when compiled (a bound method is a generic one)
        out = self._packets
        sent_before = len(out)
        acked = False
        # Bare ACKs carry SND.MAX, not SND.NXT: after a timeout SND.NXT is rolled back, and
        # the peer would find an older sequence number unacceptable and ignore the ACK.
        if rx.dupacks and rx.reasm:
            pure = pb.build(tx.snd_max & MASK, ack, ACK, window, opts)
            out.extend([pure] * min(rx.dupacks, MAX_DUPACKS_PER_DRAIN))
            acked = True
        rx.dupacks = 0

        limit = None
        if sending and (rec.rec_end is not None or rec.rexmit_una):
            limit, resent = rec.output(out, window, ack, opts)
            acked = acked or resent
        if tx.output(out, window, ack, opts, rec.cc.cwnd, limit, now, sending):
            acked = True
        if self._probe_pending:
            self._probe_pending = False
            out.append(pb.build((tx.snd_una - 1) & MASK, ack, ACK, window, opts))
            acked = True
        if acked or rx.ack_pending:
            if not acked:
                out.append(pb.build(tx.snd_max & MASK, ack, ACK, window, opts))
            rx.acked()
        elif rx.delack and rx.delack_at is None:
            rx.delack_at = now + self._delayed_ack
        if len(out) > sent_before and edge > rx.rcv_adv:
            rx.advertised(edge)  # the peer has been told: accept up to there from now on
