"""Opening TCP connections: accept(), connect(), option negotiation, SYN(-ACK) retransmission."""

from __future__ import annotations

import pytest

from pyvpnkit.core.tcp import Closed, DataReceived, Established, Reset, TcpConnection, TimedOut
from pyvpnkit.wire.tcp import ACK, FIN, PSH, RST, SYN, TcpOptions
from tests.unit.support.tcp_peer import Link, M, Peer, establish, kw


def accepted(peer: Peer, **extra: object) -> Link:
    return Link(TcpConnection.accept(peer.syn(), 100.0, **kw(**extra)), peer)


def test_accept_negotiates_all_options() -> None:
    peer = Peer(iss=1000, mss=9000, wscale=3)
    link = accepted(peer)
    assert link.conn.state == "SYN_RCVD"
    (synack,) = link.drain()
    assert synack.flags == SYN | ACK
    assert synack.seq == 5000 and synack.ack == 1001
    assert synack.window == 65535  # never scaled in a SYN
    o = synack.options
    assert o.mss == 1460 and o.wscale == 7 and o.sack_permitted  # 4 MiB needs shift 7
    assert o.timestamps == (100_000, 777)
    assert link.feed(peer.seg(ACK)) == []
    assert link.conn.state == "ESTABLISHED"
    assert link.take(Established) == [Established()]
    c = link.conn
    assert c.snd_mss == 1460 and c.snd_wscale == 3 and c.sack_ok and c.ts_ok


def test_accept_without_options_uses_rfc_defaults() -> None:
    peer = Peer(mss=None, wscale=None, sack=False, ts=False)
    link = establish(peer)
    c = link.conn
    assert c.snd_mss == 536 and c.snd_wscale == 0 and c.rcv_wscale == 0
    assert not c.sack_ok and not c.ts_ok
    c.send(b"x" * 2000, link.now)
    segs = link.drain()
    assert [len(s.payload) for s in segs] == [536, 536, 536, 392]
    assert all(s.options == TcpOptions() for s in segs)
    assert segs[0].window == 65535  # 4 MiB free, but unscaled
    # The peer's window is unscaled too.
    link.feed(peer.seg(ACK, window=600))
    assert c.snd_wnd == 600


def test_synack_omits_options_the_peer_did_not_offer() -> None:
    peer = Peer(wscale=None, sack=False, ts=True)
    (synack,) = accepted(peer).drain()
    assert synack.options.wscale is None and not synack.options.sack_permitted
    assert synack.options.timestamps is not None


def test_synack_retransmits_with_backoff_then_times_out() -> None:
    peer = Peer()
    link = accepted(peer, syn_retries=5)
    link.drain()
    times = []
    for _ in range(5):
        (s,) = link.fire()
        assert s.flags == SYN | ACK and s.seq == 5000
        times.append(link.now)
    assert [round(b - a, 6) for a, b in zip([100.0, *times], times, strict=False)] == [
        1.0,
        2.0,
        4.0,
        8.0,
        16.0,
    ]
    (rst,) = link.fire()
    assert rst.flags & RST
    assert link.events == [TimedOut(), Closed()]
    assert link.conn.closed and link.conn.next_deadline() is None


def test_retransmitted_syn_gets_synack_again() -> None:
    peer = Peer()
    syn = peer.syn()
    link = Link(TcpConnection.accept(syn, 100.0, **kw()), peer)
    link.drain()
    (again,) = link.feed(syn)
    assert again.flags == SYN | ACK and again.ack == 1001


def test_rst_in_syn_rcvd_closes() -> None:
    peer = Peer()
    link = accepted(peer)
    link.drain()
    assert link.feed(peer.seg(RST, ack=0)) == []
    assert link.events == [Reset(), Closed()] and link.conn.closed


def test_bad_ack_in_syn_rcvd_is_answered_with_rst() -> None:
    peer = Peer()
    link = accepted(peer)
    link.drain()
    (rst,) = link.feed(peer.seg(ACK, ack=12345))
    assert rst.flags == RST and rst.seq == 12345
    assert link.conn.state == "SYN_RCVD"
    link.feed(peer.seg(ACK))
    assert link.conn.state == "ESTABLISHED"


def test_data_and_fin_on_the_handshake_ack() -> None:
    peer = Peer()
    link = accepted(peer)
    link.drain()
    (ack,) = link.feed(peer.data(b"hello", ACK | PSH | FIN))
    assert ack.ack == (1001 + 5 + 1) & M
    assert link.events[0] == Established()
    assert link.events[1] == DataReceived(b"hello")
    assert link.conn.state == "CLOSE_WAIT"


def test_data_sent_and_shutdown_before_the_handshake_completes() -> None:
    peer = Peer()
    link = accepted(peer)
    link.drain()
    c = link.conn
    assert c.send(b"early", link.now) == 5
    c.shutdown(link.now)
    assert c.state == "SYN_RCVD"
    assert link.drain() == []  # nothing but the SYN-ACK before the peer's ACK
    segs = link.feed(peer.seg(ACK))
    assert c.state == "FIN_WAIT_1"
    assert [(bytes(s.payload), s.flags & FIN) for s in segs] == [(b"early", FIN)]


def test_connect_active_open() -> None:
    peer = Peer(iss=9000)
    c = TcpConnection(**kw(iss=0xFFFFFFFF))  # ISS at the wrap point
    link = Link(c, peer)
    c.connect(link.now)
    (syn,) = link.drain()
    assert syn.flags == SYN and syn.seq == 0xFFFFFFFF
    assert syn.options.mss == 1460 and syn.options.wscale == 7 and syn.options.sack_permitted
    assert syn.options.timestamps == (100_000, 0)
    synack = peer.seg(
        SYN | ACK,
        seq=9000,
        ack=0,
        window=1000,
        options=TcpOptions(mss=1000, wscale=2, sack_permitted=True, timestamps=(5, 100_000)),
    )
    peer.seq = 9001
    (ack,) = link.feed(synack)
    assert ack.flags == ACK and ack.seq == 0 and ack.ack == 9001
    assert c.state == "ESTABLISHED" and link.take(Established) == [Established()]
    assert c.snd_mss == 1000 and c.snd_wnd == 1000 and c.snd_wscale == 2
    c.send(b"y" * 3000, link.now)
    segs = link.drain()
    # The SYN-ACK's window is not scaled: one MSS less the 12 option bytes fits in it, and
    # sender SWS avoidance holds back the 12-byte remainder.
    assert [len(s.payload) for s in segs] == [988]
    link.feed(peer.seg(ACK, ack=988, window=1000))
    assert c.snd_wnd == 4000


def test_connect_without_peer_wscale_disables_scaling() -> None:
    peer = Peer(iss=9000)
    c = TcpConnection(**kw())
    link = Link(c, peer)
    c.connect(link.now)
    link.drain()
    peer.seq = 9001
    link.feed(peer.seg(SYN | ACK, seq=9000, ack=5001, options=TcpOptions(mss=1460)))
    assert c.rcv_wscale == 0 and c.snd_wscale == 0 and not c.ts_ok and not c.sack_ok


def test_connect_syn_retransmit_bad_ack_and_rst() -> None:
    peer = Peer(iss=9000)
    c = TcpConnection(**kw())
    link = Link(c, peer)
    c.connect(link.now)
    link.drain()
    (again,) = link.fire()
    assert again.flags == SYN and link.now == pytest.approx(101.0)
    (rst,) = link.feed(peer.seg(SYN | ACK, seq=9000, ack=4242))
    assert rst.flags == RST and rst.seq == 4242
    assert c.state == "SYN_SENT"
    assert link.feed(peer.seg(RST, seq=0, ack=0)) == []  # RST without an ACK: ignored
    assert c.state == "SYN_SENT"
    link.feed(peer.seg(RST | ACK, seq=0, ack=5001))
    assert link.events == [Reset(), Closed()] and c.closed


def test_simultaneous_open() -> None:
    peer = Peer(iss=9000)
    c = TcpConnection(**kw())
    link = Link(c, peer)
    c.connect(link.now)
    link.drain()
    (synack,) = link.feed(peer.syn())
    assert synack.flags == SYN | ACK and synack.seq == 5000 and synack.ack == 9001
    assert c.state == "SYN_RCVD"
    link.feed(peer.seg(SYN | ACK, seq=9000, ack=5001))  # its SYN-ACK: a duplicate SYN
    link.feed(peer.seg(ACK, ack=5001))
    assert c.state == "ESTABLISHED"
