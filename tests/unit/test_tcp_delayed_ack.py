"""The NAT's delayed ACK: a request's ACK rides on the host's answer, never waits long."""

from __future__ import annotations

from pyvpnkit.core.tcp_nat import DELAYED_ACK

from .test_tcp_nat_support import Vm, World


def request() -> tuple[World, Vm, int, int]:
    """A connection past its first exchange (whose window update went out at once)
    where the VM sent one more byte; SND.UNA before it."""
    w = World()
    vm, fid = w.established()
    vm.conn.send(b"q", w.now)
    w.run()
    w.host_read(fid, b"a")
    una = vm.conn.snd_una
    vm.conn.send(b"q", w.now)
    w.run()
    assert w.host.socks[fid].received == b"qq"
    return w, vm, fid, una


def test_the_ack_rides_on_the_hosts_answer() -> None:
    w, vm, fid, una = request()
    assert vm.conn.snd_una == una  # no pure ACK yet
    w.host_read(fid, b"b")
    assert vm.received == b"ab" and vm.conn.snd_una == una + 1


def test_an_unanswered_request_is_acked_after_the_delay() -> None:
    w, vm, _, una = request()
    w.advance(DELAYED_ACK / 2)
    assert vm.conn.snd_una == una
    w.advance(DELAYED_ACK)
    assert vm.conn.snd_una == una + 1


def test_every_second_full_segment_is_acked_at_once() -> None:
    w = World()
    vm, fid = w.established()
    una = vm.conn.snd_una
    n = 2 * vm.conn.snd_mss
    vm.conn.send(bytes(n), w.now)
    w.run()
    assert len(w.host.socks[fid].received) == n
    assert vm.conn.snd_una == una + n


def test_a_fin_is_acked_at_once() -> None:
    w = World()
    vm, fid = w.established()
    una = vm.conn.snd_una
    vm.conn.send(b"q", w.now)
    vm.conn.shutdown(w.now)
    w.run()
    assert vm.conn.snd_una == una + 2
