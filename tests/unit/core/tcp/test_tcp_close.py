"""Closing TCP connections: half-close both ways, every close path, RST, abort, keepalive."""

from __future__ import annotations

import pytest

from pyvpnkit.core.tcp import Closed, DataReceived, PeerClosed, Reset, TimedOut
from pyvpnkit.wire.tcp import ACK, FIN, RST
from tests.unit.support.tcp_peer import establish


def test_peer_closes_first_and_we_keep_sending() -> None:
    link = establish()
    c, p = link.conn, link.peer
    (ack,) = link.feed(p.data(b"bye"), p.fin())
    assert ack.ack == 1005
    assert link.events == [DataReceived(b"bye"), PeerClosed()]
    assert c.state == "CLOSE_WAIT"
    link.events.clear()
    c.send(b"still talking", link.now)
    link.drain()
    assert p.received == b"still talking"
    c.shutdown(link.now)
    assert c.state == "LAST_ACK"
    (fin,) = link.drain()
    assert fin.flags & FIN and fin.seq == 5001 + 13
    assert link.feed(p.seg(ACK)) == []
    assert c.state == "CLOSED" and c.closed and link.events == [Closed()]
    assert c.next_deadline() is None


def test_we_close_first_and_keep_receiving_then_time_wait() -> None:
    link = establish(msl=5.0)
    c, p = link.conn, link.peer
    c.send(b"request", link.now)
    c.shutdown(link.now)
    assert c.state == "FIN_WAIT_1" and c.send_space == 0
    assert c.send(b"more", link.now) == 0
    (seg,) = link.drain()
    assert seg.flags & FIN and seg.payload == b"request"
    link.feed(p.seg(ACK))
    assert c.state == "FIN_WAIT_2"
    link.feed(p.data(b"response 1"))
    link.feed(p.data(b"response 2"))
    assert link.received() == b"response 1response 2"
    (ack,) = link.feed(p.fin())
    assert ack.ack == p.seq
    assert c.state == "TIME_WAIT"
    assert link.events == [PeerClosed(), Closed()]
    assert c.next_deadline() == pytest.approx(link.now + 10.0)
    # A retransmitted FIN (our ACK was lost) is acknowledged again and restarts the timer.
    link.now += 4
    (again,) = link.feed(p.seg(ACK | FIN, seq=p.seq - 1))
    assert again.ack == p.seq
    assert c.next_deadline() == pytest.approx(link.now + 10.0)
    link.fire()
    assert c.closed and link.events == [PeerClosed(), Closed()]


def test_fin_and_ack_of_our_fin_together() -> None:
    link = establish()
    c, p = link.conn, link.peer
    c.shutdown(link.now)
    link.drain()
    link.feed(p.fin())
    assert c.state == "TIME_WAIT"


def test_simultaneous_close_goes_through_closing() -> None:
    link = establish()
    c, p = link.conn, link.peer
    c.shutdown(link.now)
    link.drain()
    (ack,) = link.feed(p.seg(ACK | FIN, ack=5001))  # its FIN does not ack ours
    p.seq += 1
    assert c.state == "CLOSING" and ack.ack == 1002
    link.feed(p.seg(ACK))
    assert c.state == "TIME_WAIT" and link.events == [PeerClosed(), Closed()]


def test_out_of_order_fin_waits_for_the_data() -> None:
    link = establish()
    c, p = link.conn, link.peer
    d1 = p.data(b"first")
    fin = p.data(b"second", ACK | FIN)
    (dup,) = link.feed(fin)
    assert dup.ack == 1001 and c.state == "ESTABLISHED" and link.events == []
    (ack,) = link.feed(d1)
    assert ack.ack == 1001 + 11 + 1
    assert link.events == [DataReceived(b"firstsecond"), PeerClosed()]
    assert c.state == "CLOSE_WAIT"


def test_data_after_fin_is_ignored() -> None:
    link = establish()
    c, p = link.conn, link.peer
    link.feed(p.fin())
    link.events.clear()
    link.feed(p.data(b"zombie"))
    assert link.events == [] and c.rcv_nxt == 1002


def test_fin_wait_2_times_out_without_data() -> None:
    link = establish(fin_wait_2_timeout=60.0, keepalive=None)
    c, p = link.conn, link.peer
    c.shutdown(link.now)
    link.drain()
    link.feed(p.seg(ACK))
    link.now += 30
    link.feed(p.data(b"x"))  # data restarts the clock
    assert c.next_deadline() == pytest.approx(link.now + 60)
    (rst,) = link.fire()
    assert rst.flags & RST and c.closed
    assert link.events[-1] == Closed()


def test_valid_rst_resets() -> None:
    link = establish()
    c, p = link.conn, link.peer
    link.feed(p.data(b"partial"))
    link.events.clear()
    assert link.feed(p.seg(RST, seq=p.seq + 100)) == []  # in window: accepted
    assert link.events == [Reset(), Closed()] and c.closed
    assert link.feed(p.data(b"late")) == []  # nothing more happens


def test_rst_pending_data_event_comes_first() -> None:
    link = establish()
    p = link.peer
    link.conn.handle_segment(p.data(b"last words"), link.now)
    link.conn.handle_segment(p.seg(RST), link.now)
    link.drain()
    assert link.events == [DataReceived(b"last words"), Reset(), Closed()]


def test_abort_sends_rst() -> None:
    link = establish()
    c = link.conn
    c.send(b"unsent", link.now)
    c.abort(link.now)
    (rst,) = link.drain()
    assert rst.flags == RST | ACK and rst.seq == 5001 and rst.ack == 1001
    assert c.closed and link.events == [Closed()]
    c.abort(link.now)
    assert link.drain() == [] and link.events == [Closed()]


def test_keepalive_probes_then_times_out() -> None:
    link = establish(keepalive=(10.0, 2.0, 3))
    c, p = link.conn, link.peer
    assert c.next_deadline() == pytest.approx(110.0)
    (probe,) = link.fire()
    assert probe.seq == 5000 and not probe.payload and probe.ack == 1001
    link.feed(p.seg(ACK))  # answered: idle again
    assert c.next_deadline() == pytest.approx(link.now + 10.0)
    times = []
    for _ in range(3):
        (probe,) = link.fire()
        times.append(link.now)
    assert times[1] - times[0] == pytest.approx(2.0)
    (rst,) = link.fire()
    assert rst.flags & RST
    assert link.events == [TimedOut(), Closed()]


def test_keepalive_off() -> None:
    link = establish(keepalive=None)
    assert link.conn.next_deadline() is None


def test_time_wait_ignores_new_data_and_closes_on_rst() -> None:
    link = establish()
    c, p = link.conn, link.peer
    c.shutdown(link.now)
    link.drain()
    link.feed(p.fin())
    assert c.state == "TIME_WAIT"
    link.events.clear()
    link.feed(p.seg(RST))
    assert c.closed and link.events == []  # Closed was already reported
