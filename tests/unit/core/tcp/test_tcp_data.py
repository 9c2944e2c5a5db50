"""Data transfer: ACK policy, reassembly, windows, retransmission, persist, SendSpace."""

from __future__ import annotations

import dataclasses

import pytest

from pyvpnkit.core.tcp import Closed, DataReceived, SendSpace, TimedOut
from pyvpnkit.wire.tcp import ACK, FIN, PSH, RST, SYN, TcpOptions
from tests.unit.support.tcp_peer import M, Peer, establish

# -- receiving ----------------------------------------------------------------------


def test_batch_of_in_order_segments_gives_one_event_and_one_ack() -> None:
    link = establish()
    p = link.peer
    segs = link.feed(p.data(b"abc"), p.data(b"def"), p.data(b"ghi", ACK | PSH))
    assert link.events == [DataReceived(b"abcdefghi")]
    (ack,) = segs
    assert ack.flags == ACK and not ack.payload and ack.ack == 1010
    assert ack.options.timestamps == (100_000, 777)


def test_received_data_is_copied_out_of_mutable_buffers() -> None:
    link = establish()
    seg = link.peer.data(b"hello")
    buf = bytearray(seg.payload)
    mutable = dataclasses.replace(seg, payload=memoryview(buf))
    link.conn.handle_segment(mutable, link.now)
    buf[:] = b"XXXXX"
    link.drain()
    assert link.events == [DataReceived(b"hello")]


def test_out_of_order_segments_send_dupacks_with_sack_then_deliver_once() -> None:
    link = establish()
    p = link.peer
    s1, s2, s3 = p.data(b"1" * 100), p.data(b"2" * 100), p.data(b"3" * 100)
    segs = link.feed(s3, s2)
    assert len(segs) == 2  # one duplicate ACK per out-of-order segment
    assert all(s.ack == 1001 and not s.payload for s in segs)
    assert segs[-1].options.sack_blocks == ((1101, 1301),)
    assert link.events == []
    segs = link.feed(s1)
    assert link.events == [DataReceived(b"1" * 100 + b"2" * 100 + b"3" * 100)]
    (ack,) = segs
    assert ack.ack == 1301 and ack.options.sack_blocks == ()


def test_sack_blocks_list_latest_first_and_fit_the_options() -> None:
    link = establish()
    p = link.peer
    segs = [p.data(bytes([65 + i]) * 10) for i in range(9)]
    link.feed(segs[2], segs[4], segs[6], segs[8])
    last = link.drain() or link.feed()
    link.conn.handle_segment(segs[4], link.now)  # duplicate of a held block
    (dup,) = link.drain()
    blocks = dup.options.sack_blocks
    assert len(blocks) == 3  # with timestamps only 3 fit in 40 bytes
    assert blocks[0] == (1041, 1051)
    assert last == []


def test_duplicate_and_overlapping_segments() -> None:
    link = establish()
    p = link.peer
    data = bytes(range(200))
    a = p.seg(ACK, data[:100], seq=1001)
    (ack,) = link.feed(a)
    assert ack.ack == 1101
    (again,) = link.feed(a)  # complete duplicate: immediate ACK, nothing delivered
    assert again.ack == 1101
    # Overlaps the delivered part and a held out-of-order part.
    link.feed(p.seg(ACK, data[150:180], seq=1151))
    link.feed(p.seg(ACK, data[50:160], seq=1051))
    link.feed(p.seg(ACK, data[170:200], seq=1171))
    assert link.received() == data
    assert link.conn.rcv_nxt == 1201


def test_segments_outside_the_window_are_acked_and_dropped() -> None:
    link = establish(rcv_buffer=10_000)
    p = link.peer
    window = link.conn.rcv_adv - link.conn.rcv_nxt
    (ack,) = link.feed(p.seg(ACK, b"z" * 10, seq=1001 + window + 5))
    assert ack.ack == 1001 and link.events == []
    (ack,) = link.feed(p.seg(ACK, b"z" * 10, seq=(1001 - 50_000) & M))
    assert ack.ack == 1001 and link.events == []
    # A segment straddling the right edge is trimmed to the window.
    link.feed(p.seg(ACK, b"w" * (window + 100), seq=1001))
    assert link.received() == b"w" * window


def test_rst_and_syn_in_window_and_out_of_window() -> None:
    link = establish()
    p = link.peer
    assert link.feed(p.seg(RST, seq=1001 + 5_000_000)) == []  # outside the window: ignored
    assert link.conn.state == "ESTABLISHED"
    (challenge,) = link.feed(p.seg(SYN, seq=1500))  # SYN in window: challenge ACK
    assert challenge.flags == ACK and challenge.ack == 1001
    assert link.conn.state == "ESTABLISHED"


def test_ack_of_unsent_data_is_answered_and_ignored() -> None:
    link = establish()
    link.conn.send(b"abc", link.now)
    link.drain()
    (ack,) = link.feed(link.peer.seg(ACK, b"data", ack=5001 + 100))
    assert ack.ack == 1001  # the whole segment was dropped
    assert link.conn.snd_una == 5001 and link.events == []


# -- receive window -----------------------------------------------------------------


def test_zero_window_probe_and_reopening_via_consumed() -> None:
    link = establish(Peer(wscale=None), rcv_buffer=4000)
    p = link.peer
    c = link.conn
    (ack,) = link.feed(p.data(b"a" * 1400), p.data(b"b" * 1400), p.data(b"c" * 1200))
    assert ack.ack == 5001 and ack.window == 0
    assert len(link.received()) == 4000
    (ack,) = link.feed(p.seg(ACK, b"d", seq=5001))  # a window probe
    assert ack.ack == 5001 and ack.window == 0
    assert link.events == []
    c.consumed(100, link.now)  # too small to reopen (receiver SWS avoidance)
    assert link.drain() == []
    c.consumed(1900, link.now)
    (update,) = link.drain()
    assert update.ack == 5001 and update.window == 2000
    link.feed(p.seg(ACK, b"d" * 2000, seq=5001))
    assert link.received() == b"d" * 2000


def test_window_never_shrinks_and_follows_consumption() -> None:
    link = establish(rcv_buffer=100_000)  # shift 1
    c = link.conn
    p = link.peer
    assert c.rcv_wscale == 1
    (ack,) = link.feed(p.data(b"x" * 1000))
    assert ack.window == (100_000 - 1000) >> 1
    edge = c.rcv_adv
    for _ in range(60):
        link.feed(p.data(b"y" * 1448))
        assert c.rcv_adv >= edge
        edge = c.rcv_adv
    assert c.rcv_adv - c.rcv_nxt <= 100_000
    c.consumed(80_000, link.now)
    (update,) = link.drain()
    assert update.window << 1 == pytest.approx(100_000 - (1000 + 60 * 1448) + 80_000, abs=2)


def test_peer_window_scaling_limits_what_we_send() -> None:
    link = establish(Peer(wscale=2, ts=False))
    c = link.conn
    p = link.peer
    link.feed(p.seg(ACK, window=1000))
    assert c.snd_wnd == 4000
    c.send(b"q" * 10_000, link.now)
    segs = link.drain()
    # Sender SWS avoidance: the 1080 bytes left in the window wait for a bigger opening.
    assert [len(s.payload) for s in segs] == [1460, 1460]
    assert segs[-1].flags & PSH
    segs = link.feed(p.seg(ACK, ack=5001 + 2920, window=1000))
    assert [len(s.payload) for s in segs] == [1460, 1460]


# -- sending ------------------------------------------------------------------------


def test_segments_carry_mss_less_options_and_psh_on_the_last() -> None:
    link = establish()
    c = link.conn
    assert c.send(b"m" * 5000, link.now) == 5000
    segs = link.drain()
    assert [len(s.payload) for s in segs] == [1448, 1448, 1448, 656]
    assert [bool(s.flags & PSH) for s in segs] == [False, False, False, True]
    assert link.peer.received == b"m" * 5000
    assert segs[0].seq == 5001 and segs[0].ack == 1001


def test_send_takes_only_send_space_and_reports_send_space() -> None:
    link = establish(snd_buffer=10_000)
    c = link.conn
    p = link.peer
    assert c.send(b"a" * 8000, link.now) == 8000
    assert c.send(b"b" * 8000, link.now) == 2000 and c.send_space == 0
    link.drain()
    link.feed(p.seg(ACK, ack=5001 + 5000))
    assert c.send_space == 5000 and link.take(SendSpace) == [SendSpace()]
    link.feed(p.seg(ACK, ack=5001 + 10_000))
    assert link.take(SendSpace) == []  # only once per low-water episode
    assert p.received == b"a" * 8000 + b"b" * 2000


def test_initial_cwnd_is_ten_segments_and_grows() -> None:
    link = establish(Peer(ts=False, sack=False))
    c = link.conn
    p = link.peer
    c.send(b"z" * 100_000, link.now)
    assert len(link.drain()) == 10
    segs = link.feed(p.seg(ACK))
    assert len(segs) == 20  # slow start: acked bytes double the window


def test_rto_retransmits_with_backoff_and_resets() -> None:
    link = establish()
    c = link.conn
    p = link.peer
    c.send(b"r" * 3000, link.now)
    first = link.drain()
    assert len(first) == 3
    p.received.clear()
    p.ack = 5001  # pretend those were lost
    start = link.now
    (re1,) = link.fire()
    assert re1.seq == 5001 and len(re1.payload) == 1448
    gap1 = link.now - start
    assert gap1 == pytest.approx(0.2)  # handshake RTT ~0: the RTO floor
    (re2,) = link.fire()
    assert re2.seq == 5001
    assert link.now - start - gap1 == pytest.approx(0.4)
    # The ACK of the retransmission lets the rest go (cwnd was reset to one segment).
    segs = link.feed(p.seg(ACK, ack=5001 + 1448))
    assert [s.seq for s in segs] == [5001 + 1448, 5001 + 2896]
    link.feed(p.seg(ACK, ack=8001))
    assert c.next_deadline() == pytest.approx(link.now + 7200)  # only keepalive left


def test_retransmissions_give_up_with_rst() -> None:
    link = establish(max_retries=4, keepalive=None)
    link.conn.send(b"x", link.now)
    link.drain()
    for _ in range(4):
        (s,) = link.fire()
        assert s.payload == b"x"
    (rst,) = link.fire()
    assert rst.flags & RST
    assert link.events == [TimedOut(), Closed()] and link.conn.closed


def test_three_dupacks_trigger_fast_retransmit() -> None:
    link = establish(Peer(ts=False))
    c = link.conn
    p = link.peer
    c.send(b"f" * (10 * 1460), link.now)
    segs = link.drain()
    assert len(segs) == 10
    p.ack = 5001 + 1460  # first segment acknowledged, second lost
    assert link.feed(p.seg(ACK)) == []  # a new ACK; everything is already in flight
    for _ in range(2):
        assert link.feed(p.seg(ACK)) == []
    (fast,) = link.feed(p.seg(ACK))
    assert fast.seq == 5001 + 1460 and len(fast.payload) == 1460
    assert c.next_deadline() is not None and c.next_deadline() > link.now + 0.1


def test_partial_ack_retransmits_next_hole() -> None:
    link = establish(Peer(ts=False))
    c = link.conn
    p = link.peer
    c.send(b"f" * (10 * 1460), link.now)
    link.drain()
    p.ack = 5001
    for _ in range(3):
        segs = link.feed(p.seg(ACK))
    assert [s.seq for s in segs] == [5001]
    (hole,) = link.feed(p.seg(ACK, ack=5001 + 3 * 1460))  # partial: 4th segment lost too
    assert hole.seq == 5001 + 3 * 1460
    link.feed(p.seg(ACK, ack=5001 + 10 * 1460))
    assert not c._cc.in_recovery


def test_persist_probes_zero_window_until_it_opens() -> None:
    link = establish(Peer(wscale=None), keepalive=None)
    c = link.conn
    p = link.peer
    link.feed(p.seg(ACK, window=0))
    c.send(b"p" * 3000, link.now)
    assert link.drain() == []
    t0 = link.now
    (probe,) = link.fire()
    assert probe.seq == 5000 and not probe.payload and probe.flags == ACK
    first = link.now - t0
    for _ in range(30):  # the peer keeps answering with a zero window: never give up
        link.feed(p.seg(ACK, window=0))
        (probe,) = link.fire()
    assert not c.closed and link.events == []
    assert c.next_deadline() - link.now <= 60.0
    assert first == pytest.approx(0.2)  # the RTO, then doubling
    segs = link.feed(p.seg(ACK, window=500))
    assert [len(s.payload) for s in segs] == [500]  # nothing in flight: send what fits


def test_rto_probes_zero_window_with_data_in_flight() -> None:
    link = establish(keepalive=None, max_retries=3)
    c = link.conn
    p = link.peer
    c.send(b"k" * 3000, link.now)
    link.drain()
    p.ack = 5001
    link.feed(p.seg(ACK, window=0))  # the peer shrank its window to zero
    for _ in range(10):  # answered with a zero window every time: not counted as retries
        (s,) = link.fire()
        assert s.seq == 5001
        p.ack = 5001  # dropped: no room
        link.feed(p.seg(ACK, window=0))
    assert not c.closed
    p.received.clear()
    link.feed(p.seg(ACK, window=65535))  # reopened; cwnd is one segment after the timeouts
    link.fire()  # the retransmission now gets through...
    link.feed(p.seg(ACK))  # ...and its ACK releases the rest
    link.feed(p.seg(ACK))
    assert p.received == b"k" * 3000 and c.snd_una == 8001


def test_timestamps_give_rtt_samples() -> None:
    link = establish()
    c = link.conn
    p = link.peer
    c.send(b"t" * 100, link.now)
    link.drain()
    link.now += 0.5
    link.feed(p.seg(ACK, options=TcpOptions(timestamps=(800, p.ts_echo))))
    # The handshake measured 0 s; RFC 6298 smoothing of a 0.5 s sample:
    assert c._rto.srtt == pytest.approx(0.0625) and c._rto.rto == pytest.approx(0.5625)


def test_fin_is_retransmitted() -> None:
    link = establish(keepalive=None)
    c = link.conn
    c.send(b"end", link.now)
    c.shutdown(link.now)
    (seg,) = link.drain()
    assert seg.flags & FIN and seg.payload == b"end"
    link.feed(link.peer.seg(ACK, ack=5001 + 3))  # data acked, FIN lost
    (fin,) = link.fire()
    assert fin.flags & FIN and fin.seq == 5004 and not fin.payload


def test_gso_sends_super_segments_of_whole_mss_within_the_window() -> None:
    link = establish(gso_size=65495)
    c = link.conn
    assert c.send(b"g" * 100_000, link.now) == 100_000
    segs = link.drain()
    # Initial cwnd is 10 segments: one super-segment of 10 whole segments (options: 12 bytes).
    assert [len(s.payload) for s in segs] == [14480]
    assert segs[0].flags & PSH
    more = link.feed(link.peer.seg(ACK, ack=segs[0].seq + 14480))
    assert all(len(s.payload) % 1448 == 0 or s is more[-1] for s in more)
    assert max(len(s.payload) for s in more) > 1448
    assert link.peer.received.startswith(b"g" * 14480)
