"""Sender-side SACK loss recovery (RFC 6675 style) and its reneging safety."""

from __future__ import annotations

from pyvpnkit.core.tcp.scoreboard import Scoreboard
from pyvpnkit.wire.tcp import ACK, FIN, TcpOptions, TcpSegment
from tests.unit.support.tcp_peer import Link, Peer, establish

MSS = 1460
BASE = 5001  # first data sequence number (iss 5000)


def seg_at(i: int) -> int:
    return BASE + i * MSS


def sack(link: Link, ack: int, *blocks: tuple[int, int]) -> list[TcpSegment]:
    """Feed one ACK from the peer carrying SACK blocks given in segment indexes."""
    opts = TcpOptions(sack_blocks=tuple((seg_at(a), seg_at(b)) for a, b in blocks))
    return link.feed(link.peer.seg(ACK, ack=ack, options=opts))


def sending(n_segments: int, **extra: object) -> Link:
    link = establish(Peer(ts=False), **extra)
    link.conn.send(b"".join(bytes([i]) * MSS for i in range(n_segments)), link.now)
    assert len(link.drain()) == min(n_segments, 10)
    return link


def test_scoreboard_merges_finds_holes_and_detects_reneging() -> None:
    sb = Scoreboard()
    sb.add(30, 40)
    sb.add(10, 20)
    sb.add(18, 25)
    sb.add(50, 60)
    assert sb.intervals() == [(10, 25), (30, 40), (50, 60)] and sb.sacked == 35
    assert sb.next_hole(0, 60) == (0, 10)
    assert sb.next_hole(12, 60) == (25, 30)
    assert sb.next_hole(40, 45) == (40, 45)
    assert sb.next_hole(50, 60) is None
    assert sb.hole_bytes(0, 60) == 25 and sb.hole_bytes(15, 35) == 5
    assert sb.ack(26) and sb.intervals() == [(30, 40), (50, 60)] and sb.sacked == 20
    assert not sb.ack(30)  # acknowledged up to a SACKed range: the peer dropped it
    assert not sb.ack(55)


def test_sack_blocks_retransmit_exactly_the_holes_once() -> None:
    link = sending(10)
    # Segments 1 and 4 lost: the peer acknowledges 0 and SACKs 2-3 and 5-9.
    assert sack(link, seg_at(1), (2, 3)) == []
    assert sack(link, seg_at(1), (2, 4)) == []
    rexmit = sack(link, seg_at(1), (5, 10), (2, 4))
    assert [(s.seq, len(s.payload)) for s in rexmit] == [(seg_at(1), MSS), (seg_at(4), MSS)]
    assert rexmit[0].payload == bytes([1]) * MSS and rexmit[1].payload == bytes([4]) * MSS
    # More duplicate ACKs do not resend them again in this recovery.
    assert sack(link, seg_at(1), (5, 10), (2, 4)) == []
    assert sack(link, seg_at(4), (5, 10)) == []  # partial ACK: 1 arrived, 4 in flight
    assert link.conn._cc.in_recovery
    link.feed(link.peer.seg(ACK, ack=seg_at(10)))
    assert not link.conn._cc.in_recovery and not link.conn._sacks


def test_recovery_resends_several_holes_per_rtt_and_sends_new_data() -> None:
    link = establish(Peer(ts=False), snd_buffer=1 << 20)
    c = link.conn
    c.send(bytes(60 * MSS), link.now)
    assert len(link.drain()) == 10
    segs = link.feed(link.peer.seg(ACK, ack=seg_at(10)))  # slow start: 20 more
    assert [s.seq for s in segs] == [seg_at(i) for i in range(10, 30)]
    # Every third of segments 10..29 lost, 10 first.
    got = [(i, i + 1) for i in range(10, 30) if i % 3 != 1]
    blocks: list[tuple[int, int]] = []
    for a, b in got:
        if blocks and blocks[-1][1] == a:
            blocks[-1] = (blocks[-1][0], b)
        else:
            blocks.append((a, b))
    sent: list[TcpSegment] = []
    for k in range(1, len(blocks) + 1):  # the peer reports its newest blocks first
        sent += sack(link, seg_at(10), *reversed(blocks[max(0, k - 3) : k]))
    holes = [seg_at(i) for i in range(10, 30, 3)]
    resent = [s.seq for s in sent if s.seq < seg_at(30)]
    assert sorted(resent) == holes and len(set(resent)) == len(resent)
    assert c.snd_max > seg_at(30) or c.snd_wnd <= c.snd_max - c.snd_una


def test_sacked_data_is_not_resent_after_a_timeout() -> None:
    link = sending(10)
    # Only segments 5 and 6 arrived (too little SACKed to start fast recovery).
    assert sack(link, BASE, (5, 7)) == []
    assert not link.conn._cc.in_recovery
    resent: list[int] = []
    (first,) = link.fire()  # RTO: one segment (cwnd 1), the head
    resent.append(first.seq)
    acked = seg_at(1)
    while acked < seg_at(10):
        segs = sack(link, acked, (5, 7))
        resent += [s.seq for s in segs]
        acked = max(s.seq + len(s.payload) for s in segs) if segs else acked
        if acked == seg_at(5):
            acked = seg_at(7)
    assert resent == [seg_at(i) for i in (0, 1, 2, 3, 4, 7, 8, 9)]
    link.feed(link.peer.seg(ACK, ack=seg_at(10)))
    assert link.conn.snd_una == seg_at(10) and not link.conn._sacks


def test_reneged_sack_data_is_resent() -> None:
    link = sending(10)
    p = link.peer
    data = bytes(p.received)
    p.ack, p.received = BASE, bytearray()  # all lost but 5-6 ...
    assert sack(link, BASE, (5, 7)) == []
    # ... which the peer then throws away: from here on it takes data in order only.
    resent = [s.seq for s in link.fire()]
    assert resent == [BASE]
    for _ in range(40):
        if p.ack == seg_at(10):
            break
        segs = link.feed(p.seg(ACK)) or link.fire()
        resent += [s.seq for s in segs]
    assert seg_at(5) in resent and seg_at(6) in resent
    assert bytes(p.received) == data
    link.feed(p.seg(ACK))
    assert link.conn.snd_una == seg_at(10) and not link.conn._sacks


def test_repeated_timeouts_drop_the_scoreboard() -> None:
    link = sending(10)
    assert sack(link, BASE, (5, 7)) == []
    for _ in range(2):
        (head,) = link.fire()
        assert head.seq == BASE
    assert link.conn._sacks  # kept through two timeouts without progress
    (head,) = link.fire()
    assert head.seq == BASE and not link.conn._sacks  # third: forget it (reneging safety)
    assert link.conn.snd_nxt == seg_at(1)  # going back N over the whole flight


def test_fin_in_a_hole_is_resent_after_a_timeout() -> None:
    link = sending(3)
    link.conn.shutdown(link.now)
    (fin,) = link.drain()
    assert fin.flags & FIN and fin.seq == seg_at(3)
    assert sack(link, BASE, (1, 2)) == []  # only segment 1 arrived
    (head,) = link.fire()
    assert head.seq == BASE and not head.flags & FIN
    rest = link.feed(link.peer.seg(ACK, ack=seg_at(2)))  # 0 filled the hole up to 2
    assert [(s.seq, len(s.payload)) for s in rest] == [(seg_at(2), MSS), (seg_at(3), 0)]
    assert rest[1].flags & FIN
    link.feed(link.peer.seg(ACK, ack=seg_at(3) + 1))
    assert link.conn.state == "FIN_WAIT_2"


def test_a_lost_retransmission_is_resent_when_a_later_one_arrives() -> None:
    link = sending(10)
    sack(link, seg_at(1), (2, 4))
    sack(link, seg_at(1), (2, 4))
    rexmit = sack(link, seg_at(1), (5, 10), (2, 4))
    assert [s.seq for s in rexmit] == [seg_at(1), seg_at(4)]
    # The resent 4 arrives (the peer's newest block now holds it), the resent 1 does not.
    again = sack(link, seg_at(1), (2, 10))
    assert [(s.seq, len(s.payload)) for s in again] == [(seg_at(1), MSS)]
    assert sack(link, seg_at(1), (2, 10)) == []  # only once
